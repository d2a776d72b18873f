"""Tests for tokenizers_jax.frontends.audio (SEANet encoder, Vocos decoder).

References: frame arithmetic (N / hop frames, T * hop samples), an
LSTM step written in numpy, and the invariance that masked attention buys.

Dimension legend:
  B: batch; N: samples; T: frames; D: latent dimension
"""

from absl.testing import absltest
from flax import nnx
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.frontends import audio

CFG = dict(n_filters=4, strides=(2, 4), dim=8, dec_dim=8, dec_ffn=16,
           num_convnext=1, attn_blocks=1)


class AudioFrontEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fe = audio.AudioFrontEnd(sample_rate=8000, rngs=nnx.Rngs(0), **CFG)

  def test_lengths_hop_times_frames(self):
    fe = self.fe
    self.assertEqual(fe.hop, 8)
    self.assertEqual(fe.config.fft_size, 32)
    # Shapes only: eval_shape traces without running (no compilation).
    z = nnx.eval_shape(lambda: fe.encode(jnp.zeros((2, 96))))
    self.assertEqual(z.shape, (2, 96 // 8, 8))
    self.assertEqual(fe.latent_shape((2, 96)), z.shape)
    for t in (5, 12):
      y = nnx.eval_shape(lambda t=t: fe.decode(jnp.zeros((1, t, 8))))
      self.assertEqual(y.shape, (1, t * 8))
    self.assertEqual(fe.tokens_per_second, 1000.0)

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'multiple of the hop 8'):
      self.fe.encode(jnp.zeros((1, 100)))
    with self.assertRaisesRegex(ValueError, r'\[B, N\]'):
      self.fe.encode(jnp.zeros((1, 96, 1)))
    with self.assertRaisesRegex(TypeError, 'floating'):
      self.fe.encode(jnp.zeros((1, 96), jnp.int32))
    with self.assertRaisesRegex(ValueError, 'n_fft'):
      audio.AudioConfig(strides=(2, 4), n_fft=33)

  def test_attention_ignores_masked_frames(self):
    # With a frame mask, what lies in masked frames does not reach the
    # attention output of the valid frames (LayerNorm is per frame).
    block = self.fe.decoder.pos_net[1]
    self.assertIsInstance(block, audio.AttnBlock)
    rng = np.random.default_rng(1)
    h = rng.normal(size=(1, 10, 8)).astype(np.float32)
    h2 = h.copy()
    h2[:, 6:] = rng.normal(size=(1, 4, 8)) * 5
    mask = jnp.arange(10)[None] < 6
    run = nnx.jit(lambda blk, h, m: blk(h, m))
    a = np.asarray(run(block, jnp.asarray(h), mask))[:, :6]
    b = np.asarray(run(block, jnp.asarray(h2), mask))[:, :6]
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = np.asarray(run(block, jnp.asarray(h2), jnp.ones((1, 10), bool)))[:, :6]
    self.assertGreater(np.abs(a - c).max(), 1e-3)

  def test_lstm_matches_numpy(self):
    lstm = audio.LSTM(3, 1, nnx.Rngs(2), jnp.float32)
    x = np.random.default_rng(3).normal(size=(1, 4, 3)).astype(np.float32)
    wx = np.asarray(lstm.inp[0].kernel[...])
    bx = np.asarray(lstm.inp[0].bias[...])
    wh = np.asarray(lstm.rec[0].kernel[...])
    sig = lambda v: 1 / (1 + np.exp(-v))
    h = c = np.zeros((1, 3))
    outs = []
    for t in range(4):
      g = x[:, t] @ wx + bx + h @ wh
      i, f, o, u = np.split(g, 4, axis=-1)
      c = sig(f) * c + sig(i) * np.tanh(u)
      h = sig(o) * np.tanh(c)
      outs.append(h)
    ref = x + np.stack(outs, 1)
    out = nnx.jit(lambda m, v: m(v))(lstm, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
