"""Deterministic synthetic EEG recordings, and writing them as EDF files.

`synthesize_recording`: 1/f^beta background with spatially correlated
sources, an occipital alpha rhythm (8-12 Hz) that waxes and wanes, a central
beta rhythm (18-25 Hz), transient focal gamma bursts (30-45 Hz), frontal eye
blinks and 50 Hz line noise, at 250 Hz (so reading exercises resampling),
seeded by (seed, recording index). `write_edf` stores float volts as a 16-bit
EDF file (edfio).

Dimension legend:
  C: channels; T: samples
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from tokenizers_jax.data.eeg_montage import CHANNELS_1020, POSITIONS

# Bumped whenever `synthesize_recording` changes (it names the EDF folder).
SYNTHETIC_VERSION = 2
SYNTHETIC_SFREQ = 250.0


def _narrowband(rng, n: int, fs: float, f0: float, width: float) -> np.ndarray:
  """Unit-RMS Gaussian noise band-limited around f0 (waxing and waning)."""
  spec = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
  f = np.fft.rfftfreq(n, 1 / fs)
  x = np.fft.irfft(spec * np.exp(-0.5 * ((f - f0) / width) ** 2), n)
  return x / (x.std() + 1e-12)


def _topography(channels, center, sigma) -> np.ndarray:
  pos = np.array([POSITIONS[c] for c in channels])
  d2 = np.sum((pos - np.asarray(center)) ** 2, -1)
  return np.exp(-0.5 * d2 / sigma ** 2)


def synthesize_recording(seconds: int, *, seed: int = 0, index: int = 0,
                         channels: Sequence[str] = CHANNELS_1020,
                         sfreq: float = SYNTHETIC_SFREQ) -> np.ndarray:
  """A deterministic synthetic EEG recording in volts, float64 [C, T].

  Args:
    seconds: duration (T = seconds * sfreq).
    seed: dataset seed.
    index: recording index (each recording has its own rhythms and events).
    channels: 10-20 channel names (keys of `POSITIONS`).
    sfreq: sampling rate in Hz.
  """
  unknown = [c for c in channels if c not in POSITIONS]
  if unknown:
    raise ValueError(f'synthetic EEG has no position for channels {unknown}; '
                     f'use names from {CHANNELS_1020}')
  rng = np.random.default_rng([seed, index])
  c, n = len(channels), int(round(seconds * sfreq))
  t = np.arange(n) / sfreq
  f = np.fft.rfftfreq(n, 1 / sfreq)
  # 1/f^beta background: sources mixed by a smooth spatial kernel.
  beta = rng.uniform(1.0, 1.6)
  shape = 1 / np.maximum(f, 0.5) ** (beta / 2)
  spec = (rng.normal(size=(c, f.size)) + 1j * rng.normal(size=(c, f.size)))
  src = np.fft.irfft(spec * shape, n, axis=-1)
  pos = np.array([POSITIONS[ch] for ch in channels])
  mix = np.exp(-np.sum((pos[:, None] - pos[None]) ** 2, -1) / (2 * 0.5 ** 2))
  bg = mix @ src
  x = 12e-6 * bg / bg.std()
  # Occipital alpha with a slow eyes-closed envelope.
  f_alpha = rng.uniform(9.0, 11.0)
  env = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * t / rng.uniform(8, 20)
                                       + rng.uniform(0, 2 * np.pi)))
  alpha = _narrowband(rng, n, sfreq, f_alpha, 0.6) * env
  x += 25e-6 * _topography(channels, (0, -0.95), 0.5)[:, None] * alpha
  # Central beta (sensorimotor), weaker.
  beta_wave = _narrowband(rng, n, sfreq, rng.uniform(18, 25), 1.5)
  topo = (_topography(channels, (-0.5, 0), 0.35)
          + _topography(channels, (0.5, 0), 0.35))
  x += 6e-6 * topo[:, None] * beta_wave
  # Transient focal gamma bursts (100-300 ms).
  for _ in range(int(seconds * rng.uniform(0.2, 0.5))):
    t0, dur = rng.uniform(0, seconds), rng.uniform(0.1, 0.3)
    burst = np.exp(-0.5 * ((t - t0) / (dur / 2.5)) ** 2) * np.sin(
        2 * np.pi * rng.uniform(30, 45) * t + rng.uniform(0, 2 * np.pi))
    focus = pos[rng.integers(c)]
    x += 10e-6 * _topography(channels, focus, 0.4)[:, None] * burst
  # Eye blinks: frontal, decaying away from the eyes.
  blink_topo = np.exp(-np.linalg.norm(pos - np.array([0, 1.1]), axis=-1)
                      / 0.5)
  tb = rng.uniform(1, 5)
  while tb < seconds - 0.5:
    shape_b = np.exp(-0.5 * ((t - tb) / 0.07) ** 2)
    x += 150e-6 * rng.uniform(0.7, 1.3) * blink_topo[:, None] * shape_b
    tb += rng.uniform(2, 8)
  x += 2e-6 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 2 * np.pi))
  return x


def write_edf(path: str | os.PathLike, data: np.ndarray,
              channels: Sequence[str], sfreq: float, *,
              labels: str = 'EEG {}-REF') -> None:
  """Writes float [C, T] volts as a 16-bit EDF file (edfio), uV units.

  Each channel's physical range is its own rounded-up peak, so the
  quantisation step is at most peak / 32767.
  """
  import edfio  # pylint: disable=g-import-not-at-top
  data = np.asarray(data, np.float64)
  if data.ndim != 2 or data.shape[0] != len(channels):
    raise ValueError(f'write_edf: data must be [C={len(channels)}, T]; got '
                     f'{data.shape}')
  if not np.all(np.isfinite(data)):
    raise ValueError(f'write_edf: data for {path} contain NaN or Inf')
  if data.shape[1] % int(sfreq) or sfreq != int(sfreq):
    raise ValueError('write_edf: needs an integer sampling rate and whole '
                     f'seconds; got {sfreq} Hz, {data.shape[1]} samples')
  signals = []
  for ch, row in zip(channels, data * 1e6):
    peak = float(np.ceil(np.abs(row).max() + 1.0))
    signals.append(edfio.EdfSignal(row, sfreq, label=labels.format(ch.upper()),
                                   physical_dimension='uV',
                                   physical_range=(-peak, peak)))
  edfio.Edf(signals, data_record_duration=1).write(os.fspath(path))
