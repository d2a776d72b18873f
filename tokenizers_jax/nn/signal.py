"""Spectral signal operations in JAX: STFT/iSTFT, mel filterbanks, log-mel.

Pure functions below the front ends, discriminators and losses that use them
(`frontends.audio`, `models.audio_discriminators`, `losses.spectral`).

Conventions (those of librosa/torch with a periodic Hann window):
  * `stft(x, n_fft, hop)` frames with `center=True` (the signal padded by
    n_fft // 2 on each side, reflect by default), so frame t is centred on
    sample t * hop and there are 1 + N // hop frames.
  * `istft` inverts it by windowed overlap-add divided by the summed squared
    window (the least-squares inverse). `padding='center'` undoes `center=True`;
    `padding='same'` (Vocos' ISTFT head) trims (n_fft - hop) / 2 samples from
    each end, so T frames give exactly T * hop samples.
  * Mel scale: `htk=False` is Slaney's (linear below 1 kHz, logarithmic above,
    as librosa's default and torchaudio's `mel_scale='slaney'`); `htk=True` is
    2595 log10(1 + f / 700). `norm='slaney'` scales each triangle to unit area
    (2 / bandwidth); `norm=None` leaves peaks at 1.
  * Log spectra are natural logs of magnitudes clamped at `eps`.

Dimension legend:
  B: batch (any leading axes); N: samples; T: STFT frames
  F: frequency bins (n_fft // 2 + 1); M: mel bands
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# -----------------------------------------------------------------------------
# STFT / iSTFT.
# -----------------------------------------------------------------------------


def hann_window(n: int) -> np.ndarray:
  """Periodic Hann window of length n (torch.hann_window / scipy 'hann')."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def num_frames(num_samples: int, hop: int, center: bool = True,
               n_fft: int | None = None) -> int:
  """Frames `stft` gives for a signal of `num_samples` samples."""
  if center:
    return 1 + num_samples // hop
  return 1 + (num_samples - n_fft) // hop


def stft(x: Array, n_fft: int, hop: int, *, center: bool = True,
         pad_mode: str = 'reflect', window: np.ndarray | None = None) -> Array:
  """Short-time Fourier transform.

  Args:
    x: [..., N] real signal.
    n_fft: FFT size (= window length).
    hop: hop size.
    center: pad n_fft // 2 on each side (frame t centred on sample t * hop).
    pad_mode: 'reflect' or 'constant' (zeros) for the centre padding.
    window: [n_fft] window; periodic Hann by default.

  Returns:
    complex64 [..., T, F].
  """
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f'stft expects [..., N] signals; got shape {x.shape}')
  if hop < 1 or n_fft < 2:
    raise ValueError(f'stft needs n_fft >= 2 and hop >= 1; got {n_fft}, {hop}')
  x = x.astype(jnp.float32)
  if center:
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    if pad_mode == 'reflect' and x.shape[-1] <= n_fft // 2:
      raise ValueError(f'stft: reflect padding needs more than n_fft // 2 = '
                       f'{n_fft // 2} samples; got {x.shape[-1]}')
    x = jnp.pad(x, pad, mode=pad_mode)
  n = x.shape[-1]
  if n < n_fft:
    raise ValueError(f'stft: signal of {n} samples is shorter than n_fft='
                     f'{n_fft}')
  t = 1 + (n - n_fft) // hop
  idx = np.arange(t)[:, None] * hop + np.arange(n_fft)[None, :]
  frames = x[..., idx]  # [..., T, n_fft]
  w = hann_window(n_fft) if window is None else np.asarray(window, np.float32)
  return jnp.fft.rfft(frames * w, axis=-1)


def overlap_add(frames: Array, hop: int) -> Array:
  """Sums frames [..., T, L] placed every `hop` samples.

  Returns [..., (T - 1) * hop + L].
  """
  t, length = frames.shape[-2], frames.shape[-1]
  lead = frames.shape[:-2]
  total = (t - 1) * hop + length
  if length % hop == 0:
    # Split each frame into r = L / hop hop-sized pieces; piece j of frame t
    # lands in output block t + j. Sum r shifted copies: no scatter.
    r = length // hop
    pieces = frames.reshape(lead + (t, r, hop))
    out = jnp.zeros(lead + (t + r - 1, hop), frames.dtype)
    for j in range(r):
      pad = [(0, 0)] * len(lead) + [(j, r - 1 - j), (0, 0)]
      out = out + jnp.pad(pieces[..., j, :], pad)
    return out.reshape(lead + (total,))
  idx = (np.arange(t)[:, None] * hop + np.arange(length)[None, :]).reshape(-1)
  flat = frames.reshape(lead + (t * length,))
  return jnp.zeros(lead + (total,), frames.dtype).at[..., idx].add(flat)


def istft(spec: Array, n_fft: int, hop: int, *, padding: str = 'center',
          length: int | None = None, window: np.ndarray | None = None) -> Array:
  """Inverse STFT by weighted overlap-add.

  Args:
    spec: complex [..., T, F] with F = n_fft // 2 + 1.
    n_fft: FFT size (= window length).
    hop: hop size.
    padding: 'center' (inverse of `stft(center=True)`: trims n_fft // 2 from
      each end) or 'same' (trims (n_fft - hop) / 2 from each end: T * hop
      samples; Vocos' head).
    length: optional output length (cut, or zero-padded past what the
      frames cover).
    window: [n_fft] synthesis window; periodic Hann by default.

  Returns:
    float32 [..., N].
  """
  if spec.shape[-1] != n_fft // 2 + 1:
    raise ValueError(f'istft: expected {n_fft // 2 + 1} frequency bins for '
                     f'n_fft={n_fft}; got shape {tuple(spec.shape)}')
  w = hann_window(n_fft) if window is None else np.asarray(window, np.float32)
  t = spec.shape[-2]
  frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32) * w
  y = overlap_add(frames, hop)
  env = overlap_add(jnp.broadcast_to(jnp.asarray(w * w), (t, n_fft)), hop)
  if padding == 'center':
    start, stop = n_fft // 2, y.shape[-1] - n_fft // 2
    if length is not None:  # As torch.istft: keep what the frames cover.
      stop = min(start + length, y.shape[-1])
  elif padding == 'same':
    if (n_fft - hop) % 2:
      raise ValueError(f"istft padding='same' needs n_fft - hop even; got "
                       f'n_fft={n_fft}, hop={hop}')
    pad = (n_fft - hop) // 2
    start, stop = pad, y.shape[-1] - pad
  else:
    raise ValueError(f"istft padding must be 'center' or 'same'; got "
                     f'{padding!r}')
  y = y[..., start:stop]
  env = env[start:stop]
  y = y / jnp.where(env > 1e-11, env, 1.0)
  if length is not None:
    n = y.shape[-1]
    if length <= n:
      y = y[..., :length]
    else:
      y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, length - n)])
  return y


def magnitude(x: Array, n_fft: int, hop: int, *, eps: float = 0.0,
              pad_mode: str = 'reflect') -> Array:
  """|STFT| [..., T, F]; sqrt(re² + im² + eps) when eps > 0 (gradients)."""
  s = stft(x, n_fft, hop, pad_mode=pad_mode)
  if eps:
    return jnp.sqrt(jnp.real(s) ** 2 + jnp.imag(s) ** 2 + eps)
  return jnp.abs(s)


# -----------------------------------------------------------------------------
# Mel filterbank.
# -----------------------------------------------------------------------------


def hz_to_mel(f, htk: bool = False):
  """Hz -> mel (Slaney's scale, or HTK's when htk=True)."""
  f = np.asarray(f, np.float64)
  if htk:
    return 2595.0 * np.log10(1.0 + f / 700.0)
  f_sp = 200.0 / 3
  min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
  min_log_mel = min_log_hz / f_sp
  return np.where(f >= min_log_hz,
                  min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz)
                  / logstep, f / f_sp)


def mel_to_hz(m, htk: bool = False):
  """mel -> Hz (inverse of `hz_to_mel`)."""
  m = np.asarray(m, np.float64)
  if htk:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  f_sp = 200.0 / 3
  min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
  min_log_mel = min_log_hz / f_sp
  return np.where(m >= min_log_mel,
                  min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, *,
                   fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False, norm: str | None = 'slaney'
                   ) -> np.ndarray:
  """Triangular mel filters, float32 [F, M] (multiply a spectrum [..., F]).

  Bands are centred on n_mels points evenly spaced in mel between fmin and
  fmax (default sample_rate / 2); each triangle rises from the previous centre
  and falls to the next one, evaluated at the FFT bin frequencies.
  """
  fmax = sample_rate / 2 if fmax is None else fmax
  if not 0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f'mel_filterbank needs 0 <= fmin < fmax <= sr/2; got '
                     f'fmin={fmin}, fmax={fmax}, sr={sample_rate}')
  if norm not in (None, 'slaney'):
    raise ValueError(f"mel_filterbank norm must be None or 'slaney'; got "
                     f'{norm!r}')
  fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  mels = np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2)
  pts = mel_to_hz(mels, htk)
  widths = np.diff(pts)
  ramps = pts[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  if norm == 'slaney':
    weights *= (2.0 / (pts[2:] - pts[:-2]))[:, None]
  return weights.T.astype(np.float32)


def log_mel(x: Array, sample_rate: int, n_fft: int, hop: int, n_mels: int, *,
            eps: float = 1e-5, fmin: float = 0.0, fmax: float | None = None
            ) -> Array:
  """log(clamp(mel(|STFT|), eps)) [..., T, M] (magnitude, not power)."""
  fb = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin=fmin,
                                  fmax=fmax))
  mag = magnitude(x, n_fft, hop)
  mel = jnp.einsum('...tf,fm->...tm', mag, fb,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(jnp.maximum(mel, eps))


def frame_mask(lengths: Array, num_samples: int, hop: int) -> Array:
  """[B] valid lengths -> bool [B, T]: frame t (centred on t*hop) is valid
  when its centre lies inside the signal."""
  t = num_frames(num_samples, hop)
  return (jnp.arange(t)[None, :] * hop) < jnp.asarray(lengths)[:, None]
