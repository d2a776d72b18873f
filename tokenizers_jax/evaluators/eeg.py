"""EEG reconstruction metrics: NMSE, Pearson, per-band errors, code usage and
residual norms per RVQ depth.

Every function returns sums over one batch (plus the matching counts) so that
an evaluation over many batches, with padded and masked windows, gives exact
dataset-level values after `finalize`:

  nmse           sum ||x_hat - x||^2 / sum ||x||^2 over valid samples
  pearson        mean over (window, channel) of corr(x, x_hat) in time
  band_power_db  mean over (window, channel) of |10 log10(P_hat / P)|, P the
                 power of the window's FFT bins in the band
  band_nmse      sum ||band(x_hat) - band(x)||^2 / sum ||band(x)||^2, band()
                 keeping only the band's FFT bins (phase errors count)

Bands (Hz, [low, high)): delta 0.5-4, theta 4-8, alpha 8-13, beta 13-30,
gamma 30-75 (75 Hz is the band-pass edge of `data.eeg.preprocess`). Padded
samples are zeroed in both signals before the FFT; windows with no valid
sample are ignored.

Dimension legend:
  B: windows; C: channels; T: samples; F = T // 2 + 1 FFT bins
  G: branches; Q: RVQ levels; E: code dimension; K: codebook size
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.quantizers import functional as qf

Array = jax.Array
BANDS = {'delta': (0.5, 4.0), 'theta': (4.0, 8.0), 'alpha': (8.0, 13.0),
         'beta': (13.0, 30.0), 'gamma': (30.0, 75.0)}


def sample_mask(mask: Array | None, shape, patch_size: int) -> Array:
  """Patch mask [B, A] -> float sample mask [B, 1, T] (ones when None)."""
  if mask is None:
    return jnp.ones((shape[0], 1, shape[-1]), jnp.float32)
  return jnp.repeat(mask.astype(jnp.float32), patch_size, -1)[:, None]


def band_filter(x: Array, sfreq: float, band: tuple[float, float]) -> Array:
  """x [..., T] with only the FFT bins in [low, high) kept."""
  f = jnp.fft.rfftfreq(x.shape[-1], 1.0 / sfreq)
  keep = (f >= band[0]) & (f < band[1])
  return jnp.fft.irfft(jnp.fft.rfft(x, axis=-1) * keep, x.shape[-1], axis=-1)


def band_power(x: Array, sfreq: float, band: tuple[float, float]) -> Array:
  """Sum of |rfft(x)|^2 over the band's bins, [...]."""
  f = jnp.fft.rfftfreq(x.shape[-1], 1.0 / sfreq)
  keep = (f >= band[0]) & (f < band[1])
  return jnp.sum(jnp.abs(jnp.fft.rfft(x, axis=-1)) ** 2 * keep, -1)


def reconstruction_sums(x: Array, x_hat: Array, mask: Array | None, *,
                        patch_size: int, sfreq: float) -> dict[str, Array]:
  """Batch sums for `finalize`: x, x_hat [B, C, T], mask [B, A] or None."""
  x = x.astype(jnp.float32)
  m = sample_mask(mask, x.shape, patch_size)
  x, x_hat = x * m, x_hat.astype(jnp.float32) * m
  win = (jnp.sum(m, (1, 2)) > 0).astype(jnp.float32)  # [B]
  n_t = jnp.maximum(jnp.sum(m, -1), 1.0)  # [B, 1]
  xc = (x - jnp.sum(x, -1, keepdims=True) / n_t[..., None]) * m
  hc = (x_hat - jnp.sum(x_hat, -1, keepdims=True) / n_t[..., None]) * m
  corr = jnp.sum(xc * hc, -1) / jnp.sqrt(
      jnp.maximum(jnp.sum(xc ** 2, -1) * jnp.sum(hc ** 2, -1), 1e-20))
  pairs = win[:, None] * jnp.ones(x.shape[:2])
  out = {'err': jnp.sum((x_hat - x) ** 2), 'energy': jnp.sum(x ** 2),
         'pearson': jnp.sum(corr * pairs), 'pairs': jnp.sum(pairs)}
  for name, band in BANDS.items():
    p, ph = band_power(x, sfreq, band), band_power(x_hat, sfreq, band)
    db = jnp.abs(10 * jnp.log10(jnp.maximum(ph, 1e-20) / jnp.maximum(p, 1e-20)))
    out[f'db/{name}'] = jnp.sum(db * pairs)
    bx, bh = band_filter(x, sfreq, band), band_filter(x_hat, sfreq, band)
    out[f'berr/{name}'] = jnp.sum((bh - bx) ** 2)
    out[f'benergy/{name}'] = jnp.sum(bx ** 2)
  return out


def code_counts(indices: Array, codebook_size: int,
                mask: Array | None) -> Array:
  """Indices [B, C, A, G, Q] -> counts [G, Q, K] over valid tokens (-1 and
  padded patches excluded)."""
  b, c, a, g, q = indices.shape
  tok = (jnp.ones((b, c, a), bool) if mask is None else
         jnp.broadcast_to(mask[:, None, :], (b, c, a))).reshape(-1)
  flat = indices.reshape(-1, g, q)
  return jnp.stack([jnp.stack([
      qf.code_counts(jnp.maximum(flat[:, i, j], 0), codebook_size,
                     tok & (flat[:, i, j] >= 0))
      for j in range(q)]) for i in range(g)])


def residual_norm_sums(z: Array, level_codes: Array,
                       mask: Array | None) -> tuple[Array, Array]:
  """Sum over valid tokens of ||r_d|| for d = 0..Q, r_0 = z, r_{d+1} = r_d -
  q_d; z [B, G, C, A, E], level_codes [B, G, C, A, Q, E]. Returns
  (sums [G, Q+1], token count)."""
  b, g, c, a, q, e = level_codes.shape
  tok = (jnp.ones((b, c, a)) if mask is None else jnp.broadcast_to(
      mask[:, None, :], (b, c, a)).astype(jnp.float32))
  r = z.astype(jnp.float32)
  norms = [jnp.sum(jnp.linalg.norm(r, axis=-1) * tok[:, None], (0, 2, 3))]
  for d in range(q):
    r = r - level_codes[..., d, :].astype(jnp.float32)
    norms.append(jnp.sum(jnp.linalg.norm(r, axis=-1) * tok[:, None], (0, 2, 3)))
  return jnp.stack(norms, -1), jnp.sum(tok)


def finalize(sums: dict[str, np.ndarray], counts: np.ndarray | None = None,
             residual: np.ndarray | None = None,
             tokens: float | None = None) -> dict[str, float]:
  """Accumulated sums -> 'eval/...' metrics."""
  s = {k: float(np.asarray(v)) for k, v in sums.items()}
  pairs = max(s['pairs'], 1.0)
  out = {'eval/nmse': s['err'] / max(s['energy'], 1e-20),
         'eval/pearson': s['pearson'] / pairs}
  for name in BANDS:
    out[f'eval/band_power_db/{name}'] = s[f'db/{name}'] / pairs
    out[f'eval/band_nmse/{name}'] = (s[f'berr/{name}']
                                     / max(s[f'benergy/{name}'], 1e-20))
  if counts is not None:
    counts = np.asarray(counts)
    used = (counts > 0).mean(-1)  # [G, Q]
    for g in range(used.shape[0]):
      for q in range(used.shape[1]):
        out[f'eval/usage/branch{g}/level{q}'] = float(used[g, q])
    out['eval/codebook_usage'] = float(used.mean())
    p = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
    ent = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-30)), 0), -1)
    out['eval/perplexity'] = float(np.mean(np.exp(ent)))
  if residual is not None:
    res = np.asarray(residual).mean(0) / max(float(tokens), 1.0)  # [Q+1]
    for d, v in enumerate(res):
      out[f'eval/residual_norm/depth{d}'] = float(v)
  out['eval/num_channel_windows'] = s['pairs']
  return out
