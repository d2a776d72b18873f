"""2D convolutions computed in forms XLA's CPU backend runs fast.

* `conv_general_dilated`: the plain convolution, except for the input
  gradient on tiny feature maps (below).
* `conv_general_dilated_s2d`: the same, plus stride-2 convolutions with an
  even kernel as a stride-1 convolution of the space-to-depth input.
* `upsample2x_conv3x3`: nearest-neighbour 2x upsampling followed by a 3x3
  'SAME' convolution, as four 2x2 convolutions of the low-resolution map.

The last two compute the same function as the direct form up to float
rounding (sums are reordered), so a model can switch between the forms with
the same parameters; models keep the direct forms by default so that
existing runs stay bitwise reproducible.

Tiny feature maps:

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


def _plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, kwargs) -> bool:
  """Whether a `jax.lax.conv_general_dilated` call is a plain 2D NHWC x HWIO
  convolution with explicit padding: undilated, ungrouped, no preferred
  element type or output sharding (the calls this module may rewrite)."""
  return (lhs.ndim == 4 and not isinstance(padding, str)
          and not kwargs.get('preferred_element_type')
          and kwargs.get('out_sharding') is None
          and feature_group_count == 1
          and all(d is None or tuple(d) == (1, 1)
                  for d in (lhs_dilation, rhs_dilation))
          and dimension_numbers == jax.lax.conv_dimension_numbers(
              lhs.shape, rhs.shape, _DIMS))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`jax.lax.conv_general_dilated` (pass it as `nnx.Conv(...,
  conv_general_dilated=...)`), with the patches input gradient for a 2D
  NHWC stride-1 convolution whose input is no larger than its kernel and
  whose padding is at most kernel - 1."""
  plain = (lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  if (_plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                  dimension_numbers, feature_group_count, kwargs)
      and needs_small_input_grad(lhs.shape, rhs.shape, window_strides)):
    pad = tuple(tuple(int(v) for v in p) for p in padding)
    k = rhs.shape[:2]
    if all(0 <= v <= k[i] - 1 for i, p in enumerate(pad) for v in p):
      return _conv_small(lhs, rhs, pad, precision)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                      *plain, precision=precision, **kwargs)


# -----------------------------------------------------------------------------
# Stride 2 as space-to-depth.
# -----------------------------------------------------------------------------


def s2d_applies(x_shape, kernel_shape, strides, padding) -> bool:
  """Whether `conv_general_dilated_s2d` takes the space-to-depth form: a 2D
  NHWC stride-2 conv with an even kernel and explicit padding that leaves
  even padded sizes."""
  if tuple(strides) != (2, 2) or isinstance(padding, str):
    return False
  for axis in (0, 1):
    lo, hi = (int(v) for v in padding[axis])
    if (kernel_shape[axis] % 2 or lo < 0 or hi < 0
        or (x_shape[axis + 1] + lo + hi) % 2):
      return False
  return True


def space_to_depth_conv(x: Array, kernel: Array, padding,
                        precision=None) -> Array:
  """A stride-2 NHWC x HWIO convolution with an even kernel [2a, 2b, Ci, Co]
  as a stride-1 [a, b, 4 Ci, Co] convolution of the space-to-depth padded
  input [B, (H + pad) / 2, (W + pad) / 2, 4 Ci].

  The same multiply-adds as the strided form; XLA:CPU runs strided
  convolutions (and their gradients) at a fraction of the stride-1 speed:
  the PatchGAN's 64 -> 128 conv at 128² fwd+bwd 55 -> 24 ms.
  """
  (plo_h, phi_h), (plo_w, phi_w) = padding
  b, h, w, ci = x.shape
  kh, kw, _, co = kernel.shape
  xp = jnp.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w), (0, 0)))
  hp, wp = (h + plo_h + phi_h) // 2, (w + plo_w + phi_w) // 2
  # [B, hp, 2, wp, 2, Ci] -> [B, hp, wp, (row phase, col phase, Ci)].
  xs = xp.reshape(b, hp, 2, wp, 2, ci).transpose(0, 1, 3, 2, 4, 5)
  xs = xs.reshape(b, hp, wp, 4 * ci)
  # Kernel tap (2i + p, 2j + q) -> tap (i, j), input slot (p, q, Ci).
  ks = kernel.reshape(kh // 2, 2, kw // 2, 2, ci, co)
  ks = ks.transpose(0, 2, 1, 3, 4, 5).reshape(kh // 2, kw // 2, 4 * ci, co)
  return jax.lax.conv_general_dilated(xs, ks, (1, 1), 'VALID',
                                      dimension_numbers=_DIMS,
                                      precision=precision)


def conv_general_dilated_s2d(lhs, rhs, window_strides, padding,
                             lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1,
                             precision=None, **kwargs):
  """`conv_general_dilated` with `space_to_depth_conv` for the stride-2
  convolutions it applies to (`_plain_nhwc` and `s2d_applies`); every other
  convolution as `conv_general_dilated`."""
  if (_plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                  dimension_numbers, feature_group_count, kwargs)
      and s2d_applies(lhs.shape, rhs.shape, window_strides, padding)):
    return space_to_depth_conv(lhs, rhs, padding, precision)
  return conv_general_dilated(lhs, rhs, window_strides, padding,
                              lhs_dilation, rhs_dilation, dimension_numbers,
                              feature_group_count, precision, **kwargs)


# -----------------------------------------------------------------------------
# Nearest 2x upsampling + 3x3 conv as sub-pixel convolutions.
# -----------------------------------------------------------------------------


def _phase_taps(kernel: Array, axis: int) -> tuple[Array, Array]:
  """Along `axis` of a 3-tap kernel, the 2-tap kernels of the two output
  phases of (nearest 2x upsampling, then the 3-tap 'SAME' correlation):
  even outputs 2i see input rows (i-1, i, i) -> taps (k0, k1 + k2) at
  (i-1, i); odd outputs 2i+1 see (i, i, i+1) -> (k0 + k1, k2) at (i, i+1)."""
  k0, k1, k2 = jnp.split(kernel, 3, axis=axis)
  return (jnp.concatenate([k0, k1 + k2], axis),
          jnp.concatenate([k0 + k1, k2], axis))


def upsample2x_conv3x3(x: Array, kernel: Array, precision=None) -> Array:
  """conv3x3_SAME(nearest_upsample_2x(x)) for NHWC x [B, H, W, Ci] and an
  HWIO kernel [3, 3, Ci, Co] -> [B, 2H, 2W, Co], without the upsampled map.

  Each of the four output phases (a, b) is a 2x2 stride-1 convolution of x
  with the taps `_phase_taps` folds, padded by (1 - a, a) rows and (1 - b, b)
  columns: 16 instead of 36 multiply-adds per output pixel and channel, and
  no 4x-sized input to keep for the backward pass. The phase kernels are
  summed in the kernel's dtype, then cast to x's.
  """
  if x.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[3]:
    raise ValueError(
        f'upsample2x_conv3x3 needs x [B, H, W, Ci] and a kernel [3, 3, Ci, '
        f'Co]; got {tuple(x.shape)} and {tuple(kernel.shape)}.')
  b, h, w, _ = x.shape
  rows = []
  for a, k_row in enumerate(_phase_taps(kernel, 0)):
    cols = []
    for c, k_phase in enumerate(_phase_taps(k_row, 1)):
      xp = jnp.pad(x, ((0, 0), (1 - a, a), (1 - c, c), (0, 0)))
      cols.append(jax.lax.conv_general_dilated(
          xp, k_phase.astype(x.dtype), (1, 1), 'VALID',
          dimension_numbers=_DIMS, precision=precision))
    rows.append(jnp.stack(cols, 3))  # [B, H, W, 2 (col phase), Co]
  # [B, H, 2 (row phase), W, 2, Co] -> [B, 2H, 2W, Co].
  return jnp.stack(rows, 2).reshape(b, 2 * h, 2 * w, kernel.shape[3])
