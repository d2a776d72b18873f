"""VQ-GAN tokenizer (taming-transformers design): front end + quantizer.

The image front end's encoder maps images to latents; a 1x1 conv projects
them to the quantizer's dimension (`embed_dim`), any quantizer from the
library quantizes them, a 1x1 conv projects back, and the decoder renders.

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
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import registry

Array = jax.Array


class VQGAN(nnx.Module):
  """Image tokenizer: `__call__(x, train) -> (x_hat, QuantizerOutput)`,
  `encode(x) -> indices [B, h, w(, G)]`, `decode(indices) -> images`."""

  def __init__(self, *, frontend: dict[str, Any], quantizer: dict[str, Any],
               embed_dim: int, image_size: int, dtype=jnp.float32,
               rngs: nnx.Rngs):
    fe_kwargs = dict(frontend)
    self.frontend = ImageFrontEnd(resolution=image_size, dtype=dtype,
                                  rngs=rngs, **fe_kwargs)
    z = self.frontend.z_channels
    meta = qbase.logical(None, None, 'embed', 'code_dim')
    self.quant_conv = nnx.Conv(z, embed_dim, (1, 1), dtype=dtype, rngs=rngs,
                               kernel_metadata=meta,
                               bias_metadata=qbase.logical('code_dim'))
    self.post_quant_conv = nnx.Conv(
        embed_dim, z, (1, 1), dtype=dtype, rngs=rngs,
        kernel_metadata=qbase.logical(None, None, 'code_dim', 'embed'),
        bias_metadata=qbase.logical('embed'))
    q_kwargs = dict(quantizer)
    name = q_kwargs.pop('name')
    self.quantizer = registry.make_quantizer(name, dim=embed_dim, rngs=rngs,
                                             **q_kwargs)
    self.embed_dim = embed_dim
    self.image_size = image_size

  @property
  def last_layer(self):
    return self.frontend.last_layer

  def encode_latents(self, x: Array, train: bool = False) -> Array:
    return self.quant_conv(self.frontend.encode(x, train=train))

  def decode_latents(self, zq: Array, train: bool = False) -> Array:
    return self.frontend.decode(self.post_quant_conv(zq), train=train)

  def __call__(self, x: Array, train: bool = False, *,
               quantizer_hook=None) -> tuple[Array, qbase.QuantizerOutput]:
    z = self.encode_latents(x, train=train)
    out = self.quantizer(z.astype(jnp.float32) if z.dtype == jnp.float16 else z,
                         train=train)
    zq = out.quantized
    if quantizer_hook is not None:
      zq = quantizer_hook(self.quantizer, out)
    return self.decode_latents(zq.astype(z.dtype), train=train), out

  def encode(self, x: Array) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> token indices [B, h, w(, G)]."""
    return self.quantizer.encode(self.encode_latents(x))

  def decode(self, indices: Array) -> Array:
    """Token indices -> images [B, H, W, 3]."""
    return self.decode_latents(self.quantizer.decode(indices))

  def token_shape(self, image_shape) -> tuple[int, ...]:
    latent = self.frontend.latent_shape(tuple(image_shape))
    return self.quantizer.index_shape(latent[:-1] + (self.embed_dim,))
