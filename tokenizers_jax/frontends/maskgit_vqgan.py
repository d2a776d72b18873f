"""Image front end of the MaskGIT VQGAN tokenizer (google-research/maskgit).

An attention-free conv ResNet, interchangeable with `ImageFrontEnd` (same
`encode`, `decode`, `latent_shape`, `last_layer`, `z_channels`,
`downsample_factor`, from `tokenizers_jax.frontends.common`), written from
the description of `maskgit/nets/vqgan_tokenizer.py`:

  Encoder: 3x3 `conv_in` without bias; per resolution level
    `num_res_blocks` ResBlocks and, between levels, a 2x2 average pool
    (or, with `conv_downsample=True`, a 4x4 stride-2 conv with bias);
    `num_res_blocks` middle ResBlocks at the last width; GroupNorm, swish and
    a 1x1 conv (with bias) to `z_channels`.
  Decoder: 3x3 `conv_in` (with bias) to the widest width; `num_res_blocks`
    middle ResBlocks; per level, lowest resolution first, `num_res_blocks`
    ResBlocks, then (except at full resolution) nearest-neighbour 2x
    upsampling and a 3x3 conv with bias; GroupNorm, swish and a 3x3 conv to
    the image channels.
  ResBlock: GroupNorm-swish-conv3x3 (no bias), GroupNorm-swish-conv3x3 (no
    bias). When the width changes, the release's skip path is a bias-free 1x1
    conv applied to the *branch output* h (not to the block input), so the
    block returns h + W h; with equal widths it returns x + h.

There is no attention anywhere, no quant_conv / post_quant_conv in the
release (`models/vqgan.py` with `quant_conv=False`), and the networks see
images in [0, 1]: with `pixel_range='unit'` (the release's convention) the
encoder maps our [-1, 1] inputs to (x + 1) / 2 first and the decoder returns
2 y - 1, so the model keeps the library's [-1, 1] contract.

GroupNorm: 32 groups (flax's default, which the release uses), epsilon 1e-6,
clipped to a divisor of narrow test widths as in `frontends/image.py`.

Dimension legend:
  B: batch size
  H, W: image height and width
  h, w: latent grid height and width (H // f, W // f)
  C: image channels (`in_channels`, 3 for RGB)
  D: hidden channels at a level (`ch * ch_mult[i]`)
  Z: latent channels (`z_channels`, the release's `embedding_dim`)
  f: downsample factor, 2 ** (len(ch_mult) - 1)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tokenizers_jax.frontends.common import (
    DecoderBase, EncoderBase, FrontEndBase, LevelConfigMixin)
from tokenizers_jax.frontends.image import _norm
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any

PIXEL_RANGES = ('unit', 'symmetric')
ACTIVATIONS = {'swish': nnx.swish, 'relu': nnx.relu}


def _conv(in_ch: int, out_ch: int, kernel: int, *, use_bias: bool,
          stride: int = 1, dtype: Dtype, param_dtype: Dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
  """A 'SAME'-padded conv (flax's default padding, as in the release)."""
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=(stride, stride),
      padding='SAME', use_bias=use_bias, dtype=dtype,
      param_dtype=param_dtype, rngs=rngs,
      kernel_metadata=logical('conv_h', 'conv_w', 'embed_in', 'embed'),
      bias_metadata=logical('embed'))


def avg_pool_2x(x: Array) -> Array:
  """[B, H, W, D] -> [B, H/2, W/2, D]: mean over 2x2 blocks (H, W even)."""
  b, h, w, d = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, d).mean(axis=(2, 4))


def nearest_2x(x: Array) -> Array:
  """[B, H, W, D] -> [B, 2H, 2W, D], nearest neighbour."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


@dataclasses.dataclass(frozen=True)
class MaskgitConfig(LevelConfigMixin):
  """Validated, hashable architecture settings (see `MaskgitEncoder`)."""
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 256
  in_channels: int = 3
  resolution: int = 256
  num_groups: int = 32
  conv_downsample: bool = False
  activation: str = 'swish'
  pixel_range: str = 'unit'

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(int(m) for m in self.ch_mult))
    self._check_levels()
    if self.num_res_blocks < 1:
      raise ValueError('num_res_blocks must be >= 1 (each level changes its '
                       f'width in its first ResBlock): {self.num_res_blocks}.')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)}: '
                       f'{self.activation!r}.')
    if self.pixel_range not in PIXEL_RANGES:
      raise ValueError(f'pixel_range must be one of {PIXEL_RANGES}: '
                       f'{self.pixel_range!r}.')
    self._check_resolution()

  def width(self, level: int) -> int:
    return self.ch * self.ch_mult[level]


class MaskgitResBlock(nnx.Module):
  """norm1-act-conv1, norm2-act-conv2 (bias-free 3x3 convs); skip as in the
  release: x + h, or h + shortcut(h) (bias-free 1x1) when widths differ."""

  def __init__(self, in_ch: int, out_ch: int, *, num_groups: int,
               activation: str = 'swish', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.activation = activation
    self.norm1 = _norm(in_ch, num_groups, **kw)
    self.conv1 = _conv(in_ch, out_ch, 3, use_bias=False, **kw)
    self.norm2 = _norm(out_ch, num_groups, **kw)
    self.conv2 = _conv(out_ch, out_ch, 3, use_bias=False, **kw)
    self.shortcut = (_conv(out_ch, out_ch, 1, use_bias=False, **kw)
                     if in_ch != out_ch else None)

  def __call__(self, x: Array) -> Array:
    """[B, H, W, D_in] -> [B, H, W, D_out]."""
    act = ACTIVATIONS[self.activation]
    h = self.conv1(act(self.norm1(x)))
    h = self.conv2(act(self.norm2(h)))
    residual = x if self.shortcut is None else self.shortcut(h)
    return h + residual


def _blocks(cfg: MaskgitConfig, width_in: int, width_out: int, nkw: dict
            ) -> nnx.List:
  blocks = []
  for _ in range(cfg.num_res_blocks):
    blocks.append(MaskgitResBlock(width_in, width_out, **nkw))
    width_in = width_out
  return nnx.List(blocks)


def _build_config(**kwargs) -> MaskgitConfig:
  return MaskgitConfig(**kwargs)


class MaskgitEncoder(EncoderBase):
  """[B, H, W, C] in [-1, 1] -> [B, H/f, W/f, Z].

  Attributes:
    conv_in, down (per level: `blocks`, `downsample` = a conv or None),
    mid (ResBlocks), norm_out, conv_out.
  """

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2, z_channels: int = 256,
               in_channels: int = 3, resolution: int = 256,
               num_groups: int = 32, conv_downsample: bool = False,
               activation: str = 'swish', pixel_range: str = 'unit',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the encoder.

    Args:
      ch: base width (the release's `filters`).
      ch_mult: width multiplier per level (`channel_multipliers`).
      num_res_blocks: ResBlocks per level and in the middle.
      z_channels: latent channels (`embedding_dim`).
      in_channels: image channels.
      resolution: nominal image size (only checked against the factor).
      num_groups: GroupNorm groups (clipped to a divisor of each width).
      conv_downsample: 4x4 stride-2 convs instead of average pooling.
      activation: 'swish' (the release) or 'relu'.
      pixel_range: 'unit' (the networks see [0, 1], the release) or
        'symmetric' ([-1, 1] passed through).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: parameter RNGs.
    """
    cfg = _build_config(
        ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
        z_channels=z_channels, in_channels=in_channels,
        resolution=resolution, num_groups=num_groups,
        conv_downsample=conv_downsample, activation=activation,
        pixel_range=pixel_range)
    super().__init__(cfg)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(num_groups=cfg.num_groups, activation=cfg.activation, **kw)
    self.conv_in = _conv(cfg.in_channels, cfg.ch, 3, use_bias=False, **kw)
    levels, width = [], cfg.ch
    for level in range(len(cfg.ch_mult)):
      blocks = _blocks(cfg, width, cfg.width(level), nkw)
      width = cfg.width(level)
      last = level == len(cfg.ch_mult) - 1
      down = None
      if not last and cfg.conv_downsample:
        down = _conv(width, width, 4, use_bias=True, stride=2, **kw)
      levels.append(nnx.Dict(blocks=blocks, downsample=down))
    self.down = nnx.List(levels)
    self.mid = _blocks(cfg, width, width, nkw)
    self.norm_out = _norm(width, cfg.num_groups, **kw)
    self.conv_out = _conv(width, cfg.z_channels, 1, use_bias=True, **kw)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """[B, H, W, C] -> [B, H/f, W/f, Z] (in the compute dtype)."""
    del train  # No dropout or batch statistics.
    self.output_shape(x.shape)
    if self.config.pixel_range == 'unit':
      x = (x + 1.0) * 0.5
    h = self.conv_in(x)
    for i, level in enumerate(self.down):
      for block in level['blocks']:
        h = block(h)
      if i < len(self.down) - 1:
        h = (level['downsample'](h) if level['downsample'] is not None
             else avg_pool_2x(h))
    for block in self.mid:
      h = block(h)
    act = ACTIVATIONS[self.config.activation]
    return self.conv_out(act(self.norm_out(h)))


class MaskgitDecoder(DecoderBase):
  """[B, h, w, Z] -> [B, h*f, w*f, C] in [-1, 1] scale (no output tanh).

  Attributes:
    conv_in, mid (ResBlocks), up (per level, indexed by level as in the
    encoder: `blocks`, `upsample` = the conv after the 2x upsampling, None
    at level 0), norm_out, conv_out (`last_layer` is its kernel).
  """

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2, z_channels: int = 256,
               in_channels: int = 3, resolution: int = 256,
               num_groups: int = 32, conv_downsample: bool = False,
               activation: str = 'swish', pixel_range: str = 'unit',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the decoder; arguments as in `MaskgitEncoder`."""
    cfg = _build_config(
        ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
        z_channels=z_channels, in_channels=in_channels,
        resolution=resolution, num_groups=num_groups,
        conv_downsample=conv_downsample, activation=activation,
        pixel_range=pixel_range)
    super().__init__(cfg)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(num_groups=cfg.num_groups, activation=cfg.activation, **kw)
    width = cfg.width(len(cfg.ch_mult) - 1)
    self.conv_in = _conv(cfg.z_channels, width, 3, use_bias=True, **kw)
    self.mid = _blocks(cfg, width, width, nkw)
    levels = [None] * len(cfg.ch_mult)
    for level in reversed(range(len(cfg.ch_mult))):
      blocks = _blocks(cfg, width, cfg.width(level), nkw)
      width = cfg.width(level)
      up = (_conv(width, width, 3, use_bias=True, **kw) if level > 0
            else None)
      levels[level] = nnx.Dict(blocks=blocks, upsample=up)
    self.up = nnx.List(levels)
    self.norm_out = _norm(width, cfg.num_groups, **kw)
    self.conv_out = _conv(width, cfg.in_channels, 3, use_bias=True, **kw)

  def __call__(self, z: Array, *, train: bool = False) -> Array:
    """[B, h, w, Z] -> [B, h*f, w*f, C] (in the compute dtype)."""
    del train
    self.output_shape(z.shape)
    h = self.conv_in(z)
    for block in self.mid:
      h = block(h)
    for level in reversed(range(len(self.up))):
      stage = self.up[level]
      for block in stage['blocks']:
        h = block(h)
      if stage['upsample'] is not None:
        h = stage['upsample'](nearest_2x(h))
    act = ACTIVATIONS[self.config.activation]
    y = self.conv_out(act(self.norm_out(h)))
    if self.config.pixel_range == 'unit':
      y = y * 2.0 - 1.0
    return y


class MaskgitFrontEnd(FrontEndBase):
  """MaskGIT VQGAN encoder/decoder pair (`modality='image'`).

  Example (f = 2, 16x16 -> 8x8):

    fe = MaskgitFrontEnd(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                         z_channels=8, resolution=16, rngs=nnx.Rngs(0))
    z = fe.encode(x)        # [B, 16, 16, 3] in [-1, 1] -> [B, 8, 8, 8]
    x_hat = fe.decode(z)    # -> [B, 16, 16, 3]
  """

  modality = 'image'

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2, z_channels: int = 256,
               in_channels: int = 3, resolution: int = 256,
               num_groups: int = 32, conv_downsample: bool = False,
               activation: str = 'swish', pixel_range: str = 'unit',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds both halves; arguments as in `MaskgitEncoder`."""
    kwargs = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                  z_channels=z_channels, in_channels=in_channels,
                  resolution=resolution, num_groups=num_groups,
                  conv_downsample=conv_downsample, activation=activation,
                  pixel_range=pixel_range, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
    super().__init__(MaskgitEncoder(**kwargs), MaskgitDecoder(**kwargs))
