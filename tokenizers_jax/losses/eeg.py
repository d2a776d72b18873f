"""NeuroRVQ's phase- and amplitude-aware reconstruction loss, and plain MSE.

With the signal cut into patches x [B, C, A, P] and X = FFT(x) per patch
(`NeuroRVQTokenizer.forward` of the reference code):

  A      = stdnorm(log1p|X|)                    (per-example z-score, ddof 1)
  L_amp  = MSE(A_hat, A)
  L_pha  = 1 - mean cos((c_hat, s_hat), (cos phi, sin phi))
             + 0.1 * mean((s_hat^2 + c_hat^2 - 1)^2)
  x_hat  = Re(iFFT(expm1(A_hat * sigma_A + mu_A) * (c_hat + i s_hat)))
  L_sig  = MSE(stdnorm(x_hat), stdnorm(x))      (the time-domain term)
  L      = L_code + L_amp + L_pha + L_sig

(L_code, the sum over branches of each branch's per-level mean RVQ loss, is
added by the model.) The baseline loss 'mse' goes with a decoder that predicts
the signal itself, standardised per example (z = stdnorm(x)):
L = L_code + MSE(z_hat, z), and x_hat = z_hat * sigma_x + mu_x. (Plain MSE
through the Fourier heads collapses: with phases not yet learnt, x_hat = 0
minimises it, and the codebooks die.)
A patch mask [B, A] (False: padding) removes padded patches from every mean
and statistic.

Dimension legend:
  B: batch; C: channels; A: patches; P: patch size (= FFT bins)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenizers_jax.frontends.eeg import fft_features
from tokenizers_jax.frontends.eeg import rebuild_signal
from tokenizers_jax.frontends.eeg import std_norm

Array = jax.Array
LOSSES = ('neurorvq', 'mse')
COSINE_EPS = 1e-8


def _mean(v: Array, mask: Array | None) -> Array:
  """Mean of v [B, C, A, ...] over the patches where mask [B, A] is True."""
  v = v.astype(jnp.float32)
  if mask is None:
    return jnp.mean(v)
  w = jnp.broadcast_to(
      mask.reshape(mask.shape[:1] + (1,) + mask.shape[1:]
                   + (1,) * (v.ndim - 3)), v.shape).astype(jnp.float32)
  return jnp.sum(v * w) / jnp.maximum(jnp.sum(w), 1.0)


def phase_cosine(sin_hat: Array, cos_hat: Array, sin: Array,
                 cos: Array) -> Array:
  """Cosine similarity of (cos_hat, sin_hat) and (cos, sin), elementwise."""
  dot = cos_hat * cos + sin_hat * sin
  n1 = jnp.maximum(jnp.sqrt(cos_hat ** 2 + sin_hat ** 2), COSINE_EPS)
  n2 = jnp.maximum(jnp.sqrt(cos ** 2 + sin ** 2), COSINE_EPS)
  return dot / (n1 * n2)


def signal_stats(x: Array, mask: Array | None, kind: str) -> Array:
  """Per-example statistics the reconstruction needs, [B, 2]: the mean and
  std of the log-amplitude ('neurorvq') or of the signal ('mse')."""
  m4 = None if mask is None else mask[:, None, :, None]
  if kind == 'neurorvq':
    t = fft_features(x, mask)
    mean, std = t['amp_mean'], t['amp_std']
  else:
    _, mean, std = std_norm(x.astype(jnp.float32), m4)
  return jnp.stack([mean.reshape(-1), std.reshape(-1)], -1)


def rebuild(pred: dict[str, Array], stats: Array, kind: str) -> Array:
  """Decoder outputs + stats [B, 2] -> x_hat [B, C, A, P]."""
  mean = stats[:, 0].reshape(-1, 1, 1, 1)
  std = stats[:, 1].reshape(-1, 1, 1, 1)
  if kind == 'neurorvq':
    return rebuild_signal(pred['amplitude'], pred['sin'], pred['cos'], mean,
                          std)
  return pred['signal'].astype(jnp.float32) * std + mean


def eeg_loss(x: Array, pred: dict[str, Array], mask: Array | None = None, *,
             kind: str = 'neurorvq') -> tuple[Array, dict[str, Array], Array]:
  """Reconstruction loss of decoder outputs `pred` for patches x.

  Args:
    x: [B, C, A, P] signal patches.
    pred: dict(amplitude, sin, cos) [B, C, A, P] from the Fourier heads
      ('neurorvq'), or dict(signal) from the time head ('mse').
    mask: [B, A] bool, False on padded patches.
    kind: 'neurorvq' (amplitude + phase + time-domain terms) or 'mse'
      (MSE between the predicted and the true standardised signal).

  Returns:
    (loss, terms, x_hat [B, C, A, P]); terms holds every term (for 'mse' the
    amplitude and phase terms are measured on x_hat's FFT, not optimised)
    and `phase_cos`, the mean phase cosine similarity.
  """
  if kind not in LOSSES:
    raise ValueError(f'unknown EEG loss {kind!r}; known: {LOSSES}')
  need = ('amplitude', 'sin', 'cos') if kind == 'neurorvq' else ('signal',)
  if any(k not in pred for k in need):
    raise ValueError(f'loss {kind!r} needs decoder outputs {need}; got '
                     f'{sorted(pred)}')
  x = x.astype(jnp.float32)
  t = fft_features(x, mask)
  m4 = None if mask is None else mask[:, None, :, None]
  zx, mean_x, std_x = std_norm(x, m4)
  if kind == 'neurorvq':
    x_hat = rebuild_signal(pred['amplitude'], pred['sin'], pred['cos'],
                           t['amp_mean'], t['amp_std'])
    amp_hat, sin_hat, cos_hat = pred['amplitude'], pred['sin'], pred['cos']
  else:
    x_hat = pred['signal'].astype(jnp.float32) * std_x + mean_x
    spec = jnp.fft.fft(x_hat, axis=-1)
    amp_hat = (jnp.log1p(jnp.abs(spec)) - t['amp_mean']) / t['amp_std']
    sin_hat, cos_hat = jnp.sin(jnp.angle(spec)), jnp.cos(jnp.angle(spec))
  amp = _mean((amp_hat - t['amplitude']) ** 2, mask)
  cos_sim = phase_cosine(sin_hat, cos_hat, t['sin'], t['cos'])
  unit = _mean((sin_hat ** 2 + cos_hat ** 2 - 1) ** 2, mask)
  phase = 1.0 - _mean(cos_sim, mask) + 0.1 * unit
  zh, _, _ = std_norm(x_hat, m4)
  signal = _mean((zh - zx) ** 2, mask)
  mse = _mean((x_hat - x) ** 2, mask)
  terms = dict(amplitude=amp, phase=phase, signal=signal, mse=mse,
               phase_cos=_mean(cos_sim, mask))
  if kind == 'neurorvq':
    loss = amp + phase + signal
  else:
    loss = _mean((pred['signal'] - zx) ** 2, mask)
  return loss, terms, x_hat
