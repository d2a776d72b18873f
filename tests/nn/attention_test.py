"""The shared attention module against a float64 numpy reference."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.nn import attention


def _np_attention(q, k, v, mask):
  """q [B, Nq, h, c], k/v [B, Nk, h, c], mask [B, Nq, Nk] in float64."""
  s = np.einsum('bqhc,bkhc->bhqk', q, k) / np.sqrt(q.shape[-1])
  s = np.where(mask[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhc->bqhc', p, v)


def _np_norm(x, var, rms):
  x = np.asarray(x, np.float64)
  mean = 0.0 if rms else x.mean(-1, keepdims=True)
  y = (x - mean) / np.sqrt(np.mean((x - mean) ** 2, -1, keepdims=True) + 1e-6)
  return y * np.asarray(var.scale[...], np.float64) + (
      0.0 if rms else np.asarray(var.bias[...], np.float64))


def _lin(layer, x):
  return (np.asarray(x, np.float64) @ np.asarray(layer.kernel[...], np.float64)
          + np.asarray(layer.bias[...], np.float64))


class AttentionTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('full', None), ('pairs', 'pairs'), ('batched', 'batched'),
      ('keys', 'keys'), ('causal', 'causal'))
  def test_core_matches_numpy(self, kind):
    rng = np.random.default_rng(0)
    b, n, h, c = 2, 5, 3, 4
    q, k, v = (rng.normal(size=(b, n, h, c)).astype(np.float32)
               for _ in range(3))
    full = np.ones((b, n, n), bool)
    mask, ref_mask, causal = None, full, False
    if kind == 'pairs':
      mask = rng.uniform(size=(n, n)) < 0.5
      mask[np.arange(n), np.arange(n)] = True
      ref_mask = np.broadcast_to(mask, (b, n, n))
    elif kind == 'batched':
      mask = rng.uniform(size=(b, n, n)) < 0.5
      mask[:, np.arange(n), np.arange(n)] = True
      ref_mask = mask
    elif kind == 'keys':
      mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None]
      ref_mask = np.broadcast_to(mask, (b, n, n))
    elif kind == 'causal':
      causal = True
      ref_mask = np.broadcast_to(np.tril(np.ones((n, n), bool)), (b, n, n))
    out = attention.dot_product_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
        mask=None if mask is None else jnp.asarray(mask), causal=causal)
    ref = _np_attention(*(x.astype(np.float64) for x in (q, k, v)), ref_mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)

  def test_bf16_inputs_keep_dtype(self):
    q = jnp.ones((1, 3, 2, 4), jnp.bfloat16)
    out = attention.dot_product_attention(q, q, q)
    self.assertEqual(out.dtype, jnp.bfloat16)

  @parameterized.parameters(None, 'layer', 'rms')
  def test_module_qk_norm_matches_numpy(self, qk_norm):
    attn = attention.Attention(8, 2, qk_norm=qk_norm, rngs=nnx.Rngs(0))
    if qk_norm:
      for norm in (attn.q_norm, attn.k_norm):
        norm.scale[...] = 1.0 + 0.1 * jax.random.normal(
            jax.random.PRNGKey(1), norm.scale.shape)
    x = np.random.default_rng(1).normal(size=(2, 4, 8)).astype(np.float32)
    mask = np.ones((2, 4, 4), bool)
    mask[0, :, 3] = False
    out = nnx.jit(lambda m, x, mask: m(x, mask))(attn, jnp.asarray(x),
                                                 jnp.asarray(mask))
    q, k, v = (t.reshape(2, 4, 2, 4)
               for t in np.split(_lin(attn.qkv, x), 3, -1))
    if qk_norm:
      q = _np_norm(q, attn.q_norm, qk_norm == 'rms')
      k = _np_norm(k, attn.k_norm, qk_norm == 'rms')
    ref = _lin(attn.proj, _np_attention(q, k, v, mask).reshape(2, 4, 8))
    np.testing.assert_allclose(out, ref, atol=1e-5)

  def test_separate_projections_and_cross_attention(self):
    attn = attention.Attention(8, 2, fused_qkv=False, context_dim=6,
                               causal=False, rngs=nnx.Rngs(0))
    params = nnx.state(attn, nnx.Param)
    self.assertEqual(sorted(params), ['k', 'proj', 'q', 'v'])
    self.assertEqual(attn.k.kernel.shape, (6, 8))
    self.assertEqual(attn.k.kernel.get_metadata()['out_sharding'],
                     ('embed', 'heads'))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    ctx = rng.normal(size=(2, 5, 6)).astype(np.float32)
    out = attn(jnp.asarray(x), context=jnp.asarray(ctx))
    q = _lin(attn.q, x).reshape(2, 3, 2, 4)
    k = _lin(attn.k, ctx).reshape(2, 5, 2, 4)
    v = _lin(attn.v, ctx).reshape(2, 5, 2, 4)
    ref = _lin(attn.proj, _np_attention(q, k, v, np.ones((2, 3, 5), bool))
               .reshape(2, 3, 8))
    np.testing.assert_allclose(out, ref, atol=1e-5)

  def test_fused_layout_and_errors(self):
    attn = attention.Attention(8, 2, rngs=nnx.Rngs(0))
    self.assertEqual(sorted(nnx.state(attn, nnx.Param)), ['proj', 'qkv'])
    self.assertEqual(attn.qkv.kernel.get_metadata()['out_sharding'],
                     ('embed', 'heads'))
    x = jnp.ones((1, 3, 8))
    with self.assertRaisesRegex(ValueError, 'fused_qkv=False'):
      attn(x, context=x)
    with self.assertRaisesRegex(ValueError, 'not divisible by num_heads 3'):
      attention.Attention(8, 3, rngs=nnx.Rngs(0))
    with self.assertRaisesRegex(ValueError, 'qk_norm'):
      attention.Attention(8, 2, qk_norm='batch', rngs=nnx.Rngs(0))
    with self.assertRaisesRegex(ValueError, 'self-attention only'):
      attention.Attention(8, 2, context_dim=4, rngs=nnx.Rngs(0))
    with self.assertRaisesRegex(ValueError, r'\[B, Nq, Nk\]'):
      attention.dot_product_attention(jnp.ones((1, 3, 2, 4)),
                                      jnp.ones((1, 3, 2, 4)),
                                      jnp.ones((1, 3, 2, 4)),
                                      mask=jnp.ones((1, 1, 3, 3), bool))


if __name__ == '__main__':
  absltest.main()
