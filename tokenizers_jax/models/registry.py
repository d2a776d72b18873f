"""One registry of tokenizer models: `config.model_name` -> builder.

  model = registry.build_model(config)          # nnx.Module, host arrays
  cls = registry.model_class('titok')           # for static attributes

A builder takes the run's config and an `nnx.Rngs` and returns a model that
keeps the contract of `models/base.py`. Registering a new model is one entry
in `MODELS` (and, for a new modality, a task in `training/tasks.py`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from flax import nnx
import jax.numpy as jnp
import ml_collections


def _opt(cfg, key, default=None):
  return cfg[key] if key in cfg else default


def _plain(v):
  return v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v


def _dtype(config):
  return jnp.bfloat16 if config.mixed_precision else jnp.float32


def _model_kwargs(config) -> dict[str, Any]:
  return {k: _plain(v) for k, v in config.model.items()}


def _build_vqgan(config, rngs):
  """VQ-GAN and the other 2D-grid tokenizers (LFQ-GAN, WeTok): one class."""
  from tokenizers_jax.models.vqgan import VQGAN  # pylint: disable=g-import-not-at-top
  m = config.model
  return VQGAN(frontend=dict(m.frontend),
               quantizer=dict(config.quantizer),
               embed_dim=m.embed_dim,
               image_size=config.data.image_size,
               frontend_name=_opt(m, 'frontend_name', 'taming'),
               pre_quant_norm=_opt(m, 'pre_quant_norm', False),
               entropy_anneal=_opt(m, 'entropy_anneal'),
               perturb=_plain(_opt(m, 'perturb')),
               quant_conv=_opt(m, 'quant_conv', True),
               dtype=_dtype(config), rngs=rngs)


def _build_fqgan(config, rngs):
  from tokenizers_jax.models.fqgan import FQGAN  # pylint: disable=g-import-not-at-top
  return FQGAN(image_size=config.data.image_size, dtype=_dtype(config),
               rngs=rngs, **_model_kwargs(config))


def _build_titok(config, rngs):
  """TiTok and One-D-Piece (`model.tail_drop`): one class."""
  from tokenizers_jax.models.titok import TiTok  # pylint: disable=g-import-not-at-top
  return TiTok(image_size=config.data.image_size,
               quantizer=dict(config.quantizer), dtype=_dtype(config),
               rngs=rngs, **_model_kwargs(config))


def _build_flextok(config, rngs):
  from tokenizers_jax.models.flextok import FlexTok  # pylint: disable=g-import-not-at-top
  kwargs = _model_kwargs(config)
  weights = _opt(config.loss, 'weights') or {}
  if not _opt(weights, 'repa', 0.0):
    kwargs['repa'] = None  # weight 0: no REPA teacher or projector.
  return FlexTok(image_size=config.data.image_size,
                 quantizer=dict(config.quantizer), dtype=_dtype(config),
                 rngs=rngs, **kwargs)


def _build_audio_codec(config, rngs):
  from tokenizers_jax.models.audio_codec import AudioCodec  # pylint: disable=g-import-not-at-top
  return AudioCodec(frontend=_plain(config.model.frontend),
                    quantizer=_plain(config.quantizer),
                    sample_rate=config.data.sample_rate, dtype=_dtype(config),
                    rngs=rngs)


def _build_neurorvq(config, rngs):
  from tokenizers_jax.models.neurorvq import NeuroRVQ  # pylint: disable=g-import-not-at-top
  m = config.model
  return NeuroRVQ(
      channels=tuple(config.data.channels), patch_size=m.patch_size,
      max_patches=m.max_patches,
      branches=tuple(tuple(b) for b in m.branches),
      conv_channels=m.conv_channels, embed_dim=m.embed_dim, depth=m.depth,
      num_heads=m.num_heads, decoder_depth=m.decoder_depth,
      mlp_ratio=m.mlp_ratio, code_dim=m.code_dim,
      quantizer=dict(config.quantizer), loss=m.loss, dtype=_dtype(config),
      rngs=rngs, **_neurorvq_release_options(m))


def _neurorvq_release_options(m) -> dict:
  """The converted-release options (models/neurorvq.py RELEASE_OPTIONS) that
  config.model sets; absent ones keep the model's defaults."""
  from tokenizers_jax.models.neurorvq import RELEASE_OPTIONS  # pylint: disable=g-import-not-at-top
  out = {k: m[k] for k in RELEASE_OPTIONS if k in m and m[k] is not None}
  if 'electrodes' in out:
    out['electrodes'] = tuple(out['electrodes'])
  return out


def _build_token_generator(config, rngs):
  """MaskGIT and the autoregressive transformer (config.task='tokens'):
  the token layout comes from config.tokens (the pretokenized manifest)."""
  from tokenizers_jax.models.autoregressive import AutoregressiveTransformer  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models.maskgit import MaskGIT  # pylint: disable=g-import-not-at-top
  cls = MaskGIT if config.model_name == 'maskgit' else AutoregressiveTransformer
  t = config.tokens
  return cls(codebook_size=t.codebook_size, token_shape=tuple(t.token_shape),
             num_levels=t.num_levels, num_classes=t.num_classes,
             dtype=_dtype(config), rngs=rngs, **_model_kwargs(config))


# model_name -> (builder, 'module:Class' of the model, for static attributes).
MODELS: dict[str, tuple[Callable[..., nnx.Module], str]] = {
    'vqgan': (_build_vqgan, 'vqgan:VQGAN'),
    'lfqgan': (_build_vqgan, 'vqgan:VQGAN'),
    'wetok': (_build_vqgan, 'vqgan:VQGAN'),
    'fqgan': (_build_fqgan, 'fqgan:FQGAN'),
    'titok': (_build_titok, 'titok:TiTok'),
    'one_d_piece': (_build_titok, 'titok:TiTok'),
    'flextok': (_build_flextok, 'flextok:FlexTok'),
    'audio_codec': (_build_audio_codec, 'audio_codec:AudioCodec'),
    'neurorvq': (_build_neurorvq, 'neurorvq:NeuroRVQ'),
    'maskgit': (_build_token_generator, 'maskgit:MaskGIT'),
    'ar': (_build_token_generator, 'autoregressive:AutoregressiveTransformer'),
}


def _entry(name: str):
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; known: {sorted(MODELS)}')
  return MODELS[name]


def model_class(name: str) -> type:
  """The model class registered as `name` (its static attributes: modality,
  one_dimensional)."""
  module, cls = _entry(name)[1].split(':')
  return getattr(importlib.import_module(f'tokenizers_jax.models.{module}'),
                 cls)


def build_model(config, seed: int | None = None) -> nnx.Module:
  """The tokenizer of `config.model_name`, initialised from `seed`
  (default config.seed)."""
  builder = _entry(config.model_name)[0]
  return builder(config, nnx.Rngs(config.seed if seed is None else seed))
