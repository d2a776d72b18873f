"""2D-grid image tokenizer: front end + quantizer (VQ-GAN, LFQ-GAN, WeTok).

The image front end's encoder maps images to latents; a 1x1 conv projects
them to the quantizer's dimension (`embed_dim`), any quantizer from the
library quantizes them, a 1x1 conv projects back, and the decoder renders.

Front ends: 'taming' (VQ-GAN's conv ResNet with attention), 'magvit2'
(MAGVIT-v2's attention-free encoder/decoder with adaptive GroupNorm and
depth-to-space upsampling; `noise_concat=True` gives WeTok's generative
decoder) or 'maskgit' (MaskGIT's attention-free VQGAN,
`frontends/maskgit_vqgan.py`). Options every variant can use:
  quant_conv       the 1x1 convs to and from `embed_dim` around the quantizer
                   (default True; False: the quantizer sees the front end's
                   latent, as in MaskGIT's release).
  pre_quant_norm   GroupNorm without affine on the latent before the
                   quantizer (MAGVIT-v2 found it important for LFQ).
  entropy_anneal   (factor, steps): the quantizer's entropy-loss weight starts
                   at factor x its value and decays linearly to 1x at `steps`
                   (MAGVIT-v2's entropy annealing); the extra weight is added
                   as (m(step) - 1) * entropy_loss_weight * entropy.
  perturb          latent perturbation (Robust Latent Matters): in training,
                   a fraction beta of the samples has each code replaced with
                   probability alpha by one of its top-delta nearest codes;
                   beta is annealed from 1x at anneal_start to 0 at anneal_end.

Dimension legend:
  B: batch; H, W: image size; h, w: latent grid (H/f, W/f)
  Z: front-end latent channels; E: quantizer dimension (embed_dim)
  G: trailing index axis of multi-code quantizers
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.frontends.image import ImageFrontEnd
from tokenizers_jax.models import base as model_base
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import perturbation as perturb_lib
from tokenizers_jax.quantizers import registry

Array = jax.Array


def _make_frontend(name: str, **kwargs):
  if name == 'taming':
    return ImageFrontEnd(**kwargs)
  if name == 'magvit2':
    from tokenizers_jax.frontends.magvit2 import Magvit2FrontEnd  # pylint: disable=g-import-not-at-top
    return Magvit2FrontEnd(**kwargs)
  if name == 'maskgit':
    from tokenizers_jax.frontends.maskgit_vqgan import MaskgitFrontEnd  # pylint: disable=g-import-not-at-top
    return MaskgitFrontEnd(**kwargs)
  raise ValueError(f"unknown image front end {name!r}; known: 'taming', "
                   "'magvit2', 'maskgit'")


def entropy_anneal_multiplier(step: Array, factor: float, steps: int) -> Array:
  """factor at step 0, decaying linearly to 1 at `steps`, 1 afterwards."""
  if steps <= 0 or factor == 1.0:
    return jnp.ones((), jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
  return jnp.asarray(factor + (1.0 - factor) * frac, jnp.float32)


class VQGAN(nnx.Module):
  """Image tokenizer (the `models/base.py` contract):
  `__call__(x, train=, step=, rng=) -> ModelOutput` (terms: 'quantizer'),
  `encode(x) -> indices [B, h, w(, G)]`, `decode(indices) -> images`."""

  modality = 'image'
  one_dimensional = False
  loss_terms = ('quantizer',)

  def __init__(self, *, frontend: dict[str, Any], quantizer: dict[str, Any],
               embed_dim: int, image_size: int, frontend_name: str = 'taming',
               pre_quant_norm: bool = False,
               entropy_anneal: tuple[float, int] | None = None,
               perturb: dict[str, Any] | None = None,
               quant_conv: bool = True,
               dtype=jnp.float32, rngs: nnx.Rngs):
    fe_kwargs = dict(frontend)
    self.frontend = _make_frontend(frontend_name, resolution=image_size,
                                   dtype=dtype, rngs=rngs, **fe_kwargs)
    z = self.frontend.z_channels
    if quant_conv:
      meta = qbase.logical(None, None, 'embed', 'code_dim')
      self.quant_conv = nnx.Conv(z, embed_dim, (1, 1), dtype=dtype, rngs=rngs,
                                 kernel_metadata=meta,
                                 bias_metadata=qbase.logical('code_dim'))
      self.post_quant_conv = nnx.Conv(
          embed_dim, z, (1, 1), dtype=dtype, rngs=rngs,
          kernel_metadata=qbase.logical(None, None, 'code_dim', 'embed'),
          bias_metadata=qbase.logical('embed'))
    else:  # The quantizer sees the front end's latent (MaskGIT's VQGAN).
      if z != embed_dim:
        raise ValueError(f'quant_conv=False needs embed_dim ({embed_dim}) '
                         f'equal to the front end z_channels ({z})')
      self.quant_conv = self.post_quant_conv = None
    q_kwargs = dict(quantizer)
    name = q_kwargs.pop('name')
    self.quantizer = registry.make_quantizer(name, dim=embed_dim, rngs=rngs,
                                             **q_kwargs)
    self.pre_quant_norm = (
        nnx.GroupNorm(embed_dim, num_groups=1, use_bias=False, use_scale=False,
                      epsilon=1e-6, dtype=jnp.float32,
                      use_fast_variance=False, rngs=rngs)
        if pre_quant_norm else None)
    self.embed_dim = embed_dim
    self.image_size = image_size
    self.entropy_anneal = (
        tuple(entropy_anneal)
        if entropy_anneal and entropy_anneal[1] > 0 and entropy_anneal[0] != 1
        else None)
    self.perturb = perturb_lib.LatentPerturbation.from_config(perturb)

  @property
  def codebook_size(self) -> int:
    """Codes per index position (per level / factor / group)."""
    return self.quantizer.codebook_size

  @property
  def last_layer(self):
    return self.frontend.last_layer

  def encode_latents(self, x: Array, train: bool = False) -> Array:
    z = self.frontend.encode(x, train=train)
    if self.quant_conv is not None:
      z = self.quant_conv(z)
    if self.pre_quant_norm is not None:
      z = self.pre_quant_norm(z.astype(jnp.float32)).astype(z.dtype)
    return z

  def decode_latents(self, zq: Array, train: bool = False) -> Array:
    if self.post_quant_conv is not None:
      zq = self.post_quant_conv(zq)
    return self.frontend.decode(zq, train=train)

  def __call__(self, x: Array, train: bool = False, *, step=None, rng=None,
               quantizer_hook=None) -> model_base.ModelOutput:
    """Reconstruct `x`; `step` drives the schedules, `rng` the perturbation.

    `quantizer_hook(quantizer, out) -> quantized` may replace the quantized
    latent the decoder sees (e.g. perturbed codes for pFID).
    """
    z = self.encode_latents(x, train=train)
    out = self.quantizer(z.astype(jnp.float32) if z.dtype == jnp.float16 else z,
                         train=train)
    zq = out.quantized
    if train and self.entropy_anneal and step is not None:
      mult = entropy_anneal_multiplier(step, *self.entropy_anneal)
      extra = ((mult - 1.0) * getattr(self.quantizer, 'entropy_loss_weight', 0.0)
               * out.metrics.get('entropy', jnp.zeros((), jnp.float32)))
      out = out.replace(loss=out.loss + extra,
                        metrics=dict(out.metrics, entropy_weight_multiplier=mult))
    if train and self.perturb is not None and rng is not None:
      perturbed, info = self.perturb(self.quantizer, out, rng, step)
      zq = perturbed.quantized
      out = out.replace(metrics=dict(
          out.metrics, perturbed_samples=info['sample_fraction'],
          perturbed_codes=info['code_fraction']))
    if quantizer_hook is not None:
      zq = quantizer_hook(self.quantizer, out.replace(quantized=zq))
    return model_base.output(
        self.decode_latents(zq.astype(z.dtype), train=train), out)

  def encode(self, x: Array) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> token indices [B, h, w(, G)]."""
    return self.quantizer.encode(self.encode_latents(x))

  def decode(self, indices: Array) -> Array:
    """Token indices -> images [B, H, W, 3]."""
    return self.decode_latents(self.quantizer.decode(indices))

  def token_shape(self, image_shape) -> tuple[int, ...]:
    latent = self.frontend.latent_shape(tuple(image_shape))
    return self.quantizer.index_shape(latent[:-1] + (self.embed_dim,))
