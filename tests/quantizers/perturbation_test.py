"""Tests of RobustTok latent perturbation against brute force and statistics."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax import quantizers as Q
from tokenizers_jax.quantizers import perturbation as P


def numpy_table(codes, delta, cosine=False):
  """Brute force: stable argsort of the full distance matrix, self excluded."""
  c = np.asarray(codes, np.float64)
  if cosine:
    c = c / np.linalg.norm(c, axis=-1, keepdims=True)
    d = 1.0 - c @ c.T
  else:
    d = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, axis=1, kind='stable')[:, :delta]


def in_table(table, old, new):
  """Bool per position: `new` is in the table row of `old`."""
  return (np.asarray(table)[old] == new[..., None]).any(-1)


class NearestCodeTableTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_matches_brute_force(self, cosine):
    codes = jax.random.normal(jax.random.PRNGKey(0), (203, 6))
    table = P.nearest_code_table(codes, 17, cosine=cosine)
    self.assertEqual(table.shape, (203, 17))
    self.assertEqual(table.dtype, jnp.int32)
    np.testing.assert_array_equal(table, numpy_table(codes, 17, cosine))

  def test_chunked_equals_unchunked_and_excludes_self(self):
    codes = jax.random.normal(jax.random.PRNGKey(1), (150, 4))
    full = P.nearest_code_table(codes, 9, chunk_size=None)
    for chunk in (1, 7, 64, 1000):
      np.testing.assert_array_equal(
          P.nearest_code_table(codes, 9, chunk_size=chunk), full)
    full = np.asarray(full)
    self.assertFalse((full == np.arange(150)[:, None]).any())
    for row in full:
      self.assertLen(set(row.tolist()), 9)

  def test_ties_go_to_the_lower_index_on_a_grid(self):
    grid = Q.FSQ((5, 5, 4)).implicit_codebook()  # Exact dyadic values.
    np.testing.assert_array_equal(P.nearest_code_table(grid, 12),
                                  numpy_table(grid, 12))

  def test_under_jit_and_delta_bounds(self):
    codes = jax.random.normal(jax.random.PRNGKey(2), (20, 3))
    table = jax.jit(functools.partial(P.nearest_code_table, delta=19,
                                      chunk_size=8))(codes)
    np.testing.assert_array_equal(table, numpy_table(codes, 19))
    with self.assertRaisesRegex(ValueError, r'delta must be in \[1, K\) = \[1, 20\)'):
      P.nearest_code_table(codes, 20)
    with self.assertRaisesRegex(ValueError, 'delta'):
      P.nearest_code_table(codes, 0)
    with self.assertRaisesRegex(ValueError, r'\[K, C\]'):
      P.nearest_code_table(codes[None], 3)


class PerturbIndicesTest(parameterized.TestCase):
  B, T, K, DELTA = 4000, 16, 64, 5

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    codes = jax.random.normal(jax.random.PRNGKey(3), (cls.K, 4))
    cls.table = P.nearest_code_table(codes, cls.DELTA)
    cls.indices = jax.random.randint(jax.random.PRNGKey(4), (cls.B, cls.T), 0,
                                     cls.K)
    cls.perturb = staticmethod(jax.jit(P.perturb_indices))

  def run_perturb(self, alpha, beta, seed=5):
    new, info = self.perturb(jax.random.PRNGKey(seed), self.indices, self.table,
                             alpha, beta)
    return np.asarray(self.indices), np.asarray(new), info

  def test_statistics(self):
    alpha, beta = 0.3, 0.1
    old, new, info = self.run_perturb(alpha, beta)
    changed = new != old
    # Every change is a top-delta neighbour of the original code.
    self.assertTrue(in_table(self.table, old, new)[changed].all())
    # Chosen samples: binomial(B, beta); 5 sigma.
    frac = float(info['sample_fraction'])
    self.assertLess(abs(frac - beta), 5 * np.sqrt(beta * (1 - beta) / self.B))
    # Changed codes: per-sample fraction X = chosen * Binomial(T, alpha) / T.
    code_frac = float(info['code_fraction'])
    self.assertAlmostEqual(code_frac, changed.mean(), places=6)
    var_x = beta * (alpha * (1 - alpha) / self.T + alpha ** 2) - (alpha * beta) ** 2
    self.assertLess(abs(code_frac - alpha * beta), 5 * np.sqrt(var_x / self.B))
    # Within the chosen samples about alpha of the codes change: samples with
    # any change are chosen, and there are at most frac * B of them.
    touched = changed.any(-1)
    self.assertLessEqual(touched.sum(), round(frac * self.B))
    p_touched = beta * (1 - (1 - alpha) ** self.T)
    self.assertLess(abs(touched.mean() - p_touched),
                    5 * np.sqrt(p_touched * (1 - p_touched) / self.B))

  def test_alpha_one_changes_whole_samples_uniformly(self):
    old, new, info = self.run_perturb(1.0, 0.25)
    changed = new != old
    # Each sample is either untouched (unchosen) or entirely replaced.
    per_sample = changed.mean(-1)
    self.assertTrue(np.isin(per_sample, (0.0, 1.0)).all())
    self.assertAlmostEqual(float(info['sample_fraction']), per_sample.mean(), places=6)
    self.assertAlmostEqual(float(info['code_fraction']), per_sample.mean(), places=6)
    # Replacements are uniform over the delta neighbours.
    rows = np.asarray(self.table)[old[changed]]
    cols = np.argmax(rows == new[changed][:, None], axis=-1)
    counts = np.bincount(cols, minlength=self.DELTA)
    n, p = changed.sum(), 1.0 / self.DELTA
    np.testing.assert_array_less(np.abs(counts - n * p), 5 * np.sqrt(n * p * (1 - p)))

  def test_extremes_and_determinism(self):
    old, new, info = self.run_perturb(1.0, 0.0)
    np.testing.assert_array_equal(new, old)
    self.assertEqual(float(info['code_fraction']), 0.0)
    old, new, _ = self.run_perturb(0.0, 1.0)
    np.testing.assert_array_equal(new, old)
    old, new, info = self.run_perturb(1.0, 1.0)
    self.assertTrue((new != old).all())
    self.assertTrue(in_table(self.table, old, new).all())
    self.assertEqual(float(info['sample_fraction']), 1.0)
    self.assertEqual(float(info['code_fraction']), 1.0)
    _, again, _ = self.run_perturb(1.0, 1.0)
    np.testing.assert_array_equal(again, new)
    _, other, _ = self.run_perturb(1.0, 1.0, seed=6)
    self.assertFalse((other == new).all())

  def test_traced_beta(self):
    beta_fn = jax.jit(lambda key, b: P.perturb_indices(
        key, self.indices, self.table, 1.0, b)[1]['sample_fraction'])
    self.assertEqual(float(beta_fn(jax.random.PRNGKey(0), 0.0)), 0.0)
    self.assertEqual(float(beta_fn(jax.random.PRNGKey(0), 1.0)), 1.0)

  def test_per_group_tables_and_dropped_codes(self):
    t0 = self.table
    t1 = P.nearest_code_table(jax.random.normal(jax.random.PRNGKey(7), (32, 3)), 3)
    idx = np.stack([np.asarray(self.indices[:500]),
                    np.asarray(self.indices[:500]) % 32], axis=-1)  # [B, T, 2]
    idx[::3, 2, 1] = -1  # Dropped RVQ levels stay dropped.
    new, info = jax.jit(P.perturb_indices)(jax.random.PRNGKey(8),
                                           jnp.asarray(idx), (t0, t1), 1.0, 1.0)
    new = np.asarray(new)
    np.testing.assert_array_equal(new[::3, 2, 1], -1)
    valid = idx >= 0
    self.assertTrue((new != idx)[valid].all())
    self.assertTrue(in_table(t0, idx[..., 0], new[..., 0]).all())
    ok1 = in_table(t1, np.maximum(idx[..., 1], 0), new[..., 1])
    self.assertTrue(ok1[valid[..., 1]].all())
    self.assertEqual(float(info['code_fraction']), 1.0)

  def test_bad_arguments(self):
    key = jax.random.PRNGKey(0)
    with self.assertRaisesRegex(ValueError, 'alpha must be a scalar probability'):
      P.perturb_indices(key, self.indices, self.table, 1.5, 0.1)
    with self.assertRaisesRegex(ValueError,
                                r'2 tables need indices of shape \[B, \.\.\., 2\]'):
      P.perturb_indices(key, self.indices, (self.table, self.table), 1.0, 0.1)
    with self.assertRaisesRegex(TypeError, 'integers'):
      P.perturb_indices(key, self.indices.astype(jnp.float32), self.table, 1.0, 0.1)


class AnnealTest(absltest.TestCase):

  def test_values(self):
    steps = jnp.asarray([0, 100, 150, 175, 200, 1000])
    np.testing.assert_allclose(P.anneal_factor(steps, 100, 200),
                               [1.0, 1.0, 0.5, 0.25, 0.0, 0.0])
    np.testing.assert_array_equal(P.anneal_factor(steps, 100, None), 1.0)
    np.testing.assert_array_equal(P.anneal_factor(steps, 200, 100), 1.0)
    np.testing.assert_array_equal(P.anneal_factor(steps, 100, 100), 1.0)
    jitted = jax.jit(lambda s: P.anneal_factor(s, 0, 10))
    self.assertAlmostEqual(float(jitted(3)), 0.7, places=6)

  def test_config(self):
    cfg = P.LatentPerturbation(beta=0.2, anneal_start=10, anneal_end=20)
    self.assertAlmostEqual(float(cfg.beta_at(15)), 0.1, places=6)
    self.assertAlmostEqual(float(cfg.beta_at(None)), 0.2, places=6)
    self.assertEqual((cfg.alpha, cfg.delta), (1.0, 100))
    with self.assertRaisesRegex(ValueError, 'beta must be in'):
      P.LatentPerturbation(beta=2.0)


def make(name):
  r = nnx.Rngs(0)
  return {
      'vq': lambda: Q.VectorQuantizer(64, 8, rngs=r),
      'vq_cos_proj': lambda: Q.VectorQuantizer(64, 8, codebook_dim=4,
                                               use_cosine_sim=True, rngs=r),
      'fq': lambda: Q.FactorizedVQ(2, 32, 8, codebook_dim=4, rngs=r),
      'rvq': lambda: Q.ResidualVQ(3, 32, 8, quantize_dropout=True, rngs=r),
      'fsq': lambda: Q.FSQ((5, 5, 4), 8, rngs=r),
      'group_lfq': lambda: Q.LFQ(2 ** 8, 8, num_groups=2, rngs=r),
  }[name]()


ALL = ['vq', 'vq_cos_proj', 'fq', 'rvq', 'fsq', 'group_lfq']
DELTA = 5


class PerturbOutputTest(parameterized.TestCase):

  @parameterized.parameters(*ALL)
  def test_value_and_gradient(self, name):
    q = make(name)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 4, q.dim))
    w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    key = jax.random.PRNGKey(3)
    graphdef, state = nnx.split(q)

    def loss(x, state, perturb):
      # copy=True: the module may update its statistics inside the grad trace.
      m = nnx.merge(graphdef, state, copy=True)
      out = m(x, train=True)
      aux = {'ref': out}
      if perturb:
        out, _ = P.perturb_output(m, out, key, alpha=1.0, beta=1.0, delta=DELTA)
        aux.update(decoded=m.decode(out.indices), tables=P.code_tables(m, DELTA))
      return jnp.sum(w * out.quantized), dict(aux, out=out)

    @jax.jit
    def both(x, state):
      return (jax.grad(loss, has_aux=True)(x, state, False),
              jax.grad(loss, has_aux=True)(x, state, True))

    (g_ref, _), (g, aux) = both(x, state)
    ref, out = aux['ref'], aux['out']
    # Gradient to the latent: exactly the unperturbed straight-through one.
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)
    self.assertGreater(float(jnp.abs(g).sum()), 0.0)
    # Forward value: the decoded perturbed indices; every code was replaced by
    # a top-delta neighbour in the current code space.
    self.assertEqual(out.quantized.shape, x.shape)
    self.assertEqual(out.quantized.dtype, x.dtype)
    np.testing.assert_allclose(out.quantized, aux['decoded'], rtol=1e-6, atol=1e-6)
    self.assertGreater(float(jnp.abs(out.quantized - ref.quantized).max()), 1e-3)
    old, new = np.asarray(ref.indices), np.asarray(out.indices)
    valid = old >= 0
    self.assertTrue((new != old)[valid].all())
    np.testing.assert_array_equal(new[~valid], -1)
    tables = aux['tables']
    per_pos = isinstance(tables, tuple)
    for gi, t in enumerate(tables if per_pos else [tables]):
      o = old[..., gi] if per_pos else old
      n = new[..., gi] if per_pos else new
      self.assertTrue(in_table(t, np.maximum(o, 0), n)[o >= 0].all())

  def test_vq_table_is_in_the_cosine_lookup_space(self):
    q = make('vq_cos_proj')
    cb = q._effective_codebook()  # pylint: disable=protected-access
    np.testing.assert_array_equal(P.code_tables(q, DELTA),
                                  numpy_table(cb, DELTA, cosine=True))

  def test_eval_output_precomputed_tables_and_beta_zero(self):
    q = make('fq')
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 3, q.dim))
    cfg = P.LatentPerturbation(alpha=1.0, beta=1.0, delta=DELTA,
                               anneal_start=0, anneal_end=10)

    @nnx.jit
    def run(q, x, key):
      ev = q(x)
      tables = P.code_tables(q, DELTA)
      kw = dict(alpha=0.5, beta=0.5)
      return dict(
          ev=ev,
          fresh=P.perturb_output(q, ev, key, delta=DELTA, **kw),
          precomputed=P.perturb_output(q, ev, key, tables=tables, **kw),
          beta0=P.perturb_output(q, ev, key, alpha=1.0, beta=0.0, tables=tables),
          annealed=cfg(q, ev, key, step=10))  # Fully annealed.

    r = run(q, x, jax.random.PRNGKey(5))
    ev, (a, info_a), (b, info_b) = r['ev'], r['fresh'], r['precomputed']
    self.assertFalse((a.indices == ev.indices).all())
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.quantized, b.quantized)
    self.assertEqual(float(info_a['code_fraction']), float(info_b['code_fraction']))
    for k in ('beta0', 'annealed'):
      z, info = r[k]
      np.testing.assert_array_equal(z.indices, ev.indices)
      np.testing.assert_allclose(z.quantized, ev.quantized, rtol=1e-6, atol=1e-6)
      self.assertEqual(float(info['sample_fraction']), 0.0)
    self.assertEqual(float(r['annealed'][1]['beta']), 0.0)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, r'262144 codes > 65536.*explicit codebook'):
      P.code_tables(Q.FSQ((8,) * 6), DELTA)
    with self.assertRaisesRegex(ValueError, r'2\^18 = 262144 codes > 65536.*num_groups'):
      P.code_tables(Q.LFQ(2 ** 18), DELTA)
    self.assertEqual(P.code_tables(Q.LFQ(2 ** 18, num_groups=2), 3).shape,
                     (2 ** 9, 3))
    q = make('vq')
    out = Q.QuantizerOutput(quantized=jnp.zeros((2, 3, q.dim)),
                            indices=jnp.zeros((2, 3), jnp.int32),
                            loss=jnp.zeros(()), metrics={})
    with self.assertRaisesRegex(ValueError, 'give delta'):
      P.perturb_output(q, out, jax.random.PRNGKey(0), alpha=1.0, beta=1.0)
    with self.assertRaisesRegex(ValueError, r'tables of shape \[64, 5\]'):
      P.perturb_output(q, out, jax.random.PRNGKey(0), alpha=1.0, beta=1.0,
                       delta=5, tables=jnp.zeros((32, 5), jnp.int32))
    with self.assertRaisesRegex(TypeError, 'does not know the code space'):
      P.code_tables(object(), DELTA)


if __name__ == '__main__':
  absltest.main()
