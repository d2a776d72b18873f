"""The image task's trainer: config checks, models, train and eval steps.

The state, optimizers, guarded commit and GAN alternation are the shared
training core's (`training/core.py`); this module adds what is the image
task's own: the PatchGAN, the pixel (L1/L2) and LPIPS losses, and the
perturbed-latent eval path. The state is core's, with the discriminator
(+ BatchNorm statistics) and, with LeCam, its anchors.

Dimension legend: B batch, H/W image size, h/w token grid.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from tokenizers_jax import config_lib
from tokenizers_jax.models import registry
from tokenizers_jax.models.discriminator import NLayerDiscriminator
from tokenizers_jax.quantizers import perturbation as perturb_lib
from tokenizers_jax.training import core
from tokenizers_jax.training import tasks

Array = jax.Array
_opt = core.opt


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
  config_lib.upgrade(config)
  cls = tasks.check_model(config, 'image')
  size = config.data.image_size
  if cls.one_dimensional:
    _validate_one_d(config, cls.token_count_key)
  else:
    fe = config.model.frontend
    factor = 2 ** (len(fe.ch_mult) - 1)
    req(size > 0 and size % factor == 0, 'data.image_size',
        f'{size} is not divisible by the downsampling factor {factor} '
        f'(2**(len(model.frontend.ch_mult)-1))')
    for r in _opt(fe, 'attn_resolutions', ()):
      req(r <= size and size % r == 0, 'model.frontend.attn_resolutions',
          f'{r} is not a feature-map size of a {size}px image')
  if getattr(cls, 'uses_config_quantizer', True):  # FQGAN: in config.model.
    _validate_quantizer(config)
  tasks.check_batch_fits_mesh(config)
  req(config.loss.recon in ('l1', 'l2'), 'loss.recon', "must be 'l1' or 'l2'")
  req(config.loss.gan_loss in ('hinge', 'vanilla', 'least_squares'),
      'loss.gan_loss', 'must be hinge, vanilla or least_squares')
  req(_opt(config.loss, 'g_loss') in (None, 'hinge', 'vanilla', 'least_squares'),
      'loss.g_loss', 'must be hinge, vanilla (non-saturating) or least_squares')
  req(_opt(config.loss, 'lecam_weight', 0.0) >= 0, 'loss.lecam_weight',
      'must be >= 0')
  req(_opt(config.model, 'frontend_name', 'taming') in ('taming', 'magvit2',
                                                       'maskgit'),
      'model.frontend_name', "must be 'taming', 'magvit2' or 'maskgit'")
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


def _validate_one_d(config, key: str) -> None:
  """1D tokenizers (TiTok, One-D-Piece, FlexTok): patch grid and tokens."""
  req = config_lib.require
  m = config.model
  size = config.data.image_size
  p = _opt(m, 'patch_size', 0)
  req(p > 0 and size > 0 and size % p == 0, 'model.patch_size',
      f'{p} does not divide data.image_size={size}')
  req(_opt(m, key, 0) >= 1, f'model.{key}', 'must be >= 1')
  req(_opt(m, 'width', 0) % _opt(m, 'num_heads', 1) == 0, 'model.width',
      f'{_opt(m, "width", 0)} is not divisible by model.num_heads')


# -----------------------------------------------------------------------------
# Models and the state.
# -----------------------------------------------------------------------------



def build_models(config, seed: int | None = None):
  """(tokenizer, discriminator) NNX modules on the host (no mesh needed)."""
  seed = config.seed if seed is None else seed
  gen = registry.build_model(config, seed)
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  disc = NLayerDiscriminator(in_channels=3, dtype=dtype, rngs=nnx.Rngs(seed + 1),
                             **dict(config.disc))
  return gen, disc


def create(config, mesh) -> tuple[core.Trainer, dict, dict]:
  """The trainer, the initial state on the mesh, and its shardings."""
  gen, disc = build_models(config)
  lpips = None
  if config.loss.perceptual_weight > 0:
    from tokenizers_jax.losses.perceptual import LPIPS  # pylint: disable=g-import-not-at-top
    lpips = LPIPS.from_files(config.loss.lpips_vgg_path, config.loss.lpips_lin_path)
  return core.build_state(config, mesh, gen, disc, extras={'lpips': lpips})


# -----------------------------------------------------------------------------
# Losses and steps.
# -----------------------------------------------------------------------------


def _recon_loss(kind: str, x: Array, x_hat: Array) -> Array:
  d = x_hat.astype(jnp.float32) - x.astype(jnp.float32)
  return jnp.mean(jnp.abs(d)) if kind == 'l1' else jnp.mean(d * d)


def train_step(trainer: core.Trainer, state: dict, batch: dict):
  """One generator update and one discriminator update on `batch`.

  Generator: recon_weight * L1/L2 [+ perceptual_weight * LPIPS] + the
  model's weighted terms, plus the GAN terms of `core.generator_grads`. A
  non-finite batch, loss or gradient leaves the state untouched (the step is
  skipped and counted).
  """
  cfg = trainer.config
  lc = cfg.loss
  x = batch['image']
  if cfg.mixed_precision:
    x = x.astype(jnp.bfloat16)
  step = state['step']
  model_rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), step)
  lpips = trainer.extras.get('lpips')

  def forward(params):
    gen = trainer.merge_gen(params, state['gen']['rest'])
    out = gen(x, train=True, step=step, rng=model_rng)
    x_hat = out.reconstruction
    rec = _recon_loss(lc.recon, x, x_hat)
    nll = lc.recon_weight * rec
    perceptual = jnp.zeros((), jnp.float32)
    if lpips is not None:
      perceptual = jnp.mean(lpips(x.astype(jnp.float32),
                                  x_hat.astype(jnp.float32)))
      nll = nll + lc.perceptual_weight * perceptual
    main = core.weighted_terms(nll, out.terms, trainer.weights)
    new_rest, fwd_params = core.model_state(gen)
    return main, x_hat, dict(out=out, rec=rec, perceptual=perceptual,
                             new_rest=new_rest, fwd_params=fwd_params)

  new_state, ok, aux, metrics = core.train_step(trainer, state, forward, x)
  out = aux['out']
  metrics.update({'train/recon': aux['rec'],
                  'train/perceptual': aux['perceptual'],
                  **{f'train/{k}': v for k, v in out.terms.items()}})
  return new_state, core.step_metrics(new_state, ok, metrics, out.metrics)


def eval_step(trainer: core.Trainer, state: dict, batch: dict, use_ema: bool = True,
              perturb: dict | None = None, key: Array | None = None):
  """Reconstructions and token indices (eval mode) for one batch.

  With `perturb` = dict(alpha, beta, delta) and a `key`, also returns the
  reconstructions decoded from perturbed latents (for pFID): a fraction beta
  of the images has each code replaced with probability alpha by one of its
  delta nearest codes. Returns (x_hat, indices) or (x_hat, indices, x_pert).
  """
  params = core.eval_params(state, trainer.config, use_ema)
  gen = trainer.merge_gen(params, state['gen']['rest'])
  x = batch['image']
  if trainer.config.mixed_precision:
    x = x.astype(jnp.bfloat16)
  out = gen(x, train=False)
  x_hat = jnp.clip(out.reconstruction.astype(jnp.float32), -1.0, 1.0)
  if perturb is None:
    return x_hat, out.quantizer.indices
  def hook(quantizer, out):
    # Small (test-sized) codebooks have fewer than delta other codes.
    delta = min(perturb['delta'], quantizer.codebook_size - 1)
    new, _ = perturb_lib.perturb_output(
        quantizer, out, key, alpha=perturb['alpha'], beta=perturb['beta'],
        delta=delta)
    return new.quantized

  x_pert = gen(x, train=False, quantizer_hook=hook).reconstruction
  return x_hat, out.quantizer.indices, jnp.clip(x_pert.astype(jnp.float32), -1.0, 1.0)
