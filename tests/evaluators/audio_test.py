"""Tests for tokenizers_jax.evaluators.audio.

References: SI-SNR closed forms (scale invariance, a known added-noise
level), a numpy SI-SNR, PESQ's and STOI's values for identical and degraded
speech (eSpeak NG), and the bitrate arithmetic.

Dimension legend:
  B: batch; N: samples
"""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.data import speech
from tokenizers_jax.evaluators import audio as metrics

RNG = np.random.default_rng(0)


def _si_snr_numpy(x, y):
  x = x - x.mean()
  y = y - y.mean()
  s = np.dot(y, x) / np.dot(x, x) * x
  e = y - s
  return 10 * np.log10(np.dot(s, s) / np.dot(e, e))


class SiSnrTest(absltest.TestCase):

  def test_known_answers_and_lengths(self):
    x = RNG.normal(size=(4000,)).astype(np.float32)
    noise = RNG.normal(size=(4000,)).astype(np.float32)
    noise -= noise.mean()
    # Remove the part of the noise along x: then SI-SNR = 10 log10(|x|²/|n|²).
    xc = x - x.mean()
    noise -= np.dot(noise, xc) / np.dot(xc, xc) * xc
    noise *= np.linalg.norm(xc) / np.linalg.norm(noise) * 10 ** (-20 / 20)
    y = np.stack([3.0 * x + 0.5, x + noise])
    got = np.asarray(metrics.si_snr(np.stack([x, x]), y))
    self.assertGreater(got[0], 60.0)            # Scaled + offset copy.
    self.assertAlmostEqual(got[1], 20.0, places=3)
    # Lengths: only the first 1000 samples count; the rest is garbage.
    z = y[1].copy()
    z[1000:] = 5.0
    short = float(metrics.si_snr(x[None], z[None], jnp.array([1000]))[0])
    self.assertAlmostEqual(short, _si_snr_numpy(x[:1000], y[1][:1000]),
                           places=3)


class HostMetricsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ref = speech.synthesize('The birch canoe slid on the smooth planks.',
                                'en-us', sample_rate=16000)

  def test_pesq_and_stoi_order_degradations(self):
    ref = self.ref
    noisy = ref + 0.05 * RNG.normal(size=ref.shape).astype(np.float32)
    noisier = ref + 0.2 * RNG.normal(size=ref.shape).astype(np.float32)
    p = [metrics.pesq_wb(ref, d, 16000) for d in (ref, noisy, noisier)]
    self.assertGreater(p[0], 4.5)               # Identical: ~4.64.
    self.assertGreater(p[0], p[1])
    self.assertGreater(p[1], p[2])
    s = [metrics.stoi(ref, d, 16000) for d in (ref, noisy, noisier)]
    self.assertGreater(s[0], 0.99)
    self.assertGreater(s[1], s[2])
    # Other rates are resampled to 16 kHz for PESQ.
    ref24 = speech.resample(ref, 16000, 24000)
    self.assertGreater(metrics.pesq_wb(ref24, ref24, 24000), 4.5)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'shapes differ'):
      metrics.pesq_wb(self.ref, self.ref[:-1], 16000)
    with self.assertRaisesRegex(ValueError, 'PESQ failed'):
      metrics.pesq_wb(np.zeros(16000), np.zeros(16000), 16000)
    with self.assertRaisesRegex(ValueError, 'NaN'):
      metrics.stoi(np.full(100, np.nan), np.zeros(100), 16000)


class DistanceTest(absltest.TestCase):

  def test_distances_zero_for_identical_and_grow_with_noise(self):
    x = jnp.asarray(RNG.normal(size=(1, 8000)) * 0.1, jnp.float32)
    n = jnp.asarray(RNG.normal(size=(1, 8000)), jnp.float32)
    for fn in (metrics.mel_distance, metrics.stft_distance):
      # One compiled function over the three noise levels.
      f = jax.jit(jax.vmap(lambda a, fn=fn: fn(x, x + a * n, 16000)[0]))
      d = [float(v) for v in f(jnp.array([0.0, 0.01, 0.1]))]
      self.assertAlmostEqual(d[0], 0.0, places=5)
      self.assertLess(d[1], d[2])

  def test_bitrate(self):
    self.assertEqual(metrics.bitrate(24000, 320, [4096]), 75 * 12)
    self.assertEqual(metrics.bitrate(16000, 160, [16] * 3), 100 * 12)
    self.assertEqual(metrics.bits_per_token([256, 256]), 16.0)


if __name__ == '__main__':
  absltest.main()
