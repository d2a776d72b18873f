"""Shared helpers for the front-end tests."""

import jax.numpy as jnp
import numpy as np
from flax import nnx


def fill_params(module, seed: int = 0) -> None:
  """Fills every nnx.Param of `module` from numpy (fast on CPU: no per-shape
  initializer compiles): kernels ~ N(0, 1/fan_in), norm scales ~ 1 + 0.2·N,
  everything else ~ 0.2·N."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    if path[-1] == 'kernel':
      value = rng.normal(size=var.shape) / np.sqrt(np.prod(var.shape[:-1]))
    elif path[-1] == 'scale':
      value = 1.0 + 0.2 * rng.normal(size=var.shape)
    else:
      value = 0.2 * rng.normal(size=var.shape)
    var.set_value(jnp.asarray(value, jnp.float32))
