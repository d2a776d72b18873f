"""EEG metrics against numpy/scipy and known answers, with padding masks."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal

from tokenizers_jax.evaluators import eeg as em

FS = 200.0
P = 50


_sums = jax.jit(em.reconstruction_sums, static_argnames=('patch_size', 'sfreq'))


def _metrics(x, x_hat, mask=None):
  sums = _sums(jnp.asarray(x), jnp.asarray(x_hat),
                                None if mask is None else jnp.asarray(mask),
                                patch_size=P, sfreq=FS)
  return em.finalize({k: np.asarray(v) for k, v in sums.items()})


def test_nmse_pearson_band_power_vs_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 2, 4 * P))
  x_hat = 0.7 * x + 0.3 * rng.normal(size=x.shape)
  got = _metrics(x, x_hat)
  np.testing.assert_allclose(got['eval/nmse'],
                             np.sum((x_hat - x) ** 2) / np.sum(x ** 2),
                             rtol=1e-5)
  corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(x.reshape(-1, 4 * P),
                                                   x_hat.reshape(-1, 4 * P))]
  np.testing.assert_allclose(got['eval/pearson'], np.mean(corr), rtol=1e-5)
  # Band power error in dB against scipy's periodogram (its scaling
  # cancels in the ratio).
  f, px = signal.periodogram(x, fs=FS, window='boxcar', detrend=False)
  _, ph = signal.periodogram(x_hat, fs=FS, window='boxcar', detrend=False)
  for name, (lo, hi) in em.BANDS.items():
    keep = (f >= lo) & (f < hi)
    want = np.mean(np.abs(10 * np.log10(ph[..., keep].sum(-1)
                                        / px[..., keep].sum(-1))))
    np.testing.assert_allclose(got[f'eval/band_power_db/{name}'], want,
                               rtol=1e-4, err_msg=name)


def test_band_errors_known_answers():
  """A reconstruction missing only the 40 Hz rhythm: gamma fully wrong,
  alpha exact."""
  t = np.arange(4 * P) / FS
  alpha = np.sin(2 * np.pi * 10 * t)
  gamma = 0.5 * np.sin(2 * np.pi * 40 * t + 0.3)
  x = np.stack([alpha + gamma])[None]
  got = _metrics(x, np.stack([alpha])[None])
  np.testing.assert_allclose(got['eval/band_nmse/gamma'], 1.0, atol=1e-5)
  np.testing.assert_allclose(got['eval/band_nmse/alpha'], 0.0, atol=1e-8)
  np.testing.assert_allclose(got['eval/band_power_db/alpha'], 0.0, atol=1e-4)
  assert got['eval/band_power_db/gamma'] > 100  # Power ratio ~ 0.
  np.testing.assert_allclose(got['eval/nmse'], 0.125 / 0.625, rtol=1e-4)
  # Phase counts in the band NMSE: a half-period shift of the alpha rhythm
  # keeps its power (0 dB) but gives band NMSE 4.
  shifted = np.stack([-alpha + gamma])[None]
  got = _metrics(x, shifted)
  np.testing.assert_allclose(got['eval/band_power_db/alpha'], 0.0, atol=1e-4)
  np.testing.assert_allclose(got['eval/band_nmse/alpha'], 4.0, rtol=1e-4)


def test_padding_is_ignored():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4 * P))
  x_hat = x + 0.5 * rng.normal(size=x.shape)
  mask = np.array([[True, True, True, True], [False, False, False, False]])
  x_pad, h_pad = x.copy(), x_hat.copy()
  x_pad[1] = rng.normal(size=x[1].shape)
  h_pad[1] = 100.0
  np.testing.assert_allclose(
      [_metrics(x_pad, h_pad, mask)[k] for k in ('eval/nmse', 'eval/pearson')],
      [_metrics(x[:1], x_hat[:1])[k] for k in ('eval/nmse', 'eval/pearson')],
      rtol=1e-5)
  # A partly valid window: padded samples are zeroed in both signals.
  part = np.array([[True, True, False, False]])
  got = _metrics(x[:1], x_hat[:1], part)
  v = slice(0, 2 * P)
  np.testing.assert_allclose(
      got['eval/nmse'],
      np.sum((x_hat[0, :, v] - x[0, :, v]) ** 2) / np.sum(x[0, :, v] ** 2),
      rtol=1e-5)


def test_usage_and_residual_norms():
  rng = np.random.default_rng(2)
  idx = rng.integers(0, 8, size=(2, 3, 4, 2, 3))
  idx[0, 0, 0, 1, 2] = -1  # A dropped level is not counted.
  mask = np.array([[True, True, True, True], [True, True, False, False]])
  counts = np.asarray(em.code_counts(jnp.asarray(idx), 8, jnp.asarray(mask)))
  tok = np.broadcast_to(mask[:, None, :], (2, 3, 4))
  for g in range(2):
    for q in range(3):
      vals = idx[..., g, q][tok]
      want = np.bincount(vals[vals >= 0], minlength=8)
      np.testing.assert_array_equal(counts[g, q], want)
  z = rng.normal(size=(2, 2, 3, 4, 5))
  codes = rng.normal(size=(2, 2, 3, 4, 3, 5))
  sums, n = em.residual_norm_sums(jnp.asarray(z), jnp.asarray(codes),
                                  jnp.asarray(mask))
  assert float(n) == tok.sum()
  r = z.copy()
  for d in range(4):
    norms = np.linalg.norm(r, axis=-1).transpose(1, 0, 2, 3)  # [G, B, C, A]
    want = norms[:, tok].sum(-1)
    np.testing.assert_allclose(np.asarray(sums)[:, d], want, rtol=1e-5)
    if d < 3:
      r = r - codes[..., d, :]
  out = em.finalize({k: np.asarray(v) for k, v in em.reconstruction_sums(
      jnp.ones((1, 1, P)), jnp.ones((1, 1, P)), None, patch_size=P,
      sfreq=FS).items()}, counts, np.asarray(sums), float(n))
  np.testing.assert_allclose(out['eval/usage/branch1/level2'],
                             np.mean(counts[1, 2] > 0))
  np.testing.assert_allclose(out['eval/residual_norm/depth0'],
                             np.asarray(sums)[:, 0].mean() / tok.sum(),
                             rtol=1e-6)
