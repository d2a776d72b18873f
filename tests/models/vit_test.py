"""Shared transformer pieces against numpy references."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax.models import vit


def _np_attention(attn, x, mask):
  """Multi-head attention in float64 numpy from the module's weights."""
  w = np.asarray(attn.qkv.kernel[...], np.float64)
  b = np.asarray(attn.qkv.bias[...], np.float64)
  wo = np.asarray(attn.proj.kernel[...], np.float64)
  bo = np.asarray(attn.proj.bias[...], np.float64)
  x = np.asarray(x, np.float64)
  bsz, n, d = x.shape
  nh = attn.num_heads
  hd = d // nh
  qkv = x @ w + b
  q, k, v = np.split(qkv, 3, axis=-1)
  out = np.zeros_like(x)
  for bi in range(bsz):
    for h in range(nh):
      sl = slice(h * hd, (h + 1) * hd)
      s = q[bi, :, sl] @ k[bi, :, sl].T / np.sqrt(hd)
      s = np.where(mask[bi], s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[bi, :, sl] = p @ v[bi, :, sl]
  return out @ wo + bo


def test_masked_attention_matches_numpy():
  attn = vit.Attention(8, 2, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  mask = rng.uniform(size=(2, 5, 5)) < 0.5
  mask[:, np.arange(5), np.arange(5)] = True  # every query keeps a key
  run = nnx.jit(lambda m, x, mask: m(x, mask))
  np.testing.assert_allclose(run(attn, jnp.asarray(x), jnp.asarray(mask)),
                             _np_attention(attn, x, mask), atol=1e-5)
  full = np.ones((2, 5, 5), bool)
  np.testing.assert_allclose(run(attn, jnp.asarray(x), None),
                             _np_attention(attn, x, full), atol=1e-5)
  # A [Nq, Nk] mask broadcasts over the batch.
  np.testing.assert_allclose(run(attn, jnp.asarray(x), jnp.asarray(mask[0])),
                             _np_attention(attn, x, mask[[0, 0]]), atol=1e-5)


def test_adaln_zero_starts_as_identity_and_is_conditioned():
  block = vit.AdaLNZeroBlock(8, 2, cond_dim=4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
  run = nnx.jit(lambda m, x, c: m(x, c))
  np.testing.assert_array_equal(run(block, x, c), x)
  # With a non-zero modulation the two examples' conditions matter.
  block.ada.kernel[...] = 0.1 * jnp.ones_like(block.ada.kernel[...])
  y1 = run(block, x, c)
  y2 = run(block, x, c[::-1])
  assert not np.allclose(y1, x) and not np.allclose(y1, y2)


def test_sincos_embeddings_match_formula():
  n, d = 6, 8
  e = vit.sincos_1d(n, d)
  for p in range(n):
    for i in range(d // 2):
      w = 1.0 / 10000 ** (i / (d / 2))
      assert abs(e[p, i] - np.sin(p * w)) < 1e-6
      assert abs(e[p, d // 2 + i] - np.cos(p * w)) < 1e-6
  e2 = vit.sincos_2d(2, 3, 8)
  np.testing.assert_allclose(e2[4], np.concatenate(
      [vit.sincos_1d(2, 4)[1], vit.sincos_1d(3, 4)[1]]), rtol=1e-6)
  with pytest.raises(ValueError, match='multiple of 4'):
    vit.sincos_2d(2, 2, 6)


def test_patchify_roundtrip_and_layout():
  x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
  t = vit.patchify(x, 4)
  assert t.shape == (2, 6, 48)
  # Patch (row 1, col 2) is x[:, 4:8, 8:12] flattened row-major.
  np.testing.assert_array_equal(t[:, 5], x[:, 4:8, 8:12].reshape(2, -1))
  np.testing.assert_array_equal(vit.unpatchify(t, 4, 8, 12), x)
  with pytest.raises(ValueError, match='not divisible by the patch size'):
    vit.patchify(x, 5)


def test_timestep_embedding_formula():
  t = jnp.array([0.0, 0.25, 1.0])
  e = np.asarray(vit.timestep_embedding(t, 6))
  freqs = np.exp(-np.log(10000.0) * np.arange(3) / 3)
  args = 1000 * np.asarray(t)[:, None] * freqs[None]
  np.testing.assert_allclose(e, np.concatenate([np.cos(args), np.sin(args)],
                                               1), rtol=1e-4, atol=1e-4)
