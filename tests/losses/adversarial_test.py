"""Tests for tokenizers_jax.losses.adversarial.

References: hand-computed values, PyTorch's BCE-with-logits, and
torch.autograd gradients of a tiny network for the adaptive weight.

Dimension legend:
  B: batch, h/w: logit grid
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from tokenizers_jax.losses import adversarial as adv

REAL = np.array([2.0, 0.5, -1.0], np.float32)
FAKE = np.array([-2.0, 0.0, 1.5], np.float32)


class DiscriminatorLossTest(parameterized.TestCase):

  def test_hinge_known_values(self):
    # relu(1 - real) = [0, .5, 2]; relu(1 + fake) = [0, 1, 2.5].
    self.assertAlmostEqual(float(adv.hinge_d_loss(REAL, FAKE)),
                           0.5 * (2.5 / 3 + 3.5 / 3), places=6)
    self.assertAlmostEqual(float(adv.hinge_g_loss(FAKE)), 0.5 / 3, places=6)

  def test_least_squares_known_values(self):
    # (real - 1)^2 = [1, .25, 4]; fake^2 = [4, 0, 2.25].
    self.assertAlmostEqual(float(adv.least_squares_d_loss(REAL, FAKE)),
                           0.5 * (5.25 / 3 + 6.25 / 3), places=6)
    # (fake - 1)^2 = [9, 1, .25].
    self.assertAlmostEqual(float(adv.least_squares_g_loss(FAKE)),
                           0.5 * 10.25 / 3, places=6)

  def test_vanilla_matches_torch_bce(self):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2, 6, 6, 1)).astype(np.float32) * 3
    fake = rng.normal(size=(2, 6, 6, 1)).astype(np.float32) * 3
    tr, tf = torch.from_numpy(real), torch.from_numpy(fake)
    d_ref = 0.5 * (
        F.binary_cross_entropy_with_logits(tr, torch.ones_like(tr)) +
        F.binary_cross_entropy_with_logits(tf, torch.zeros_like(tf)))
    g_ref = F.binary_cross_entropy_with_logits(tf, torch.ones_like(tf))
    np.testing.assert_allclose(adv.vanilla_d_loss(real, fake), d_ref.item(),
                               rtol=1e-6)
    np.testing.assert_allclose(adv.vanilla_g_loss(fake), g_ref.item(),
                               rtol=1e-6)

  @parameterized.parameters('hinge', 'vanilla', 'least_squares')
  def test_registry_and_dtype(self, name):
    d_loss, g_loss = adv.get_d_loss(name), adv.get_g_loss(name)
    real16 = jnp.asarray(REAL, jnp.bfloat16)
    fake16 = jnp.asarray(FAKE, jnp.bfloat16)
    self.assertEqual(d_loss(real16, fake16).dtype, jnp.float32)
    self.assertEqual(g_loss(fake16).dtype, jnp.float32)
    # Within (0, 1), where all three are monotone: the discriminator loss
    # falls as real logits rise and fake ones fall; the generator loss falls
    # as fake logits rise.
    real = np.array([-0.5, 0.2, 0.6], np.float32)
    fake = np.array([0.4, 0.6, 0.9], np.float32)
    self.assertLess(float(d_loss(real + 0.3, fake - 0.3)),
                    float(d_loss(real, fake)))
    self.assertLess(float(g_loss(fake + 0.3)), float(g_loss(fake)))

  def test_unknown_names(self):
    with self.assertRaisesRegex(ValueError, 'Unknown discriminator loss'):
      adv.get_d_loss('wasserstein')
    with self.assertRaisesRegex(ValueError, 'Unknown generator loss'):
      adv.get_g_loss('wasserstein')


class LeCamTest(absltest.TestCase):

  def test_known_values(self):
    real = jnp.array([1.0, 3.0])
    fake = jnp.array([-1.0, 2.0])
    # relu(real - 1.5) = [0, 1.5]; relu(0.5 - fake) = [1.5, 0].
    reg = adv.lecam_regularizer(real, fake, ema_real=0.5, ema_fake=1.5)
    self.assertAlmostEqual(float(reg), 2.25 / 2 + 2.25 / 2, places=6)

  def test_ema_update(self):
    new_real, new_fake = adv.lecam_ema_update(
        0.5, 1.5, jnp.array([1.0, 3.0]), jnp.array([-1.0, 2.0]), decay=0.9)
    self.assertAlmostEqual(float(new_real), 0.9 * 0.5 + 0.1 * 2.0, places=6)
    self.assertAlmostEqual(float(new_fake), 0.9 * 1.5 + 0.1 * 0.5, places=6)

  def test_anchors_get_no_gradient(self):
    real = jnp.array([1.0, 3.0])
    fake = jnp.array([-1.0, 2.0])
    g_anchor = jax.grad(
        lambda e: adv.lecam_regularizer(real, fake, e, e))(jnp.float32(1.0))
    self.assertEqual(float(g_anchor), 0.0)
    # d/d real of mean(relu(real - 1.5)^2) = [0, 2 * 1.5 / 2].
    g_real = jax.grad(
        lambda r: adv.lecam_regularizer(r, fake, 0.5, 1.5))(real)
    np.testing.assert_allclose(g_real, [0.0, 1.5], rtol=1e-6)


class AdaptiveWeightTest(absltest.TestCase):

  def test_matches_torch_autograd(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    target = rng.normal(size=(4, 3)).astype(np.float32)
    w1 = rng.normal(size=(6, 5)).astype(np.float32)
    w2 = rng.normal(size=(3, 6)).astype(np.float32)  # The "last layer".
    critic = rng.normal(size=(3, 1)).astype(np.float32)
    disc_weight = 0.8

    tw2 = torch.tensor(w2, requires_grad=True)
    out = torch.tanh(torch.from_numpy(x) @ torch.from_numpy(w1).T) @ tw2.T
    nll = torch.mean(torch.abs(out - torch.from_numpy(target)))
    g_loss = -torch.mean(out @ torch.from_numpy(critic))
    nll_grad = torch.autograd.grad(nll, tw2, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, tw2, retain_graph=True)[0]
    ref = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    ref = torch.clamp(ref, 0.0, 1e4).detach() * disc_weight

    def forward(w2):
      return jnp.tanh(x @ w1.T) @ w2.T

    jax_nll_grad = jax.grad(
        lambda w: jnp.mean(jnp.abs(forward(w) - target)))(w2)
    jax_g_grad = jax.grad(lambda w: adv.hinge_g_loss(forward(w) @ critic))(w2)
    weight = jax.jit(adv.adaptive_generator_weight, static_argnums=2)(
        jax_nll_grad, jax_g_grad, disc_weight)
    np.testing.assert_allclose(weight, ref.item(), rtol=1e-5)

  def test_clamp_and_pytrees(self):
    big = {'w': jnp.full((3,), 1e3), 'b': jnp.ones(2)}
    tiny = {'w': jnp.zeros(3), 'b': jnp.zeros(2)}
    self.assertAlmostEqual(
        float(adv.adaptive_generator_weight(big, tiny, disc_weight=0.5)),
        0.5e4, places=2)
    self.assertEqual(float(adv.adaptive_generator_weight(tiny, big)), 0.0)
    # Norm over the whole pytree: sqrt(3 * 4 + 2 * 4) / (sqrt(5) + 1e-4).
    two = {'w': jnp.full((3,), 2.0), 'b': jnp.full((2,), 2.0)}
    one = {'w': jnp.ones(3), 'b': jnp.ones(2)}
    np.testing.assert_allclose(adv.adaptive_generator_weight(two, one),
                               np.sqrt(20.0) / (np.sqrt(5.0) + 1e-4),
                               rtol=1e-6)

  def test_detached(self):
    grad = jax.grad(lambda s: adv.adaptive_generator_weight(
        s * jnp.ones(3), jnp.ones(3)))(2.0)
    self.assertEqual(float(grad), 0.0)


class DiscStartGateTest(absltest.TestCase):

  def test_traced_step(self):
    gate = jax.jit(lambda step: adv.disc_start_gate(step, 150, weight=0.8))
    for step, expected in ((0, 0.0), (149, 0.0), (150, 0.8), (10_000, 0.8)):
      self.assertAlmostEqual(float(gate(jnp.int32(step))), expected, places=6)
    self.assertEqual(gate(jnp.int32(3)).dtype, jnp.float32)
    self.assertEqual(float(adv.disc_start_gate(5, 0)), 1.0)
    self.assertEqual(float(adv.disc_start_gate(5, 10, value=0.25)), 0.25)


if __name__ == '__main__':
  absltest.main()
