"""Spectral losses in JAX: multi-scale mel L1, multi-resolution STFT loss
and feature matching.

The signal operations they use (STFT/iSTFT, mel filterbanks, log-mel, frame
masks) live in `tokenizers_jax.nn.signal`; they are re-exported here
under their old names (`losses.spectral.stft`, ...).

Dimension legend:
  B: batch (any leading axes); N: samples; T: STFT frames
  F: frequency bins (n_fft // 2 + 1); M: mel bands; K: features per frame
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# The signal operations, re-exported from their home (and used below).
from tokenizers_jax.nn.signal import (  # pylint: disable=unused-import
    frame_mask, hann_window, hz_to_mel, istft, log_mel, magnitude,
    mel_filterbank, mel_to_hz, num_frames, overlap_add, stft)

Array = jax.Array


def _masked_mean(v: Array, mask: Array | None) -> Array:
  """Mean of v [B, T, K] over T and K (valid frames only) -> [B]."""
  if mask is None:
    return jnp.mean(v, axis=(-2, -1))
  m = mask.astype(jnp.float32)[..., None]
  return (jnp.sum(v * m, axis=(-2, -1))
          / jnp.maximum(jnp.sum(m, axis=(-2, -1)) * v.shape[-1], 1.0))


# -----------------------------------------------------------------------------
# Losses.
# -----------------------------------------------------------------------------


def multiscale_mel_l1(x: Array, y: Array, sample_rate: int,
                      scales: Sequence[tuple[int, int]], *,
                      lengths: Array | None = None, eps: float = 1e-5,
                      reduce: bool = True) -> Array:
  """Mean over scales of mean |log mel(x) - log mel(y)|.

  Args:
    x, y: [B, N] signals.
    sample_rate: Hz.
    scales: (n_fft, n_mels) pairs; hop = n_fft // 4 at each scale.
    lengths: optional [B] valid lengths (frames past them are ignored).
    eps: magnitude clamp before the log.
    reduce: average over the batch (else [B]).

  Returns:
    f32 scalar (or [B]).
  """
  total = 0.0
  for n_fft, n_mels in scales:
    hop = n_fft // 4
    a = log_mel(x, sample_rate, n_fft, hop, n_mels, eps=eps)
    b = log_mel(y, sample_rate, n_fft, hop, n_mels, eps=eps)
    mask = None if lengths is None else frame_mask(lengths, x.shape[-1], hop)
    total = total + _masked_mean(jnp.abs(a - b), mask)
  per = total / len(scales)
  return jnp.mean(per) if reduce else per


def multires_stft_loss(x: Array, y: Array,
                       resolutions: Sequence[tuple[int, int]], *,
                       lengths: Array | None = None, eps: float = 1e-7,
                       reduce: bool = True) -> Array:
  """Parallel WaveGAN's multi-resolution STFT loss (mean over resolutions).

  At each (n_fft, hop): spectral convergence || |Y| - |X| ||_F / || |X| ||_F
  plus mean |log |Y| - log |X||, with x the reference.

  Returns:
    f32 scalar (or [B] when reduce=False).
  """
  total = 0.0
  for n_fft, hop in resolutions:
    a = magnitude(x, n_fft, hop, eps=eps)
    b = magnitude(y, n_fft, hop, eps=eps)
    if lengths is None:
      m = jnp.ones(a.shape[:-1], jnp.float32)
    else:
      m = frame_mask(lengths, x.shape[-1], hop).astype(jnp.float32)
    m = m[..., None]
    sc = (jnp.sqrt(jnp.sum(jnp.square(b - a) * m, axis=(-2, -1)))
          / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(a) * m, axis=(-2, -1))),
                        1e-7))
    mag = _masked_mean(jnp.abs(jnp.log(a) - jnp.log(b)), m[..., 0])
    total = total + sc + mag
  per = total / len(resolutions)
  return jnp.mean(per) if reduce else per


def feature_matching(feats_real: Sequence[Sequence[Array]],
                     feats_fake: Sequence[Sequence[Array]]) -> Array:
  """Mean over discriminators of the sum over layers of mean |f_r - f_f|.

  The real features are constants (no gradient), as in HiFi-GAN / Vocos.
  """
  if len(feats_real) != len(feats_fake) or not feats_real:
    raise ValueError('feature_matching: need the same non-zero number of '
                     f'discriminators; got {len(feats_real)} and '
                     f'{len(feats_fake)}')
  total = 0.0
  for fr, ff in zip(feats_real, feats_fake):
    for a, b in zip(fr, ff):
      a = jax.lax.stop_gradient(a.astype(jnp.float32))
      total = total + jnp.mean(jnp.abs(a - b.astype(jnp.float32)))
  return total / len(feats_real)
