"""Pieces shared by the image front ends (`image` and `magvit2`).

Both front ends pair an NHWC conv encoder [B, H, W, C] -> [B, H/f, W/f, Z]
with a decoder [B, h, w, Z] -> [B, h*f, w*f, C]. The bases here hold what
does not depend on the architecture: the config checks shared by both config
dataclasses, the shape attributes and shape validation, the decoder's
`last_layer`, and the front end's encode/decode wrappers. They add no
parameters, so parameter paths are those of the subclasses.

Dimension legend:
  B: batch size
  H, W: image height and width
  h, w: latent grid height and width (H // f, W // f)
  C: image channels
  Z: latent channels
  f: downsample factor
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx

Array = jax.Array


def _check_rank_channels(shape: Sequence[int], channels: int, what: str):
  if len(shape) != 4:
    raise ValueError(
        f'{what} must be NHWC with rank 4, got shape {tuple(shape)} '
        f'(rank {len(shape)}).')
  if shape[-1] != channels:
    raise ValueError(
        f'{what} must have {channels} channels (last axis), got shape '
        f'{tuple(shape)}.')


def _check_image_shape(shape: Sequence[int], in_channels: int, factor: int):
  _check_rank_channels(shape, in_channels, 'Image input')
  _, height, width, _ = shape
  if height % factor or width % factor:
    raise ValueError(
        f'Image size {height}x{width} is not divisible by the downsample '
        f'factor {factor} (= 2 ** (len(ch_mult) - 1)).')


class LevelConfigMixin:
  """Checks and downsample factor shared by the front ends' config dataclasses.

  For frozen dataclasses with the fields `ch`, `ch_mult` (a tuple of ints, one
  per resolution level), `num_res_blocks`, `z_channels`, `in_channels`,
  `resolution` and `num_groups`. `__post_init__` calls `_check_levels`, then
  its own checks, then `_check_resolution`.
  """

  @property
  def factor(self) -> int:
    """Downsample factor f = 2 ** (len(ch_mult) - 1)."""
    return 2 ** (len(self.ch_mult) - 1)

  def _check_levels(self):
    """Checks `ch_mult`, the channel counts and `num_res_blocks`."""
    if not self.ch_mult or min(self.ch_mult) < 1:
      raise ValueError(
          f'ch_mult must be non-empty and positive: {self.ch_mult}.')
    if min(self.ch, self.z_channels, self.in_channels, self.num_groups) < 1:
      raise ValueError('ch, z_channels, in_channels and num_groups must be '
                       '>= 1.')
    if self.num_res_blocks < 0:
      raise ValueError(f'num_res_blocks must be >= 0: {self.num_res_blocks}.')

  def _check_resolution(self):
    """Checks that `resolution` is a positive multiple of `factor`."""
    if self.resolution < 1 or self.resolution % self.factor:
      raise ValueError(
          f'resolution {self.resolution} must be a positive multiple of the '
          f'downsample factor {self.factor}.')


class EncoderBase(nnx.Module):
  """Shape bookkeeping of an image encoder [B, H, W, C] -> [B, H/f, W/f, Z].

  `config` needs `in_channels`, `z_channels` and `factor` (= f).
  """

  def __init__(self, config: Any):
    self.config = config
    self.in_channels = config.in_channels
    self.z_channels = config.z_channels
    self.downsample_factor = config.factor

  def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Static latent shape for an NHWC input shape (validates it)."""
    _check_image_shape(input_shape, self.in_channels, self.downsample_factor)
    b, height, width, _ = input_shape
    f = self.downsample_factor
    return (b, height // f, width // f, self.z_channels)


class DecoderBase(nnx.Module):
  """Shape bookkeeping of an image decoder [B, h, w, Z] -> [B, h*f, w*f, C].

  `config` is as for `EncoderBase` (`in_channels` is the number of image
  channels produced); subclasses define the output conv `conv_out`.
  """

  def __init__(self, config: Any):
    self.config = config
    self.out_channels = config.in_channels
    self.z_channels = config.z_channels
    self.upsample_factor = config.factor

  @property
  def last_layer(self) -> nnx.Param:
    """The output conv kernel [3, 3, D, C] (taming's `get_last_layer`).

    The weight the adaptive GAN weight differentiates against.
    """
    return self.conv_out.kernel

  def output_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
    """Static image shape for a latent shape (validates it)."""
    _check_rank_channels(latent_shape, self.z_channels, 'Latent input')
    b, hh, ww, _ = latent_shape
    f = self.upsample_factor
    return (b, hh * f, ww * f, self.out_channels)


class FrontEndBase(nnx.Module):
  """An encoder/decoder pair: `encode`, `decode`, `latent_shape`, `last_layer`.

  Also exposes the encoder's `config`, `downsample_factor`, `z_channels` and
  `in_channels`. Calling it autoencodes without quantization.
  """

  def __init__(self, encoder: EncoderBase, decoder: DecoderBase):
    self.encoder = encoder
    self.decoder = decoder
    self.config = encoder.config
    self.downsample_factor = encoder.downsample_factor
    self.z_channels = encoder.z_channels
    self.in_channels = encoder.in_channels

  def encode(self, x: Array, train: bool = False) -> Array:
    """[B, H, W, C] in [-1, 1] -> latents [B, H/f, W/f, Z]."""
    return self.encoder(x, train=train)

  def decode(self, z: Array, train: bool = False) -> Array:
    """Latents [B, h, w, Z] -> images [B, h*f, w*f, C]."""
    return self.decoder(z, train=train)

  def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Static: the latent shape `encode` gives for `input_shape` (NHWC)."""
    return self.encoder.output_shape(tuple(input_shape))

  @property
  def last_layer(self) -> nnx.Param:
    """The decoder's output conv kernel (for the adaptive GAN weight)."""
    return self.decoder.last_layer

  def __call__(self, x: Array, train: bool = False) -> Array:
    """Autoencodes without quantization: decode(encode(x))."""
    return self.decode(self.encode(x, train=train), train=train)
