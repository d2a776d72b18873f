"""Adversarial losses, LeCam regularization and the VQGAN adaptive GAN weight.

All functions are pure `jnp` (no Flax), jit-friendly, without Python branching
on traced values, and compute in float32 whatever the logits' dtype. Means
are over every element of the logits (all patches of a PatchGAN).

Conventions: discriminator losses take `(logits_real, logits_fake)` and are
minimized by the discriminator; generator losses take `logits_fake` (the
discriminator's logits on reconstructions) and are minimized by the
generator.

Dimension legend:
  B: batch size
  h, w: patch-logit grid of a PatchGAN ([B, h, w, 1] logits); any shape works
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _f32(x) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


# -----------------------------------------------------------------------------
# Discriminator losses.
# -----------------------------------------------------------------------------


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
  """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))."""
  loss_real = jnp.mean(jax.nn.relu(1.0 - _f32(logits_real)))
  loss_fake = jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake)))
  return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: Array, logits_fake: Array) -> Array:
  """Binary cross-entropy on logits.

  0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x_hat)))).
  """
  loss_real = jnp.mean(jax.nn.softplus(-_f32(logits_real)))
  loss_fake = jnp.mean(jax.nn.softplus(_f32(logits_fake)))
  return 0.5 * (loss_real + loss_fake)


def least_squares_d_loss(logits_real: Array, logits_fake: Array) -> Array:
  """LSGAN: 0.5 * (mean((D(x) - 1)^2) + mean(D(x_hat)^2))."""
  loss_real = jnp.mean(jnp.square(_f32(logits_real) - 1.0))
  loss_fake = jnp.mean(jnp.square(_f32(logits_fake)))
  return 0.5 * (loss_real + loss_fake)


# -----------------------------------------------------------------------------
# Generator losses.
# -----------------------------------------------------------------------------


def hinge_g_loss(logits_fake: Array) -> Array:
  """-mean(D(x_hat)) (the VQGAN generator term)."""
  return -jnp.mean(_f32(logits_fake))


def vanilla_g_loss(logits_fake: Array) -> Array:
  """Non-saturating generator loss.

  mean(softplus(-D(x_hat))) = -mean(log sigmoid(D(x_hat))).
  """
  return jnp.mean(jax.nn.softplus(-_f32(logits_fake)))


def least_squares_g_loss(logits_fake: Array) -> Array:
  """LSGAN: 0.5 * mean((D(x_hat) - 1)^2)."""
  return 0.5 * jnp.mean(jnp.square(_f32(logits_fake) - 1.0))


D_LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    'hinge': hinge_d_loss,
    'vanilla': vanilla_d_loss,
    'least_squares': least_squares_d_loss,
}

G_LOSSES: dict[str, Callable[[Array], Array]] = {
    'hinge': hinge_g_loss,
    'vanilla': vanilla_g_loss,
    'least_squares': least_squares_g_loss,
}


def get_d_loss(name: str) -> Callable[[Array, Array], Array]:
  """The discriminator loss registered as `name` (see `D_LOSSES`)."""
  if name not in D_LOSSES:
    raise ValueError(
        f'Unknown discriminator loss {name!r}; expected one of '
        f'{sorted(D_LOSSES)}.')
  return D_LOSSES[name]


def get_g_loss(name: str) -> Callable[[Array], Array]:
  """The generator loss registered as `name` (see `G_LOSSES`)."""
  if name not in G_LOSSES:
    raise ValueError(
        f'Unknown generator loss {name!r}; expected one of {sorted(G_LOSSES)}.')
  return G_LOSSES[name]


# -----------------------------------------------------------------------------
# LeCam regularization (Tseng et al., 2021).
# -----------------------------------------------------------------------------


def lecam_ema_update(ema_real: Array, ema_fake: Array, logits_real: Array,
                     logits_fake: Array, decay: float = 0.99
                     ) -> tuple[Array, Array]:
  """One EMA step of the mean real and fake logits (explicit state).

  Args:
    ema_real: float32 scalar, EMA of mean(D(x)).
    ema_fake: float32 scalar, EMA of mean(D(x_hat)).
    logits_real: discriminator logits on real data.
    logits_fake: discriminator logits on reconstructions.
    decay: EMA decay.

  Returns:
    (new_ema_real, new_ema_fake), gradient-free.
  """
  mean_real = lax.stop_gradient(jnp.mean(_f32(logits_real)))
  mean_fake = lax.stop_gradient(jnp.mean(_f32(logits_fake)))
  new_real = decay * _f32(ema_real) + (1.0 - decay) * mean_real
  new_fake = decay * _f32(ema_fake) + (1.0 - decay) * mean_fake
  return new_real, new_fake


def lecam_regularizer(logits_real: Array, logits_fake: Array, ema_real: Array,
                      ema_fake: Array) -> Array:
  """mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(x_hat))^2).

  The EMA anchors are treated as constants (no gradient). Add it to the
  discriminator loss with a weight (e.g. 0.001).
  """
  ema_real = lax.stop_gradient(_f32(ema_real))
  ema_fake = lax.stop_gradient(_f32(ema_fake))
  reg_real = jnp.mean(jnp.square(jax.nn.relu(_f32(logits_real) - ema_fake)))
  reg_fake = jnp.mean(jnp.square(jax.nn.relu(ema_real - _f32(logits_fake))))
  return reg_real + reg_fake


# -----------------------------------------------------------------------------
# VQGAN adaptive generator weight and the discriminator start gate.
# -----------------------------------------------------------------------------


def _global_norm(tree) -> Array:
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(_f32(g))) for g in leaves))


def adaptive_generator_weight(nll_grad, g_grad, disc_weight: float = 1.0,
                              eps: float = 1e-4, max_weight: float = 1e4
                              ) -> Array:
  """VQGAN's balance between reconstruction and adversarial gradients.

  weight = clip(||grad nll|| / (||grad g|| + eps), 0, max_weight) * disc_weight,
  with both gradients taken w.r.t. the decoder's last layer weight (for
  example `ImageDecoder.last_layer`) and the result detached.

  Args:
    nll_grad: gradient of the reconstruction (+ perceptual) loss w.r.t. the
      last layer weight (an array or a pytree of arrays).
    g_grad: gradient of the generator adversarial loss w.r.t. the same weight.
    disc_weight: the configured adversarial weight (taming: 0.8).
    eps: denominator guard.
    max_weight: upper clamp.

  Returns:
    float32 scalar without gradient.
  """
  ratio = _global_norm(nll_grad) / (_global_norm(g_grad) + eps)
  ratio = jnp.clip(ratio, 0.0, max_weight)
  return lax.stop_gradient(ratio) * disc_weight


def disc_start_gate(step, disc_start, weight=1.0, value=0.0) -> Array:
  """`value` before step `disc_start`, `weight` from then on (float32).

  taming's `adopt_weight`: multiply the adversarial terms (the generator's
  and the discriminator's) by this factor. Uses `jnp.where`, so `step` may be
  a traced array.
  """
  step = jnp.asarray(step)
  return jnp.where(step < disc_start, _f32(value), _f32(weight))
