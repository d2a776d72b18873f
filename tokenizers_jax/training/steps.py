"""Model construction, the train state, and the jit-compiled train/eval steps.

The train state is a plain pytree (dicts of arrays), so it shards, donates and
checkpoints like any JAX value:

  state = {
    'step': int32 [],
    'gen': {'params': ..., 'rest': ...},   # nnx pure dicts of the tokenizer
    'gen_opt': optax state,                # over gen params
    'disc': {'params': ..., 'rest': ...},  # discriminator (+ BatchNorm stats)
    'disc_opt': optax state,
    'ema': gen params EMA (or the params themselves when ema_decay == 0),
    'rng': uint32 [2] key data,
    'nonfinite_consecutive', 'nonfinite_total': int32 [],
  }

Dimension legend: B batch, H/W image size, h/w token grid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.losses import adversarial
from tokenizers_jax.models.discriminator import NLayerDiscriminator
from tokenizers_jax.models.vqgan import VQGAN
from tokenizers_jax.quantizers import perturbation as perturb_lib
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import tasks

Array = jax.Array


# -----------------------------------------------------------------------------
# Config validation (before any compilation).
# -----------------------------------------------------------------------------


def _validate_quantizer(config) -> None:
  req = config_lib.require
  req(config.model.embed_dim > 0, 'model.embed_dim', 'must be positive')
  tasks.check_quantizer_name(config)
  q = dict(config.quantizer)
  if 'dim' in q:
    req(q['dim'] == config.model.embed_dim, 'quantizer.dim',
        f'{q["dim"]} does not match model.embed_dim={config.model.embed_dim}'
        ' (remove quantizer.dim; it is set from model.embed_dim)')
  if q['name'] == 'fsq':
    req(len(q.get('levels', ())) > 0, 'quantizer.levels', 'FSQ needs levels')
  if q['name'] in ('lfq', 'bsq'):
    size_q = q.get('codebook_size', 0)
    req(size_q > 1 and size_q & (size_q - 1) == 0, 'quantizer.codebook_size',
        f'LFQ needs a power of two; got {size_q}')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails with a message naming the key for configs that cannot work."""
  req = config_lib.require
  req(config.model_name in MODELS, 'model_name',
      f'unknown model {config.model_name!r}; known: {sorted(MODELS)}')
  size = config.data.image_size
  if config.model_name in ONE_D_MODELS:
    _validate_one_d(config)
  else:
    fe = config.model.frontend
    factor = 2 ** (len(fe.ch_mult) - 1)
    req(size > 0 and size % factor == 0, 'data.image_size',
        f'{size} is not divisible by the downsampling factor {factor} '
        f'(2**(len(model.frontend.ch_mult)-1))')
    for r in _opt(fe, 'attn_resolutions', ()):
      req(r <= size and size % r == 0, 'model.frontend.attn_resolutions',
          f'{r} is not a feature-map size of a {size}px image')
  if config.model_name != 'fqgan':  # FQGAN's sub-codebooks live in config.model.
    _validate_quantizer(config)
  tasks.check_batch_fits_mesh(config)
  req(config.loss.recon in ('l1', 'l2'), 'loss.recon', "must be 'l1' or 'l2'")
  req(config.loss.gan_loss in ('hinge', 'vanilla', 'least_squares'),
      'loss.gan_loss', 'must be hinge, vanilla or least_squares')
  req(_opt(config.loss, 'g_loss') in (None, 'hinge', 'vanilla', 'least_squares'),
      'loss.g_loss', 'must be hinge, vanilla (non-saturating) or least_squares')
  req(_opt(config.loss, 'lecam_weight', 0.0) >= 0, 'loss.lecam_weight',
      'must be >= 0')
  req(_opt(config.model, 'frontend_name', 'taming') in ('taming', 'magvit2'),
      'model.frontend_name', "must be 'taming' or 'magvit2'")
  perturb = _opt(config.model, 'perturb')
  if perturb:
    for key in ('alpha', 'beta', 'delta'):
      req(key in perturb, f'model.perturb.{key}', 'missing')
    req(0 <= perturb['alpha'] <= 1 and 0 <= perturb['beta'] <= 1,
        'model.perturb', 'alpha and beta must lie in [0, 1]')
    req(perturb['delta'] >= 1, 'model.perturb.delta', 'must be >= 1')
    try:
      perturb_lib.LatentPerturbation.from_config(perturb)
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(f'config.model.perturb: {e}') from None
  if config.loss.perceptual_weight > 0:
    req(bool(config.loss.lpips_vgg_path) and bool(config.loss.lpips_lin_path),
        'loss.lpips_vgg_path',
        'perceptual_weight > 0 needs local LPIPS weight files '
        '(loss.lpips_vgg_path and loss.lpips_lin_path)')
  req(0.0 <= config.ema_decay < 1.0, 'ema_decay', 'must be in [0, 1)')
  req(config.total_steps > 0, 'total_steps', 'must be positive')


def _validate_one_d(config) -> None:
  """1D tokenizers (TiTok, One-D-Piece, FlexTok): patch grid and tokens."""
  req = config_lib.require
  m = config.model
  size = config.data.image_size
  p = _opt(m, 'patch_size', 0)
  req(p > 0 and size > 0 and size % p == 0, 'model.patch_size',
      f'{p} does not divide data.image_size={size}')
  key = 'num_registers' if config.model_name == 'flextok' else 'num_tokens'
  req(_opt(m, key, 0) >= 1, f'model.{key}', 'must be >= 1')
  req(_opt(m, 'width', 0) % _opt(m, 'num_heads', 1) == 0, 'model.width',
      f'{_opt(m, "width", 0)} is not divisible by model.num_heads')


# -----------------------------------------------------------------------------
# Models and optimizers.
# -----------------------------------------------------------------------------


def _opt(cfg, key, default=None):
  return cfg[key] if key in cfg else default


def _plain(v):
  return v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v


def _build_vqgan(config, rngs):
  """VQ-GAN and the other 2D-grid tokenizers (LFQ-GAN, WeTok): one class."""
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  m = config.model
  return VQGAN(frontend=dict(m.frontend),
               quantizer=dict(config.quantizer),
               embed_dim=m.embed_dim,
               image_size=config.data.image_size,
               frontend_name=_opt(m, 'frontend_name', 'taming'),
               pre_quant_norm=_opt(m, 'pre_quant_norm', False),
               entropy_anneal=_opt(m, 'entropy_anneal'),
               perturb=_plain(_opt(m, 'perturb')),
               dtype=dtype, rngs=rngs)


def _build_fqgan(config, rngs):
  from tokenizers_jax.models.fqgan import FQGAN  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  kwargs = {k: _plain(v) for k, v in config.model.items()}
  return FQGAN(image_size=config.data.image_size, dtype=dtype, rngs=rngs,
               **kwargs)


def _build_titok(config, rngs):
  """TiTok and One-D-Piece (`model.tail_drop`): one class."""
  from tokenizers_jax.models.titok import TiTok  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  kwargs = {k: _plain(v) for k, v in config.model.items()}
  return TiTok(image_size=config.data.image_size,
               quantizer=dict(config.quantizer), dtype=dtype, rngs=rngs,
               **kwargs)


def _build_flextok(config, rngs):
  from tokenizers_jax.models.flextok import FlexTok  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  kwargs = {k: _plain(v) for k, v in config.model.items()}
  if not (kwargs.get('repa') or {}).get('weight'):
    kwargs['repa'] = None  # weight 0: no REPA teacher or projector.
  return FlexTok(image_size=config.data.image_size,
                 quantizer=dict(config.quantizer), dtype=dtype, rngs=rngs,
                 **kwargs)


MODELS = {'vqgan': _build_vqgan, 'lfqgan': _build_vqgan, 'wetok': _build_vqgan,
          'fqgan': _build_fqgan, 'titok': _build_titok,
          'one_d_piece': _build_titok, 'flextok': _build_flextok}
# Models whose tokens are a 1D sequence [B, K] (no 2D front end).
ONE_D_MODELS = ('titok', 'one_d_piece', 'flextok')


def build_models(config, seed: int | None = None):
  """(tokenizer, discriminator) NNX modules on the host (no mesh needed)."""
  seed = config.seed if seed is None else seed
  gen = MODELS[config.model_name](config, nnx.Rngs(seed))
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  disc = NLayerDiscriminator(in_channels=3, dtype=dtype, rngs=nnx.Rngs(seed + 1),
                             **dict(config.disc))
  return gen, disc


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  lr = opt_cfg.lr
  warm = opt_cfg.warmup_steps
  if opt_cfg.schedule == 'cosine':
    sched = optax.warmup_cosine_decay_schedule(
        0.0 if warm else lr, lr, max(warm, 1) if warm else 1,
        max(total_steps, warm + 1), lr * opt_cfg.end_lr_factor)
  elif opt_cfg.schedule == 'constant':
    sched = (optax.linear_schedule(0.0, lr, warm) if warm else
             optax.constant_schedule(lr))
    if warm:
      sched = optax.join_schedules([sched, optax.constant_schedule(lr)], [warm])
  else:
    raise config_lib.ConfigError(f'config.optim.schedule: unknown {opt_cfg.schedule!r}')
  parts = []
  if opt_cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  parts.append(optax.adamw(sched, b1=opt_cfg.b1, b2=opt_cfg.b2,
                           weight_decay=opt_cfg.weight_decay))
  tx = optax.chain(*parts)
  frozen = tuple(_opt(opt_cfg, 'frozen', ()) or ())
  if not frozen:
    return tx
  # `optim.frozen`: parameters under these path prefixes get zero updates (no
  # weight decay, no optimizer state); clipping sees the trainable ones only.
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               lambda params: _frozen_labels(params, frozen))


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def _under(path: str, prefixes) -> bool:
  return any(path == p or path.startswith(p.rstrip('/') + '/')
             for p in prefixes)


def _frozen_labels(params, frozen: tuple[str, ...]):
  """'frozen' / 'train' per leaf; every prefix must name some parameter."""
  paths = [_path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  unused = [f for f in frozen if not any(_under(p, (f,)) for p in paths)]
  if unused:
    tops = sorted({p.split('/')[0] for p in paths})
    raise config_lib.ConfigError(
        f'config.optim.frozen: {unused} match no parameter path (prefixes '
        f'such as {tops}, nested with "/")')
  return jax.tree_util.tree_map_with_path(
      lambda p, _: 'frozen' if _under(_path_str(p), frozen) else 'train',
      params)


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
  from absl import logging  # pylint: disable=g-import-not-at-top
  src_params, src_rest, step, used_ema = ckpt_lib.read_generator(workdir)
  flat = lambda t: {_path_str(p): v
                    for p, v in jax.tree_util.tree_leaves_with_path(t)}
  sp, sr = flat(src_params), flat(src_rest)
  problems, used = [], set()

  def take_param(path, leaf):
    p = _path_str(path)
    src = sp.get(p, sr.get(p))
    if src is not None and tuple(src.shape) == tuple(leaf.shape):
      used.add(p)
      return np.asarray(src).astype(leaf.dtype)
    if not _under(p, new_prefixes):
      problems.append(f'{p}: ' + ('not in the checkpoint' if src is None else
                                  f'shape {tuple(src.shape)} in the '
                                  f'checkpoint, {tuple(leaf.shape)} here'))
    return leaf

  def take_rest(path, leaf):
    src = sr.get(_path_str(path))
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


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Static pieces of a run: graph definitions, optimizers, config."""
  config: ml_collections.ConfigDict
  gen_graph: Any
  disc_graph: Any
  gen_tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation
  lpips: Any
  last_layer_path: tuple

  def merge_gen(self, params, rest, copy=True):
    return nnx.merge(self.gen_graph, params, rest, copy=copy)

  def merge_disc(self, params, rest, copy=True):
    return nnx.merge(self.disc_graph, params, rest, copy=copy)


def _split(module):
  graph, params, rest = nnx.split(module, nnx.Param, ...)
  return graph, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _path_of(tree_root, target) -> tuple:
  for path, var in nnx.iter_graph(tree_root):
    if var is target:
      return tuple(path)
  raise ValueError('last layer not found in the model graph')


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def create(config, mesh) -> tuple[Trainer, dict, dict]:
  """Builds the trainer, the initial state on the mesh, and its shardings."""
  validate_config(config)
  gen, disc = build_models(config)
  lpips = None
  if config.loss.perceptual_weight > 0:
    from tokenizers_jax.losses.perceptual import LPIPS  # pylint: disable=g-import-not-at-top
    lpips = LPIPS.from_files(config.loss.lpips_vgg_path, config.loss.lpips_lin_path)
  last_path = _path_of(gen, gen.last_layer)
  gen_graph, gp, gr = _split(gen)
  if _opt(config, 'init_from'):
    gp, gr = init_from_workdir(config.init_from, gp, gr,
                               tuple(getattr(gen, 'init_from_new_params', ())))
  disc_graph, dp, dr = _split(disc)
  trainer = Trainer(config, gen_graph, disc_graph,
                    make_optimizer(config.optim, config.total_steps),
                    make_optimizer(config.disc_optim, config.total_steps),
                    lpips, last_path)
  rules = tuple(tuple(r) for r in config.sharding_rules)

  def sh(module, filt):
    return nnx.to_pure_dict(sharding_lib.state_shardings(
        nnx.state(module, filt), mesh, rules))

  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  gen_sh = {'params': sh(gen, nnx.Param), 'rest': sh(gen, nnx.Not(nnx.Param))}
  disc_sh = {'params': sh(disc, nnx.Param), 'rest': sh(disc, nnx.Not(nnx.Param))}
  host_state = {
      'step': jnp.zeros((), jnp.int32),
      'gen': {'params': gp, 'rest': gr},
      'disc': {'params': dp, 'rest': dr},
      # Separate buffers (donation must not see one buffer twice); empty
      # when EMA is off.
      'ema': (jax.tree.map(np.array, gp) if config.ema_decay > 0 else {}),
      'rng': jax.random.key_data(jax.random.PRNGKey(config.seed + 2)),
      'nonfinite_consecutive': jnp.zeros((), jnp.int32),
      'nonfinite_total': jnp.zeros((), jnp.int32),
  }
  if _opt(config.loss, 'lecam_weight', 0.0):
    host_state['lecam'] = {'real': jnp.zeros((), jnp.float32),
                           'fake': jnp.zeros((), jnp.float32)}
  shardings = {
      'step': replicated, 'gen': gen_sh, 'disc': disc_sh,
      'ema': gen_sh['params'] if config.ema_decay > 0 else {},
      'rng': replicated,
      'nonfinite_consecutive': replicated, 'nonfinite_total': replicated,
  }
  if 'lecam' in host_state:
    shardings['lecam'] = {'real': replicated, 'fake': replicated}
  state = jax.device_put(host_state, shardings)
  # Optimizer states: created under jit, sharded like their parameters.
  gen_opt = jax.jit(trainer.gen_tx.init)(state['gen']['params'])
  disc_opt = jax.jit(trainer.disc_tx.init)(state['disc']['params'])
  state['gen_opt'] = gen_opt
  state['disc_opt'] = disc_opt
  shardings = jax.tree.map(lambda x: x.sharding, state)
  return trainer, state, shardings


# -----------------------------------------------------------------------------
# Losses and steps.
# -----------------------------------------------------------------------------


def _recon_loss(kind: str, x: Array, x_hat: Array) -> Array:
  d = x_hat.astype(jnp.float32) - x.astype(jnp.float32)
  return jnp.mean(jnp.abs(d)) if kind == 'l1' else jnp.mean(d * d)


def _tree_where(ok, new, old):
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def _global_norm(tree) -> Array:
  return optax.tree.norm(tree)


def train_step(trainer: Trainer, state: dict, batch: dict):
  """One generator update and one discriminator update on `batch`.

  A non-finite batch, loss or gradient leaves the state untouched (the step is
  skipped and counted).
  """
  cfg = trainer.config
  lc = cfg.loss
  x = batch['image']
  if cfg.mixed_precision:
    x = x.astype(jnp.bfloat16)
  step = state['step']
  disc_factor = adversarial.disc_start_gate(step, lc.disc_start)
  g_loss_fn = adversarial.get_g_loss(_opt(lc, 'g_loss') or lc.gan_loss)
  d_loss_fn = adversarial.get_d_loss(lc.gan_loss)
  lecam_weight = _opt(lc, 'lecam_weight', 0.0)
  model_rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), step)

  # ---- generator: one forward, two backward passes (rec+quant, adversarial).
  def gen_forward(params):
    gen = trainer.merge_gen(params, state['gen']['rest'])
    # A model may add already-weighted losses: (x_hat, qout, extra_losses).
    x_hat, qout, *more = gen(x, train=True, step=step, rng=model_rng)
    extra = more[0] if more else {}
    rec = _recon_loss(lc.recon, x, x_hat)
    nll = lc.recon_weight * rec
    perceptual = jnp.zeros((), jnp.float32)
    if trainer.lpips is not None:
      perceptual = jnp.mean(trainer.lpips(x.astype(jnp.float32),
                                          x_hat.astype(jnp.float32)))
      nll = nll + lc.perceptual_weight * perceptual
    disc = trainer.merge_disc(state['disc']['params'], state['disc']['rest'])
    logits_fake = disc(x_hat, train=True)
    g_adv = g_loss_fn(logits_fake)
    main = nll + lc.quantizer_weight * qout.loss
    for v in extra.values():
      main = main + v
    new_rest = nnx.to_pure_dict(nnx.state(gen, nnx.Not(nnx.Param)))
    # Quantizers may overwrite parameters in the forward pass (k-means init,
    # dead-code restarts): updates apply on top of those values.
    fwd_params = jax.lax.stop_gradient(
        nnx.to_pure_dict(nnx.state(gen, nnx.Param)))
    aux = dict(x_hat=x_hat, rec=rec, perceptual=perceptual, qout=qout,
               new_rest=new_rest, nll=nll, fwd_params=fwd_params,
               extra=extra)
    return (main, g_adv), aux

  (main, g_adv), vjp_fn, aux = jax.vjp(gen_forward, state['gen']['params'],
                                       has_aux=True)
  # The adaptive weight needs each loss's gradient at the decoder's last layer
  # only: those two VJPs keep just the last-layer output of the gradient tree,
  # so jit's dead-code elimination cuts them to the disc/loss backward plus one
  # conv-weight gradient. The full backward pass then runs once, on the
  # weighted sum of the two losses (the VJP is linear in its cotangent).
  one = jnp.ones((), jnp.float32)
  zero = jnp.zeros((), jnp.float32)
  if lc.adaptive_weight:
    last_main = _get(vjp_fn((one, zero))[0], trainer.last_layer_path)
    last_adv = _get(vjp_fn((zero, one))[0], trainer.last_layer_path)
    g_weight = adversarial.adaptive_generator_weight(last_main, last_adv,
                                                     lc.disc_weight)
  else:
    g_weight = jnp.asarray(lc.disc_weight, jnp.float32)
  g_weight = jax.lax.stop_gradient(g_weight * disc_factor)
  (grads,) = vjp_fn((one, g_weight.astype(jnp.float32)))
  updates, new_gen_opt = trainer.gen_tx.update(grads, state['gen_opt'],
                                               aux['fwd_params'])
  new_gen_params = optax.apply_updates(aux['fwd_params'], updates)

  # ---- discriminator on real vs (detached) reconstructions.
  x_fake = jax.lax.stop_gradient(aux['x_hat'])

  def disc_loss(params):
    disc = trainer.merge_disc(params, state['disc']['rest'])
    # Two calls, as taming does: BatchNorm statistics per call.
    real = disc(x, train=True)
    fake = disc(x_fake.astype(x.dtype), train=True)
    loss = d_loss_fn(real, fake)
    lecam = jnp.zeros((), jnp.float32)
    if lecam_weight:
      lecam = adversarial.lecam_regularizer(
          real, fake, state['lecam']['real'], state['lecam']['fake'])
      loss = loss + lecam_weight * lecam
    loss = disc_factor * loss
    new_rest = nnx.to_pure_dict(nnx.state(disc, nnx.Not(nnx.Param)))
    return loss, (new_rest, jnp.mean(real.astype(jnp.float32)),
                  jnp.mean(fake.astype(jnp.float32)), lecam)

  (d_loss, (new_disc_rest, real_mean, fake_mean, lecam)), d_grads = (
      jax.value_and_grad(disc_loss, has_aux=True)(state['disc']['params']))
  d_updates, new_disc_opt = trainer.disc_tx.update(
      d_grads, state['disc_opt'], state['disc']['params'])
  new_disc_params = optax.apply_updates(state['disc']['params'], d_updates)

  decay = cfg.ema_decay
  if decay > 0:
    new_ema = tasks.ema_update(state['ema'], new_gen_params, decay)
  else:
    new_ema = {}

  total = main + g_weight * g_adv
  ok = (jnp.all(jnp.isfinite(x)) & jnp.isfinite(total) & jnp.isfinite(d_loss)
        & jnp.isfinite(_global_norm(grads)) & jnp.isfinite(_global_norm(d_grads)))
  proposed = {
      'step': step + 1,
      'gen': {'params': new_gen_params, 'rest': aux['new_rest']},
      'gen_opt': new_gen_opt,
      'disc': {'params': new_disc_params, 'rest': new_disc_rest},
      'disc_opt': new_disc_opt,
      'ema': new_ema,
      'rng': state['rng'],
      'nonfinite_consecutive': jnp.zeros((), jnp.int32),
      'nonfinite_total': state['nonfinite_total'],
  }
  if lecam_weight:
    new_real, new_fake = adversarial.lecam_ema_update(
        state['lecam']['real'], state['lecam']['fake'], real_mean, fake_mean,
        decay=_opt(lc, 'lecam_decay', 0.999))
    proposed['lecam'] = {'real': new_real, 'fake': new_fake}
  skipped = dict(state, step=step + 1,
                 nonfinite_consecutive=state['nonfinite_consecutive'] + 1,
                 nonfinite_total=state['nonfinite_total'] + 1)
  new_state = _tree_where(ok, proposed, skipped)

  qout = aux['qout']
  metrics = {
      'train/loss': total,
      'train/recon': aux['rec'],
      'train/perceptual': aux['perceptual'],
      'train/quantizer_loss': qout.loss,
      'train/g_adv': g_adv,
      'train/g_weight': g_weight,
      'train/d_loss': d_loss,
      'train/logits_real': real_mean,
      'train/logits_fake': fake_mean,
      'train/lecam': lecam,
      'train/grad_norm': _global_norm(grads),
      'train/skipped': 1 - ok.astype(jnp.int32),
      'train/nonfinite_consecutive': new_state['nonfinite_consecutive'],
  }
  for k, v in aux['extra'].items():
    metrics[f'train/{k}'] = v
  for k, v in qout.metrics.items():
    metrics[f'quant/{k}'] = v
  return new_state, metrics


def eval_step(trainer: Trainer, state: dict, batch: dict, use_ema: bool = True,
              perturb: dict | None = None, key: Array | None = None):
  """Reconstructions and token indices (eval mode) for one batch.

  With `perturb` = dict(alpha, beta, delta) and a `key`, also returns the
  reconstructions decoded from perturbed latents (for pFID): a fraction beta
  of the images has each code replaced with probability alpha by one of its
  delta nearest codes. Returns (x_hat, indices) or (x_hat, indices, x_pert).
  """
  use_ema = use_ema and trainer.config.ema_decay > 0
  params = state['ema'] if use_ema else state['gen']['params']
  gen = trainer.merge_gen(params, state['gen']['rest'])
  x = batch['image']
  if trainer.config.mixed_precision:
    x = x.astype(jnp.bfloat16)
  x_hat, qout = gen(x, train=False)[:2]
  x_hat = jnp.clip(x_hat.astype(jnp.float32), -1.0, 1.0)
  if perturb is None:
    return x_hat, qout.indices
  from tokenizers_jax.quantizers import perturbation as perturb_lib  # pylint: disable=g-import-not-at-top

  def hook(quantizer, out):
    # Small (test-sized) codebooks have fewer than delta other codes.
    delta = min(perturb['delta'], quantizer.codebook_size - 1)
    new, _ = perturb_lib.perturb_output(
        quantizer, out, key, alpha=perturb['alpha'], beta=perturb['beta'],
        delta=delta)
    return new.quantized

  x_pert = gen(x, train=False, quantizer_hook=hook)[0]
  return x_hat, qout.indices, jnp.clip(x_pert.astype(jnp.float32), -1.0, 1.0)
