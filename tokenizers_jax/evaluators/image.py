"""Image reconstruction metrics (PSNR, SSIM) and a bicubic baseline, in jnp.

Everything is pure `jnp`, batched over leading axes, jit-friendly and computed
in float32. Images are channels-last; by default they are in [-1, 1], so the
data range is 2.

SSIM matches scikit-image's
`structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=R, channel_axis=-1)`: an 11-tap
Gaussian window (sigma 1.5, truncated at 3.5 sigma, normalized), local means,
population variances and covariance, K1 = 0.01, K2 = 0.03, the SSIM map
cropped by the window radius on every side, averaged per channel, then over
channels. Because the crop equals the window radius, border handling never
enters the result, so the filter is a 'valid' separable convolution.

Dimension legend:
  ...: any leading (batch) axes
  B: batch size
  H, W: image height and width
  C: channels
  f: bicubic down/up-sampling factor
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array

DEFAULT_DATA_RANGE = 2.0  # Images in [-1, 1].


def _check_pair(x: Array, y: Array, what: str):
  if x.shape != y.shape:
    raise ValueError(f'{what} inputs differ in shape: {x.shape} vs {y.shape}.')
  if x.ndim < 3:
    raise ValueError(
        f'{what} expects [..., H, W, C] images, got shape {x.shape}.')


def psnr(x: Array, y: Array, data_range: float = DEFAULT_DATA_RANGE) -> Array:
  """Peak signal-to-noise ratio per image, in dB.

  PSNR = 10 log10(data_range^2 / MSE), the MSE over (H, W, C) of each image;
  identical images give +inf.

  Args:
    x: reference images [..., H, W, C].
    y: test images, same shape.
    data_range: max minus min of the valid pixel range (2 for [-1, 1]).

  Returns:
    float32 [...] (one value per image).
  """
  _check_pair(x, y, 'psnr')
  err = x.astype(jnp.float32) - y.astype(jnp.float32)
  mse = jnp.mean(jnp.square(err), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / mse)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
  """Normalized 1-D Gaussian taps with radius int(truncate * sigma + 0.5)."""
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (t / sigma) ** 2)
  return (taps / taps.sum()).astype(np.float32)


def _separable_valid_filter(maps: Array, taps: np.ndarray) -> Array:
  """Valid 2-D filtering of [N, H, W, 1] with the outer product of `taps`."""
  k = jnp.asarray(taps)
  n = k.shape[0]
  dims = ('NHWC', 'HWIO', 'NHWC')
  out = lax.conv_general_dilated(maps, k.reshape(n, 1, 1, 1), (1, 1), 'VALID',
                                 dimension_numbers=dims,
                                 precision=lax.Precision.HIGHEST)
  return lax.conv_general_dilated(out, k.reshape(1, n, 1, 1), (1, 1), 'VALID',
                                  dimension_numbers=dims,
                                  precision=lax.Precision.HIGHEST)


def ssim(x: Array, y: Array, data_range: float = DEFAULT_DATA_RANGE, *,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Array:
  """Mean structural similarity per image (scikit-image's Gaussian variant).

  Args:
    x: reference images [..., H, W, C], H and W at least the window size (11
      for sigma 1.5).
    y: test images, same shape.
    data_range: max minus min of the valid pixel range (2 for [-1, 1]).
    sigma: Gaussian window sigma; the window has 2 * int(3.5 sigma + .5) + 1
      taps.
    k1: luminance stabilizer constant.
    k2: contrast stabilizer constant.

  Returns:
    float32 [...] (one value per image, averaged over channels).
  """
  _check_pair(x, y, 'ssim')
  taps = gaussian_window(sigma)
  win = taps.shape[0]
  *lead, h, w, c = x.shape
  if h < win or w < win:
    raise ValueError(
        f'ssim needs images of at least {win}x{win} (the window size), '
        f'got {h}x{w}.')
  # Channels become independent images: [..., H, W, C] -> [N * C, H, W, 1].
  def to_maps(a):
    a = a.astype(jnp.float32).reshape(-1, h, w, c)
    return jnp.moveaxis(a, -1, 1).reshape(-1, h, w, 1)
  xm, ym = to_maps(x), to_maps(y)
  stats = _separable_valid_filter(
      jnp.concatenate([xm, ym, xm * xm, ym * ym, xm * ym], axis=0), taps)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(stats, 5, axis=0)
  var_x = e_xx - mu_x * mu_x
  var_y = e_yy - mu_y * mu_y
  cov = e_xy - mu_x * mu_y
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
  per_channel = jnp.mean(num / den, axis=(1, 2, 3)).reshape(-1, c)
  return jnp.mean(per_channel, axis=-1).reshape(lead)


def bicubic_baseline(images: Array, factor: int, *,
                     clip_range: tuple[float, float] | None = (-1.0, 1.0)
                     ) -> Array:
  """Bicubic downsample by `factor` then upsample back (a compression baseline).

  Keeps H * W * C / f^2 numbers per image, so compare it with a tokenizer at
  the same number of stored values (or bits). Downsampling is antialiased
  (`jax.image.resize(method='bicubic')`, Keys cubic with a = -0.5).

  Args:
    images: [..., H, W, C] with H and W divisible by `factor`.
    factor: integer downsampling factor f >= 1.
    clip_range: clip the result to this range (None: no clipping).

  Returns:
    [..., H, W, C] reconstructions in the input dtype.
  """
  factor = int(factor)
  if factor < 1:
    raise ValueError(f'factor must be >= 1, got {factor}.')
  if images.ndim < 3:
    raise ValueError(f'Expected [..., H, W, C] images, got {images.shape}.')
  *lead, h, w, c = images.shape
  if h % factor or w % factor:
    raise ValueError(
        f'Image size {h}x{w} is not divisible by the factor {factor}.')
  x = images.astype(jnp.float32)
  small = jax.image.resize(x, (*lead, h // factor, w // factor, c), 'bicubic')
  out = jax.image.resize(small, (*lead, h, w, c), 'bicubic')
  if clip_range is not None:
    out = jnp.clip(out, clip_range[0], clip_range[1])
  return out.astype(images.dtype)


def bicubic_at_bits(images: Array, bits: float, *, value_bits: int = 8,
                    data_range: tuple[float, float] = (-1.0, 1.0)) -> Array:
  """Bicubic baseline with at least `bits` of storage per image.

  Keeps the smallest s×s×C image with s²·C·value_bits >= bits (values stored
  with `value_bits` of precision over `data_range`), then resizes it back.
  Compare a tokenizer of h·w codes of log2(K) bits with
  `bits = h * w * log2(K)`: the baseline never gets fewer bits.

  Args:
    images: [..., H, W, C].
    bits: the storage budget per image.
    value_bits: precision of each stored value.
    data_range: (low, high) of the pixel values.

  Returns:
    [..., H, W, C] reconstructions clipped to `data_range`, in the input dtype.
  """
  if images.ndim < 3:
    raise ValueError(f'Expected [..., H, W, C] images, got {images.shape}.')
  *lead, h, w, c = images.shape
  side = max(1, math.ceil(math.sqrt(bits / (c * value_bits))))
  if side > min(h, w):
    raise ValueError(f'{bits} bits per image is more than {h}x{w}x{c} values '
                     f'of {value_bits} bits')
  lo, hi = data_range
  levels = 2 ** value_bits - 1
  x = images.astype(jnp.float32)
  small = jax.image.resize(x, (*lead, side, side, c), 'bicubic')
  small = jnp.round((jnp.clip(small, lo, hi) - lo) / (hi - lo) * levels)
  small = small / levels * (hi - lo) + lo
  out = jax.image.resize(small, (*lead, h, w, c), 'bicubic')
  return jnp.clip(out, lo, hi).astype(images.dtype)
