"""Tests for tokenizers_jax.models.fqgan.

Tiny shapes throughout: 16x16 images, f = 2 (8x8 latent grid), ch 8,
adapters/FeatPredHeads of depth 1 and width 16, K = 32 codes of C = 4.
The loss terms are checked against independent numpy computations.

Dimension legend:
  B: batch, h/w: latent grid, F: heads, C: per-head code dim, T: teacher width
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenizers_jax.models import fqgan as fqgan_lib
from tokenizers_jax.models import teachers as teachers_lib
from tokenizers_jax.quantizers import perturbation

FRONTEND = dict(ch=8, ch_mult=(1, 2), num_res_blocks=0, attn_resolutions=(),
                z_channels=8, num_groups=4)
B, K, C, T = 4, 32, 4, 16


def _build(num_factors=2, teachers=None, **kw):
  if teachers is None:
    teachers = [dict(name='random_conv', out_dim=T, width=8, seed=7)]
  return fqgan_lib.FQGAN(
      frontend=FRONTEND, image_size=16, num_factors=num_factors,
      codebook_size=K, codebook_dim=C,
      adapter=dict(depth=1, width=16, num_heads=2),
      feat_pred=dict(depth=1, num_heads=2), teachers=teachers,
      # The RBG key keeps the per-shape initializer compiles cheap on CPU.
      rngs=nnx.Rngs(jax.random.key(0, impl='rbg')), **kw)


def _call(m, x, **kw):
  """(reconstruction, QuantizerOutput, quantizer + 0.5 semantic loss: the
  paper's weighting, as configs/fqgan.py sets it)."""
  out = m(x, **kw)
  return (out.reconstruction, out.quantizer,
          out.terms['quantizer'] + 0.5 * out.terms['semantic'])


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (B, 16, 16, 3)).astype(np.float32))


@pytest.fixture(scope='module')
def dual():
  model = _build()
  x = _images()
  graph, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graph, state)
    x_hat, qout, loss = _call(m, x, train=False)
    # Hooks: identity re-decode of the indices, and head 0 zeroed.
    same = m(x, quantizer_hook=lambda q, o: q.decode(o.indices)).reconstruction
    zero0, _, hooked = _call(
        m, x, quantizer_hook=lambda q, o: o.quantized.at[..., :C].set(0))
    ids = m.encode(x)
    # pFID-style perturbation through the hook (every code of every sample).
    key = jax.random.key(5)
    pert = lambda q, o: perturbation.perturb_output(
        q, o, key, alpha=1.0, beta=1.0, delta=3)[0]
    x_pert = m(x, quantizer_hook=lambda q, o: pert(q, o).quantized
               ).reconstruction
    new_ids = pert(m.quantizer, qout).indices
    return (x_hat, qout, same, zero0, hooked, loss, ids, m.decode(ids),
            x_pert, new_ids, m.decode(new_ids))

  outs = jax.jit(run)(state, x)
  return model, x, outs


def _l2n(a):
  return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-6)


def test_shapes_round_trip_and_hook(dual):
  model, x, (x_hat, qout, same, zero0, hooked_loss, loss, ids, dec, *_) = dual
  assert x_hat.shape == x.shape
  assert ids.shape == (B, 8, 8, 2) and ids.dtype == jnp.int32
  assert model.token_shape(x.shape) == (B, 8, 8, 2)
  assert qout.indices.shape == (B, 8, 8, 2)
  assert qout.quantized.shape == (B, 8, 8, 2 * C)
  np.testing.assert_array_equal(ids, qout.indices)
  np.testing.assert_allclose(dec, x_hat, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(same, x_hat, atol=1e-5, rtol=1e-5)
  assert not np.allclose(zero0, x_hat, atol=1e-3)
  np.testing.assert_allclose(hooked_loss, loss, rtol=1e-6)
  for k in ('usage', 'perplexity', 'usage/0', 'usage/1', 'perplexity/0',
            'perplexity/1', 'entropy/1', 'disentanglement', 'semantic',
            'semantic/1', 'vq_loss'):
    assert k in qout.metrics, k
  m = qout.metrics
  np.testing.assert_allclose(m['usage'], (m['usage/0'] + m['usage/1']) / 2,
                             rtol=1e-6)
  assert len(model.quantizers) == 2
  assert model.quantizers[1].codebook[...].shape == (K, C)
  assert model.last_layer is model.decoder.conv_out.kernel
  with pytest.raises(ValueError, match=r'\(\.\.\., 2\)'):
    model.decode(ids[..., :1])


def test_latent_perturbation_hook(dual):
  _, _, (x_hat, qout, *_, x_pert, new_ids, dec_new) = dual
  assert new_ids.shape == qout.indices.shape
  assert np.all(np.asarray(new_ids) != np.asarray(qout.indices))
  np.testing.assert_allclose(x_pert, dec_new, atol=1e-5, rtol=1e-5)
  assert not np.allclose(x_pert, x_hat, atol=1e-3)


def test_loss_terms_match_numpy(dual):
  _, _, (_, qout, _, _, _, loss, *_) = dual
  q = np.asarray(qout.quantized, np.float64).reshape(-1, 2 * C)
  q0, q1 = _l2n(q[:, :C]), _l2n(q[:, C:])
  dis = np.mean(np.sum(q0 * q1, axis=-1) ** 2)
  m = qout.metrics
  np.testing.assert_allclose(m['disentanglement'], dis, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m['semantic'], m['semantic/1'], rtol=1e-6)
  np.testing.assert_allclose(qout.loss, m['vq_loss'] + 0.1 * dis, rtol=1e-5)
  want = m['vq_loss'] + 0.1 * dis + 0.5 * m['semantic']
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # Each head's VQ loss: 0.25 commitment + codebook + 0.03 entropy.
  vq = sum(0.25 * m[f'commitment/{i}'] + m[f'codebook/{i}'] +
           0.03 * m[f'entropy/{i}'] for i in range(2))
  np.testing.assert_allclose(m['vq_loss'], vq, rtol=1e-5)


def _np_info_nce(p, t, tau, symmetric):
  logits = _l2n(p.astype(np.float64)) @ _l2n(t.astype(np.float64)).T / tau

  def ce(lg):  # Row-wise cross-entropy with the diagonal as labels.
    mx = lg.max(axis=1, keepdims=True)
    lse = np.log(np.exp(lg - mx).sum(axis=1)) + mx[:, 0]
    return np.mean(lse - np.diag(lg))

  return 0.5 * (ce(logits) + ce(logits.T)) if symmetric else ce(logits)


@pytest.mark.parametrize('tau,symmetric', [(1.0, True), (1.0, False),
                                           (0.1, True)])
def test_info_nce_matches_numpy(tau, symmetric):
  rng = np.random.default_rng(1)
  p = rng.normal(size=(6, 5)).astype(np.float32)
  t = rng.normal(size=(6, 5)).astype(np.float32)
  got = fqgan_lib.info_nce(jnp.asarray(p), jnp.asarray(t), tau, symmetric)
  np.testing.assert_allclose(got, _np_info_nce(p, t, tau, symmetric),
                             rtol=1e-5)
  # Perfect alignment with well-separated targets gives a small loss.
  assert float(fqgan_lib.info_nce(jnp.asarray(t), jnp.asarray(t), 0.01)) < (
      float(got))


def test_semantic_model_term_matches_numpy(dual):
  """The reported semantic term is InfoNCE(FeatPredHead(q_1), teacher(x))."""
  model, x, (_, qout, *_) = dual
  pred = model.feat_preds[0](qout.quantized[..., C:])
  target = model.teachers[0](x)
  np.testing.assert_allclose(
      qout.metrics['semantic/1'],
      _np_info_nce(np.asarray(pred), np.asarray(target), 1.0, True),
      rtol=1e-4)


def _abs_sum(tree):
  return sum(float(jnp.sum(jnp.abs(a))) for a in jax.tree.leaves(tree))


def test_semantic_gradient_reaches_head_and_not_teacher(dual):
  model, x, _ = dual
  graph, params, frozen, rest = nnx.split(model, nnx.Param,
                                          teachers_lib.Frozen, ...)
  param_paths = {p for p, _ in nnx.to_flat_state(params)}
  assert not any(p[0] == 'teachers' for p in param_paths)
  assert all(p[0] == 'teachers' for p, _ in nnx.to_flat_state(frozen))
  assert jax.tree.leaves(frozen)

  def semantic(params, frozen):
    m = nnx.merge(graph, params, frozen, rest, copy=True)
    return m(x, train=True).terms['semantic']

  g_params, g_frozen = jax.jit(jax.grad(semantic, argnums=(0, 1)))(params,
                                                                   frozen)
  assert _abs_sum(g_params['feat_preds'][0]) > 0
  assert _abs_sum(g_params['adapters'][1]) > 0
  assert _abs_sum(g_params['quant_convs'][1]) > 0
  assert _abs_sum(g_params['encoder']) > 0
  # The detail head and the decoder do not feed the semantic loss.
  assert _abs_sum(g_params['adapters'][0]) == 0
  assert _abs_sum(g_params['decoder']) == 0
  assert _abs_sum(g_frozen) == 0


def test_triple_with_two_teachers():
  vit = dict(name='vit', image_size=16, patch_size=4, width=T, depth=1,
             num_heads=2, seed=1)
  model = _build(3, teachers=[dict(out_dim=T, width=8, seed=1), vit],
                 perturb=dict(alpha=0.5, beta=1.0, delta=2))
  assert model.semantic_heads == (1, 2)
  x = _images(1)
  graph, state = nnx.split(model)

  @jax.jit
  def fwd(s, x):
    m = nnx.merge(graph, s, copy=True)
    return m(x, train=True, step=jnp.int32(3), rng=jax.random.key(0))

  out = fwd(state, x)
  x_hat, qout = out.reconstruction, out.quantizer
  assert x_hat.shape == x.shape
  assert qout.indices.shape == (B, 8, 8, 3)
  m = qout.metrics
  for k in ('semantic/1', 'semantic/2', 'usage/2', 'perplexity/2'):
    assert np.isfinite(m[k]), k
  assert float(m['perturbed_samples']) == 1.0
  assert 0.2 < float(m['perturbed_codes']) < 0.8
  np.testing.assert_allclose(m['semantic'], m['semantic/1'] + m['semantic/2'],
                             rtol=1e-6)


def test_configuration_errors():
  with pytest.raises(ValueError, match='semantic_heads'):
    _build(2, semantic_heads=[2])
  with pytest.raises(ValueError, match='one per head'):
    _build(3)
  with pytest.raises(ValueError, match='unknown keys'):
    fqgan_lib.FQGAN(frontend=FRONTEND, image_size=16, adapter=dict(layers=2),
                    rngs=nnx.Rngs(0))


def test_training_reduces_loss():
  model = _build()
  x = _images(2)
  graph, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, rest, opt):
    def loss_fn(p):
      m = nnx.merge(graph, p, rest, copy=True)
      x_hat, qout, loss = _call(m, x, train=True)
      total = jnp.mean(jnp.square(x_hat - x)) + loss
      return total, (nnx.state(m, nnx.Not(nnx.Param)), qout.metrics)

    (loss, (new_rest, metrics)), g = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), new_rest, opt, loss, metrics

  losses, sems = [], []
  for _ in range(25):
    params, rest, opt, loss, metrics = step(params, rest, opt)
    losses.append(float(loss))
    sems.append(float(metrics['semantic']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  assert np.mean(sems[-3:]) < np.mean(sems[:3]), sems


def _np_entropy_loss(z, codebook, temperature):
  """E[H(p)] - H(E[p]), p = softmax(-||l2n(z) - l2n(c)||^2 / temperature)."""
  z = _l2n(np.asarray(z, np.float64))
  c = _l2n(np.asarray(codebook, np.float64))
  logits = -np.sum(np.square(z[:, None] - c[None]), axis=-1) / temperature
  logits -= logits.max(axis=1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(axis=1, keepdims=True)
  h = lambda q: -np.sum(q * np.log(np.where(q > 0, q, 1.0)), axis=-1)
  return np.mean(h(p)) - h(p.mean(axis=0)), p.mean(axis=0)


def test_entropy_loss_finite_gradients_and_matches_numpy():
  """Paper entropy settings (0.03 at temperature 0.01), computed by the VQs."""
  model = _build()
  for q in model.quantizers:
    assert q.entropy_loss_weight == 0.03 and q.entropy_temperature == 0.01
  x = _images(3)
  graph, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def run(params):
    def loss_fn(p):
      m = nnx.merge(graph, p, rest, copy=True)
      x_hat, _, loss = _call(m, x, train=True)
      return jnp.mean(jnp.square(x_hat - x)) + loss

    grads = jax.grad(loss_fn)(params)
    m = nnx.merge(graph, params, rest, copy=True)
    qout = m(x).quantizer
    return (grads, qout.metrics, m.encode_latents(x),
            [q.codebook[...] for q in m.quantizers])

  grads, metrics, latents, codebooks = run(params)
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
  assert _abs_sum(grads['quantizer']) > 0
  min_avg_prob = []
  for i in range(2):
    z = np.asarray(latents)[..., i * C:(i + 1) * C].reshape(-1, C)
    want, avg = _np_entropy_loss(z, codebooks[i], 0.01)
    np.testing.assert_allclose(metrics[f'entropy/{i}'], want, rtol=1e-4,
                               atol=1e-5)
    min_avg_prob.append(avg.min())
  np.testing.assert_allclose(metrics['entropy'],
                             metrics['entropy/0'] + metrics['entropy/1'],
                             rtol=1e-6)
  # Some code's batch-mean probability underflows in fp32: the regime in which
  # an xlogy-based entropy had NaN gradients.
  assert min(min_avg_prob) < np.finfo(np.float32).tiny, min_avg_prob
