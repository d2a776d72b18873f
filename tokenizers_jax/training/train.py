"""The one training loop every tokenizer uses.

  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny --workdir=DIR

Sections: setup (mesh, data, state, checkpoint resume) -> loop (jit step,
logging, eval, checkpoints) -> final save. The same code runs on one CPU, a
mesh of simulated devices, a GPU, or several processes after
`distributed.maybe_initialize`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from tokenizers_jax import data as data_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.evaluators import image as image_metrics
from tokenizers_jax.quantizers import functional as qf
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import metrics as metrics_lib
from tokenizers_jax.training import steps as steps_lib


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite batch, loss or gradient."""


# ============================================================================
# Setup helpers.
# ============================================================================


def make_mesh(config) -> jax.sharding.Mesh:
  return sharding_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes))


def batch_sharding(mesh) -> NamedSharding:
  data_axes = tuple(a for a in ('data', 'fsdp') if a in mesh.axis_names)
  return NamedSharding(mesh, P(data_axes))


def train_iterator(config):
  ds = data_lib.make_image_dataset(
      config.data.source, train=True, image_size=config.data.image_size,
      global_batch_size=config.data.global_batch_size, seed=config.seed,
      random_flip=config.data.random_flip, data_dir=config.data.data_dir,
      process_index=jax.process_index(), process_count=jax.process_count())
  return iter(ds)


def to_global(local_batch: dict, sharding: NamedSharding, global_batch: int):
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding, v, (global_batch,) + v.shape[1:])
  return out


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'config.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  with open(path) as f:
    raw = json.load(f)
  return ml_collections.ConfigDict(_tuplify(raw))


def _tuplify(x):
  if isinstance(x, dict):
    return {k: _tuplify(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuplify(v) for v in x)
  return x


# ============================================================================
# Evaluation.
# ============================================================================


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
  factor f, many more bits than the tokens (a reference, not a bar).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  sharding = batch_sharding(mesh)
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
    per_psnr = image_metrics.psnr(x, x_hat)
    per_ssim = image_metrics.ssim(x, x_hat)
    if perturb is not None:
      p_psnr = image_metrics.psnr(x, out[2])
      p_ssim = image_metrics.ssim(x, out[2])
    else:
      p_psnr = p_ssim = jnp.zeros_like(per_psnr)
    factor = x.shape[1] // idx.shape[1]
    x_bic = image_metrics.bicubic_baseline(x, factor)
    bic_psnr = image_metrics.psnr(x, x_bic)
    bic_ssim = image_metrics.ssim(x, x_bic)
    codes_per_image = math.prod(idx.shape[1:])
    x_bits = image_metrics.bicubic_at_bits(
        x, codes_per_image * math.log2(codebook_size))
    bits_psnr = image_metrics.psnr(x, x_bits)
    bits_ssim = image_metrics.ssim(x, x_bits)
    mask = batch['mask']
    flat = idx.reshape(idx.shape[0], -1, idx.shape[-1] if idx.ndim > 3 else 1)
    token_mask = jnp.broadcast_to(mask[:, None], flat.shape[:2])
    counts = jnp.stack([qf.code_counts(flat[..., g], codebook_size, token_mask)
                        for g in range(flat.shape[-1])])
    m = mask.astype(jnp.float32)
    # The grid images are gathered to every process (replicated), so that
    # each host can read them; the rest of the batch stays where it is.
    k = config.num_grid_images
    grid = jax.lax.with_sharding_constraint((x[:k], x_hat[:k]), replicated)
    sums = jnp.stack([jnp.sum(v * m) for v in
                      (per_psnr, per_ssim, jnp.ones_like(m), bic_psnr, bic_ssim,
                       bits_psnr, bits_ssim, p_psnr, p_ssim)])
    feats = None
    if inc_state is not None:
      feats = [feature_sums(inc_state, v, m) for v in
               ((x, x_hat) if perturb is None else (x, x_hat, out[2]))]
    return sums, counts, grid, feats

  codebook_size = trainer.merge_gen(state['gen']['params'], state['gen']['rest'],
                                    copy=False).codebook_size
  totals = np.zeros(9)
  counts = None
  sample = None
  fid_stats = None
  for i, local in enumerate(ds):
    if num_batches is not None and num_batches >= 0 and i >= num_batches:
      break
    batch = to_global(local, sharding, batch_size)
    sums, c, grid, feats = step(state, batch, inc_state,
                                jax.random.fold_in(base_key, i))
    totals += np.asarray(sums, np.float64)
    counts = np.asarray(c) if counts is None else counts + np.asarray(c)
    if sample is None:
      sample = tuple(np.asarray(jax.device_get(g)) for g in grid)
    if feats is not None:
      from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
      if fid_stats is None:
        fid_stats = [fid_lib.FeatureStats(2048) for _ in feats]
      n_valid = int(np.asarray(sums)[2])
      for acc, (total, outer) in zip(fid_stats, feats):
        acc.count += n_valid
        acc.total += np.asarray(total, np.float64)
        acc.outer += np.asarray(outer, np.float64)
  n = max(totals[2], 1)
  probs = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
  ent = -np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-30)), 0), -1)
  results = {
      'eval/psnr': totals[0] / n,
      'eval/ssim': totals[1] / n,
      'eval/codebook_usage': float(np.mean((counts > 0).mean(-1))),
      'eval/perplexity': float(np.mean(np.exp(ent))),
      'eval/num_images': float(totals[2]),
      'eval/bicubic_psnr': totals[3] / n,
      'eval/bicubic_ssim': totals[4] / n,
      'eval/bicubic_bits_psnr': totals[5] / n,
      'eval/bicubic_bits_ssim': totals[6] / n,
      'eval/bits_per_image': float(counts.sum() / n * math.log2(codebook_size)),
  }
  if perturb is not None:
    results['eval/p_psnr'] = totals[7] / n
    results['eval/p_ssim'] = totals[8] / n
  if fid_stats is not None:
    from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
    results['eval/rfid'] = fid_lib.fid_from_features(fid_stats[0], fid_stats[1])
    if len(fid_stats) > 2:
      results['eval/pfid'] = fid_lib.fid_from_features(fid_stats[0], fid_stats[2])
  return results, sample


# ============================================================================
# Training.
# ============================================================================


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, stop_after: int | None = None) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns the
  final metrics. `stop_after` ends the run early at that step (tests)."""
  steps_lib.validate_config(config)
  mesh = make_mesh(config)
  write_config(config, workdir)
  writer = metrics_lib.MetricWriter(workdir)
  with jax.set_mesh(mesh):
    trainer, state, state_sh = steps_lib.create(config, mesh)
    data_sh = batch_sharding(mesh)
    it = train_iterator(config)
    mgr = ckpt_lib.manager(workdir, config.keep_checkpoints)
    restored, start = ckpt_lib.restore(mgr, state, it)
    if restored is not None:
      state = restored
      logging.info('Resumed from step %d', start)
    start = int(jax.device_get(state['step']))

    train_step = jax.jit(lambda s, b: steps_lib.train_step(trainer, s, b),
                         in_shardings=(state_sh, data_sh),
                         out_shardings=(state_sh, None), donate_argnums=0)
    logging.info('Training %s from step %d to %d on %d devices (%d processes).',
                 config.model_name, start, config.total_steps,
                 jax.device_count(), jax.process_count())
    end = config.total_steps if stop_after is None else min(stop_after,
                                                            config.total_steps)
    t0, t_last, last_step = time.time(), time.time(), start
    history: list[dict] = []
    final: dict = {}
    prev_metrics = None
    for step in range(start, end):
      batch = to_global(next(it), data_sh, config.data.global_batch_size)
      state, metrics = train_step(state, batch)
      # Check the previous step's counter (no stall on the current step).
      if prev_metrics is not None:
        bad = int(prev_metrics['train/nonfinite_consecutive'])
        if bad >= config.max_consecutive_nonfinite:
          raise NonFiniteError(
              f'{bad} consecutive steps had a non-finite batch, loss or '
              f'gradient (up to step {step - 1}); none reached the parameters. '
              'Check the data and lower the learning rate.')
      prev_metrics = metrics
      done = step + 1
      if done % config.log_every == 0 or done == end:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.time()
        rate = (done - last_step) / max(now - t_last, 1e-9)
        host['train/steps_per_sec'] = rate
        eta = (end - done) / max(rate, 1e-9)
        writer.write_scalars(done, host)
        history.append(dict(host, step=done))
        logging.info('step %d/%d  loss %.4f  recon %.4f  usage %.3f  '
                     '%.2f steps/s  ETA %.0fs', done, end, host['train/loss'],
                     host['train/recon'], host.get('quant/usage', float('nan')),
                     rate, eta)
        t_last, last_step = now, done
      if done % config.eval_every == 0 or done == end:
        final, sample = evaluate(trainer, state, config, mesh,
                                 num_batches=config.num_eval_batches)
        writer.write_scalars(done, final)
        if sample is not None:
          writer.write_images(done, 'reconstructions',
                              metrics_lib.image_grid(*sample))
        logging.info('eval at %d: %s', done,
                     ', '.join(f'{k}={v:.4f}' for k, v in final.items()))
        if fid_note(config):
          logging.info('%s', fid_note(config))
      if done % config.checkpoint_every == 0 or done == end:
        ckpt_lib.save(mgr, done, state, it, force=True)
    mgr.wait_until_finished()
    mgr.close()
  writer.close()
  final['train_time_sec'] = time.time() - t0
  final['step'] = int(jax.device_get(state['step']))
  return final


def evaluate_workdir(workdir: str, *, use_ema: bool = True,
                     num_batches: int | None = -1) -> dict:
  """Evaluates the latest checkpoint of `workdir` on the validation split."""
  config = load_config(workdir)
  mesh = make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, state, _ = steps_lib.create(config, mesh)
    state, step = ckpt_lib.restore_state_only(workdir, state)
    results, sample = evaluate(trainer, state, config, mesh, use_ema=use_ema,
                               num_batches=num_batches)
  results['step'] = step
  note = fid_note(config)
  if note:
    results['note'] = note
  writer = metrics_lib.MetricWriter(workdir)
  if sample is not None:
    results['image_grid'] = writer.write_images(step, 'eval_reconstructions',
                                                metrics_lib.image_grid(*sample))
  writer.close()
  return results
