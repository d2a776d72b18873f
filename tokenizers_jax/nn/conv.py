"""A 2D convolution whose input gradient XLA's CPU backend computes fast on
tiny feature maps.

XLA:CPU (jax 0.10) computes the input gradient of a stride-1 convolution
whose input is no larger than its kernel (the PatchGAN's 4x4 conv on a 4x4
map, e.g. at 32² images with three layers) through a pathological path: for
a [16, 4, 4, 256] input and a 4x4x256x512 kernel, 340-900 ms where the
forward pass takes 5 ms (experiments/profile_train_step.py). Here that
gradient is the equivalent full correlation of the padded output gradient
with the flipped kernel, written as patches and one matmul (13 ms); the
forward pass and the kernel gradient are XLA's own.

XLA:CPU's *kernel* gradient of a wide stride-1 convolution runs far below
its forward pass (2x128²x256 under a 3x3 kernel: 1.56 s against 0.5 s as
nine matmuls). For wide layers (`needs_gemm_kernel_grad`: both channel
counts >= 128 over >= 16384 output positions, or >= 256 over >= 2048) the
kernel gradient is the kh*kw matmuls g^T @ shift_ij(x), each [Co, N] x
[N, Ci] with N = B*Ho*Wo (equal to XLA's within float32 rounding; the
forward pass and the input gradient are XLA's own). Narrower layers, the
tiny configs among them, compute exactly what XLA does.
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


def needs_gemm_kernel_grad(x_shape, kernel_shape, strides, padding) -> bool:
  """Whether the kernel gradient takes the matmul path (NHWC x HWIO)."""
  kh, kw, ci, co = kernel_shape
  if tuple(strides) != (1, 1) or kh * kw == 1:
    return False
  (plo_h, phi_h), (plo_w, phi_w) = padding
  n = (x_shape[0] * (x_shape[1] + plo_h + phi_h - kh + 1)
       * (x_shape[2] + plo_w + phi_w - kw + 1))
  narrow = min(ci, co)
  return (narrow >= 128 and n >= 16384) or (narrow >= 256 and n >= 2048)


def gemm_kernel_grad(x, g, kernel_shape, padding, precision=None):
  """d(sum(g * conv(x, k)))/dk as kh*kw matmuls of the output gradient with
  the shifted inputs (stride 1, explicit non-negative padding)."""
  kh, kw, ci, co = kernel_shape
  ho, wo = g.shape[1:3]
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  gt = g.reshape(-1, co).T  # [Co, N]
  taps = [jnp.matmul(gt, xp[:, i:i + ho, j:j + wo].reshape(-1, ci),
                     precision=precision, preferred_element_type=jnp.float32)
          for i in range(kh) for j in range(kw)]  # each [Co, Ci]
  return jnp.stack(taps).reshape(kh, kw, co, ci).transpose(0, 1, 3, 2)


def _conv(x, kernel, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=_DIMS,
                                      precision=precision)


def _patches(x: Array, kh: int, kw: int, out_h: int, out_w: int) -> Array:
  """[B, out_h, out_w, kh, kw, C]: the kh x kw windows of x (stride 1)."""
  rows = [jnp.stack([x[:, i:i + out_h, j:j + out_w] for j in range(kw)], 3)
          for i in range(kh)]
  return jnp.stack(rows, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_fast_grad(x, kernel, padding, precision, path):
  """XLA's convolution; its backward pass by `path`: 'small' (patches input
  gradient) or 'wide' (matmul kernel gradient)."""
  del path
  return _conv(x, kernel, padding, precision)


def _conv_fast_grad_fwd(x, kernel, padding, precision, path):
  del path
  return _conv(x, kernel, padding, precision), (x, kernel)


def _small_input_grad(x, kernel, padding, precision, g):
  kh, kw = kernel.shape[:2]
  (plo_h, phi_h), (plo_w, phi_w) = padding
  pads = ((kh - 1 - plo_h, kh - 1 - phi_h), (kw - 1 - plo_w, kw - 1 - phi_w))
  gp = jnp.pad(g, ((0, 0), *pads, (0, 0)))
  flipped = jnp.flip(kernel, (0, 1))  # [kh, kw, Ci, Co]
  return jnp.einsum('byxhwo,hwio->byxi',
                    _patches(gp, kh, kw, x.shape[1], x.shape[2]), flipped,
                    precision=precision)


def _conv_fast_grad_bwd(padding, precision, path, res, g):
  x, kernel = res
  if path == 'small':
    dx = _small_input_grad(x, kernel, padding, precision, g)
    _, vjp_kernel = jax.vjp(lambda k: _conv(x, k, padding, precision), kernel)
    dk = vjp_kernel(g)[0]
  else:
    _, vjp_x = jax.vjp(lambda v: _conv(v, kernel, padding, precision), x)
    dx = vjp_x(g)[0]
    dk = gemm_kernel_grad(x, g, kernel.shape, padding, precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_fast_grad.defvjp(_conv_fast_grad_fwd, _conv_fast_grad_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`jax.lax.conv_general_dilated` (pass it as `nnx.Conv(...,
  conv_general_dilated=...)`); for a 2D NHWC stride-1 convolution, the
  patches input gradient when its input is no larger than its kernel (and
  its padding at most kernel - 1), the matmul kernel gradient when it is
  wide (`needs_gemm_kernel_grad`). Everything else is XLA's own."""
  plain = (lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  if (lhs.ndim == 4 and rhs.ndim == 4 and isinstance(padding, str)
      and padding in ('SAME', 'VALID') and tuple(window_strides) == (1, 1)):
    explicit = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1),
                                       padding)
  else:
    explicit = padding
  if (lhs.ndim == 4 and not isinstance(explicit, str) and not kwargs.get(
      'preferred_element_type') and kwargs.get('out_sharding') is None
      and feature_group_count == 1
      and all(d is None or tuple(d) == (1, 1)
              for d in (lhs_dilation, rhs_dilation))
      and dimension_numbers == jax.lax.conv_dimension_numbers(
          lhs.shape, rhs.shape, _DIMS)
      and tuple(window_strides) == (1, 1)):
    pad = tuple(tuple(int(v) for v in p) for p in explicit)
    k = rhs.shape[:2]
    if (needs_small_input_grad(lhs.shape, rhs.shape, window_strides)
        and all(0 <= v <= k[i] - 1 for i, p in enumerate(pad) for v in p)):
      return _conv_fast_grad(lhs, rhs, pad, precision, 'small')
    if (needs_gemm_kernel_grad(lhs.shape, rhs.shape, window_strides, pad)
        and all(v >= 0 for p in pad for v in p)):
      return _conv_fast_grad(lhs, rhs, pad, precision, 'wide')
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                      *plain, precision=precision, **kwargs)
