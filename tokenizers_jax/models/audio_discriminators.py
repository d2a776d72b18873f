"""Waveform discriminators: multi-period (HiFi-GAN MPD) and multi-resolution
STFT (UnivNet / Vocos MRD), combined in `AudioDiscriminator`.

MPD, one per period p: the waveform (reflect-padded to a multiple of p) is
folded into a 2D map [B, N/p, p, 1] so that samples p apart line up along the
first axis; convs with (k, 1) kernels and (3, 1) strides look at each phase
column separately. MRD, one per (n_fft, hop): the STFT magnitude [B, T, F, 1]
goes through 2D convs with (3, 9) kernels and stride 2 along frequency.
Every sub-discriminator returns its logits and the list of its hidden feature
maps (for the feature-matching loss). LeakyReLU 0.1 as in HiFi-GAN/Vocos; no
weight normalisation and no batch statistics (the `rest` state is empty).

Dimension legend:
  B: batch; N: samples; p: period; T: STFT frames; F: frequency bins
  C: conv channels
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.nn import signal
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array


class _Conv2d(nnx.Module):
  """2D conv with 'same'-style padding; `subsample=True` applies the stride
  by sampling the stride-1 output every s positions (the same values).

  XLA's CPU gradient of a strided conv with respect to its input (a dilated
  transposed conv) was ~5-10x slower than that of the subsampled form (a
  stride-1 conv and a pad) for the MRD's (3, 9) kernels with stride 2; for
  the MPD's stride 3 the native strided conv is faster overall.
  """

  def __init__(self, cin, cout, kernel, stride, rngs, dtype,
               subsample=False):
    pad = [((k - 1) // 2, k // 2) for k in kernel]
    self.stride = tuple(stride)
    self.subsample = subsample and self.stride != (1, 1)
    self.conv = nnx.Conv(cin, cout, kernel, padding=pad, dtype=dtype,
                         strides=(1, 1) if self.subsample else self.stride,
                         rngs=rngs,
                         kernel_metadata=logical(None, None, None, 'embed'),
                         bias_metadata=logical('embed'))

  def __call__(self, x):
    y = self.conv(x)
    if self.subsample:
      y = y[:, ::self.stride[0], ::self.stride[1]]
    return y


def _conv2d(cin, cout, kernel, stride, rngs, dtype, subsample=False):
  return _Conv2d(cin, cout, kernel, stride, rngs, dtype, subsample)


def _leaky(x):
  return jax.nn.leaky_relu(x, 0.1)


class PeriodDiscriminator(nnx.Module):
  """HiFi-GAN period discriminator for one period."""

  def __init__(self, period: int, channels: Sequence[int], rngs: nnx.Rngs,
               dtype=jnp.float32):
    if period < 1:
      raise ValueError(f'period must be >= 1; got {period}')
    self.period = period
    convs, cin = [], 1
    for i, c in enumerate(channels):
      stride = (3, 1) if i < len(channels) - 1 else (1, 1)
      convs.append(_conv2d(cin, c, (5, 1), stride, rngs, dtype))
      cin = c
    self.convs = nnx.List(convs)
    self.post = _conv2d(cin, 1, (3, 1), (1, 1), rngs, dtype)
    self.dtype = dtype

  def __call__(self, x: Array) -> tuple[Array, list[Array]]:
    b, n = x.shape
    pad = -n % self.period
    if pad:
      x = jnp.pad(x, ((0, 0), (0, pad)), mode='reflect')
    h = x.reshape(b, -1, self.period, 1).astype(self.dtype)
    return _conv_stack(self.convs, self.post, h)


def _conv_stack(convs, post, h: Array) -> tuple[Array, list[Array]]:
  """Leaky-ReLU conv layers then the output conv: (logits, every layer's
  output as feature maps for the feature-matching loss)."""
  feats = []
  for conv in convs:
    h = _leaky(conv(h))
    feats.append(h)
  h = post(h)
  feats.append(h)
  return h, feats


class ResolutionDiscriminator(nnx.Module):
  """UnivNet/Vocos discriminator on the STFT magnitude at one resolution."""

  def __init__(self, n_fft: int, hop: int, channels: int, num_layers: int,
               rngs: nnx.Rngs, dtype=jnp.float32, first_stride: int = 1):
    self.n_fft, self.hop = n_fft, hop
    convs = [_conv2d(1, channels, (3, 9), (1, first_stride), rngs, dtype,
                     subsample=True)]
    for _ in range(num_layers):
      convs.append(_conv2d(channels, channels, (3, 9), (1, 2), rngs, dtype,
                           subsample=True))
    convs.append(_conv2d(channels, channels, (3, 3), (1, 1), rngs, dtype))
    self.convs = nnx.List(convs)
    self.post = _conv2d(channels, 1, (3, 3), (1, 1), rngs, dtype)
    self.dtype = dtype

  def __call__(self, x: Array) -> tuple[Array, list[Array]]:
    mag = signal.magnitude(x.astype(jnp.float32), self.n_fft, self.hop,
                             eps=1e-9)
    h = mag[..., None].astype(self.dtype)
    return _conv_stack(self.convs, self.post, h)


class AudioDiscriminator(nnx.Module):
  """MPD + MRD: `__call__(x [B, N]) -> (logits list, feature-map lists)`.

  Args:
    periods: MPD periods (HiFi-GAN: 2, 3, 5, 7, 11).
    resolutions: MRD (n_fft, hop) pairs.
    mpd_channels: channels of each MPD conv (HiFi-GAN 32, 128, 512, 1024,
      1024).
    mrd_channels: channels of the MRD convs (Vocos 32).
    mrd_layers: strided MRD convs (Vocos 3).
    mrd_first_stride: frequency stride of the first MRD conv (Vocos 1; 2
      quarters the cost of the most expensive layer on CPU).
    dtype: compute dtype.
    rngs: `nnx.Rngs`.
  """

  def __init__(self, *, periods: Sequence[int] = (2, 3, 5, 7, 11),
               resolutions: Sequence[Sequence[int]] = ((512, 128),
                                                        (1024, 256),
                                                        (2048, 512)),
               mpd_channels: Sequence[int] = (32, 128, 512, 1024, 1024),
               mrd_channels: int = 32, mrd_layers: int = 3,
               mrd_first_stride: int = 1, dtype=jnp.float32, rngs: nnx.Rngs,
               **unused: Any):
    if unused:
      raise TypeError(f'AudioDiscriminator: unknown arguments {sorted(unused)}')
    if not periods and not resolutions:
      raise ValueError('AudioDiscriminator needs at least one period or '
                       'resolution')
    self.mpd = nnx.List([PeriodDiscriminator(p, tuple(mpd_channels), rngs,
                                             dtype) for p in periods])
    self.mrd = nnx.List([ResolutionDiscriminator(n, h, mrd_channels,
                                                 mrd_layers, rngs, dtype,
                                                 mrd_first_stride)
                         for n, h in resolutions])

  @property
  def num_discriminators(self) -> int:
    return len(self.mpd) + len(self.mrd)

  def __call__(self, x: Array, train: bool = False
               ) -> tuple[list[Array], list[list[Array]]]:
    del train
    if x.ndim != 2:
      raise ValueError(f'AudioDiscriminator expects [B, N] waveforms; got '
                       f'shape {tuple(x.shape)}')
    logits, feats = [], []
    for d in list(self.mpd) + list(self.mrd):
      l, f = d(x)
      logits.append(l)
      feats.append(f)
    return logits, feats
