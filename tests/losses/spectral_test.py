"""Tests for tokenizers_jax.losses.spectral.

References: librosa's STFT and mel filterbank (an independent
implementation), exact reconstruction through the iSTFT, and numpy formulas
for the losses.

Dimension legend:
  B: batch; N: samples; T: frames; F: bins; M: mel bands
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import librosa
import numpy as np

from tokenizers_jax.losses import spectral

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 1000)).astype(np.float32)


class StftTest(parameterized.TestCase):

  @parameterized.parameters(('reflect',), ('constant',))
  def test_stft_matches_librosa(self, pad_mode):
    ours = np.asarray(spectral.stft(X, 256, 64, pad_mode=pad_mode))
    ref = librosa.stft(X, n_fft=256, hop_length=64, window='hann',
                       center=True, pad_mode=pad_mode)
    self.assertEqual(ours.shape, (2, 1 + 1000 // 64, 129))
    np.testing.assert_allclose(ours, np.swapaxes(ref, -1, -2), atol=2e-4)

  @parameterized.parameters((256, 64), (250, 100))  # hop | n_fft, and not.
  def test_istft_round_trip(self, n_fft, hop):
    spec = spectral.stft(X, n_fft, hop)
    y = np.asarray(spectral.istft(spec, n_fft, hop, length=X.shape[1]))
    np.testing.assert_allclose(y, X, atol=1e-5)

  def test_istft_same_padding_length_and_inverse(self):
    # 'same' padding: T frames -> exactly T * hop samples; frames of a
    # signal taken at the matching offsets come back exactly.
    n_fft, hop, t = 64, 16, 20
    pad = (n_fft - hop) // 2
    sig = RNG.normal(size=(t * hop + 2 * pad,)).astype(np.float32)
    spec = spectral.stft(sig, n_fft, hop, center=False)
    self.assertEqual(spec.shape[0], t + 1 - (n_fft - hop) // hop + 2)
    spec = spec[:t]
    y = np.asarray(spectral.istft(spec, n_fft, hop, padding='same'))
    self.assertEqual(y.shape, (t * hop,))
    # Interior samples (covered by n_fft / hop frames) are exact.
    np.testing.assert_allclose(y[n_fft:-n_fft], sig[pad:pad + t * hop]
                               [n_fft:-n_fft], atol=1e-5)

  def test_bad_bins_error(self):
    with self.assertRaisesRegex(ValueError, 'frequency bins'):
      spectral.istft(jnp.zeros((4, 10), jnp.complex64), 64, 16)


class MelTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(sr=16000, n_fft=512, n_mels=40, htk=False, norm='slaney'),
      dict(sr=24000, n_fft=1024, n_mels=100, htk=False, norm='slaney'),
      dict(sr=16000, n_fft=400, n_mels=23, htk=True, norm=None, fmin=20,
           fmax=7600))
  def test_filterbank_matches_librosa(self, sr, n_fft, n_mels, htk, norm,
                                      fmin=0.0, fmax=None):
    ours = spectral.mel_filterbank(sr, n_fft, n_mels, fmin=fmin, fmax=fmax,
                                   htk=htk, norm=norm)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                              fmax=fmax, htk=htk, norm=norm).T
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)

  def test_log_mel_matches_librosa(self):
    ours = np.asarray(spectral.log_mel(X, 16000, 512, 128, 40))
    ref = librosa.feature.melspectrogram(
        y=X, sr=16000, n_fft=512, hop_length=128, n_mels=40, power=1.0,
        pad_mode='reflect')
    np.testing.assert_allclose(
        ours, np.log(np.maximum(np.swapaxes(ref, -1, -2), 1e-5)), atol=1e-4)

  def test_multiscale_mel_l1_formula_and_mask(self):
    y = X + 0.1 * RNG.normal(size=X.shape).astype(np.float32)
    scales = ((256, 20), (512, 40))
    ours = float(spectral.multiscale_mel_l1(X, y, 16000, scales))
    ref = np.mean([np.mean(np.abs(
        np.asarray(spectral.log_mel(X, 16000, n, n // 4, m))
        - np.asarray(spectral.log_mel(y, 16000, n, n // 4, m))))
                   for n, m in scales])
    self.assertAlmostEqual(ours, ref, places=5)
    self.assertEqual(float(spectral.multiscale_mel_l1(X, X, 16000, scales)),
                     0.0)
    # With lengths, a difference past the valid part does not count.
    z = X.copy()
    z[:, 900:] += 1.0
    lengths = jnp.array([600, 600])
    self.assertAlmostEqual(float(spectral.multiscale_mel_l1(
        X, z, 16000, ((64, 8),), lengths=lengths)), 0.0, places=6)
    self.assertGreater(float(spectral.multiscale_mel_l1(
        X, z, 16000, ((64, 8),))), 0.01)


class LossTest(absltest.TestCase):

  def test_multires_stft_loss_formula(self):
    y = X * 0.5
    ours = float(spectral.multires_stft_loss(X, y, ((128, 32),), eps=0.0))
    a = np.abs(librosa.stft(X, n_fft=128, hop_length=32, pad_mode='reflect'))
    b = np.abs(librosa.stft(y, n_fft=128, hop_length=32, pad_mode='reflect'))
    sc = np.linalg.norm((b - a).reshape(2, -1), axis=-1) / np.linalg.norm(
        a.reshape(2, -1), axis=-1)
    mag = np.mean(np.abs(np.log(a) - np.log(b)), axis=(-2, -1))
    # |Y| = |X| / 2: spectral convergence 0.5, log magnitude log 2.
    self.assertAlmostEqual(ours, float(np.mean(sc + mag)), places=4)
    self.assertAlmostEqual(ours, 0.5 + np.log(2), places=4)

  def test_feature_matching_known_value(self):
    real = [[jnp.ones((2, 3)), jnp.zeros((4,))], [jnp.full((5,), 2.0)]]
    fake = [[jnp.zeros((2, 3)), jnp.ones((4,))], [jnp.zeros((5,))]]
    # Discriminator 1: 1 + 1; discriminator 2: 2; mean over 2 -> 2.
    self.assertAlmostEqual(float(spectral.feature_matching(real, fake)), 2.0)
    self.assertEqual(float(spectral.feature_matching(real, real)), 0.0)


if __name__ == '__main__':
  absltest.main()
