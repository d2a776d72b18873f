"""Tests for the audio codec and its discriminators.

References: shape arithmetic of the HiFi-GAN/UnivNet discriminators, the
sign conventions of the adversarial losses, the eval-mode identity
decode(encode(x)) == reconstruction, and the bitrate formula.

Dimension legend:
  B: batch; N: samples; T: frames; Q: RVQ levels; p: period; C: channels
"""

from absl.testing import absltest
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.losses import adversarial
from tokenizers_jax.models.audio_codec import AudioCodec
from tokenizers_jax.models.audio_discriminators import AudioDiscriminator

FRONTEND = dict(n_filters=4, strides=(2, 4), dim=8, dec_dim=8, dec_ffn=16,
                num_convnext=1, attn_blocks=1)
X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 320)) * 0.1,
                jnp.float32)


class DiscriminatorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.disc = AudioDiscriminator(periods=(2, 3), resolutions=((64, 16),),
                                  mpd_channels=(4, 8), mrd_channels=4,
                                  mrd_layers=2, rngs=nnx.Rngs(0))
    cls.out = nnx.jit(lambda d, x: d(x))(cls.disc, X)

  def test_output_shapes(self):
    logits, feats = self.out
    self.assertLen(logits, 3)
    self.assertEqual(self.disc.num_discriminators, 3)
    # MPD p: [B, ceil(N/p) -> /3 per strided conv (SAME-like padding), p, 1].
    for p, l, f in zip((2, 3), logits[:2], feats[:2]):
      rows = -(-320 // p)
      after = -(-rows // 3)     # One stride-3 conv, then a stride-1 conv.
      self.assertEqual(f[0].shape, (2, after, p, 4))
      self.assertEqual(f[1].shape, (2, after, p, 8))
      self.assertEqual(l.shape, (2, after, p, 1))
      self.assertLen(f, 3)
    # MRD: [B, T = 1 + N / hop, F = n_fft/2 + 1 halved per strided conv, 1].
    t, f0 = 1 + 320 // 16, 33
    self.assertEqual(feats[2][0].shape, (2, t, f0, 4))
    self.assertEqual(feats[2][1].shape, (2, t, 17, 4))
    self.assertEqual(feats[2][2].shape, (2, t, 9, 4))
    self.assertEqual(logits[2].shape, (2, t, 9, 1))

  def test_loss_signs(self):
    logits, _ = self.out
    for l in logits:
      # Hinge: the D step raises real and lowers fake logits; the G step
      # raises fake logits.
      g_real = jax.grad(adversarial.hinge_d_loss, 0)(l, l)
      g_fake = jax.grad(adversarial.hinge_d_loss, 1)(l, l)
      g_gen = jax.grad(adversarial.hinge_g_loss)(l)
      self.assertLessEqual(float(jnp.max(g_real)), 0.0)
      self.assertGreaterEqual(float(jnp.min(g_fake)), 0.0)
      self.assertLess(float(jnp.max(g_gen)), 0.0)
      self.assertLess(float(jnp.sum(g_real)), 0.0)
      # Least squares: D pulls real logits to 1 and fake to 0, G pulls fake
      # logits to 1 (gradients have the sign of the distance to the target).
      g_real = jax.grad(adversarial.least_squares_d_loss, 0)(l, l)
      g_fake = jax.grad(adversarial.least_squares_d_loss, 1)(l, l)
      g_gen = jax.grad(adversarial.least_squares_g_loss)(l)
      np.testing.assert_array_equal(np.sign(g_real), np.sign(l - 1))
      np.testing.assert_array_equal(np.sign(g_fake), np.sign(l))
      np.testing.assert_array_equal(np.sign(g_gen), np.sign(l - 1))
      self.assertGreater(float(adversarial.least_squares_d_loss(l, l)), 0.0)
      self.assertEqual(float(adversarial.least_squares_d_loss(
          jnp.ones_like(l), jnp.zeros_like(l))), 0.0)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, r'\[B, N\]'):
      self.disc(jnp.zeros((2, 320, 1)))


class AudioCodecTest(absltest.TestCase):

  def _check(self, quantizer, levels, bits):
    codec = AudioCodec(frontend=FRONTEND, quantizer=quantizer,
                       sample_rate=8000, rngs=nnx.Rngs(1))
    self.assertEqual(codec.hop, 8)
    self.assertEqual(codec.num_codebooks, levels)
    self.assertAlmostEqual(codec.bitrate, 8000 / 8 * bits)

    @nnx.jit
    def run(c, x):
      out = c(x, train=False)
      ids = c.encode(x)
      return out.reconstruction, out.quantizer.indices, ids, c.decode(ids)

    y, idx, ids, dec = run(codec, X)
    t = 320 // 8
    shape = (2, t) if levels == 1 else (2, t, levels)
    self.assertEqual(ids.shape, shape)
    self.assertEqual(y.shape, X.shape)
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(ids))
    np.testing.assert_allclose(np.asarray(dec), np.asarray(y), atol=1e-5)

  def test_single_vq(self):
    self._check(dict(name='vq', codebook_size=16), 1, 4)

  def test_rvq(self):
    self._check(dict(name='rvq', num_quantizers=3, codebook_size=16,
                     quantize_dropout=True), 3, 12)

  def test_frame_mask_and_bad_dim(self):
    codec = AudioCodec(frontend=FRONTEND, quantizer=dict(name='vq',
                                                         codebook_size=4),
                       sample_rate=8000, rngs=nnx.Rngs(1))
    m = np.asarray(codec.frame_mask(jnp.array([320, 17]), 320))
    self.assertTrue(m[0].all())
    np.testing.assert_array_equal(np.nonzero(m[1])[0], [0, 1, 2])  # 0, 8, 16
    with self.assertRaisesRegex(ValueError, 'latent dim'):
      AudioCodec(frontend=FRONTEND, quantizer=dict(name='vq', codebook_size=4,
                                                   dim=5), rngs=nnx.Rngs(0))


if __name__ == '__main__':
  absltest.main()
