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

Options for WavTokenizer's discriminators (off by default): `mrd_style=
'vocos'` (Vocos' DiscriminatorR: the rectangular-window STFT magnitude
[B, F, T, 1] through (7, 5)/(5, 3)/(5, 3)/(3, 3)/(3, 3) convs with strides
(2, 2)/(2, 1)/(2, 2)/(2, 1)/(2, 2) and `mrd_channels` channels),
`mpd_first_feature=False` (the first MPD conv's output is not a feature map,
as in HiFi-GAN) and `cond_embeddings=K` with `cond_id` (the bandwidth
embedding [K, C] of each sub-discriminator: logits += <emb[cond_id], h> over
the channels of the last hidden map h).

Dimension legend:
  B: batch; N: samples; p: period; T: STFT frames; F: frequency bins
  C: conv channels
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

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


class _CondEmbedding(nnx.Module):
  """Vocos' conditional projection: <emb[id], h> over channels."""

  def __init__(self, num: int, channels: int, cond_id: int):
    if not 0 <= cond_id < num:
      raise ValueError(f'cond_id {cond_id} is not in [0, {num})')
    self.table = nnx.Param(jnp.zeros((num, channels), jnp.float32),
                           **logical(None, None))
    self.cond_id = cond_id

  def __call__(self, h: Array) -> Array:
    e = self.table[self.cond_id].astype(h.dtype)
    return jnp.sum(h * e, axis=-1, keepdims=True)


def _cond_stack(convs, post, emb, h: Array, first_feature: bool = True
                ) -> tuple[Array, list[Array]]:
  """`_conv_stack` with the optional conditional term and first feature."""
  feats = []
  for i, conv in enumerate(convs):
    h = _leaky(conv(h))
    if first_feature or i > 0:
      feats.append(h)
  out = post(h)
  feats.append(out)
  if emb is not None:
    out = out + emb(h)
  return out, feats


class PeriodDiscriminator(nnx.Module):
  """HiFi-GAN period discriminator for one period."""

  def __init__(self, period: int, channels: Sequence[int], rngs: nnx.Rngs,
               dtype=jnp.float32, *, first_feature: bool = True,
               cond_embeddings: int = 0, cond_id: int = 0):
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
    self.first_feature = first_feature
    self.emb = (_CondEmbedding(cond_embeddings, cin, cond_id)
                if cond_embeddings else None)

  def __call__(self, x: Array) -> tuple[Array, list[Array]]:
    b, n = x.shape
    pad = -n % self.period
    if pad:
      x = jnp.pad(x, ((0, 0), (0, pad)), mode='reflect')
    h = x.reshape(b, -1, self.period, 1).astype(self.dtype)
    if self.emb is None and self.first_feature:
      return _conv_stack(self.convs, self.post, h)
    return _cond_stack(self.convs, self.post, self.emb, h, self.first_feature)


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


# Vocos' DiscriminatorR: (kernel, stride) of its five convs over [F, T].
VOCOS_MRD = (((7, 5), (2, 2)), ((5, 3), (2, 1)), ((5, 3), (2, 2)),
             ((3, 3), (2, 1)), ((3, 3), (2, 2)))


class VocosResolutionDiscriminator(nnx.Module):
  """Vocos/WavTokenizer DiscriminatorR on |STFT| with a rectangular window
  (torch.stft(window=None, center=True)), laid out [B, F, T, 1]."""

  def __init__(self, n_fft: int, hop: int, channels: int, rngs: nnx.Rngs,
               dtype=jnp.float32, *, cond_embeddings: int = 0,
               cond_id: int = 0):
    self.n_fft, self.hop = n_fft, hop
    convs, cin = [], 1
    for kernel, stride in VOCOS_MRD:
      convs.append(_conv2d(cin, channels, kernel, stride, rngs, dtype))
      cin = channels
    self.convs = nnx.List(convs)
    self.post = _conv2d(channels, 1, (3, 3), (1, 1), rngs, dtype)
    self.emb = (_CondEmbedding(cond_embeddings, channels, cond_id)
                if cond_embeddings else None)
    self.dtype = dtype

  def __call__(self, x: Array) -> tuple[Array, list[Array]]:
    window = np.ones((self.n_fft,), np.float32)
    s = signal.stft(x.astype(jnp.float32), self.n_fft, self.hop,
                    window=window)
    mag = jnp.swapaxes(jnp.abs(s), -1, -2)  # [B, F, T]
    h = mag[..., None].astype(self.dtype)
    return _cond_stack(self.convs, self.post, self.emb, h)


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
    mrd_style: 'univnet' (the convs above) or 'vocos' (Vocos' DiscriminatorR;
      `mrd_layers` and `mrd_first_stride` are then unused).
    mpd_first_feature: the first MPD conv's output is a feature map.
    cond_embeddings: K > 0: a bandwidth embedding per sub-discriminator.
    cond_id: the embedding row used.
    dtype: compute dtype.
    rngs: `nnx.Rngs`.
  """

  def __init__(self, *, periods: Sequence[int] = (2, 3, 5, 7, 11),
               resolutions: Sequence[Sequence[int]] = ((512, 128),
                                                        (1024, 256),
                                                        (2048, 512)),
               mpd_channels: Sequence[int] = (32, 128, 512, 1024, 1024),
               mrd_channels: int = 32, mrd_layers: int = 3,
               mrd_first_stride: int = 1, mrd_style: str = 'univnet',
               mpd_first_feature: bool = True, cond_embeddings: int = 0,
               cond_id: int = 0, dtype=jnp.float32, rngs: nnx.Rngs,
               **unused: Any):
    if unused:
      raise TypeError(f'AudioDiscriminator: unknown arguments {sorted(unused)}')
    if not periods and not resolutions:
      raise ValueError('AudioDiscriminator needs at least one period or '
                       'resolution')
    if mrd_style not in ('univnet', 'vocos'):
      raise ValueError(f"mrd_style must be 'univnet' or 'vocos'; got "
                       f'{mrd_style!r}')
    cond = dict(cond_embeddings=cond_embeddings, cond_id=cond_id)
    self.mpd = nnx.List([PeriodDiscriminator(
        p, tuple(mpd_channels), rngs, dtype,
        first_feature=mpd_first_feature, **cond) for p in periods])
    if mrd_style == 'vocos':
      self.mrd = nnx.List([VocosResolutionDiscriminator(
          n, h, mrd_channels, rngs, dtype, **cond) for n, h in resolutions])
    elif cond_embeddings and resolutions:
      raise ValueError("cond_embeddings needs mrd_style='vocos' for the "
                       'resolution discriminators')
    else:
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
