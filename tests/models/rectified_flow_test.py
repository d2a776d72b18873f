"""Rectified flow: conventions, loss and Euler sampler against closed forms.

The known answer is the flow between two 1D Gaussians: with data
x0 ~ N(mu, s²) and noise ~ N(0, 1), x_t = (1 - t) x0 + t noise is Gaussian
with mean m(t) = (1 - t) mu and std sd(t) = sqrt((1 - t)² s² + t²), and the
marginal velocity field is u(x, t) = m'(t) + sd'(t) / sd(t) (x - m(t)). Its
ODE maps noise z (t = 1) to mu + s z (t = 0) exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tokenizers_jax.models import rectified_flow as rf

MU, S = 1.5, 0.5


def gaussian_field(x, t):
  m = (1 - t) * MU
  var = (1 - t) ** 2 * S ** 2 + t ** 2
  dvar = -2 * (1 - t) * S ** 2 + 2 * t
  return -MU + 0.5 * dvar / var * (x - m)


def test_interpolation_target_and_loss_match_numpy():
  rng = np.random.default_rng(0)
  x0, noise = rng.normal(size=(2, 4, 3, 5))
  t = rng.uniform(size=4)
  v = rng.normal(size=(4, 3, 5))
  tb = t[:, None, None]
  np.testing.assert_allclose(rf.interpolate(x0, noise, t),
                             (1 - tb) * x0 + tb * noise, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rf.velocity_target(x0, noise), noise - x0,
                             rtol=1e-6)
  per = ((v - (noise - x0)) ** 2).reshape(4, -1).mean(1)
  np.testing.assert_allclose(rf.flow_loss(v, x0, noise), per.mean(),
                             rtol=1e-5)
  w = np.array([1, 0, 1, 1.0])
  np.testing.assert_allclose(rf.flow_loss(v, x0, noise, w),
                             (per * w).sum() / 3, rtol=1e-5)
  x_t = rf.interpolate(x0, noise, t)
  # With the exact target, the one-step estimate recovers x0.
  np.testing.assert_allclose(
      rf.x0_estimate(x_t, rf.velocity_target(x0, noise), t), x0, atol=1e-5)
  with pytest.raises(ValueError, match='one per sample'):
    rf.interpolate(x0, noise, t[:3])


def test_loss_is_minimised_by_the_marginal_gaussian_field():
  """For the conditional-mean field u*, E||u* + d - target||² exceeds
  E||u* - target||² by d² (the cross term vanishes): checked by Monte Carlo
  for d = +-0.3, with x_t and the target from the library's conventions."""
  n = 200_000
  k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = MU + S * jax.random.normal(k0, (n, 1))
  noise = jax.random.normal(k1, (n, 1))
  t = rf.sample_time(k2, n, 'uniform') * 0.98 + 0.01
  x_t = rf.interpolate(x0, noise, t)
  u = gaussian_field(x_t, t[:, None])
  base = float(rf.flow_loss(u, x0, noise))
  for d in (0.3, -0.3):
    extra = float(rf.flow_loss(u + d, x0, noise)) - base
    np.testing.assert_allclose(extra, d * d, atol=0.015)
  # The reversed convention (target x0 - noise) is far from optimal.
  assert float(rf.flow_loss(-u, x0, noise)) > base + 1.0


def test_euler_sampler_maps_noise_to_the_data_gaussian():
  z = jnp.linspace(-2.0, 2.0, 9)[:, None]
  out = rf.euler_sample(lambda x, t: gaussian_field(x, t[:, None]), z, 400)
  np.testing.assert_allclose(out, MU + S * z, atol=5e-3)
  # One step from t = 1: x - u(x, 1) = x - (-mu + x) = mu.
  one = rf.euler_sample(lambda x, t: gaussian_field(x, t[:, None]), z, 1)
  np.testing.assert_allclose(one, np.full_like(z, MU), atol=1e-5)


def test_classifier_free_guidance():
  """Constant velocities a (cond) and b (uncond): x0 = x1 - (b + w (a - b))."""
  x1 = jnp.zeros((3, 2))
  a, b = 2.0, 0.5
  for w in (1.0, 3.0):
    out = rf.euler_sample(lambda x, t: jnp.full_like(x, a), x1, 5,
                          guidance_scale=w,
                          uncond_velocity_fn=lambda x, t: jnp.full_like(x, b))
    np.testing.assert_allclose(out, -(b + w * (a - b)) * np.ones((3, 2)),
                               rtol=1e-5)
  with pytest.raises(ValueError, match='uncond_velocity_fn'):
    rf.euler_sample(lambda x, t: x, x1, 2, guidance_scale=2.0)


def test_time_samplers():
  key = jax.random.PRNGKey(1)
  t = np.asarray(rf.sample_time(key, 20000, 'logit_normal', loc=0.5,
                                scale=0.8), np.float64)
  logit = np.log(t / (1 - t))
  assert stats.kstest(logit, stats.norm(0.5, 0.8).cdf).pvalue > 1e-3
  u = np.asarray(rf.sample_time(key, 20000, 'uniform'), np.float64)
  assert stats.kstest(u, 'uniform').pvalue > 1e-3
  with pytest.raises(ValueError, match='unknown time sampler'):
    rf.sample_time(key, 3, 'beta')
