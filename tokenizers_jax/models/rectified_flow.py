"""Rectified flow (flow matching on straight paths) as pure functions.

Convention (FlexTok's and SD3's): time t in [0, 1] runs from data to noise,

  x_t = (1 - t) * x0 + t * noise,        noise ~ N(0, I),
  v   = d x_t / dt = noise - x0          (the regression target),

so a model v(x_t, t) is trained with E ||v(x_t, t) - (noise - x0)||², and
sampling integrates dx/dt = v from t = 1 (pure noise) down to t = 0 with
Euler steps x <- x - (t_i - t_{i+1}) v(x, t_i). The one-step estimate of the
clean sample from any x_t is x0_hat = x_t - t * v(x_t, t).

Classifier-free guidance combines a conditional and an unconditional velocity
as v_u + w (v_c - v_u) (w = 1: no guidance). Adaptive projected guidance
(APG, Sadat et al. 2024, arXiv 2410.02416; FlexTok's `perform_norm_guidance`)
instead keeps a momentum average m <- d + beta m of d = v_c - v_u (beta =
-0.5), scales it to norm <= r (2.5) per sample, removes its component along
v_c (keeping eta = 0 of it) and returns v_c + (w - 1) m_perp.

Time sampling for training: 'uniform' (t ~ U[0, 1]) or 'logit_normal'
(t = sigmoid(m + s * N(0, 1)), SD3's and FlexTok's `ln` option).

Dimension legend:
  B: batch; ...: any trailing sample axes (pixels, tokens, channels)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

TIME_SAMPLERS = ('uniform', 'logit_normal')
GUIDANCE = ('cfg', 'apg')


def _bcast(t: Array, x: Array) -> Array:
  """t [B] -> [B, 1, ..., 1] to broadcast against x [B, ...]."""
  t = jnp.asarray(t, jnp.float32)
  if t.ndim == 0:
    return t
  if t.shape[0] != x.shape[0]:
    raise ValueError(f'time has shape {t.shape}; expected [{x.shape[0]}] '
                     f'(one per sample of x {x.shape})')
  return t.reshape((-1,) + (1,) * (x.ndim - 1))


def interpolate(x0: Array, noise: Array, t: Array) -> Array:
  """x_t = (1 - t) x0 + t noise; t a scalar or [B]."""
  if x0.shape != noise.shape:
    raise ValueError(f'x0 {x0.shape} and noise {noise.shape} differ in shape')
  tb = _bcast(t, x0)
  return ((1.0 - tb) * x0.astype(jnp.float32)
          + tb * noise.astype(jnp.float32))


def velocity_target(x0: Array, noise: Array) -> Array:
  """The straight-path velocity d x_t / dt = noise - x0."""
  return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def flow_loss(v_pred: Array, x0: Array, noise: Array,
              weights: Array | None = None) -> Array:
  """Mean squared error between v_pred and noise - x0 (fp32 scalar).

  `weights` [B] (e.g. a padding mask) weight each sample's mean error.
  """
  err = jnp.square(v_pred.astype(jnp.float32) - velocity_target(x0, noise))
  per = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
  if weights is None:
    return jnp.mean(per)
  w = weights.astype(jnp.float32)
  return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1e-8)


def x0_estimate(x_t: Array, v: Array, t: Array) -> Array:
  """One-step clean estimate x_t - t v."""
  return x_t.astype(jnp.float32) - _bcast(t, x_t) * v.astype(jnp.float32)


def sample_time(key: Array, batch: int, kind: str = 'uniform', *,
                loc: float = 0.0, scale: float = 1.0) -> Array:
  """[batch] training times in (0, 1)."""
  if kind == 'uniform':
    return jax.random.uniform(key, (batch,), jnp.float32)
  if kind == 'logit_normal':
    return jax.nn.sigmoid(loc + scale * jax.random.normal(key, (batch,),
                                                          jnp.float32))
  raise ValueError(f'unknown time sampler {kind!r}; known: {TIME_SAMPLERS}')


def cfg_combine(v_cond: Array, v_uncond: Array, scale: float) -> Array:
  """Classifier-free guidance v_u + w (v_c - v_u)."""
  return v_uncond + scale * (v_cond - v_uncond)


def apg_combine(v_cond: Array, v_uncond: Array, scale: float,
                running: Array, *, momentum: float = -0.5,
                norm_threshold: float = 2.5, eta: float = 0.0):
  """Adaptive projected guidance: (guided velocity, new momentum average).

  Norms and projections are per sample over all non-batch axes.
  """
  axes = tuple(range(1, v_cond.ndim))
  diff = (v_cond - v_uncond) + momentum * running
  running = diff
  if norm_threshold > 0:
    norm = jnp.sqrt(jnp.sum(jnp.square(diff), axis=axes, keepdims=True))
    diff = diff * jnp.minimum(1.0, norm_threshold / norm)
  unit = v_cond / jnp.maximum(
      jnp.sqrt(jnp.sum(jnp.square(v_cond), axis=axes, keepdims=True)), 1e-12)
  parallel = jnp.sum(diff * unit, axis=axes, keepdims=True) * unit
  update = (diff - parallel) + eta * parallel
  return v_cond + (scale - 1.0) * update, running


def euler_sample(velocity_fn: Callable[[Array, Array], Array], noise: Array,
                 num_steps: int, *, guidance_scale: float = 1.0,
                 uncond_velocity_fn: Callable[[Array, Array], Array]
                 | None = None, guidance: str = 'cfg') -> Array:
  """Integrates dx/dt = v from t = 1 (x = noise) to t = 0 with Euler steps.

  Args:
    velocity_fn: (x [B, ...], t [B]) -> conditional velocity [B, ...].
    noise: the starting point x_1.
    num_steps: number of equal steps (t_i = 1 - i / num_steps).
    guidance_scale: classifier-free guidance weight w; w != 1 needs
      `uncond_velocity_fn`.
    uncond_velocity_fn: (x, t) -> unconditional velocity.
    guidance: 'cfg' (classifier-free guidance) or 'apg' (`apg_combine`
      with FlexTok's settings; the momentum starts at 0).

  Returns:
    x_0, float32, the shape of `noise`.
  """
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1; got {num_steps}')
  if guidance_scale != 1.0 and uncond_velocity_fn is None:
    raise ValueError('guidance_scale != 1 needs an uncond_velocity_fn')
  if guidance not in GUIDANCE:
    raise ValueError(f'unknown guidance {guidance!r}; known: {GUIDANCE}')
  b = noise.shape[0]
  dt = 1.0 / num_steps

  if guidance == 'apg' and guidance_scale != 1.0:

    def apg_body(i, carry):
      x, running = carry
      t = jnp.full((b,), 1.0 - i * dt, jnp.float32)
      v, running = apg_combine(
          velocity_fn(x, t).astype(jnp.float32),
          uncond_velocity_fn(x, t).astype(jnp.float32), guidance_scale,
          running)
      return x - dt * v, running

    x0 = noise.astype(jnp.float32)
    return jax.lax.fori_loop(0, num_steps, apg_body,
                             (x0, jnp.zeros_like(x0)))[0]

  def body(i, x):
    t = jnp.full((b,), 1.0 - i * dt, jnp.float32)
    v = velocity_fn(x, t).astype(jnp.float32)
    if guidance_scale != 1.0:
      v = cfg_combine(v, uncond_velocity_fn(x, t).astype(jnp.float32),
                      guidance_scale)
    return x - dt * v

  return jax.lax.fori_loop(0, num_steps, body, noise.astype(jnp.float32))
