"""Tests for tokenizers_jax.evaluators.image.

References: scikit-image's `peak_signal_noise_ratio` and
`structural_similarity`, scipy's Gaussian filter, and a numpy construction of
the Keys-cubic resampling matrices.

Dimension legend:
  B: batch, H/W: image size, C: channels
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from skimage import metrics as skm

from tokenizers_jax.evaluators import image as image_eval


def _sk_ssim(x, y, data_range):
  return skm.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=data_range, channel_axis=-1)


def _structured(h, w, c, seed):
  """Gradients, a rectangle, a disc and a blurred checkerboard in [-1, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.zeros((h, w, c))
  for ch in range(c):
    a, b = rng.uniform(-1, 1, 2)
    img[..., ch] = a * xx / w + b * yy / h
  r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
  img[r0:r0 + h // 3, c0:c0 + w // 3] += rng.uniform(-1, 1, c)
  disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2
  img[disc] -= 0.5
  checker = ((yy // 4 + xx // 4) % 2)[..., None] - 0.5
  img += ndimage.gaussian_filter(checker, (1.0, 1.0, 0))
  return np.clip(img / np.abs(img).max(), -1, 1).astype(np.float32)


@functools.cache
def _jitted(name):
  if name == 'psnr':
    return jax.jit(image_eval.psnr, static_argnums=2)
  return jax.jit(image_eval.ssim, static_argnums=2)


class PSNRTest(parameterized.TestCase):

  @parameterized.parameters((2.0, -1.0, 1.0), (1.0, 0.0, 1.0))
  def test_matches_skimage(self, data_range, lo, hi):
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, (3, 16, 20, 3)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), lo, hi).astype(np.float32)
    got = _jitted('psnr')(x, y, data_range)
    expected = [skm.peak_signal_noise_ratio(a, b, data_range=data_range)
                for a, b in zip(x, y)]
    self.assertEqual(got.shape, (3,))
    np.testing.assert_allclose(got, expected, rtol=1e-5)

  def test_known_answer_and_identity(self):
    x = jnp.zeros((1, 4, 4, 3))
    # MSE 0.04 with range 2: 10 log10(4 / 0.04) = 20 dB.
    self.assertAlmostEqual(float(image_eval.psnr(x, x + 0.2)[0]), 20.0,
                           places=4)
    self.assertEqual(float(image_eval.psnr(x, x)[0]), np.inf)


class SSIMTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('random_noise', 'random', 2.0),
      ('structured', 'structured', 2.0),
      ('structured_range1', 'structured01', 1.0))
  def test_matches_skimage(self, kind, data_range):
    rng = np.random.default_rng(1)
    shape = (2, 32, 24, 3)
    if kind == 'random':
      x = rng.uniform(-1, 1, shape).astype(np.float32)
      y = np.clip(x + 0.3 * rng.normal(size=shape), -1, 1)
    else:
      x = np.stack([_structured(32, 24, 3, s) for s in range(2)])
      y = np.clip(ndimage.gaussian_filter(x, (0, 1.2, 1.2, 0))
                  + 0.05 * rng.normal(size=shape), -1, 1)
      if kind == 'structured01':
        x, y = (x + 1) / 2, (y + 1) / 2
    x, y = x.astype(np.float32), y.astype(np.float32)
    got = _jitted('ssim')(x, y, data_range)
    expected = [_sk_ssim(a, b, data_range) for a, b in zip(x, y)]
    self.assertEqual(got.shape, (2,))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

  def test_identity_leading_axes_and_grayscale(self):
    x = _structured(16, 16, 1, 5)
    y = np.clip(x + 0.2, -1, 1)
    batch = np.stack([np.stack([x, y]), np.stack([y, x])])  # [2, 2, H, W, 1]
    got = image_eval.ssim(batch, np.stack([np.stack([x, x])] * 2))
    self.assertEqual(got.shape, (2, 2))
    self.assertAlmostEqual(float(got[0, 0]), 1.0, places=5)
    np.testing.assert_allclose(got[0, 1], _sk_ssim(y, x, 2.0), rtol=1e-4)

  def test_window_matches_scipy(self):
    impulse = np.zeros(21)
    impulse[10] = 1.0
    expected = ndimage.gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16]
    np.testing.assert_allclose(image_eval.gaussian_window(1.5), expected,
                               rtol=1e-6)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, '11x11'):
      image_eval.ssim(jnp.zeros((1, 10, 16, 3)), jnp.zeros((1, 10, 16, 3)))
    with self.assertRaisesRegex(ValueError, 'differ in shape'):
      image_eval.psnr(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 1)))


def _keys_cubic(t, a=-0.5):
  t = np.abs(t)
  near = (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
  far = a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _resize_matrix(n_in, n_out):
  """[n_out, n_in] half-pixel-centred cubic resampling, antialiased when
  shrinking (kernel stretched by the factor), weights renormalized over the
  in-range input pixels."""
  scale = n_out / n_in
  stretch = max(1.0, 1.0 / scale)
  centres = (np.arange(n_out) + 0.5) / scale - 0.5
  w = _keys_cubic((np.arange(n_in)[None, :] - centres[:, None]) / stretch)
  return w / w.sum(axis=1, keepdims=True)


class BicubicBaselineTest(parameterized.TestCase):

  @parameterized.parameters(2, 4)
  def test_matches_numpy_resampling(self, factor):
    x = np.stack([_structured(16, 24, 3, s) for s in range(2)])
    down_h, down_w = _resize_matrix(16, 16 // factor), _resize_matrix(
        24, 24 // factor)
    up_h, up_w = _resize_matrix(16 // factor, 16), _resize_matrix(
        24 // factor, 24)
    small = np.einsum('ih,jw,bhwc->bijc', down_h, down_w, x.astype(np.float64))
    expected = np.einsum('hi,wj,bijc->bhwc', up_h, up_w, small)
    got = image_eval.bicubic_baseline(jnp.asarray(x), factor, clip_range=None)
    self.assertEqual(got.shape, x.shape)
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)

  def test_properties(self):
    x = jnp.asarray(np.stack([_structured(16, 16, 3, 7)]))
    np.testing.assert_allclose(image_eval.bicubic_baseline(x, 1), x, atol=1e-6)
    const = jnp.full((1, 16, 16, 3), 0.3)
    np.testing.assert_allclose(image_eval.bicubic_baseline(const, 4), const,
                               atol=1e-6)
    clipped = image_eval.bicubic_baseline(jnp.sign(x), 4)
    self.assertLessEqual(float(jnp.abs(clipped).max()), 1.0)
    # More downsampling loses more.
    err2 = jnp.mean((image_eval.bicubic_baseline(x, 2) - x) ** 2)
    err4 = jnp.mean((image_eval.bicubic_baseline(x, 4) - x) ** 2)
    self.assertLess(float(err2), float(err4))
    with self.assertRaisesRegex(ValueError, 'not divisible'):
      image_eval.bicubic_baseline(jnp.zeros((1, 18, 16, 3)), 4)

  def test_at_bits_storage_budget(self):
    x = np.stack([_structured(16, 16, 3, 3)])
    # Full budget: an identity resize, so only the 8-bit storage remains.
    full = image_eval.bicubic_at_bits(jnp.asarray(x), 16 * 16 * 3 * 8)
    np.testing.assert_allclose(full, np.round((x + 1) * 127.5) / 127.5 - 1,
                               atol=1e-6)
    # 512 bits -> a 5x5x3 image (600 bits >= 512 > 4x4x3x8 = 384): the same
    # result as keeping 5x5 by hand (the numpy resampling matrices).
    got = image_eval.bicubic_at_bits(jnp.asarray(x), 512)
    d, u = _resize_matrix(16, 5), _resize_matrix(5, 16)
    small = np.einsum('ih,jw,bhwc->bijc', d, d, x.astype(np.float64))
    small = np.round((np.clip(small, -1, 1) + 1) * 127.5) / 127.5 - 1
    expected = np.clip(np.einsum('hi,wj,bijc->bhwc', u, u, small), -1, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with self.assertRaisesRegex(ValueError, 'more than'):
      image_eval.bicubic_at_bits(jnp.asarray(x), 17 * 17 * 3 * 8)


if __name__ == '__main__':
  absltest.main()
