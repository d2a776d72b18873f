"""The signal operations' home, and their old names in losses.spectral."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.losses import spectral as loss_spectral
from tokenizers_jax.nn import signal


class SignalTest(absltest.TestCase):

  def test_losses_reexport_the_same_functions(self):
    for name in ('stft', 'istft', 'magnitude', 'mel_filterbank', 'log_mel',
                 'frame_mask', 'num_frames', 'hann_window', 'overlap_add',
                 'hz_to_mel', 'mel_to_hz'):
      self.assertIs(getattr(loss_spectral, name), getattr(signal, name))

  def test_istft_inverts_stft_and_frame_count(self):
    x = np.random.default_rng(0).normal(size=(2, 400)).astype(np.float32)
    spec = signal.stft(jnp.asarray(x), 64, 16)
    self.assertEqual(spec.shape, (2, signal.num_frames(400, 16), 33))
    y = signal.istft(spec, 64, 16, length=400)
    np.testing.assert_allclose(y, x, atol=1e-5)
    mask = signal.frame_mask(jnp.asarray([400, 160]), 400, 16)
    self.assertEqual(int(mask[1].sum()), 10)  # Centres 0, 16, ..., 144.


if __name__ == '__main__':
  absltest.main()
