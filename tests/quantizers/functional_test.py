"""Tests of the pure functional core against independent computations."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.quantizers import functional as F
from tokenizers_jax.quantizers import search

FSQ_TABLE = [(8, 6, 5), (8, 5, 5, 5), (7, 5, 5, 5, 5), (8, 8, 8, 6, 5),
             (8, 8, 8, 5, 5, 5)]
FSQ_SIZES = [240, 1000, 4375, 15360, 64000]


def numpy_nearest(z, cb):
  d = ((z[:, None, :].astype(np.float64) - cb[None].astype(np.float64)) ** 2).sum(-1)
  return d.argmin(-1)


def _brute_force_lfq_entropy(z, mask=None, temperature=0.01):
  """(per-sample, codebook) entropy by explicit softmax over all codes, float64."""
  n, groups, bits = z.shape
  codes = np.array(list(itertools.product([-1, 1], repeat=bits)), np.float64)
  w = np.ones(n) if mask is None else mask.astype(np.float64)
  ps_ref, cb_ref = [], []
  for g in range(groups):
    logits = 2 * z[:, g].astype(np.float64) @ codes.T / temperature
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(np.maximum(p, 1e-300))).sum(-1)
    ps_ref.append((h * w).sum() / w.sum())
    avg = (p * w[:, None]).sum(0) / w.sum()
    cb_ref.append(-(avg * np.log(np.maximum(avg, 1e-300))).sum())
  return np.mean(ps_ref), np.mean(cb_ref)


class NearestCodeTest(parameterized.TestCase):

  @parameterized.parameters(8, 96)
  def test_chunked_matches_dense_bitwise_with_ties(self, d):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, d)).astype(np.float32)
    cb = rng.normal(size=(203, d)).astype(np.float32)
    cb[150] = cb[7]      # exact duplicates: ties must go to the lowest index
    cb[202] = cb[99]
    z[:10] = cb[7]       # tokens sitting exactly on a duplicated code
    z[10:20] = cb[99]
    dense, dense_min = F.nearest_code(z, cb, chunk_size=None,
                                      token_block=None)
    np.testing.assert_array_equal(dense[:10], 7)
    np.testing.assert_array_equal(dense[10:20], 99)
    for chunk in (1, 16, 128, 200, 256):
      idx, mins = F.nearest_code(z, cb, chunk_size=chunk, token_block=None)
      np.testing.assert_array_equal(idx, dense)
      np.testing.assert_array_equal(mins, dense_min)
    # Token blocks (searched one after the other, the last one padded).
    for chunk, block in ((None, 8), (None, 100), (128, 64), (16, 300)):
      idx, mins = F.nearest_code(z, cb, chunk_size=chunk, token_block=block)
      np.testing.assert_array_equal(idx, dense)
      np.testing.assert_array_equal(mins, dense_min)
    np.testing.assert_array_equal(dense, numpy_nearest(z, cb))
    # Splitting the tokens (as data sharding does) changes nothing either.
    for lo, hi in ((0, 37), (37, 300), (5, 133)):
      idx, mins = F.nearest_code(z[lo:hi], cb, chunk_size=None)
      np.testing.assert_array_equal(idx, dense[lo:hi])
      np.testing.assert_array_equal(mins, dense_min[lo:hi])

  def test_block_argmin_equals_argmin_on_heavy_ties(self):
    # Small-integer scores: most rows have their minimum several times, in
    # several 128-code blocks and inside one block; +inf as padded codes.
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, size=(64, 512)).astype(np.float32)
    scores[:, 384:] = np.inf
    scores[5] = np.inf         # a row with nothing but padding
    scores[6, 200] = -1.0      # a unique minimum in the second block
    idx, best = search._block_argmin(jnp.asarray(scores))  # pylint: disable=protected-access
    np.testing.assert_array_equal(idx, np.argmin(scores, axis=-1))
    np.testing.assert_array_equal(best, np.min(scores, axis=-1))

  def test_bf16_inputs_accumulate_in_fp32(self):
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(64, 32)), jnp.bfloat16)
    cb = jnp.asarray(rng.normal(size=(40, 32)), jnp.bfloat16)
    scores = F.code_scores(z, cb)
    self.assertEqual(scores.dtype, jnp.float32)
    ref = (np.asarray(cb, np.float64) ** 2).sum(-1)[None] - 2 * (
        np.asarray(z, np.float64) @ np.asarray(cb, np.float64).T)
    np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-4)

  def test_large_search_memory_is_bounded(self):
    # 2^18 codes x 65,536 tokens: compile only and read XLA's buffer plan.
    n, k, d = 65536, 2 ** 18, 8
    fn = jax.jit(lambda z, c: F.nearest_code(z, c, chunk_size='auto'))
    compiled = fn.lower(jax.ShapeDtypeStruct((n, d), jnp.float32),
                        jax.ShapeDtypeStruct((k, d), jnp.float32)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    dense_bytes = n * k * 4  # 64 GiB
    self.assertLess(temp, 1 << 30)
    self.assertLess(temp, dense_bytes / 64)


class StraightThroughTest(parameterized.TestCase):

  def test_straight_through_value_and_gradient(self):
    rng = np.random.default_rng(2)
    z = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    np.testing.assert_array_equal(F.straight_through(z, q), q)
    g = jax.grad(lambda z: jnp.sum(w * F.straight_through(z, q)))(z)
    np.testing.assert_allclose(g, w, rtol=1e-6)

  def test_rotation_trick_value_and_gradient(self):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6, 5)).astype(np.float32)
    q = rng.normal(size=(6, 5)).astype(np.float32)
    g_up = rng.normal(size=(6, 5)).astype(np.float32)
    out = F.rotation_trick(jnp.asarray(z), jnp.asarray(q))
    np.testing.assert_array_equal(out, q)
    grad = jax.grad(lambda z: jnp.sum(g_up * F.rotation_trick(z, jnp.asarray(q))))(jnp.asarray(z))
    for i in range(6):
      # Independent construction: the rotation in the (z, q) plane via an
      # orthonormal basis, R = I + (cosθ-1)(e1e1ᵀ+e2e2ᵀ) + sinθ(e2e1ᵀ-e1e2ᵀ).
      u = z[i] / np.linalg.norm(z[i])
      v = q[i] / np.linalg.norm(q[i])
      e1 = u
      e2 = v - (v @ u) * u
      e2 /= np.linalg.norm(e2)
      cos, sin = v @ e1, v @ e2
      r = (np.eye(5) + (cos - 1) * (np.outer(e1, e1) + np.outer(e2, e2))
           + sin * (np.outer(e2, e1) - np.outer(e1, e2)))
      np.testing.assert_allclose(r @ u, v, atol=1e-5)
      lam = np.linalg.norm(q[i]) / np.linalg.norm(z[i])
      np.testing.assert_allclose(grad[i], lam * r.T @ g_up[i], rtol=1e-4, atol=1e-5)


class FSQTest(parameterized.TestCase):

  @parameterized.parameters(*zip(FSQ_TABLE, FSQ_SIZES))
  def test_round_trip_over_all_codes(self, levels, size):
    self.assertEqual(F.fsq_codebook_size(levels), size)
    idx = jnp.arange(size, dtype=jnp.int32)
    codes = F.fsq_codes(idx, levels)
    # Rows are unique and re-quantising a code gives its index back.
    self.assertEqual(len(np.unique(np.asarray(codes), axis=0)), size)
    # Invert the normalisation and the bound to get an input that maps to each code.
    lv = np.asarray(levels, np.float64)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = np.where(lv % 2 == 0, 0.5, 0.0)
    target = np.asarray(codes, np.float64) * (lv // 2)
    z = np.arctanh((target + offset) / half_l) - np.arctanh(offset / half_l)
    q, back = F.fsq_quantize(jnp.asarray(z, jnp.float32), levels)
    np.testing.assert_array_equal(back, idx)
    np.testing.assert_array_equal(q, codes)

  def test_zero_maps_to_zero_code_and_even_levels_asymmetric(self):
    q, _ = F.fsq_quantize(jnp.zeros((1, 3)), (8, 5, 4))
    np.testing.assert_array_equal(q, 0.0)
    codes = np.unique(np.asarray(F.fsq_codes(jnp.arange(8), (8,))))
    np.testing.assert_allclose(codes, np.arange(-4, 4) / 4)

  def test_indices_in_range_for_extreme_inputs(self):
    levels = (8, 8, 8, 5, 5, 5)
    z = jnp.asarray([[1e9] * 6, [-1e9] * 6, [0.0] * 6, [3.3, -2, 1e-7, 50, -50, 0.49]])
    _, idx = F.fsq_quantize(z, levels)
    self.assertTrue(bool(jnp.all((idx >= 0) & (idx < 64000))))
    self.assertEqual(int(idx[0]), 63999)
    self.assertEqual(int(idx[1]), 0)

  def test_mixed_radix_first_dimension_least_significant(self):
    levels = (3, 4)
    codes = F.fsq_codes(jnp.arange(12), levels)
    digits = np.asarray(codes) * np.array([1, 2]) + np.array([1, 2])
    expected = np.array([[i % 3, i // 3] for i in range(12)])
    np.testing.assert_allclose(digits, expected)


class LFQTest(parameterized.TestCase):

  def test_bit_order_lsb_first(self):
    z = jnp.asarray([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.5]])
    codes, idx = F.lfq_quantize(z)
    np.testing.assert_array_equal(idx, [1, 6, 4])
    np.testing.assert_array_equal(codes[2], [-1, -1, 1])
    np.testing.assert_array_equal(F.lfq_codes(idx, 3), codes)

  @parameterized.parameters((1, 5, None), (3, 4, None), (2, 3, 'mask'), (1, 1, None))
  def test_entropy_equals_brute_force(self, groups, bits, use_mask):
    rng = np.random.default_rng(bits)
    z = rng.normal(scale=0.01, size=(50, groups, bits)).astype(np.float32)
    mask = (rng.random(50) > 0.3) if use_mask else None
    ps, cb = F.lfq_entropy_terms(jnp.asarray(z), temperature=0.01,
                                 mask=None if mask is None else jnp.asarray(mask),
                                 max_block_elements=4)
    ps_ref, cb_ref = _brute_force_lfq_entropy(z, mask)
    np.testing.assert_allclose(ps, ps_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cb, cb_ref, rtol=1e-4, atol=1e-6)

  def test_dense_entropy_gradient_finite_when_probabilities_underflow(self):
    # VQ's entropy loss at τ=0.01 on cosine scores: most codes' batch-average
    # probability is exactly 0 in float32. Gradient finite and equal to the
    # float64 gradient of the same formula (computed with jax in float64).
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 20)) / 0.01

    def total(l):
      ps, cb = F.entropy_terms(l)
      return ps - cb

    g32 = jax.grad(total)(jnp.asarray(logits, jnp.float32))
    self.assertTrue(np.all(np.isfinite(np.asarray(g32))))
    with jax.enable_x64():
      g64 = jax.grad(total)(jnp.asarray(logits, jnp.float64))
    np.testing.assert_allclose(g32, g64, atol=1e-5)

  def test_entropy_gradient_finite_when_probabilities_underflow(self):
    # Unit-scale inputs at τ=0.01 give logits of ~±400: most codes' batch
    # probability underflows to exactly 0 in float32. The gradient must stay
    # finite (an xlogy formulation gives inf * 0 = NaN) and match float64
    # finite differences of the brute-force value along a random direction.
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(16, 1, 6)).astype(np.float32))

    def total(z):
      ps, cb = F.lfq_entropy_terms(z, temperature=0.01)
      return ps - cb

    g = jax.grad(total)(z)
    self.assertTrue(np.all(np.isfinite(np.asarray(g))))
    z64 = np.asarray(z, np.float64)
    eps = 1e-6
    fd = np.zeros_like(z64)
    for i in np.ndindex(z64.shape):
      up, down = z64.copy(), z64.copy()
      up[i] += eps
      down[i] -= eps
      fd[i] = (np.subtract(*_brute_force_lfq_entropy(up))
               - np.subtract(*_brute_force_lfq_entropy(down))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-2, atol=1e-3)


class StatsTest(parameterized.TestCase):

  def test_usage_on_known_assignment(self):
    idx = jnp.asarray([0, 0, 1, 1, 2, 2, 2, 2, -1])
    s = F.usage_stats(idx, 8)
    self.assertAlmostEqual(float(s['usage']), 3 / 8)
    p = np.array([2, 2, 4]) / 8
    self.assertAlmostEqual(float(s['perplexity']), float(np.exp(-(p * np.log(p)).sum())), places=5)
    s = F.usage_stats(idx, 8, mask=jnp.asarray([1, 1, 1, 1, 0, 0, 0, 0, 1], bool))
    self.assertAlmostEqual(float(s['usage']), 2 / 8)
    self.assertAlmostEqual(float(s['perplexity']), 2.0, places=5)

  def test_kmeans_recovers_separated_clusters(self):
    rng = np.random.default_rng(4)
    centers = np.array([[10, 0], [0, 10], [-10, 0], [0, -10]], np.float32)
    x = np.concatenate([c + rng.normal(scale=0.1, size=(64, 2)) for c in centers]).astype(np.float32)
    c, counts = jax.jit(lambda k, x: F.kmeans(k, x, 4, 10))(jax.random.PRNGKey(0), x)
    found = sorted(map(tuple, np.round(np.asarray(c)).astype(int).tolist()))
    # k-means from random samples can merge two clusters; with this seed and
    # these well-separated blobs it finds all four.
    self.assertEqual(found, sorted(map(tuple, centers.astype(int).tolist())))
    np.testing.assert_allclose(np.sort(np.asarray(counts)), [64] * 4)

  def test_laplace_smoothing_formula(self):
    cs = jnp.asarray([0.0, 2.0, 6.0])
    es = jnp.asarray([[1.0], [4.0], [12.0]])
    eps = 0.5
    out = F.laplace_smoothed_codebook(cs, es, eps)
    smoothed = (np.array([0, 2, 6]) + eps) / (8 + 3 * eps) * 8
    np.testing.assert_allclose(out[:, 0], np.array([1, 4, 12]) / smoothed, rtol=1e-6)

  def test_disentanglement_and_orthogonal_regularisers(self):
    rng = np.random.default_rng(5)
    a, b, c = (rng.normal(size=(20, 4)).astype(np.float32) for _ in range(3))
    n = lambda t: t / np.linalg.norm(t, axis=-1, keepdims=True)
    ref = np.mean([np.mean((n(x) * n(y)).sum(-1) ** 2) for x, y in [(a, b), (a, c), (b, c)]])
    np.testing.assert_allclose(F.disentanglement_loss([a, b, c]), ref, rtol=1e-5)
    self.assertAlmostEqual(float(F.orthogonal_regularization(jnp.eye(4) * 3)), 0.0, places=6)
    self.assertGreater(float(F.orthogonal_regularization(jnp.ones((4, 4)) + jnp.eye(4))), 0.1)


if __name__ == '__main__':
  absltest.main()
