"""The training core every task shares.

  trainer, state, shardings = core.build_state(config, mesh, model, disc,
                                               disc_apply=...)
  grads, out, adv = core.generator_grads(trainer, state, forward, x_real)
  params, opt, ema = core.generator_update(trainer, state, grads, fwd_params)
  disc = core.discriminator_update(trainer, state, x_real, x_fake)
  new_state = core.commit(state, proposed, ok)
  for batch in core.eval_batches(config, mesh, dataset, batch_size, n): ...

The train state is a plain pytree (dicts of arrays), so it shards, donates
and checkpoints like any JAX value:

  state = {
    'step': int32 [],
    'gen': {'params', 'rest'},       # nnx pure dicts of the tokenizer
    'gen_opt': optax state,          # over gen params
    'disc': {'params', 'rest'},      # discriminator(s), when the task has one
    'disc_opt': optax state,
    'ema': EMA of gen params ({} when config.ema_decay == 0),
    'rng': uint32 [2] key data,
    'nonfinite_consecutive', 'nonfinite_total': int32 [],
    'lecam': {'real', 'fake'}        # LeCam anchors, when lecam_weight > 0
  }

A task supplies only what is its own: the model's forward loss (its
reconstruction losses plus the model's weighted terms), the discriminator
and how to call it, the data and the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax import workdir as workdir_lib
from tokenizers_jax.losses import adversarial
from tokenizers_jax.training import optim
from tokenizers_jax.training.optim import make_optimizer, opt, path_str, under_prefix

Array = jax.Array


# -----------------------------------------------------------------------------
# Loss-term weights (models/base.py: the model reports, the task weighs).
# -----------------------------------------------------------------------------


def loss_weights(config, model) -> dict[str, float]:
  """term -> weight for every term `model.loss_terms` names: 'quantizer'
  from config.loss.quantizer_weight (default 1), the others from
  config.loss.weights; a term without a weight is a ConfigError."""
  loss = opt(config, 'loss')
  given = dict(opt(loss, 'weights') or {})
  weights = {'quantizer': float(opt(loss, 'quantizer_weight', 1.0)),
             **{k: float(v) for k, v in given.items()}}
  missing = [t for t in model.loss_terms if t not in weights]
  if missing:
    raise config_lib.ConfigError(
        f'config.loss.weights: {type(model).__name__} reports the loss terms '
        f'{list(model.loss_terms)}; no weight for {missing}')
  return {t: weights[t] for t in model.loss_terms}


def weighted_terms(total: Array, terms: dict[str, Array],
                   weights: dict[str, float]) -> Array:
  """total + sum_t weight_t * term_t, in the order of `weights`; terms the
  model did not report this call (e.g. train-only ones) are skipped."""
  for name, w in weights.items():
    if name in terms:
      total = total + w * terms[name]
  return total


# -----------------------------------------------------------------------------
# The trainer and the state.
# -----------------------------------------------------------------------------


def default_disc_apply(disc, x):
  """A single-logit discriminator with BatchNorm (the image PatchGAN)."""
  return [disc(x, train=True)], None


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Static pieces of a run: graph definitions, optimizers, loss weights.

  `disc_apply(disc, x) -> (list of logits, features or None)` calls the
  discriminator(s); `last_layer_path` locates the decoder's last weight in
  the generator's params (for the GAN's adaptive weight); `extras` holds
  task-specific static pieces (e.g. the LPIPS network).
  """
  config: ml_collections.ConfigDict
  gen_graph: Any
  gen_tx: optax.GradientTransformation
  weights: dict[str, float]
  disc_graph: Any = None
  disc_tx: optax.GradientTransformation | None = None
  disc_apply: Callable[..., tuple] = default_disc_apply
  last_layer_path: tuple = ()
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)

  def merge_gen(self, params, rest, copy=True):
    return nnx.merge(self.gen_graph, params, rest, copy=copy)

  def merge_disc(self, params, rest, copy=True):
    return nnx.merge(self.disc_graph, params, rest, copy=copy)

  @property
  def has_disc(self) -> bool:
    return self.disc_graph is not None


def split(module):
  """(graph, params pure dict, other variables pure dict)."""
  graph, params, rest = nnx.split(module, nnx.Param, ...)
  return graph, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _path_of(tree_root, target) -> tuple:
  for path, var in nnx.iter_graph(tree_root):
    if var is target:
      return tuple(path)
  raise ValueError('last layer not found in the model graph')


def get_path(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def init_from_workdir(workdir: str, params: dict, rest: dict,
                      new_prefixes: tuple[str, ...] = ()):
  """`params`/`rest` (pure dicts of a new model) with every leaf whose path
  and shape match the latest checkpoint of `workdir` replaced by its value.

  A parameter is looked up among the checkpoint's parameters (EMA when kept),
  then its non-parameter variables (so a weight that was `Frozen` there and
  trainable here is initialised from it). A parameter that is missing or has
  another shape is an error unless it lies under `new_prefixes` (the
  model's `init_from_new_params`); other variables load when path, shape and
  dtype match. Checkpoint parameters the model lacks are logged.
  """
  try:
    src_params, src_rest, step, used_ema = workdir_lib.read_generator(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.init_from: {e}') from None
  flat = lambda t: {path_str(p): v
                    for p, v in jax.tree_util.tree_leaves_with_path(t)}
  sp, sr = flat(src_params), flat(src_rest)
  problems, used = [], set()

  def take_param(path, leaf):
    p = path_str(path)
    src = sp.get(p, sr.get(p))
    if src is not None and tuple(src.shape) == tuple(leaf.shape):
      used.add(p)
      return np.asarray(src).astype(leaf.dtype)
    if not under_prefix(p, new_prefixes):
      problems.append(f'{p}: ' + ('not in the checkpoint' if src is None else
                                  f'shape {tuple(src.shape)} in the '
                                  f'checkpoint, {tuple(leaf.shape)} here'))
    return leaf

  def take_rest(path, leaf):
    src = sr.get(path_str(path))
    if (src is not None and tuple(src.shape) == tuple(leaf.shape)
        and str(src.dtype) == str(leaf.dtype)):
      return np.asarray(src)
    return leaf

  params = jax.tree_util.tree_map_with_path(take_param, params)
  if problems:
    raise ValueError(
        f'config.init_from={workdir} (step {step}): {len(problems)} '
        'parameter(s) cannot be initialised from it:\n  '
        + '\n  '.join(problems))
  rest = jax.tree_util.tree_map_with_path(take_rest, rest)
  unused = sorted(set(sp) - used)
  logging.info('init_from %s step %d (%s): %d parameters loaded%s', workdir,
               step, 'EMA' if used_ema else 'raw', len(used),
               f'; unused checkpoint parameters: {unused}' if unused else '')
  return params, rest


def init_disc_from_workdir(workdir: str, params: dict, rest: dict):
  """The discriminator's `params`/`rest` from `workdir`'s checkpoint when it
  has one of the same structure and shapes (a converted release's GAN, or a
  run being fine-tuned); otherwise unchanged, with the reason logged."""
  found = workdir_lib.read_discriminator(workdir)
  if found is None:
    logging.info('init_from %s: no discriminator in the checkpoint; the '
                 'discriminator starts from its initialisation', workdir)
    return params, rest
  src_params, src_rest, step = found
  shapes = lambda t: {path_str(p): tuple(np.shape(v)) for p, v in
                      jax.tree_util.tree_leaves_with_path(t)}
  want, have = shapes({'p': params, 'r': rest}), shapes(
      {'p': src_params, 'r': src_rest})
  if want != have:
    differ = sorted(set(want.items()) ^ set(have.items()))[:8]
    logging.warning('init_from %s step %d: its discriminator does not match '
                    'this one (e.g. %s); the discriminator starts from its '
                    'initialisation', workdir, step, differ)
    return params, rest
  flat = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(
      {'p': src_params, 'r': src_rest})}
  loaded = jax.tree_util.tree_map_with_path(
      lambda p, o: np.asarray(flat[path_str(p)]).astype(np.asarray(o).dtype),
      {'p': params, 'r': rest})
  logging.info('init_from %s step %d: discriminator loaded', workdir, step)
  return loaded['p'], loaded['r']


def build_state(config, mesh, gen: nnx.Module, disc: nnx.Module | None = None,
                *, disc_apply: Callable[..., tuple] = default_disc_apply,
                extras: dict[str, Any] | None = None):
  """(trainer, the initial state on the mesh, its shardings) for a
  generator and an optional discriminator (see the module docstring).

  Applies `config.init_from` (a workdir's generator weights, and its
  discriminator when it matches), shards every
  variable by its logical axis names and `config.sharding_rules`, creates
  the optimizer states under jit (sharded like their parameters).
  """
  last = getattr(gen, 'last_layer', None) if disc is not None else None
  last_path = _path_of(gen, last) if last is not None else ()
  gen_graph, gp, gr = split(gen)
  if opt(config, 'init_from'):
    gp, gr = init_from_workdir(config.init_from, gp, gr,
                               tuple(getattr(gen, 'init_from_new_params', ())))
  rules = tuple(tuple(r) for r in config.sharding_rules)

  def shardings_of(module):
    sh = lambda f: nnx.to_pure_dict(sharding_lib.state_shardings(
        nnx.state(module, f), mesh, rules))
    return {'params': sh(nnx.Param), 'rest': sh(nnx.Not(nnx.Param))}

  rep = NamedSharding(mesh, P())
  gen_sh = shardings_of(gen)
  ema = config.ema_decay > 0
  host = {
      'step': jnp.zeros((), jnp.int32),
      'gen': {'params': gp, 'rest': gr},
      # Separate buffers (donation must not see one buffer twice).
      'ema': jax.tree.map(np.array, gp) if ema else {},
      'rng': jax.random.key_data(jax.random.PRNGKey(config.seed + 2)),
      'nonfinite_consecutive': jnp.zeros((), jnp.int32),
      'nonfinite_total': jnp.zeros((), jnp.int32),
  }
  shardings = {'step': rep, 'gen': gen_sh,
               'ema': gen_sh['params'] if ema else {}, 'rng': rep,
               'nonfinite_consecutive': rep, 'nonfinite_total': rep}
  disc_graph = disc_tx = None
  if disc is not None:
    disc_graph, dp, dr = split(disc)
    if opt(config, 'init_from'):
      dp, dr = init_disc_from_workdir(config.init_from, dp, dr)
    host['disc'] = {'params': dp, 'rest': dr}
    shardings['disc'] = shardings_of(disc)
    disc_tx = make_optimizer(config.disc_optim, config.total_steps)
    if opt(config.loss, 'lecam_weight', 0.0):
      host['lecam'] = {'real': jnp.zeros((), jnp.float32),
                       'fake': jnp.zeros((), jnp.float32)}
      shardings['lecam'] = {'real': rep, 'fake': rep}
  trainer = Trainer(config=config, gen_graph=gen_graph,
                    gen_tx=make_optimizer(config.optim, config.total_steps),
                    weights=loss_weights(config, gen), disc_graph=disc_graph,
                    disc_tx=disc_tx, disc_apply=disc_apply,
                    last_layer_path=last_path, extras=dict(extras or {}))
  state = jax.device_put(host, shardings)

  def init_opt(tx, params, param_sh):
    # Each moment sharded like its parameter (FSDP shards optimizer state).
    out = optim.opt_state_shardings(jax.eval_shape(tx.init, params), params,
                              param_sh, mesh)
    return jax.jit(tx.init, out_shardings=out)(params)

  state['gen_opt'] = init_opt(trainer.gen_tx, state['gen']['params'],
                              gen_sh['params'])
  if disc is not None:
    state['disc_opt'] = init_opt(disc_tx, state['disc']['params'],
                                 shardings['disc']['params'])
  return trainer, state, jax.tree.map(lambda x: x.sharding, state)


# -----------------------------------------------------------------------------
# Updates and the guarded commit.
# -----------------------------------------------------------------------------


def ema_update(ema, params, decay: float):
  """EMA of parameter trees, e + (1 - decay)(p - e): the usual average,
  written so that a parameter equal to its EMA (a frozen one) keeps it
  exactly."""
  return jax.tree.map(
      lambda e, p: e + jnp.asarray(1 - decay, e.dtype) * (p - e), ema, params)


def model_state(model) -> tuple[dict, dict]:
  """(new non-param variables, forward-pass params without gradient) of a
  merged model after its forward pass. Quantizers may overwrite parameters
  in the forward pass (k-means init, dead-code restarts): updates apply on
  top of those values."""
  rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
  params = jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return rest, params


def generator_update(trainer: Trainer, state: dict, grads, fwd_params):
  """(new params, new optimizer state, new EMA) from gradients at the
  forward pass's params."""
  updates, opt_state = trainer.gen_tx.update(grads, state['gen_opt'],
                                             fwd_params)
  params = optax.apply_updates(fwd_params, updates)
  decay = trainer.config.ema_decay
  ema = ema_update(state['ema'], params, decay) if decay > 0 else {}
  return params, opt_state, ema


def all_finite(*values) -> Array:
  """True when every array (or pytree, by its global norm) is finite."""
  ok = jnp.ones((), bool)
  for v in values:
    if isinstance(v, (dict, list, tuple)):
      v = optax.tree.norm(v)
    ok = ok & jnp.all(jnp.isfinite(v))
  return ok


def tree_where(ok, new, old):
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def commit(state: dict, proposed: dict, ok: Array) -> dict:
  """The guarded commit: `state` updated with `proposed` (any subset of its
  entries) when `ok`; otherwise the state unchanged but for the step and
  the non-finite counters (the step is skipped and counted)."""
  step = state['step']
  new = dict(state, **proposed, step=step + 1,
             nonfinite_consecutive=jnp.zeros((), jnp.int32),
             nonfinite_total=state['nonfinite_total'])
  skipped = dict(state, step=step + 1,
                 nonfinite_consecutive=state['nonfinite_consecutive'] + 1,
                 nonfinite_total=state['nonfinite_total'] + 1)
  return tree_where(ok, new, skipped)


def step_metrics(new_state: dict, ok: Array, metrics: dict,
                 qmetrics: dict) -> dict:
  """The metrics every task logs: its own 'train/...' ones, the skip flag
  and counter, and the model's statistics under 'quant/'."""
  out = dict(metrics)
  out['train/skipped'] = 1 - ok.astype(jnp.int32)
  out['train/nonfinite_consecutive'] = new_state['nonfinite_consecutive']
  for k, v in qmetrics.items():
    out[f'quant/{k}'] = v
  return out


# -----------------------------------------------------------------------------
# The GAN alternation (images and audio).
# -----------------------------------------------------------------------------


def _mean(values):
  return values[0] if len(values) == 1 else sum(values) / len(values)


def gan_enabled(config) -> bool:
  """A discriminator is compiled only when it ever takes part."""
  return opt(config.loss, 'disc_start', config.total_steps) < config.total_steps


def generator_grads(trainer: Trainer, state: dict,
                    forward: Callable[[Any], tuple], x_real: Array):
  """Gradients of the generator objective at state['gen']['params'].

  `forward(params) -> (main_loss, x_hat, aux)`. With a discriminator that
  takes part (`gan_enabled`) the objective is
    main + w * mean_d g_loss(D_d(x_hat)) [+ gate * fm_weight * FM]
  where w = gate * disc_weight * (the adaptive weight when
  config.loss.adaptive_weight), gate = step >= disc_start, FM the feature
  matching loss of the discriminators' features (fm_weight > 0).

  The adaptive weight needs each loss's gradient at the decoder's last layer
  only: those two VJPs keep just the last-layer output of the gradient tree,
  so jit's dead-code elimination cuts them to the disc/loss backward plus one
  weight gradient. The full backward pass then runs once, on the weighted
  sum of the losses (the VJP is linear in its cotangent).

  Returns (grads, aux, adv) with adv = dict(total, g_adv, g_weight, fm).
  """
  cfg = trainer.config
  lc = cfg.loss
  one = jnp.ones((), jnp.float32)
  zero = jnp.zeros((), jnp.float32)
  gan = trainer.has_disc and gan_enabled(cfg)
  fm_weight = opt(lc, 'fm_weight', 0.0) if gan else 0.0

  def objective(params):
    main, x_hat, aux = forward(params)
    aux = dict(aux, x_hat=x_hat)
    if not gan:
      return (main,), aux
    disc = trainer.merge_disc(state['disc']['params'], state['disc']['rest'])
    g_loss_fn = adversarial.get_g_loss(opt(lc, 'g_loss') or lc.gan_loss)
    logits_fake, feats_fake = trainer.disc_apply(disc, x_hat)
    g_adv = _mean([g_loss_fn(l) for l in logits_fake])
    if not fm_weight:
      return (main, g_adv), aux
    from tokenizers_jax.losses import spectral  # pylint: disable=g-import-not-at-top
    _, feats_real = trainer.disc_apply(disc, x_real)
    return (main, g_adv, spectral.feature_matching(feats_real, feats_fake)), aux

  outs, vjp_fn, aux = jax.vjp(objective, state['gen']['params'], has_aux=True)
  if not gan:
    (grads,) = vjp_fn((one,))
    return grads, aux, dict(total=outs[0], g_adv=zero, g_weight=zero, fm=zero)
  gate = adversarial.disc_start_gate(state['step'], lc.disc_start)
  pad = (zero,) * (len(outs) - 2)
  if opt(lc, 'adaptive_weight', False):
    last_main = get_path(vjp_fn((one, zero) + pad)[0],
                         trainer.last_layer_path)
    last_adv = get_path(vjp_fn((zero, one) + pad)[0], trainer.last_layer_path)
    g_weight = adversarial.adaptive_generator_weight(last_main, last_adv,
                                                     lc.disc_weight)
  else:
    g_weight = jnp.asarray(lc.disc_weight, jnp.float32)
  g_weight = jax.lax.stop_gradient(g_weight * gate)
  cot = (one, g_weight.astype(jnp.float32))
  fm = zero
  if fm_weight:
    fm = outs[2]
    cot = cot + (jnp.asarray(gate * fm_weight, jnp.float32),)
  (grads,) = vjp_fn(cot)
  total = outs[0] + g_weight * outs[1]
  if fm_weight:
    total = total + gate * fm_weight * fm
  return grads, aux, dict(total=total, g_adv=outs[1], g_weight=g_weight,
                          fm=fm)


def discriminator_update(trainer: Trainer, state: dict, x_real: Array,
                         x_fake: Array) -> dict:
  """One discriminator step on real vs (detached) fake inputs.

  Loss: gate * (mean_d d_loss(D_d(x), D_d(x_fake)) [+ lecam_weight *
  LeCam]), two calls as taming does (BatchNorm statistics per call). Returns
  the proposed state entries ('disc', 'disc_opt', 'lecam' when kept) under
  'proposed' and the metrics' values.
  """
  lc = trainer.config.loss
  zero = jnp.zeros((), jnp.float32)
  if not (trainer.has_disc and gan_enabled(trainer.config)):
    return dict(proposed={}, loss=zero, grad_norm=zero, real=zero,
                fake=zero, lecam=zero)
  gate = adversarial.disc_start_gate(state['step'], lc.disc_start)
  d_loss_fn = adversarial.get_d_loss(lc.gan_loss)
  lecam_weight = opt(lc, 'lecam_weight', 0.0)
  x_fake = jax.lax.stop_gradient(x_fake).astype(x_real.dtype)

  def loss_fn(params):
    disc = trainer.merge_disc(params, state['disc']['rest'])
    real, _ = trainer.disc_apply(disc, x_real)
    fake, _ = trainer.disc_apply(disc, x_fake)
    loss = _mean([d_loss_fn(r, f) for r, f in zip(real, fake)])
    lecam = zero
    if lecam_weight:
      lecam = _mean([adversarial.lecam_regularizer(
          r, f, state['lecam']['real'], state['lecam']['fake'])
                     for r, f in zip(real, fake)])
      loss = loss + lecam_weight * lecam
    loss = gate * loss
    new_rest = nnx.to_pure_dict(nnx.state(disc, nnx.Not(nnx.Param)))
    return loss, (new_rest,
                  _mean([jnp.mean(r.astype(jnp.float32)) for r in real]),
                  _mean([jnp.mean(f.astype(jnp.float32)) for f in fake]),
                  lecam)

  (loss, (new_rest, real_mean, fake_mean, lecam)), grads = (
      jax.value_and_grad(loss_fn, has_aux=True)(state['disc']['params']))
  updates, new_opt = trainer.disc_tx.update(grads, state['disc_opt'],
                                            state['disc']['params'])
  proposed = {'disc': {'params': optax.apply_updates(state['disc']['params'],
                                                     updates),
                       'rest': new_rest},
              'disc_opt': new_opt}
  if lecam_weight:
    new_real, new_fake = adversarial.lecam_ema_update(
        state['lecam']['real'], state['lecam']['fake'], real_mean, fake_mean,
        decay=opt(lc, 'lecam_decay', 0.999))
    proposed['lecam'] = {'real': new_real, 'fake': new_fake}
  return dict(proposed=proposed, loss=loss, grad_norm=optax.tree.norm(grads),
              real=real_mean, fake=fake_mean, lecam=lecam)


def train_step(trainer: Trainer, state: dict, forward: Callable[[Any], tuple],
               x_real: Array):
  """The whole update of a task's step: generator gradients of
  `forward(params) -> (main_loss, x_hat, aux)` (with `aux['new_rest']` and
  `aux['fwd_params']` from `model_state`) plus the GAN terms when the
  trainer has a discriminator, the generator update and EMA, the
  discriminator update, and the guarded commit (skipped when the batch, a
  loss or a gradient is not finite).

  Returns (new_state, ok, aux, metrics) with the metrics every task shares:
  train/loss, train/grad_norm and, with a discriminator, the GAN's.
  """
  grads, aux, adv = generator_grads(trainer, state, forward, x_real)
  params, gen_opt, ema = generator_update(trainer, state, grads,
                                          aux['fwd_params'])
  disc = discriminator_update(trainer, state, x_real, aux['x_hat'])
  ok = all_finite(x_real, adv['total'], disc['loss'], grads,
                  disc['grad_norm'])
  new_state = commit(state, dict(
      gen={'params': params, 'rest': aux['new_rest']}, gen_opt=gen_opt,
      ema=ema, **disc['proposed']), ok)
  metrics = {'train/loss': adv['total'],
             'train/grad_norm': optax.tree.norm(grads)}
  if trainer.has_disc:
    metrics.update({
        'train/g_adv': adv['g_adv'], 'train/g_weight': adv['g_weight'],
        'train/feature_matching': adv['fm'], 'train/d_loss': disc['loss'],
        'train/logits_real': disc['real'], 'train/logits_fake': disc['fake'],
        'train/lecam': disc['lecam']})
  return new_state, ok, aux, metrics


# -----------------------------------------------------------------------------
# Evaluation.
# -----------------------------------------------------------------------------


def batch_sharding(mesh, config=None) -> NamedSharding:
  """The sharding of a batch's leading axis: the logical 'batch' axis of
  `config.sharding_rules` (default: the 'data' and 'fsdp' mesh axes)."""
  rules = tuple(tuple(r) for r in opt(config, 'sharding_rules', ()) or ())
  if any(r[0] == 'batch' for r in rules):
    return NamedSharding(mesh, sharding_lib.logical_to_mesh(('batch',), rules,
                                                            mesh))
  data_axes = tuple(a for a in ('data', 'fsdp') if a in mesh.axis_names)
  return NamedSharding(mesh, P(data_axes))


# XLA:CPU (jax 0.10) runs convolutions, reductions and elementwise ops as
# YNNPACK fusions by default. `config.xla_fast_cpu` compiles the train step
# with YNNPACK kept for dots and reductions only, so that convolutions run
# on XLA's own kernels: 1.3x (32², ch 64) to 2x (256² f16) faster train
# steps on a 2-core CPU (README, "Train step"), with other rounding in the last
# bits. A run is deterministic (and resumes bitwise) under either setting,
# not across the two.
FAST_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                    'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def train_compiler_options(config) -> dict | None:
  """The XLA compiler options of the train step: `FAST_CPU_OPTIONS` when
  `config.xla_fast_cpu` and the backend is the CPU, else None (XLA's
  defaults; the option has no meaning on GPU or TPU)."""
  if not opt(config, 'xla_fast_cpu', False):
    return None
  if jax.default_backend() != 'cpu':
    logging.info('config.xla_fast_cpu applies to the CPU backend only; '
                 'compiling for %s with XLA defaults.', jax.default_backend())
    return None
  return dict(FAST_CPU_OPTIONS)


def jit_train_step(config, fn: Callable, state_sh, batch_sh):
  """`fn(state, batch) -> (state, metrics)` jitted as training runs it:
  state in/out shardings, donated state, `train_compiler_options`."""
  return jax.jit(fn, in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, None), donate_argnums=0,
                 compiler_options=train_compiler_options(config))


def to_global(local_batch: dict, sharding: NamedSharding, global_batch: int):
  """A process-local batch of numpy arrays -> global jax.Arrays."""
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding, v, (global_batch,) + v.shape[1:])
  return out


def eval_batches(config, mesh, dataset: Iterable, batch_size: int,
                 num_batches: int | None = None):
  """Global batches of `dataset` (all of it when num_batches is None or
  negative)."""
  sharding = batch_sharding(mesh, config)
  for i, local in enumerate(dataset):
    if num_batches is not None and 0 <= num_batches <= i:
      break
    yield to_global(local, sharding, batch_size)


def add_sums(totals: dict | None, sums: dict) -> dict:
  """Named sums accumulated on the host in float64."""
  sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
  if totals is None:
    return sums
  return {k: totals[k] + sums[k] for k in totals}


def codebook_stats(counts: np.ndarray) -> dict[str, float]:
  """Usage (fraction of codes used) and perplexity per index position
  ([..., K] code counts), averaged over the leading positions."""
  counts = np.asarray(counts, np.float64)
  probs = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
  ent = -np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-30)),
                         0), -1)
  return {'eval/codebook_usage': float(np.mean((counts > 0).mean(-1))),
          'eval/perplexity': float(np.mean(np.exp(ent)))}


def eval_params(state: dict, config, use_ema: bool):
  """The generator params an evaluation uses (EMA when kept and asked)."""
  return (state['ema'] if use_ema and config.ema_decay > 0
          else state['gen']['params'])
