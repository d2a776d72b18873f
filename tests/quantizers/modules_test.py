"""Interface properties of every quantizer module."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import optax

from tokenizers_jax import quantizers as Q


def make(name):
  r = nnx.Rngs(0)
  return {
      'vq': lambda: Q.VectorQuantizer(64, 16, rngs=r),
      'vq_ema_cos_proj': lambda: Q.VectorQuantizer(
          64, 16, codebook_dim=4, ema_update=True, use_cosine_sim=True,
          rotation_trick=True, entropy_loss_weight=0.1, rngs=r),
      'simvq': lambda: Q.VectorQuantizer(64, 16, simvq=True, rngs=r),
      'rvq': lambda: Q.ResidualVQ(3, 32, 16, quantize_dropout=True, rngs=r),
      'rvq_fsq': lambda: Q.ResidualVQ(2, 0, 16, quantizer='fsq', levels=(5, 5, 5), rngs=r),
      'fq': lambda: Q.FactorizedVQ(2, 32, 16, rngs=r),
      'lfq': lambda: Q.LFQ(2 ** 8, 16, rngs=r),
      'group_lfq': lambda: Q.LFQ(2 ** 8, num_groups=4),
      'bsq': lambda: Q.make_quantizer('bsq', codebook_size=2 ** 6, dim=16, rngs=r),
      'fsq': lambda: Q.FSQ((8, 5, 5, 5), 16, rngs=r),
  }[name]()


ALL = ['vq', 'vq_ema_cos_proj', 'simvq', 'rvq', 'rvq_fsq', 'fq', 'lfq',
       'group_lfq', 'bsq', 'fsq']


class InterfaceTest(parameterized.TestCase):

  @parameterized.parameters(*ALL)
  def test_output_contract_and_decode_roundtrip(self, name):
    q = make(name)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, q.dim))
    out = q(x, train=True)
    self.assertEqual(out.quantized.shape, x.shape)
    self.assertEqual(out.quantized.dtype, x.dtype)
    self.assertEqual(out.indices.dtype, jnp.int32)
    self.assertEqual(out.indices.shape, q.index_shape(x.shape))
    self.assertEqual(out.loss.shape, ())
    self.assertIn('usage', out.metrics)
    self.assertIn('perplexity', out.metrics)
    for v in out.metrics.values():
      self.assertEqual(jnp.shape(v), ())
    ev = q(x, train=False)
    np.testing.assert_array_equal(q.encode(x), ev.indices)
    np.testing.assert_array_equal(q.decode(ev.indices), ev.quantized)
    # bf16 in, bf16 out.
    self.assertEqual(q(x.astype(jnp.bfloat16)).quantized.dtype, jnp.bfloat16)

  @parameterized.parameters('vq', 'fq', 'lfq', 'fsq', 'rvq')
  def test_gradients_reach_the_input(self, name):
    q = make(name)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 5, q.dim))
    graphdef, state = nnx.split(q)

    def f(x, state):
      # copy=True: the merged module's state lives in this (grad) trace, so
      # the quantizer may update its statistics while being differentiated.
      m = nnx.merge(graphdef, state, copy=True)
      return jnp.sum(m(x, train=True).quantized * jnp.arange(q.dim))

    g = jax.jit(jax.grad(f))(x, state)
    self.assertTrue(bool(jnp.all(jnp.isfinite(g))))
    self.assertGreater(float(jnp.abs(g).sum()), 0.0)
    if name == 'vq':  # No projections: the STE gradient is the identity.
      np.testing.assert_allclose(g, jnp.broadcast_to(jnp.arange(q.dim), x.shape))


class BadInputTest(parameterized.TestCase):

  def test_wrong_last_dimension(self):
    with self.assertRaisesRegex(ValueError, r'\(\.\.\., 16\).*last dimension 8'):
      make('vq')(jnp.ones((2, 8)))

  def test_integer_input(self):
    with self.assertRaisesRegex(TypeError, 'floating-point'):
      make('fsq')(jnp.ones((2, 16), jnp.int32))

  @parameterized.parameters('vq', 'lfq', 'fsq', 'rvq')
  def test_nan_input_eager(self, name):
    q = make(name)
    x = jnp.ones((2, q.dim)).at[1, 3].set(jnp.nan)
    with self.assertRaisesRegex(ValueError, 'NaN or Inf'):
      q(x)

  def test_nan_input_under_jit_with_checkify(self):
    q = make('vq')
    graphdef, state = nnx.split(q)

    def f(x, state):
      return nnx.merge(graphdef, state)(x).indices

    # Outside `traced_checks` a traced quantizer carries no check, so jitted
    # callers keep JAX's fast dispatch path (no effects in the jaxpr).
    # (A separate function: JAX caches traces, and the flag is read when
    # tracing.)
    unchecked = lambda x, state: f(x, state)
    self.assertEqual(
        jax.make_jaxpr(unchecked)(jnp.ones((2, 16)), state).effects, set())
    checked = checkify.checkify(jax.jit(f), errors=checkify.user_checks)
    with Q.traced_checks():
      err, _ = checked(jnp.ones((2, 16)), state)
      err.throw()  # No error for finite input.
      err, _ = checked(jnp.ones((2, 16)).at[0, 0].set(jnp.inf), state)
    with self.assertRaisesRegex(checkify.JaxRuntimeError, 'NaN or Inf'):
      err.throw()

  @parameterized.parameters(('vq', 64), ('fsq', 1000), ('group_lfq', 4))
  def test_decode_out_of_range(self, name, bad):
    q = make(name)
    shape = q.index_shape((3, q.dim))
    with self.assertRaisesRegex(ValueError, 'out of range'):
      q.decode(jnp.full(shape, bad, jnp.int32))
    with self.assertRaisesRegex(TypeError, 'integers'):
      q.decode(jnp.zeros(shape, jnp.float32))

  def test_rvq_decode_accepts_minus_one_only(self):
    q = make('rvq')
    q.decode(jnp.asarray([[0, -1, -1]], jnp.int32))
    with self.assertRaisesRegex(ValueError, 'out of range'):
      q.decode(jnp.asarray([[0, -2, -1]], jnp.int32))

  def test_bad_constructor_arguments(self):
    with self.assertRaisesRegex(ValueError, 'power of two'):
      Q.LFQ(1000)
    with self.assertRaisesRegex(ValueError, 'num_groups'):
      Q.LFQ(2 ** 6, num_groups=4)
    with self.assertRaisesRegex(ValueError, 'unknown quantizer'):
      Q.make_quantizer('vqq', rngs=nnx.Rngs(0))


class StateTest(parameterized.TestCase):

  def test_statistics_are_not_params_and_optimizer_skips_them(self):
    q = Q.VectorQuantizer(32, 8, ema_update=True, kmeans_init=True, rngs=nnx.Rngs(0))
    params = nnx.state(q, nnx.Param)
    stats = nnx.state(q, Q.QuantizerState)
    self.assertNotIn('codebook', params)
    self.assertIn('codebook', stats)
    self.assertIn('cluster_size', stats)
    g = Q.VectorQuantizer(32, 8, rngs=nnx.Rngs(0))
    self.assertIn('codebook', nnx.state(g, nnx.Param))
    self.assertNotIn('cluster_size', nnx.state(g, nnx.Param))
    opt = nnx.Optimizer(g, optax.sgd(0.1), wrt=nnx.Param)
    self.assertEqual(jax.tree.structure(opt.opt_state), jax.tree.structure(opt.opt_state))

  def test_gradient_codebook_learns(self):
    q = Q.VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(q, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.PRNGKey(3), (256, 4))

    @nnx.jit
    def step(q, opt, x):
      loss, grads = nnx.value_and_grad(lambda m: m(x, train=True).loss)(q)
      opt.update(q, grads)
      return loss

    first = float(step(q, opt, x))
    for _ in range(150):
      last = float(step(q, opt, x))
    self.assertLess(last, 0.5 * first)

  def test_kmeans_init_inside_jit(self):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 4)) * 10
    x = jnp.asarray(np.concatenate([c + 0.01 * rng.normal(size=(64, 4)) for c in centers]),
                    jnp.float32)
    q = Q.VectorQuantizer(16, 4, kmeans_init=True, kmeans_iters=20, ema_update=True,
                          rngs=nnx.Rngs(0))
    plain = Q.VectorQuantizer(16, 4, ema_update=True, rngs=nnx.Rngs(0))
    baseline = float(plain(x).metrics['commitment'])
    before = np.asarray(q.codebook[...])

    @nnx.jit
    def step(q, x):
      return q(x, train=True)

    out = step(q, x)
    self.assertTrue(bool(q.initialized[...]))
    self.assertFalse(np.allclose(before, q.codebook[...]))
    # After the k-means init every blob has a code: the quantization error
    # drops from the data scale to the blob noise scale.
    self.assertGreater(baseline, 10.0)
    self.assertLess(float(out.metrics['commitment']), 1e-3 * baseline)
    after = np.asarray(q.codebook[...])
    step(q, x)  # Second call: no re-initialisation, only the EMA update.
    np.testing.assert_allclose(q.codebook[...], after, atol=1e-3)

  def test_dead_code_restart(self):
    q = Q.VectorQuantizer(16, 4, ema_update=True, decay=0.5,
                          threshold_ema_dead_code=0.5, rngs=nnx.Rngs(0))
    # Data far from the initial codes, concentrated on a few points.
    x = jnp.asarray(np.random.default_rng(1).normal(size=(64, 4)) + 5.0, jnp.float32)

    @nnx.jit
    def step(q, x):
      return q(x, train=True)

    usages = [float(step(q, x).metrics['usage']) for _ in range(6)]
    self.assertLess(usages[0], 0.25)
    self.assertGreater(usages[-1], 0.9)
    self.assertEqual(float(step(q, x).metrics['dead_codes']), 0.0)


class ResidualTest(parameterized.TestCase):

  def test_dropout_is_per_example_and_marked(self):
    q = Q.ResidualVQ(4, 16, 8, quantize_dropout=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 3, 8))
    out = q(x, train=True)
    idx = np.asarray(out.indices)
    kept = (idx >= 0).sum(-1)  # [B, T]
    # Constant within an example, varying across examples, always >= 1 level,
    # and always a prefix of the levels.
    self.assertTrue(np.all(kept == kept[:, :1]))
    self.assertGreater(len(np.unique(kept[:, 0])), 2)
    self.assertTrue(np.all(kept >= 1))
    self.assertTrue(np.all(np.diff((idx >= 0).astype(int), axis=-1) <= 0))
    # decode(indices with -1) equals the sum over the kept levels.
    dec = q.decode(out.indices)
    eval_full = q(x, train=False)
    for b in range(4):
      k = kept[b, 0]
      partial = q.decode(eval_full.indices[b:b + 1], num_levels=int(k))
      np.testing.assert_allclose(dec[b:b + 1], partial, rtol=1e-6, atol=1e-6)
      np.testing.assert_array_equal(out.indices[b, :, :k], eval_full.indices[b, :, :k])

  def test_residual_error_decreases_with_depth(self):
    q = Q.ResidualVQ(4, 64, 8, kmeans_init=True, ema_update=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (512, 8))
    q(x, train=True)
    idx = q.encode(x)
    errs = [float(jnp.mean((q.decode(idx, num_levels=l) - x) ** 2)) for l in range(1, 5)]
    self.assertTrue(all(a > b for a, b in zip(errs, errs[1:])), errs)


class BridgeTest(absltest.TestCase):

  def test_linen_users_get_the_module_through_nnx_bridge(self):
    from flax.nnx import bridge  # pylint: disable=g-import-not-at-top
    model = bridge.ToLinen(Q.FSQ, args=((5, 5, 5),))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    out = model.apply(variables, x)
    np.testing.assert_array_equal(out.indices, Q.FSQ((5, 5, 5))(x).indices)
    lin = bridge.ToLinen(Q.VectorQuantizer, args=(16, 4))
    variables = lin.init(jax.random.PRNGKey(0), x[:, :3].repeat(2, -1)[:, :4])
    out = lin.apply(variables, x[:, :3].repeat(2, -1)[:, :4])
    self.assertEqual(out.indices.shape, (4,))


if __name__ == '__main__':
  absltest.main()
