"""nn.norm.GroupNorm against nnx.GroupNorm: values and gradients."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.nn import norm as norm_lib


def _pair(dtype, **kw):
  args = dict(num_features=12, num_groups=4, epsilon=1e-6, dtype=dtype, **kw)
  return (nnx.GroupNorm(**args, rngs=nnx.Rngs(0)),
          norm_lib.GroupNorm(**args, rngs=nnx.Rngs(0)))


def _value_and_grads(module, x, weights):
  graph, params = nnx.split(module)

  def loss(params, x):
    y = nnx.merge(graph, params, copy=True)(x).astype(jnp.float32)
    return jnp.sum(jnp.sin(y) * weights)

  return jax.value_and_grad(loss, (0, 1))(params, x)


def test_same_variables_values_and_gradients():
  rng = np.random.default_rng(0)
  # Off-centre, non-unit data and a non-trivial affine.
  x = jnp.asarray(rng.standard_normal((2, 5, 3, 12)) * 3 + 1, jnp.float32)
  weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  ref, ours = _pair(jnp.float32)
  for m in (ref, ours):
    m.scale[...] = jnp.linspace(0.5, 2, 12)
    m.bias[...] = jnp.linspace(-1, 1, 12)
  assert (jax.tree.structure(nnx.state(ref))
          == jax.tree.structure(nnx.state(ours)))
  got, want = (_value_and_grads(ours, x, weights),
               _value_and_grads(ref, x, weights))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The normalised output has zero mean and unit variance per group.
  y = np.asarray(ours(x)).reshape(2, -1, 4, 3) - np.asarray(
      ours.bias[...]).reshape(4, 3)
  y = y / np.asarray(ours.scale[...]).reshape(4, 3)
  np.testing.assert_allclose(y.mean((1, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var((1, 3)), 1, atol=1e-4)


def test_bf16_compute_and_the_masked_path():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 12)), jnp.float32)
  ref, ours = _pair(jnp.bfloat16)
  assert ours(x).dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(ours(x), np.float32),
                             np.asarray(ref(x), np.float32), atol=2e-2)
  # A mask takes nnx.GroupNorm's own computation: bitwise the same.
  mask = jnp.asarray(rng.uniform(size=(2, 4, 4, 12)) > 0.3)
  ref, ours = _pair(jnp.float32)
  np.testing.assert_array_equal(ours(x, mask=mask), ref(x, mask=mask))
