"""Quantizers under jax.jit on a device mesh of 8 simulated CPU devices give the
same indices, losses and state updates as on one device: statistics, EMA
updates, k-means and the entropy batch term are over the global batch."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from tokenizers_jax import quantizers as Q
from tokenizers_jax import sharding

RULES = (('codebook', 'model'), ('batch', 'data'))


def make(name):
  r = nnx.Rngs(0)
  return {
      # K/model = 128 per shard: bitwise-identical scores (128-code blocks).
      'vq_ema_kmeans_restart': lambda: Q.VectorQuantizer(
          256, 8, ema_update=True, kmeans_init=True, kmeans_iters=3,
          threshold_ema_dead_code=2.0, rngs=r),
      'vq_grad_entropy': lambda: Q.VectorQuantizer(
          256, 8, entropy_loss_weight=0.1, rngs=r),
      'lfq': lambda: Q.LFQ(2 ** 8),
      'rvq_dropout': lambda: Q.ResidualVQ(2, 256, 8, quantize_dropout=True,
                                          ema_update=True, rngs=r),
  }[name]()


def run_steps(module, xs, mesh=None):
  graphdef, state = nnx.split(module)

  def step(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    out = m(x, train=True)
    return out, nnx.state(m)

  step = jax.jit(step)
  if mesh is not None:
    state = sharding.shard_state(state, mesh, RULES)
  outs = []
  for x in xs:
    if mesh is not None:
      x = jax.device_put(x, NamedSharding(mesh, P('data')))
    out, state = step(state, x)
    outs.append(out)
  return outs, state


class ShardingTest(parameterized.TestCase):

  def test_eight_devices_are_available(self):
    self.assertEqual(jax.device_count(), 8)

  @parameterized.parameters('vq_ema_kmeans_restart', 'vq_grad_entropy', 'lfq',
                            'rvq_dropout')
  def test_mesh_matches_single_device(self, name):
    xs = [jax.random.normal(jax.random.PRNGKey(i), (16, 8, 8)) for i in range(2)]
    single, s_state = run_steps(make(name), xs)
    mesh = sharding.make_mesh((4, 1, 2))
    sharded, m_state = run_steps(make(name), xs, mesh)
    if name.startswith('vq'):
      cb = m_state['codebook'][...]
      self.assertEqual(cb.sharding.spec[0], 'model')  # K axis sharded.
    for a, b in zip(single, sharded):
      np.testing.assert_array_equal(a.indices, b.indices)
      np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5, atol=1e-6)
      for k in a.metrics:
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], rtol=1e-5, atol=1e-6,
                                   err_msg=k)
    flat_s = jax.tree.leaves(s_state)
    flat_m = jax.tree.leaves(m_state)
    for a, b in zip(flat_s, flat_m):
      if jnp.issubdtype(a.dtype, jnp.floating):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      else:
        np.testing.assert_array_equal(a, b)


if __name__ == '__main__':
  absltest.main()
