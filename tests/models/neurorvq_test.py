"""NeuroRVQ: the loss against an independent numpy computation, the code
loss and token layout, encode/decode against the forward pass, padding
masks, and input errors."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax.losses import eeg as eeg_losses
from tokenizers_jax.models.neurorvq import NeuroRVQ

PATCH = 40
QUANT = dict(name='rvq', num_quantizers=2, codebook_size=16,
             use_cosine_sim=True, ema_update=True, kmeans_init=False,
             commitment_weight=1.0)


def _np_stdnorm(v, w):
  """Per-example z-score over valid entries (weights w in {0,1}), ddof=1."""
  axes = tuple(range(1, v.ndim))
  w = np.broadcast_to(w, v.shape)
  n = w.sum(axes, keepdims=True)
  mean = (v * w).sum(axes, keepdims=True) / n
  var = (w * (v - mean) ** 2).sum(axes, keepdims=True) / (n - 1)
  return (v - mean) / np.sqrt(np.maximum(var, 1e-8)), mean, np.sqrt(var)


def _np_loss(x, pred, mask):
  """NeuroRVQTokenizer.forward's loss (without L_code), written out in numpy
  in float64; padded patches (mask False) excluded."""
  x = x.astype(np.float64)
  a_hat, s_hat, c_hat = (pred[k].astype(np.float64)
                         for k in ('amplitude', 'sin', 'cos'))
  w = mask[:, None, :, None].astype(np.float64)
  spec = np.fft.fft(x, axis=-1)
  amp, mu, sigma = _np_stdnorm(np.log1p(np.abs(spec)), w)
  phi = np.angle(spec)
  wmean = lambda v: (v * np.broadcast_to(w, v.shape)).sum() / np.broadcast_to(
      w, v.shape).sum()
  l_amp = wmean((a_hat - amp) ** 2)
  dot = c_hat * np.cos(phi) + s_hat * np.sin(phi)
  cos_sim = dot / np.maximum(np.hypot(c_hat, s_hat), 1e-8)
  l_phase = 1 - wmean(cos_sim) + 0.1 * wmean((s_hat ** 2 + c_hat ** 2 - 1) ** 2)
  x_hat = np.real(np.fft.ifft(np.expm1(a_hat * sigma + mu)
                              * (c_hat + 1j * s_hat), axis=-1))
  l_sig = wmean((_np_stdnorm(x_hat, w)[0] - _np_stdnorm(x, w)[0]) ** 2)
  return l_amp + l_phase + l_sig, dict(amplitude=l_amp, phase=l_phase,
                                       signal=l_sig), x_hat


def test_loss_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 2, 3, PATCH)).astype(np.float32)
  pred = {'amplitude': rng.normal(size=x.shape).astype(np.float32),
          'sin': np.tanh(rng.normal(size=x.shape)).astype(np.float32),
          'cos': np.tanh(rng.normal(size=x.shape)).astype(np.float32)}
  mask = np.array([[True, True, True], [True, False, False],
                   [True, True, False]])
  want, want_terms, want_xhat = _np_loss(x, pred, mask)
  loss, terms, x_hat = eeg_losses.eeg_loss(
      jnp.asarray(x), {k: jnp.asarray(v) for k, v in pred.items()},
      jnp.asarray(mask))
  np.testing.assert_allclose(float(loss), want, rtol=2e-4)
  for k, v in want_terms.items():
    np.testing.assert_allclose(float(terms[k]), v, rtol=2e-4, err_msg=k)
  valid = np.broadcast_to(mask[:, None, :, None], x.shape)
  np.testing.assert_allclose(np.asarray(x_hat)[valid], want_xhat[valid],
                             rtol=1e-3, atol=1e-3)
  # Without a mask, every patch counts.
  want_all, _, _ = _np_loss(x, pred, np.ones_like(mask))
  loss_all, _, _ = eeg_losses.eeg_loss(jnp.asarray(x), pred)
  np.testing.assert_allclose(float(loss_all), want_all, rtol=2e-4)
  # 'mse': the time head predicts the standardised signal.
  z_hat = rng.normal(size=x.shape).astype(np.float32)
  w = mask[:, None, :, None].astype(np.float64)
  zx, mu, sigma = _np_stdnorm(x.astype(np.float64), w)
  mse, terms, xh = eeg_losses.eeg_loss(
      jnp.asarray(x), {'signal': jnp.asarray(z_hat)}, jnp.asarray(mask),
      kind='mse')
  wb = np.broadcast_to(w, x.shape)
  np.testing.assert_allclose(float(mse),
                             ((z_hat - zx) ** 2 * wb).sum() / wb.sum(),
                             rtol=2e-4)
  np.testing.assert_allclose(np.asarray(xh)[valid],
                             (z_hat * sigma + mu)[valid], rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match='unknown EEG loss'):
    eeg_losses.eeg_loss(jnp.asarray(x), pred, kind='l1')
  with pytest.raises(ValueError, match='needs decoder outputs'):
    eeg_losses.eeg_loss(jnp.asarray(x), pred, kind='mse')


@pytest.fixture(scope='module')
def model_and_fns():
  model = NeuroRVQ(channels=('Fp1', 'Cz', 'O2'), patch_size=PATCH,
                   max_patches=4, conv_channels=4, embed_dim=16, depth=1,
                   num_heads=2, decoder_depth=1, code_dim=8, mlp_ratio=2.0,
                   quantizer=QUANT, rngs=nnx.Rngs(0))
  graph, state = nnx.split(model)

  @jax.jit(static_argnames='train')
  def forward(state, x, mask, train):
    m = nnx.merge(graph, state, copy=True)
    out = m(x, train=train, mask=mask)
    return out, nnx.state(m)

  @jax.jit
  def encode_decode(state, x, mask):
    m = nnx.merge(graph, state, copy=True)
    ids, stats = m.encode_with_stats(x, mask)
    return ids, stats, m.decode(ids, stats, mask)

  return model, graph, state, forward, encode_decode


def test_forward_tokens_code_loss_and_decode(model_and_fns):
  _, _, state, forward, encode_decode = model_and_fns
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 3, 3 * PATCH)).astype(np.float32))
  mask = jnp.ones((2, 3), bool)
  out, _ = forward(state, x, mask, False)
  x_hat, terms = out.reconstruction, out.terms
  assert x_hat.shape == x.shape
  ids = out.quantizer.indices
  assert ids.shape == (2, 3, 3, 4, 2) and ids.dtype == jnp.int32  # G=4, Q=2
  assert int(ids.min()) >= 0 and int(ids.max()) < 16
  # L_code = sum over branches of the per-level mean quantizer loss.
  code = sum(float(o.loss) for o in out.aux['quantizers']) / 2
  np.testing.assert_allclose(float(terms['quantizer']), code, rtol=1e-6)
  m = out.metrics
  np.testing.assert_allclose(
      float(terms['eeg']), float(m['amplitude'] + m['phase'] + m['signal']),
      rtol=1e-5)
  ids2, stats, x_rec = encode_decode(state, x, mask)
  np.testing.assert_array_equal(ids2, ids)
  np.testing.assert_allclose(x_rec, x_hat, atol=1e-5)
  assert stats.shape == (2, 2)


def test_mask_excludes_padding(model_and_fns):
  _, _, state, forward, _ = model_and_fns
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 3 * PATCH)).astype(np.float32)
  y = x.copy()
  y[1, :, 2 * PATCH:] = 50.0  # Padding content must not matter.
  mask = jnp.array([[True, True, True], [True, True, False]])
  o1, _ = forward(state, jnp.asarray(x), mask, False)
  o2, _ = forward(state, jnp.asarray(y), mask, False)
  xh1, xh2 = o1.reconstruction, o2.reconstruction
  t1, t2 = dict(o1.terms, **o1.metrics), dict(o2.terms, **o2.metrics)
  for k in ('eeg', 'amplitude', 'phase', 'signal', 'quantizer'):
    np.testing.assert_allclose(float(t1[k]), float(t2[k]), rtol=1e-5,
                               err_msg=k)
  np.testing.assert_allclose(xh1[:, :, :2 * PATCH], xh2[:, :, :2 * PATCH],
                             atol=1e-5)


def test_input_errors(model_and_fns):
  model = model_and_fns[0]
  with pytest.raises(ValueError, match='expects'):
    model.encode(jnp.zeros((1, 2, PATCH)))
  with pytest.raises(ValueError, match='whole number'):
    model.encode(jnp.zeros((1, 3, PATCH + 1)))
  with pytest.raises(TypeError, match='floating'):
    model.encode(jnp.zeros((1, 3, PATCH), jnp.int32))
  with pytest.raises(ValueError, match='indices must be'):
    model.decode(jnp.zeros((1, 3, 1, 2, 2), jnp.int32))
  with pytest.raises(ValueError, match='unknown electrode'):
    NeuroRVQ(channels=('Xx9',), rngs=nnx.Rngs(0))
