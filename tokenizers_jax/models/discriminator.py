"""PatchGAN discriminator (`NLayerDiscriminator`) for VQGAN-style training.

The pix2pix/taming layout: a 4x4 stride-2 conv with LeakyReLU(0.2), then
`n_layers - 1` more 4x4 stride-2 convs and one 4x4 stride-1 conv, each
followed by a normalization and LeakyReLU(0.2), then a 4x4 stride-1 conv to one
logit per patch. Every conv pads by 1 on each side. Width doubles per layer,
capped at 8 * ndf. Convs feeding a BatchNorm have no bias. Initialization
follows the reference: conv kernels N(0, 0.02), norm scales N(1, 0.02), biases
zero.

Dimension legend:
  B: batch size
  H, W: image height and width
  h, w: patch-logit grid (H // 2**n_layers - 2, W // 2**n_layers - 2 for
    sizes divisible by 2**n_layers)
  C: image channels
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tokenizers_jax.frontends.image import group_count
from tokenizers_jax.nn import conv as conv_lib
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any

NORMS = ('batch', 'group', 'none')
STRIDED_CONVS = ('direct', 'space_to_depth')
LEAKY_SLOPE = 0.2


def _scale_init(key, shape, dtype=jnp.float32):
  """N(1, 0.02) init for normalization scales."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class NLayerDiscriminator(nnx.Module):
  """PatchGAN discriminator: [B, H, W, C] -> patch logits [B, h, w, 1]."""

  def __init__(self, *, in_channels: int = 3, ndf: int = 64,
               n_layers: int = 3, norm: str = 'batch', num_groups: int = 32,
               batch_norm_momentum: float = 0.9,
               strided_conv: str = 'direct',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the discriminator.

    Args:
      in_channels: image channels.
      ndf: width of the first conv layer.
      n_layers: number of stride-2 conv layers (the reference uses 3).
      norm: 'batch' (BatchNorm, running averages used when train=False),
        'group' (GroupNorm with `num_groups` clipped to a divisor) or 'none'.
      num_groups: GroupNorm groups when norm='group'.
      batch_norm_momentum: running-average decay (0.9 = PyTorch's 0.1).
      strided_conv: how the stride-2 convs are computed (same parameters,
        same function up to float rounding): 'direct' (the default) or
        'space_to_depth' (`nn.conv.space_to_depth_conv`, a stride-1 conv
        of the space-to-depth input, which XLA:CPU runs about twice as fast
        at 128² and up).
      dtype: compute dtype; the logits are returned in float32.
      param_dtype: parameter dtype.
      rngs: parameter RNGs.
    """
    if norm not in NORMS:
      raise ValueError(f'Unknown norm {norm!r}; expected one of {NORMS}.')
    if strided_conv not in STRIDED_CONVS:
      raise ValueError(f'Unknown strided_conv {strided_conv!r}; expected one '
                       f'of {STRIDED_CONVS}.')
    if n_layers < 1 or ndf < 1 or in_channels < 1:
      raise ValueError(
          f'n_layers ({n_layers}), ndf ({ndf}) and in_channels '
          f'({in_channels}) must be >= 1.')
    self.norm_kind = norm
    self.n_layers = n_layers
    self.in_channels = in_channels
    kernel_init = nnx.initializers.normal(0.02)
    conv_fn = (conv_lib.conv_general_dilated_s2d
               if strided_conv == 'space_to_depth'
               else conv_lib.conv_general_dilated)

    def conv(cin, cout, stride, use_bias):
      return nnx.Conv(
          cin, cout, (4, 4), strides=(stride, stride),
          padding=((1, 1), (1, 1)), use_bias=use_bias,
          kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype,
          rngs=rngs,
          # XLA:CPU's input gradient of a 4x4 conv on a <= 4x4 map is
          # pathologically slow; nn/conv.py computes that one case as a
          # matmul (the other layers are unchanged).
          conv_general_dilated=conv_fn,
          kernel_metadata=logical('conv_h', 'conv_w', 'embed_in', 'embed'),
          bias_metadata=logical('embed'))

    def normalization(channels):
      kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                scale_init=_scale_init, scale_metadata=logical('embed'),
                bias_metadata=logical('embed'))
      if norm == 'batch':
        return nnx.BatchNorm(channels, momentum=batch_norm_momentum,
                             epsilon=1e-5, **kw)
      if norm == 'group':
        return nnx.GroupNorm(channels,
                             num_groups=group_count(channels, num_groups),
                             epsilon=1e-5, **kw)
      return None

    use_bias = norm != 'batch'
    self.conv_in = conv(in_channels, ndf, 2, True)
    convs, norms = [], []
    width = ndf
    for n in range(1, n_layers + 1):
      out = ndf * min(2 ** n, 8)
      stride = 2 if n < n_layers else 1
      convs.append(conv(width, out, stride, use_bias))
      norms.append(normalization(out))
      width = out
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.conv_out = conv(width, 1, 1, True)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """Patch logits [B, h, w, 1] (float32) for images [B, H, W, C].

    Args:
      x: images in [-1, 1], NHWC.
      train: with norm='batch', normalize with batch statistics and update
        the running averages; otherwise use the running averages.
    """
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
          f'Discriminator input must be [B, H, W, {self.in_channels}], got '
          f'shape {tuple(x.shape)}.')
    h = nnx.leaky_relu(self.conv_in(x), LEAKY_SLOPE)
    for conv, norm in zip(self.convs, self.norms):
      h = conv(h)
      if self.norm_kind == 'batch':
        h = norm(h, use_running_average=not train)
      elif norm is not None:
        h = norm(h)
      h = nnx.leaky_relu(h, LEAKY_SLOPE)
    return self.conv_out(h).astype(jnp.float32)
