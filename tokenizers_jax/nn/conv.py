"""A 2D convolution whose input gradient XLA's CPU backend computes fast on
tiny feature maps.

XLA:CPU (jax 0.10) computes the input gradient of a stride-1 convolution
whose input is no larger than its kernel (the PatchGAN's 4x4 conv on a 4x4
map, e.g. at 32² images with three layers) through a pathological path: for
a [16, 4, 4, 256] input and a 4x4x256x512 kernel, 340-900 ms where the
forward pass takes 5 ms (experiments/profile_train_step.py). Here that
gradient is the equivalent full correlation of the padded output gradient
with the flipped kernel, written as patches and one matmul (13 ms); the
forward pass and the kernel gradient are XLA's own. Feature maps larger
than the kernel use the plain convolution, so other models compute exactly
what they did.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def needs_small_input_grad(x_shape, kernel_shape, strides) -> bool:
  """Whether the input gradient takes the patches path (NHWC x HWIO)."""
  return (tuple(strides) == (1, 1) and x_shape[1] <= kernel_shape[0]
          and x_shape[2] <= kernel_shape[1])


def _conv(x, kernel, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=_DIMS,
                                      precision=precision)


def _patches(x: Array, kh: int, kw: int, out_h: int, out_w: int) -> Array:
  """[B, out_h, out_w, kh, kw, C]: the kh x kw windows of x (stride 1)."""
  rows = [jnp.stack([x[:, i:i + out_h, j:j + out_w] for j in range(kw)], 3)
          for i in range(kh)]
  return jnp.stack(rows, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_small(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision)


def _conv_small_fwd(x, kernel, padding, precision):
  return _conv(x, kernel, padding, precision), (x, kernel)


def _conv_small_bwd(padding, precision, res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  (plo_h, phi_h), (plo_w, phi_w) = padding
  pads = ((kh - 1 - plo_h, kh - 1 - phi_h), (kw - 1 - plo_w, kw - 1 - phi_w))
  gp = jnp.pad(g, ((0, 0), *pads, (0, 0)))
  flipped = jnp.flip(kernel, (0, 1))  # [kh, kw, Ci, Co]
  dx = jnp.einsum('byxhwo,hwio->byxi',
                  _patches(gp, kh, kw, x.shape[1], x.shape[2]), flipped,
                  precision=precision)
  _, vjp_kernel = jax.vjp(lambda k: _conv(x, k, padding, precision), kernel)
  return dx.astype(x.dtype), vjp_kernel(g)[0]


_conv_small.defvjp(_conv_small_fwd, _conv_small_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`jax.lax.conv_general_dilated` (pass it as `nnx.Conv(...,
  conv_general_dilated=...)`), with the patches input gradient for a 2D
  NHWC stride-1 convolution whose input is no larger than its kernel and
  whose padding is at most kernel - 1."""
  plain = (lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  if (lhs.ndim == 4 and not isinstance(padding, str) and not kwargs.get(
      'preferred_element_type') and kwargs.get('out_sharding') is None
      and feature_group_count == 1
      and all(d is None or tuple(d) == (1, 1)
              for d in (lhs_dilation, rhs_dilation))
      and dimension_numbers == jax.lax.conv_dimension_numbers(
          lhs.shape, rhs.shape, _DIMS)
      and needs_small_input_grad(lhs.shape, rhs.shape, window_strides)):
    pad = tuple(tuple(int(v) for v in p) for p in padding)
    k = rhs.shape[:2]
    if all(0 <= v <= k[i] - 1 for i, p in enumerate(pad) for v in p):
      return _conv_small(lhs, rhs, pad, precision)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                      *plain, precision=precision, **kwargs)
