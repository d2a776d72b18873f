"""Audio codec (WavTokenizer / EnCodec / DAC family): SEANet encoder, any
quantizer of the library, Vocos decoder with an iSTFT head.

  codec = AudioCodec(frontend=dict(strides=(4, 5, 8), dim=64),
                     quantizer=dict(name='vq', codebook_size=4096,
                                    ema_update=True, kmeans_init=True),
                     sample_rate=16000, rngs=nnx.Rngs(0))
  x_hat, qout = codec(x, train=True)     # x: [B, N] in [-1, 1], N % hop == 0
  ids = codec.encode(x)                  # [B, T] (VQ) or [B, T, Q] (RVQ)
  y = codec.decode(ids)                  # [B, T * hop]

Single VQ (WavTokenizer: one codebook of 4096) or RVQ with quantizer dropout
(EnCodec/DAC) is only a matter of `quantizer=dict(name='vq'|'rvq', ...)`.
Bitrate = tokens/s x bits/token, bits/token = sum over index positions of
log2(codebook size). With `lengths` (valid samples per example), frames past
an example's end are masked out of the quantizer's losses and statistics and
out of the decoder's attention.

Dimension legend:
  B: batch; N: samples; T: frames = N / hop; D: latent dimension
  Q: RVQ levels (trailing index axis)
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.frontends.audio import AudioFrontEnd
from tokenizers_jax.models import base as model_base
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import registry

Array = jax.Array


class AudioCodec(nnx.Module):
  """Waveform tokenizer: `__call__`, `encode`, `decode` (see module doc).

  Args:
    frontend: `AudioConfig` fields (strides, dim, decoder sizes, ...).
    quantizer: registry spec, dict(name=..., **kwargs); `dim` is set to the
      front end's latent dimension.
    sample_rate: Hz.
    dtype: compute dtype of the convs (the quantizer runs in float32).
    rngs: `nnx.Rngs`.
  """

  modality = 'audio'
  one_dimensional = False
  loss_terms = ('quantizer',)


  def __init__(self, *, frontend: dict[str, Any], quantizer: dict[str, Any],
               sample_rate: int = 16000, dtype=jnp.float32, rngs: nnx.Rngs):
    self.frontend = AudioFrontEnd(sample_rate=sample_rate, dtype=dtype,
                                  rngs=rngs, **dict(frontend))
    q_kwargs = dict(quantizer)
    name = q_kwargs.pop('name')
    if 'dim' in q_kwargs and q_kwargs['dim'] != self.frontend.z_channels:
      raise ValueError(f'quantizer dim {q_kwargs["dim"]} != front-end latent '
                       f'dim {self.frontend.z_channels}; leave it unset')
    q_kwargs.pop('dim', None)
    self.quantizer = registry.make_quantizer(
        name, dim=self.frontend.z_channels, rngs=rngs, **q_kwargs)
    self.sample_rate = sample_rate
    self.hop = self.frontend.hop

  # --- static facts ----------------------------------------------------------
  @property
  def codebook_size(self) -> int:
    return self.quantizer.codebook_size

  @property
  def num_codebooks(self) -> int:
    """Index positions per frame (RVQ levels; 1 for a single codebook)."""
    return self.quantizer.num_codebooks or 1

  @property
  def tokens_per_second(self) -> float:
    return self.sample_rate / self.hop

  @property
  def bits_per_token(self) -> float:
    return self.num_codebooks * math.log2(self.codebook_size)

  @property
  def bitrate(self) -> float:
    """Bits per second with every index position used."""
    return self.tokens_per_second * self.bits_per_token

  @property
  def last_layer(self) -> nnx.Param:
    return self.frontend.last_layer

  def num_frames(self, num_samples: int) -> int:
    return self.frontend.latent_shape((1, num_samples))[1]

  def frame_mask(self, lengths: Array, num_samples: int) -> Array:
    """[B] valid lengths -> bool [B, T]: frames that start inside the signal."""
    t = self.num_frames(num_samples)
    return (jnp.arange(t)[None, :] * self.hop) < jnp.asarray(lengths)[:, None]

  # --- forward ---------------------------------------------------------------
  def __call__(self, x: Array, train: bool = False, *,
               lengths: Array | None = None, step=None, rng=None
               ) -> model_base.ModelOutput:
    """Reconstructs waveforms [B, N]; returns the ModelOutput (reconstruction
    [B, N], terms 'quantizer').

    `step` and `rng` are accepted for the trainer's common call signature.
    """
    del step, rng
    z = self.frontend.encode(x, train=train)
    mask = None if lengths is None else self.frame_mask(lengths, x.shape[1])
    out = self.quantizer(z.astype(jnp.float32), train=train, mask=mask)
    x_hat = self.frontend.decode(out.quantized.astype(z.dtype), train=train,
                                 mask=mask)
    return model_base.output(x_hat, out)

  def encode(self, x: Array) -> Array:
    """Waveforms [B, N] -> token ids [B, T] or [B, T, Q]."""
    return self.quantizer.encode(self.frontend.encode(x).astype(jnp.float32))

  def decode(self, indices: Array, mask: Array | None = None) -> Array:
    """Token ids [B, T(, Q)] -> waveforms [B, T * hop]."""
    z = self.quantizer.decode(indices)
    return self.frontend.decode(z, mask=mask)
