"""EEG front end: the FFT decomposition and its inverse, a conv branch against
a numpy reference, the key padding mask, and shape errors."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from tokenizers_jax.frontends import eeg as fe


def test_fft_features_and_round_trip():
  """Targets equal a numpy computation; rebuilding from them returns x."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 2, 200)).astype(np.float32)
  t = fe.fft_features(jnp.asarray(x))
  spec = np.fft.fft(x.astype(np.float64), axis=-1)
  log_amp = np.log1p(np.abs(spec))
  mean = log_amp.mean(axis=(1, 2, 3), keepdims=True)
  std = log_amp.std(axis=(1, 2, 3), keepdims=True, ddof=1)  # torch.var
  np.testing.assert_allclose(t['amplitude'], (log_amp - mean) / std,
                             atol=2e-4)
  np.testing.assert_allclose(t['sin'], np.sin(np.angle(spec)), atol=2e-4)
  np.testing.assert_allclose(t['cos'], np.cos(np.angle(spec)), atol=2e-4)
  back = fe.rebuild_signal(t['amplitude'], t['sin'], t['cos'], t['amp_mean'],
                           t['amp_std'])
  np.testing.assert_allclose(back, x, atol=2e-4)
  # A masked patch does not enter the statistics.
  mask = jnp.array([[True, False], [True, True]])
  tm = fe.fft_features(jnp.asarray(x), mask)
  la0 = log_amp[0, :, :1]
  np.testing.assert_allclose(tm['amp_mean'][0].ravel(), [la0.mean()],
                             rtol=1e-5)
  np.testing.assert_allclose(tm['amp_std'][0].ravel(), [la0.std(ddof=1)],
                             rtol=1e-4)


def _np_groupnorm(h, groups, scale, bias, eps=1e-6):
  m, t, c = h.shape
  g = h.reshape(m, t, groups, c // groups)
  mu = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  return ((g - mu) / np.sqrt(var + eps)).reshape(m, t, c) * scale + bias


def test_temporal_branch_matches_numpy():
  """conv -> GroupNorm -> exact GELU -> average pool (2 then 4), flattened
  time-major, as NeuroRVQ's MultiDimentionalTemporalConv branch."""
  branch = fe.TemporalBranch((9, 5), 4, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 40)).astype(np.float32)
  got = np.asarray(branch(jnp.asarray(x)))
  h = x[..., None].astype(np.float64)
  for conv, norm, pool in zip(branch.convs, branch.norms, fe.POOLS):
    w = np.asarray(conv.kernel[...], np.float64)  # [k, cin, cout]
    k = w.shape[0]
    pad = np.pad(h, ((0, 0), (k // 2, k // 2), (0, 0)))
    out = np.zeros(h.shape[:2] + (w.shape[2],))
    for i in range(k):
      out += np.einsum('mtc,cd->mtd', pad[:, i:i + h.shape[1]], w[i])
    out += np.asarray(conv.bias[...])
    out = _np_groupnorm(out, norm.num_groups, np.asarray(norm.scale[...]),
                        np.asarray(norm.bias[...]), norm.epsilon)
    out = 0.5 * out * (1 + special.erf(out / np.sqrt(2)))
    h = out.reshape(out.shape[0], -1, pool, out.shape[2]).mean(2)
  assert got.shape == (3, 5 * 4)
  np.testing.assert_allclose(got, h.reshape(3, -1), atol=1e-4)


@pytest.fixture(scope='module')
def frontend():
  return fe.EEGFrontEnd(patch_size=40, max_patches=4, conv_channels=4,
                        embed_dim=16, depth=1, num_heads=2, decoder_depth=1,
                        code_dim=8, mlp_ratio=2.0, rngs=nnx.Rngs(0))


def test_padded_patches_do_not_reach_valid_tokens(frontend):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 160)).astype(np.float32)
  ids = jnp.array([1, 5, 9])
  mask = jnp.array([[True, True, False, False], [True, True, True, True]])
  y = x.copy()
  y[0, :, 80:] = rng.normal(size=(3, 80)) * 10  # Change the padded part.
  z1 = frontend.encode(jnp.asarray(x), ids, mask)
  z2 = frontend.encode(jnp.asarray(y), ids, mask)
  assert z1.shape == (2, 4, 3, 4, 8) == frontend.latent_shape(x.shape)
  np.testing.assert_allclose(z1[0, :, :, :2], z2[0, :, :, :2], atol=1e-5)
  np.testing.assert_allclose(z1[1], z2[1], atol=1e-6)
  assert not np.allclose(z1[0, :, :, 2:], z2[0, :, :, 2:])
  # Without the mask, the padded content does change valid tokens.
  z3 = frontend.encode(jnp.asarray(y), ids, None)
  z4 = frontend.encode(jnp.asarray(x), ids, None)
  assert not np.allclose(z3[0, :, :, :2], z4[0, :, :, :2], atol=1e-5)
  pred = frontend.decode(z1, ids, mask)
  assert set(pred) == {'amplitude', 'sin', 'cos'}
  assert pred['sin'].shape == (2, 3, 4, 40)
  assert float(jnp.max(jnp.abs(pred['cos']))) <= 1.0


def test_shape_errors(frontend):
  ids = jnp.array([1, 2])
  with pytest.raises(ValueError, match='whole number'):
    frontend.encode(jnp.zeros((1, 2, 50)), ids)
  with pytest.raises(ValueError, match=r'\[B, C, T\]'):
    frontend.encode(jnp.zeros((2, 80)), ids)
  with pytest.raises(ValueError, match='temporal embeddings'):
    frontend.encode(jnp.zeros((1, 2, 40 * 5)), ids)
  with pytest.raises(ValueError, match='latents must be'):
    frontend.decode(jnp.zeros((1, 3, 2, 1, 8)), ids)
  with pytest.raises(ValueError, match='divisible by 8'):
    fe.EEGFrontEnd(patch_size=36, rngs=nnx.Rngs(0))
