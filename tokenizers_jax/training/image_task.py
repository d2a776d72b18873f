"""The image task: 2D-grid and 1D image tokenizers on image datasets.

The trainer (models, train and eval steps on the shared training core) is
`training/steps.py`; this module adds the image data iterator and the
evaluation (PSNR, SSIM, codebook usage,
bicubic baselines at equal bits, perturbed-latent metrics and rFID/pFID when
local Inception weights are given), and registers them as the 'image' Task.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from tokenizers_jax import data as data_lib
from tokenizers_jax.evaluators import image as image_metrics
from tokenizers_jax.quantizers import functional as qf
from tokenizers_jax.training import core
from tokenizers_jax.training import metrics as metrics_lib
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import tasks


def train_iterator(config):
  ds = data_lib.make_image_dataset(
      config.data.source, train=True, image_size=config.data.image_size,
      global_batch_size=config.data.global_batch_size, seed=config.seed,
      random_flip=config.data.random_flip, data_dir=config.data.data_dir,
      process_index=jax.process_index(), process_count=jax.process_count())
  return iter(ds)



_INCEPTION_CACHE: dict[str, Any] = {}


def load_inception(path: str | None):
  """The FID InceptionV3 from a local weights file (cached), or None."""
  if not path:
    return None
  if path not in _INCEPTION_CACHE:
    from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
    _INCEPTION_CACHE[path] = fid_lib.InceptionV3.from_file(path)
  return _INCEPTION_CACHE[path]


def fid_note(config) -> str | None:
  """Why rFID/pFID were not computed, or None when they were."""
  if _opt_eval(config, 'inception_path'):
    return None
  return ('rFID and pFID not computed: no FID Inception weights file '
          '(set config.eval.inception_path to a local '
          'pt_inception-2015-12-05 state dict)')


def _opt_eval(config, key, default=None):
  ev = config.get('eval', None)
  if ev is None or key not in ev:
    return default
  return ev[key]


def evaluate(trainer, state, config, mesh, *, use_ema: bool = True,
             num_batches: int | None = None) -> tuple[dict, Any]:
  """PSNR, SSIM, codebook usage and perplexity over the validation split,
  the same for reconstructions from perturbed latents (`eval/p_psnr`,
  `eval/p_ssim`), and rFID and pFID when the Inception weights are given.

  Perturbed latents (config.eval.pfid_perturb = alpha, beta, delta; fixed
  keys, so every evaluation perturbs the same way): a fraction beta of the
  images has each code replaced with probability alpha by one of its delta
  nearest codes (Robust Latent Matters' pFID).

  Also reports two bicubic down/up-sampling baselines: `eval/bicubic_bits_*`
  stores at least as many bits per image as the tokens do (an s×s×3 image of
  8-bit values, s²·24 >= tokens·log2(K)): the same compression; and
  `eval/bicubic_*` keeps H/f×W/f×3 floats at the tokenizer's own downsampling
  factor f, many more bits than the tokens (a reference, not a bar); 1D
  tokenizers (tokens [B, K], `model.one_dimensional`) have no such factor
  and only get the equal-bits baseline.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  batch_size = config.data.eval_batch_size
  ds = data_lib.make_eval_dataset(
      config.data.source, image_size=config.data.image_size,
      global_batch_size=batch_size, data_dir=config.data.data_dir,
      process_index=jax.process_index(), process_count=jax.process_count())
  perturb = _opt_eval(config, 'pfid_perturb')
  perturb = dict(perturb) if perturb else None
  inception = load_inception(_opt_eval(config, 'inception_path'))
  inc_graph, inc_state = (nnx.split(inception) if inception is not None
                          else (None, None))
  replicated = NamedSharding(mesh, P())
  if inc_state is not None:
    inc_state = jax.device_put(inc_state, replicated)
  base_key = jax.random.PRNGKey(config.seed + 3)

  def feature_sums(inc_state, images, m):
    """Masked count, sum and sum of outer products of pool3 features."""
    f = nnx.merge(inc_graph, inc_state)(images)
    f = f * m[:, None]
    outer = jnp.einsum('bi,bj->ij', f, f, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.with_sharding_constraint(
        (jnp.sum(f, 0), outer), replicated)

  @jax.jit
  def step(state, batch, inc_state, key):
    out = steps_lib.eval_step(trainer, state, batch, use_ema=use_ema,
                              perturb=perturb, key=key)
    x_hat, idx = out[:2]
    x = batch['image']
    # Per-image metrics, each summed over the valid images of the batch.
    per = {'psnr': image_metrics.psnr(x, x_hat),
           'ssim': image_metrics.ssim(x, x_hat)}
    if perturb is not None:
      per['p_psnr'] = image_metrics.psnr(x, out[2])
      per['p_ssim'] = image_metrics.ssim(x, out[2])
    if not one_d:  # 1D: no downsampling factor, that baseline is not reported.
      x_bic = image_metrics.bicubic_baseline(x, x.shape[1] // idx.shape[1])
      per['bicubic_psnr'] = image_metrics.psnr(x, x_bic)
      per['bicubic_ssim'] = image_metrics.ssim(x, x_bic)
    codes_per_image = math.prod(idx.shape[1:])
    x_bits = image_metrics.bicubic_at_bits(
        x, codes_per_image * math.log2(codebook_size))
    per['bicubic_bits_psnr'] = image_metrics.psnr(x, x_bits)
    per['bicubic_bits_ssim'] = image_metrics.ssim(x, x_bits)
    mask = batch['mask']
    # Token positions: [B, K] (1D tokenizers) or [B, h, w]; then G codes.
    lead = 2 if one_d else 3
    flat = idx.reshape(idx.shape[0], -1,
                       idx.shape[-1] if idx.ndim > lead else 1)
    token_mask = jnp.broadcast_to(mask[:, None], flat.shape[:2])
    m = mask.astype(jnp.float32)
    sums = {k: jnp.sum(v * m) for k, v in per.items()}
    sums['num_images'] = jnp.sum(m)
    sums['counts'] = jnp.stack([
        qf.code_counts(flat[..., g], codebook_size, token_mask)
        for g in range(flat.shape[-1])])
    # The grid images are gathered to every process (replicated), so that
    # each host can read them; the rest of the batch stays where it is.
    k = config.num_grid_images
    grid = jax.lax.with_sharding_constraint((x[:k], x_hat[:k]), replicated)
    feats = None
    if inc_state is not None:
      feats = [feature_sums(inc_state, v, m) for v in
               ((x, x_hat) if perturb is None else (x, x_hat, out[2]))]
    return sums, grid, feats

  model = trainer.merge_gen(state['gen']['params'], state['gen']['rest'],
                            copy=False)
  codebook_size = model.codebook_size
  one_d = model.one_dimensional
  totals = None
  sample = None
  fid_stats = None
  for i, batch in enumerate(core.eval_batches(config, mesh, ds, batch_size,
                                              num_batches)):
    sums, grid, feats = step(state, batch, inc_state,
                             jax.random.fold_in(base_key, i))
    totals = core.add_sums(totals, sums)
    if sample is None:
      sample = tuple(np.asarray(jax.device_get(g)) for g in grid)
    if feats is not None:
      from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
      if fid_stats is None:
        fid_stats = [fid_lib.FeatureStats(2048) for _ in feats]
      n_valid = int(np.asarray(sums['num_images']))
      for acc, (total, outer) in zip(fid_stats, feats):
        acc.count += n_valid
        acc.total += np.asarray(total, np.float64)
        acc.outer += np.asarray(outer, np.float64)
  if totals is None:
    raise ValueError('evaluation saw no images (empty validation split?)')
  counts = totals.pop('counts')
  num_images = float(totals.pop('num_images'))
  n = max(num_images, 1)
  results = {f'eval/{k}': float(v / n) for k, v in totals.items()}
  results.update(core.codebook_stats(counts))
  results['eval/num_images'] = num_images
  results['eval/bits_per_image'] = float(
      counts.sum() / n * math.log2(codebook_size))
  if fid_stats is not None:
    from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
    results['eval/rfid'] = fid_lib.fid_from_features(fid_stats[0], fid_stats[1])
    if len(fid_stats) > 2:
      results['eval/pfid'] = fid_lib.fid_from_features(fid_stats[0], fid_stats[2])
  picture = metrics_lib.image_grid(*sample) if sample is not None else None
  return results, picture



TASK = tasks.Task(
    name='image',
    headline=('train/recon', 'quant/usage'),
    validate_config=steps_lib.validate_config,
    create=steps_lib.create,
    train_step=steps_lib.train_step,
    train_iterator=train_iterator,
    evaluate=evaluate,
    eval_note=fid_note,
)
