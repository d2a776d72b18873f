"""The EEG task: NeuroRVQ tokenizers on EEG windows (no discriminator).

State: the training core's (`training/core.py`), without a discriminator.

Batches: {'eeg': float32 [b, C, N*P], 'mask': bool [b, N]} from
`data.eeg.make_eeg_dataset`. Evaluation reports NMSE, Pearson, per-band power
and band-limited errors, code usage per branch and level, RVQ residual norms
per depth and the loss terms, and returns a plot of a window (original vs
reconstruction per channel) when matplotlib is installed.

Dimension legend: B batch; C channels; N patches per window; P patch size;
G branches; Q levels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from tokenizers_jax import config_lib
from tokenizers_jax.data import eeg as eeg_data
from tokenizers_jax.evaluators import eeg as eeg_metrics
from tokenizers_jax.losses import eeg as eeg_losses
from tokenizers_jax.models import registry
from tokenizers_jax.models.neurorvq import NeuroRVQ
from tokenizers_jax.training import core
from tokenizers_jax.training import tasks

# The model's loss terms and the per-term metrics of `losses/eeg.py`.
TERMS = ('amplitude', 'phase', 'signal', 'mse', 'phase_cos')


def validate_config(config) -> None:
  """Fails with a message naming the key for configs that cannot work."""
  req = config_lib.require
  config_lib.upgrade(config)
  tasks.check_model(config, 'eeg')
  d, m = config.data, config.model
  req(len(d.channels) > 0, 'data.channels', 'no channels')
  for ch in d.channels:
    try:
      eeg_data.electrode_index(ch)
    except ValueError as e:
      raise config_lib.ConfigError(f'config.data.channels: {e}') from None
  seg = d.dataset.get('segment_patches', eeg_data.EegConfig.segment_patches)
  req(d.num_patches >= 1 and seg % d.num_patches == 0, 'data.num_patches',
      f'{d.num_patches} must divide dataset.segment_patches={seg}')
  req(d.num_patches <= m.max_patches, 'data.num_patches',
      f'{d.num_patches} exceeds model.max_patches={m.max_patches}')
  req(m.patch_size % 8 == 0, 'model.patch_size', 'must be divisible by 8')
  req(m.patch_size == d.dataset.get('patch_size', eeg_data.PATCH_SIZE),
      'model.patch_size', 'must equal data.dataset.patch_size')
  req(m.embed_dim % m.num_heads == 0, 'model.embed_dim',
      f'{m.embed_dim} not divisible by num_heads={m.num_heads}')
  req(len(m.branches) >= 1, 'model.branches', 'need at least one branch')
  req(m.loss in eeg_losses.LOSSES, 'model.loss',
      f'must be one of {eeg_losses.LOSSES}')
  tasks.check_quantizer_name(config)
  tasks.check_batch_fits_mesh(config, ('global_batch_size', 'eval_batch_size'))
  req(0.0 <= config.ema_decay < 1.0, 'ema_decay', 'must be in [0, 1)')
  req(config.total_steps > 0, 'total_steps', 'must be positive')


build_model = registry.build_model


def create(config, mesh):
  """(trainer, state on the mesh, state shardings)."""
  return core.build_state(config, mesh, registry.build_model(config))


def train_step(trainer: core.Trainer, state: dict, batch: dict):
  """One update; a non-finite batch, loss or gradient skips it (counted)."""
  x, mask = batch['eeg'], batch['mask']

  def forward(params):
    model = trainer.merge_gen(params, state['gen']['rest'])
    out = model(x, train=True, mask=mask)
    loss = core.weighted_terms(jnp.zeros((), jnp.float32), out.terms,
                               trainer.weights)
    new_rest, fwd_params = core.model_state(model)
    return loss, out.reconstruction, dict(out=out, new_rest=new_rest,
                                          fwd_params=fwd_params)

  new_state, ok, aux, metrics = core.train_step(trainer, state, forward, x)
  out = aux['out']
  metrics.update({'train/recon': out.metrics['mse'],
                  **{f'train/{k}': v for k, v in out.terms.items()},
                  **{f'train/{k}': out.metrics[k] for k in TERMS}})
  qmetrics = {k: v for k, v in out.metrics.items() if k not in TERMS}
  return new_state, core.step_metrics(new_state, ok, metrics, qmetrics)


def dataset(config, train: bool, batch_size: int | None = None):
  d = config.data
  return eeg_data.make_eeg_dataset(
      d.source, train=train, channels=tuple(d.channels),
      num_patches=d.num_patches,
      global_batch_size=batch_size or (d.global_batch_size if train
                                       else d.eval_batch_size),
      seed=config.seed, data_dir=d.data_dir, dataset=dict(d.dataset),
      process_index=jax.process_index(), process_count=jax.process_count())


def train_iterator(config):
  return iter(dataset(config, train=True))


def level_codes(model: NeuroRVQ, indices: jax.Array) -> jax.Array:
  """[B, C, A, G, Q] -> per-level codes [B, G, C, A, Q, E]."""
  out = []
  for g, q in enumerate(model.quantizers):
    idx = indices[:, :, :, g]
    if hasattr(q, 'codes_per_level'):
      out.append(q.codes_per_level(idx))
    else:
      out.append(q.decode(idx[..., 0])[..., None, :])
  return jnp.stack(out, 1)


def evaluate(trainer, state, config, mesh, *, use_ema: bool = True,
             num_batches: int | None = None):
  """Metrics over the validation windows ('eval/...') and a plot or None."""
  bsz = config.data.eval_batch_size
  rep = NamedSharding(mesh, P())
  patch, sfreq = config.model.patch_size, eeg_data.SFREQ

  @jax.jit
  def step(state, batch):
    params = core.eval_params(state, config, use_ema)
    model = trainer.merge_gen(params, state['gen']['rest'])
    x, mask = batch['eeg'], batch['mask']
    out = model(x, train=False, mask=mask)
    x_hat, ids = out.reconstruction, out.quantizer.indices
    sums = eeg_metrics.reconstruction_sums(x, x_hat, mask, patch_size=patch,
                                           sfreq=sfreq)
    valid = jnp.sum(mask.astype(jnp.float32))
    terms = dict(out.terms, loss=core.weighted_terms(
        jnp.zeros((), jnp.float32), out.terms, trainer.weights))
    terms.update({k: out.metrics[k] for k in TERMS})
    for k, v in terms.items():
      sums[f'term/{k}'] = v * valid
    sums['valid_patches'] = valid
    counts = eeg_metrics.code_counts(ids, model.codebook_size, mask)
    res, tokens = eeg_metrics.residual_norm_sums(
        out.aux['z'], level_codes(model, ids), mask)
    sample = jax.lax.with_sharding_constraint((x[:1], x_hat[:1]), rep)
    return dict(sums, counts=counts, residual=res, tokens=tokens), sample

  totals, sample = None, None
  for batch in core.eval_batches(config, mesh, dataset(config, train=False),
                                 bsz, num_batches):
    sums, smp = step(state, batch)
    totals = core.add_sums(totals, sums)
    if sample is None:
      sample = tuple(np.asarray(jax.device_get(v))[0] for v in smp)
  if totals is None:
    raise ValueError('evaluation saw no EEG windows (empty validation split?)')
  counts, res = totals.pop('counts'), totals.pop('residual')
  results = eeg_metrics.finalize(totals, counts, res,
                                 float(totals.pop('tokens')))
  n = max(totals['valid_patches'], 1.0)
  for k, v in totals.items():
    if k.startswith('term/'):
      results[f'eval/{k[5:]}'] = float(v / n)
  picture = plot_window(*sample, list(config.data.channels), sfreq)
  return results, picture


def plot_window(x: np.ndarray, x_hat: np.ndarray | None, channels,
                sfreq: float):
  """uint8 [H, W, 3] plot of one window (original black, reconstruction
  red when given, one row per channel), or None without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  c = x.shape[0]
  fig, axes = plt.subplots(c, 1, figsize=(6, 1.0 * c + 0.5), sharex=True,
                           squeeze=False)
  t = np.arange(x.shape[-1]) / sfreq
  for i, ax in enumerate(axes[:, 0]):
    ax.plot(t, x[i], 'k', lw=0.7)
    if x_hat is not None:
      ax.plot(t, x_hat[i], 'r', lw=0.7)
    ax.set_ylabel(channels[i], fontsize=7)
  axes[-1, 0].set_xlabel('s')
  fig.tight_layout()
  fig.canvas.draw()
  img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return img


TASK = tasks.Task(
    name='eeg',
    headline=('train/mse', 'quant/usage'),
    validate_config=validate_config,
    create=create,
    train_step=train_step,
    train_iterator=train_iterator,
    evaluate=evaluate,
)
