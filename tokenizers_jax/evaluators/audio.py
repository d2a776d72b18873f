"""Audio reconstruction metrics.

In JAX (per utterance, masked by valid lengths so padding never counts):
  mel_distance   mean over `MEL_SCALES` of mean |log mel(x) - log mel(y)|
                 (natural log of mel magnitudes clamped at 1e-5; lower is
                 better; `losses.spectral.multiscale_mel_l1`).
  stft_distance  multi-resolution STFT distance (spectral convergence + log
                 magnitude L1, mean over `STFT_RESOLUTIONS`).
  si_snr         scale-invariant SNR in dB (both signals made zero-mean over
                 their valid samples; s = <y, x> x / ||x||², e = y - s,
                 10 log10(||s||² / ||e||²)).
On the host (numpy, one utterance at a time):
  pesq_wb        wideband PESQ (ITU-T P.862.2) from the `pesq` package, at
                 16 kHz (other rates are resampled with soxr first); MOS-LQO
                 in [1.04, 4.64].
  stoi           short-time objective intelligibility from `pystoi` (it
                 resamples to 10 kHz itself); in [0, 1].
  bitrate        tokens/s x bits/token.

Dimension legend:
  B: batch; N: samples
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.losses import spectral

Array = jax.Array

MEL_SCALES = ((512, 80), (1024, 80), (2048, 80))   # (n_fft, n_mels)
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop)
PESQ_RATE = 16000


def _lengths(x: Array, lengths: Array | None) -> Array:
  if lengths is None:
    return jnp.full((x.shape[0],), x.shape[-1], jnp.int32)
  return jnp.asarray(lengths)


def _scaled(sample_rate: int, pairs):
  """Scales n_fft with the sample rate (pairs are for 16 kHz), powers of 2."""
  f = sample_rate / 16000
  return tuple((int(2 ** round(math.log2(n * f))), m) for n, m in pairs)


def mel_distance(x: Array, y: Array, sample_rate: int,
                 lengths: Array | None = None) -> Array:
  """[B] multi-scale log-mel L1 between references x and estimates y."""
  return spectral.multiscale_mel_l1(
      x, y, sample_rate, _scaled(sample_rate, MEL_SCALES),
      lengths=lengths, reduce=False)


def stft_distance(x: Array, y: Array, sample_rate: int,
                  lengths: Array | None = None) -> Array:
  """[B] multi-resolution STFT distance between x and y."""
  res = tuple((n, h * n // n0) for (n, _), (n0, h) in
              zip(_scaled(sample_rate, STFT_RESOLUTIONS), STFT_RESOLUTIONS))
  return spectral.multires_stft_loss(x, y, res, lengths=lengths, reduce=False)


def si_snr(x: Array, y: Array, lengths: Array | None = None,
           eps: float = 1e-8) -> Array:
  """[B] scale-invariant SNR (dB) of estimates y against references x."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  n = _lengths(x, lengths)
  m = (jnp.arange(x.shape[-1])[None, :] < n[:, None]).astype(jnp.float32)
  count = jnp.maximum(jnp.sum(m, -1, keepdims=True), 1.0)
  x = (x - jnp.sum(x * m, -1, keepdims=True) / count) * m
  y = (y - jnp.sum(y * m, -1, keepdims=True) / count) * m
  dot = jnp.sum(x * y, -1, keepdims=True)
  s = dot / (jnp.sum(x * x, -1, keepdims=True) + eps) * x
  e = y - s
  return 10 * jnp.log10((jnp.sum(s * s, -1) + eps) / (jnp.sum(e * e, -1) + eps))


def _host(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f'expected one non-empty waveform [N]; got shape '
                     f'{x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError('waveform contains NaN or Inf')
  return x


def pesq_wb(ref, deg, sample_rate: int) -> float:
  """Wideband PESQ of `deg` against `ref` (1-D waveforms at sample_rate).

  Raises:
    ValueError: the utterance is too short or holds no speech for PESQ.
  """
  import pesq as pesq_lib  # pylint: disable=g-import-not-at-top
  ref, deg = _host(ref), _host(deg)
  if ref.shape != deg.shape:
    raise ValueError(f'pesq_wb: shapes differ: {ref.shape} vs {deg.shape}')
  if sample_rate != PESQ_RATE:
    from tokenizers_jax.data import speech  # pylint: disable=g-import-not-at-top
    ref = speech.resample(ref, sample_rate, PESQ_RATE)
    deg = speech.resample(deg, sample_rate, PESQ_RATE)
  try:
    return float(pesq_lib.pesq(PESQ_RATE, ref.astype(np.float32),
                               deg.astype(np.float32), 'wb'))
  except pesq_lib.PesqError as e:
    raise ValueError(f'PESQ failed ({type(e).__name__}): {e}') from e


def stoi(ref, deg, sample_rate: int) -> float:
  """STOI of `deg` against `ref` (1-D waveforms at sample_rate)."""
  import pystoi  # pylint: disable=g-import-not-at-top
  ref, deg = _host(ref), _host(deg)
  if ref.shape != deg.shape:
    raise ValueError(f'stoi: shapes differ: {ref.shape} vs {deg.shape}')
  return float(pystoi.stoi(ref, deg, sample_rate, extended=False))


def bits_per_token(codebook_sizes: Sequence[int]) -> float:
  """Sum over index positions (RVQ levels) of log2(codebook size)."""
  return float(sum(math.log2(k) for k in codebook_sizes))


def bitrate(sample_rate: int, hop: int, codebook_sizes: Sequence[int]) -> float:
  """Bits per second: (sample_rate / hop) tokens/s x bits per token."""
  return sample_rate / hop * bits_per_token(codebook_sizes)
