"""The EEG task: NeuroRVQ tokenizers on EEG windows (no discriminator).

State (the conventions of `tasks.py`):

  state = {'step', 'gen': {'params', 'rest'}, 'gen_opt', 'ema', 'rng',
           'nonfinite_consecutive', 'nonfinite_total'}

Batches: {'eeg': float32 [b, C, N*P], 'mask': bool [b, N]} from
`data.eeg.make_eeg_dataset`. Evaluation reports NMSE, Pearson, per-band power
and band-limited errors, code usage per branch and level, RVQ residual norms
per depth and the loss terms, and returns a plot of a window (original vs
reconstruction per channel) when matplotlib is installed.

Dimension legend: B batch; C channels; N patches per window; P patch size;
G branches; Q levels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.data import eeg as eeg_data
from tokenizers_jax.evaluators import eeg as eeg_metrics
from tokenizers_jax.losses import eeg as eeg_losses
from tokenizers_jax.models.neurorvq import NeuroRVQ
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import tasks
from tokenizers_jax.training.train import batch_sharding
from tokenizers_jax.training.train import to_global

TERMS = ('loss', 'code', 'amplitude', 'phase', 'signal', 'mse', 'phase_cos')


def validate_config(config) -> None:
  """Fails with a message naming the key for configs that cannot work."""
  req = config_lib.require
  req(config.model_name == 'neurorvq', 'model_name',
      f"the eeg task trains 'neurorvq'; got {config.model_name!r}")
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


def build_model(config, seed: int | None = None) -> NeuroRVQ:
  m = config.model
  return NeuroRVQ(
      channels=tuple(config.data.channels), patch_size=m.patch_size,
      max_patches=m.max_patches,
      branches=tuple(tuple(b) for b in m.branches),
      conv_channels=m.conv_channels, embed_dim=m.embed_dim, depth=m.depth,
      num_heads=m.num_heads, decoder_depth=m.decoder_depth,
      mlp_ratio=m.mlp_ratio, code_dim=m.code_dim,
      quantizer=dict(config.quantizer), loss=m.loss,
      dtype=jnp.bfloat16 if config.mixed_precision else jnp.float32,
      rngs=nnx.Rngs(config.seed if seed is None else seed))


@dataclasses.dataclass(frozen=True)
class Trainer:
  config: ml_collections.ConfigDict
  gen_graph: Any
  gen_tx: optax.GradientTransformation

  def merge_gen(self, params, rest, copy=True):
    return nnx.merge(self.gen_graph, params, rest, copy=copy)


def create(config, mesh):
  """(trainer, state on the mesh, state shardings)."""
  validate_config(config)
  model = build_model(config)
  split = steps_lib._split  # pylint: disable=protected-access
  graph, params, rest = split(model)
  trainer = Trainer(config, graph,
                    steps_lib.make_optimizer(config.optim, config.total_steps))
  rules = tuple(tuple(r) for r in config.sharding_rules)
  sh = lambda filt: nnx.to_pure_dict(sharding_lib.state_shardings(
      nnx.state(model, filt), mesh, rules))
  rep = NamedSharding(mesh, P())
  gen_sh = {'params': sh(nnx.Param), 'rest': sh(nnx.Not(nnx.Param))}
  ema = config.ema_decay > 0
  host = {'step': jnp.zeros((), jnp.int32),
          'gen': {'params': params, 'rest': rest},
          'ema': jax.tree.map(np.array, params) if ema else {},
          'rng': jax.random.key_data(jax.random.PRNGKey(config.seed + 2)),
          'nonfinite_consecutive': jnp.zeros((), jnp.int32),
          'nonfinite_total': jnp.zeros((), jnp.int32)}
  shardings = {'step': rep, 'gen': gen_sh,
               'ema': gen_sh['params'] if ema else {}, 'rng': rep,
               'nonfinite_consecutive': rep, 'nonfinite_total': rep}
  state = jax.device_put(host, shardings)
  state['gen_opt'] = jax.jit(trainer.gen_tx.init)(state['gen']['params'])
  return trainer, state, jax.tree.map(lambda x: x.sharding, state)


def train_step(trainer: Trainer, state: dict, batch: dict):
  """One update; a non-finite batch, loss or gradient skips it (counted)."""
  x, mask = batch['eeg'], batch['mask']

  def loss_fn(params):
    model = trainer.merge_gen(params, state['gen']['rest'])
    _, out, terms = model(x, train=True, mask=mask)
    new_rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
    fwd = jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return terms['loss'], (terms, out['quantizer'], new_rest, fwd)

  (loss, (terms, qouts, new_rest, fwd)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state['gen']['params'])
  updates, new_opt = trainer.gen_tx.update(grads, state['gen_opt'], fwd)
  new_params = optax.apply_updates(fwd, updates)
  decay = trainer.config.ema_decay
  new_ema = (tasks.ema_update(state['ema'], new_params, decay) if decay > 0
             else {})
  gnorm = optax.tree.norm(grads)
  ok = jnp.all(jnp.isfinite(x)) & jnp.isfinite(loss) & jnp.isfinite(gnorm)
  proposed = dict(state, step=state['step'] + 1,
                  gen={'params': new_params, 'rest': new_rest},
                  gen_opt=new_opt, ema=new_ema,
                  nonfinite_consecutive=jnp.zeros((), jnp.int32))
  skipped = dict(state, step=state['step'] + 1,
                 nonfinite_consecutive=state['nonfinite_consecutive'] + 1,
                 nonfinite_total=state['nonfinite_total'] + 1)
  new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), proposed, skipped)
  metrics = {f'train/{k}': terms[k] for k in TERMS}
  metrics['train/recon'] = terms['mse']
  metrics['train/grad_norm'] = gnorm
  metrics['train/skipped'] = 1 - ok.astype(jnp.int32)
  metrics['train/nonfinite_consecutive'] = new_state['nonfinite_consecutive']
  for key in ('usage', 'perplexity', 'dead_codes'):
    if key in qouts[0].metrics:
      metrics[f'quant/{key}'] = sum(o.metrics[key] for o in qouts) / len(qouts)
  return new_state, metrics


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
  use_ema = use_ema and config.ema_decay > 0
  sharding = batch_sharding(mesh)
  bsz = config.data.eval_batch_size
  rep = NamedSharding(mesh, P())
  patch, sfreq = config.model.patch_size, eeg_data.SFREQ

  @jax.jit
  def step(state, batch):
    params = state['ema'] if use_ema else state['gen']['params']
    model = trainer.merge_gen(params, state['gen']['rest'])
    x, mask = batch['eeg'], batch['mask']
    x_hat, out, terms = model(x, train=False, mask=mask)
    sums = eeg_metrics.reconstruction_sums(x, x_hat, mask, patch_size=patch,
                                           sfreq=sfreq)
    valid = jnp.sum(mask.astype(jnp.float32))
    for k in TERMS:
      sums[f'term/{k}'] = terms[k] * valid
    sums['valid_patches'] = valid
    counts = eeg_metrics.code_counts(out['indices'], model.codebook_size, mask)
    res, tokens = eeg_metrics.residual_norm_sums(
        out['z'], level_codes(model, out['indices']), mask)
    sample = jax.lax.with_sharding_constraint((x[:1], x_hat[:1]), rep)
    return sums, counts, res, tokens, sample

  totals, counts, res, tokens, sample = None, None, None, 0.0, None
  for i, local in enumerate(dataset(config, train=False)):
    if num_batches is not None and 0 <= num_batches <= i:
      break
    s, c, r, t, smp = step(state, to_global(local, sharding, bsz))
    s = {k: np.asarray(v, np.float64) for k, v in s.items()}
    totals = s if totals is None else {k: totals[k] + s[k] for k in s}
    counts = np.asarray(c) if counts is None else counts + np.asarray(c)
    res = np.asarray(r, np.float64) if res is None else res + np.asarray(r)
    tokens += float(t)
    if sample is None:
      sample = tuple(np.asarray(jax.device_get(v))[0] for v in smp)
  results = eeg_metrics.finalize(totals, counts, res, tokens)
  n = max(totals['valid_patches'], 1.0)
  for k in TERMS:
    results[f'eval/{k}'] = float(totals[f'term/{k}'] / n)
  picture = plot_window(*sample, list(config.data.channels), sfreq)
  return results, picture


def plot_window(x: np.ndarray, x_hat: np.ndarray, channels, sfreq: float):
  """uint8 [H, W, 3] plot of one window (original black, reconstruction
  red, one row per channel), or None without matplotlib."""
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
    validate_config=validate_config,
    create=create,
    train_step=train_step,
    train_iterator=train_iterator,
    evaluate=evaluate,
)
