"""Image front end: a conv ResNet encoder/decoder pair in the VQGAN design.

The layout follows the taming-transformers VQGAN autoencoder: a 3x3 input
conv, `len(ch_mult)` resolution levels of `num_res_blocks` ResNet blocks (with
single-head self-attention at the resolutions listed in `attn_resolutions`),
a stride-2 downsample between levels, a middle ResBlock-Attn-ResBlock, then
GroupNorm, swish and a 3x3 output conv. The decoder mirrors it with
`num_res_blocks + 1` blocks per level and nearest-neighbour upsampling.

Parameters carry logical axis names through `out_sharding` metadata with
`eager_sharding=False`, so modules can be built without a mesh and sharded
later by logical-axis rules.

Dimension legend:
  B: batch size
  H, W: image height and width
  h, w: latent grid height and width (H // f, W // f)
  C: image channels (`in_channels`, 3 for RGB)
  D: hidden channels at a level (`ch * ch_mult[i]`)
  Z: latent channels (`z_channels`)
  f: downsample factor, 2 ** (len(ch_mult) - 1)
  N: number of attention positions (h * w at that level)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tokenizers_jax.frontends.common import (
    DecoderBase, EncoderBase, FrontEndBase, LevelConfigMixin)
from tokenizers_jax.nn import conv as conv_lib
from tokenizers_jax.nn import norm as norm_lib
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any

# GroupNorm epsilon of the reference design.
NORM_EPSILON = 1e-6


def group_count(channels: int, num_groups: int) -> int:
  """Largest divisor of `channels` that is at most `num_groups`.

  GroupNorm needs the group count to divide the channel count; 32 groups is
  the reference choice, and narrow (test-sized) layers get fewer groups.
  """
  if channels < 1 or num_groups < 1:
    raise ValueError(
        f'channels ({channels}) and num_groups ({num_groups}) must be >= 1.')
  for g in range(min(num_groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1  # Unreachable: 1 always divides.


def _conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
          padding: Any = 'SAME', dtype: Dtype, param_dtype: Dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=(stride, stride),
      padding=padding, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
      kernel_metadata=logical('conv_h', 'conv_w', 'embed_in', 'embed'),
      bias_metadata=logical('embed'))


GROUP_NORMS = ('flax', 'channel_sums')
UPSAMPLE_MODES = ('repeat', 'subpixel')


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f'Unknown {name} {value!r}; expected one of {choices}.')


def _norm(channels: int, num_groups: int, *, dtype: Dtype, param_dtype: Dtype,
          rngs: nnx.Rngs, group_norm: str = 'flax') -> nnx.GroupNorm:
  """GroupNorm: `nnx.GroupNorm` ('flax') or `nn.norm.GroupNorm`
  ('channel_sums': the same variables and function, statistics summed per
  channel first, faster on XLA:CPU)."""
  _check_choice('group_norm', group_norm, GROUP_NORMS)
  cls = norm_lib.GroupNorm if group_norm == 'channel_sums' else nnx.GroupNorm
  return cls(
      channels, num_groups=group_count(channels, num_groups),
      epsilon=NORM_EPSILON, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
      scale_metadata=logical('embed'), bias_metadata=logical('embed'))


class ResnetBlock(nnx.Module):
  """GroupNorm-swish-conv3x3 twice, plus a (1x1-projected) skip connection."""

  def __init__(self, in_ch: int, out_ch: int, *, num_groups: int = 32,
               dropout: float = 0.0, group_norm: str = 'flax',
               dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = _norm(in_ch, num_groups, group_norm=group_norm, **kw)
    self.conv1 = _conv(in_ch, out_ch, 3, **kw)
    self.norm2 = _norm(out_ch, num_groups, group_norm=group_norm, **kw)
    self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout > 0 else None)
    self.conv2 = _conv(out_ch, out_ch, 3, **kw)
    self.nin_shortcut = (
        _conv(in_ch, out_ch, 1, **kw) if in_ch != out_ch else None)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """[B, H, W, D_in] -> [B, H, W, D_out]."""
    h = self.conv1(nnx.swish(self.norm1(x)))
    h = nnx.swish(self.norm2(h))
    h = self.conv2(self.dropout(h, deterministic=not train))
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h


class AttnBlock(nnx.Module):
  """Single-head spatial self-attention with 1x1 q/k/v/out projections.

  Scores and softmax run in fp32 whatever the compute dtype. Written out
  rather than through `nn.attention`: `jax.nn.dot_product_attention`
  gives the same forward values but another backward rounding, and the
  tiny VQ-GAN's published run (README, 20.47 dB) is kept bitwise.
  """

  def __init__(self, channels: int, *, num_groups: int = 32,
               group_norm: str = 'flax', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = _norm(channels, num_groups, group_norm=group_norm, **kw)
    self.q = _conv(channels, channels, 1, **kw)
    self.k = _conv(channels, channels, 1, **kw)
    self.v = _conv(channels, channels, 1, **kw)
    self.proj_out = _conv(channels, channels, 1, **kw)

  def __call__(self, x: Array) -> Array:
    """[B, h, w, D] -> [B, h, w, D]."""
    b, hh, ww, d = x.shape
    h = self.norm(x)
    q, k, v = (proj(h).reshape(b, hh * ww, d)
               for proj in (self.q, self.k, self.v))
    scores = jnp.einsum('bnd,bmd->bnm', q, k,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum('bnm,bmd->bnd', probs, v).reshape(b, hh, ww, d)
    return x + self.proj_out(out)


class Downsample(nnx.Module):
  """Stride-2 3x3 conv after zero padding one row/column at the bottom/right."""

  def __init__(self, channels: int, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.conv = _conv(channels, channels, 3, stride=2,
                      padding=((0, 1), (0, 1)), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """[B, H, W, D] -> [B, H/2, W/2, D]."""
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour 2x upsampling followed by a 3x3 conv.

  `mode` picks how that one function is computed (same parameters):
  'repeat' materializes the upsampled map and convolves it (the reference
  form, and the default); 'subpixel' computes the four output phases as
  2x2 convs of the low-resolution map (`nn.conv.upsample2x_conv3x3`: 2.25x
  fewer multiply-adds, equal up to float rounding).
  """

  def __init__(self, channels: int, *, mode: str = 'repeat',
               dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    _check_choice('upsample', mode, UPSAMPLE_MODES)
    self.mode = mode
    self.conv = _conv(channels, channels, 3, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """[B, H, W, D] -> [B, 2H, 2W, D]."""
    if self.mode == 'subpixel':
      conv = self.conv
      dtype = conv.dtype or jnp.result_type(x, conv.kernel[...])
      y = conv_lib.upsample2x_conv3x3(x.astype(dtype), conv.kernel[...],
                                      precision=conv.precision)
      return y + conv.bias[...].astype(dtype)
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x)


@dataclasses.dataclass(frozen=True)
class ImageConfig(LevelConfigMixin):
  """Validated, hashable architecture settings shared by encoder and decoder.

  Field meanings are documented in `ImageEncoder.__init__`.
  """
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  z_channels: int = 256
  in_channels: int = 3
  resolution: int = 256
  num_groups: int = 32
  dropout: float = 0.0
  upsample: str = 'repeat'
  group_norm: str = 'flax'

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(int(m) for m in self.ch_mult))
    object.__setattr__(self, 'attn_resolutions',
                       tuple(int(r) for r in self.attn_resolutions))
    self._check_levels()
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1): {self.dropout}.')
    _check_choice('upsample', self.upsample, UPSAMPLE_MODES)
    _check_choice('group_norm', self.group_norm, GROUP_NORMS)
    self._check_resolution()

  def level_resolution(self, level: int) -> int:
    """Nominal feature-map size at resolution level `level`."""
    return self.resolution // (2 ** level)


def _resnet_level(cfg: ImageConfig, level: int, width_in: int,
                  num_blocks: int, nkw: dict[str, Any]
                  ) -> tuple[nnx.List, nnx.List, int]:
  """The ResnetBlocks (and AttnBlocks) of resolution level `level`.

  The first of `num_blocks` blocks maps `width_in` to the level's width
  `ch * ch_mult[level]`; at attention resolutions each block is followed by
  an AttnBlock. Returns `(blocks, attns, width)` with `width` the channels
  after the level (`width_in` if `num_blocks` is 0).
  """
  width_out = cfg.ch * cfg.ch_mult[level]
  use_attn = cfg.level_resolution(level) in cfg.attn_resolutions
  blocks, attns = [], []
  for _ in range(num_blocks):
    blocks.append(ResnetBlock(width_in, width_out, dropout=cfg.dropout, **nkw))
    width_in = width_out
    if use_attn:
      attns.append(AttnBlock(width_in, **nkw))
  return nnx.List(blocks), nnx.List(attns), width_in


def _run_level(level: nnx.Dict, h: Array, train: bool) -> Array:
  """Runs a level's ResnetBlocks, each followed by its AttnBlock if any."""
  for i, block in enumerate(level['blocks']):
    h = block(h, train=train)
    if len(level['attns']):
      h = level['attns'][i](h)
  return h


def _mid_stage(width: int, cfg: ImageConfig, nkw: dict[str, Any]
               ) -> tuple[ResnetBlock, AttnBlock, ResnetBlock]:
  """The middle ResnetBlock, AttnBlock, ResnetBlock at `width` channels."""
  return (ResnetBlock(width, width, dropout=cfg.dropout, **nkw),
          AttnBlock(width, **nkw),
          ResnetBlock(width, width, dropout=cfg.dropout, **nkw))


class ImageEncoder(EncoderBase):
  """Conv ResNet encoder: [B, H, W, C] in [-1, 1] -> [B, H/f, W/f, Z].

  Attributes:
    conv_in, down (per level: `blocks`, `attns`, `downsample`), mid_block_1,
    mid_attn, mid_block_2, norm_out, conv_out.
  """

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2,
               attn_resolutions: Sequence[int] = (16,),
               z_channels: int = 256, in_channels: int = 3,
               resolution: int = 256, num_groups: int = 32,
               dropout: float = 0.0, upsample: str = 'repeat',
               group_norm: str = 'flax', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    """Builds the encoder.

    Args:
      ch: base channel count.
      ch_mult: channel multiplier per resolution level; the image is halved
        between consecutive levels, so f = 2 ** (len(ch_mult) - 1).
      num_res_blocks: ResNet blocks per level.
      attn_resolutions: feature-map sizes (relative to `resolution`) after
        whose ResNet blocks a self-attention block is inserted.
      z_channels: output (latent) channels.
      in_channels: image channels.
      resolution: nominal input size; only used to place attention blocks.
      num_groups: GroupNorm groups (clipped to a divisor of each width).
      dropout: dropout rate inside ResNet blocks (active when train=True).
      upsample: how the decoder computes its nearest 2x upsampling + 3x3
        conv ('repeat' or 'subpixel', see `Upsample`; the encoder only
        validates it).
      group_norm: the GroupNorms' implementation, 'flax' (`nnx.GroupNorm`)
        or 'channel_sums' (`nn.norm.GroupNorm`: the same variables and
        function, statistics summed per channel first).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: parameter (and dropout) RNGs.
    """
    cfg = ImageConfig(ch, ch_mult, num_res_blocks, attn_resolutions,
                      z_channels, in_channels, resolution, num_groups, dropout,
                      upsample, group_norm)
    super().__init__(cfg)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(num_groups=cfg.num_groups, group_norm=cfg.group_norm, **kw)

    self.conv_in = _conv(cfg.in_channels, cfg.ch, 3, **kw)
    levels = []
    width = cfg.ch
    for level in range(len(cfg.ch_mult)):
      blocks, attns, width = _resnet_level(cfg, level, width,
                                           cfg.num_res_blocks, nkw)
      last = level == len(cfg.ch_mult) - 1
      levels.append(nnx.Dict(
          blocks=blocks, attns=attns,
          downsample=None if last else Downsample(width, **kw)))
    self.down = nnx.List(levels)
    self.mid_block_1, self.mid_attn, self.mid_block_2 = _mid_stage(
        width, cfg, nkw)
    self.norm_out = _norm(width, cfg.num_groups, group_norm=cfg.group_norm,
                          **kw)
    self.conv_out = _conv(width, cfg.z_channels, 3, **kw)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """[B, H, W, C] -> [B, H/f, W/f, Z] (in the compute dtype)."""
    self.output_shape(x.shape)
    h = self.conv_in(x)
    for level in self.down:
      h = _run_level(level, h, train)
      if level['downsample'] is not None:
        h = level['downsample'](h)
    h = self.mid_block_1(h, train=train)
    h = self.mid_attn(h)
    h = self.mid_block_2(h, train=train)
    return self.conv_out(nnx.swish(self.norm_out(h)))


class ImageDecoder(DecoderBase):
  """Conv ResNet decoder: [B, h, w, Z] -> [B, h*f, w*f, C] (no output tanh).

  Attributes:
    conv_in, mid_block_1, mid_attn, mid_block_2, up (per level, indexed by
    level as in the encoder: `blocks`, `attns`, `upsample`), norm_out,
    conv_out. `last_layer` is the output conv kernel, the weight the
    adaptive GAN weight differentiates against.
  """

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2,
               attn_resolutions: Sequence[int] = (16,),
               z_channels: int = 256, in_channels: int = 3,
               resolution: int = 256, num_groups: int = 32,
               dropout: float = 0.0, upsample: str = 'repeat',
               group_norm: str = 'flax', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    """Builds the decoder; arguments as in `ImageEncoder`.

    `in_channels` is the number of image channels produced.
    """
    cfg = ImageConfig(ch, ch_mult, num_res_blocks, attn_resolutions,
                      z_channels, in_channels, resolution, num_groups, dropout,
                      upsample, group_norm)
    super().__init__(cfg)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(num_groups=cfg.num_groups, group_norm=cfg.group_norm, **kw)

    width = cfg.ch * cfg.ch_mult[-1]
    self.conv_in = _conv(cfg.z_channels, width, 3, **kw)
    self.mid_block_1, self.mid_attn, self.mid_block_2 = _mid_stage(
        width, cfg, nkw)
    levels = [None] * len(cfg.ch_mult)
    for level in reversed(range(len(cfg.ch_mult))):
      blocks, attns, width = _resnet_level(cfg, level, width,
                                           cfg.num_res_blocks + 1, nkw)
      levels[level] = nnx.Dict(
          blocks=blocks, attns=attns,
          upsample=None if level == 0 else Upsample(
              width, mode=cfg.upsample, **kw))
    self.up = nnx.List(levels)
    self.norm_out = _norm(width, cfg.num_groups, group_norm=cfg.group_norm,
                          **kw)
    self.conv_out = _conv(width, cfg.in_channels, 3, **kw)

  def __call__(self, z: Array, *, train: bool = False) -> Array:
    """[B, h, w, Z] -> [B, h*f, w*f, C] (in the compute dtype)."""
    self.output_shape(z.shape)
    h = self.conv_in(z)
    h = self.mid_block_1(h, train=train)
    h = self.mid_attn(h)
    h = self.mid_block_2(h, train=train)
    for level in reversed(range(len(self.up))):
      stage = self.up[level]
      h = _run_level(stage, h, train)
      if stage['upsample'] is not None:
        h = stage['upsample'](h)
    return self.conv_out(nnx.swish(self.norm_out(h)))


class ImageFrontEnd(FrontEndBase):
  """Encoder/decoder pair for images (`modality='image'`).

  Example (the CI-sized f=4 configuration):

    fe = ImageFrontEnd(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                       attn_resolutions=(8,), z_channels=32, resolution=32,
                       rngs=nnx.Rngs(0))
    z = fe.encode(x)        # [B, 32, 32, 3] -> [B, 8, 8, 32]
    x_hat = fe.decode(z)    # -> [B, 32, 32, 3]
  """

  modality = 'image'

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2,
               attn_resolutions: Sequence[int] = (16,),
               z_channels: int = 256, in_channels: int = 3,
               resolution: int = 256, num_groups: int = 32,
               dropout: float = 0.0, upsample: str = 'repeat',
               group_norm: str = 'flax', dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    """Builds both halves; arguments as in `ImageEncoder`."""
    kwargs = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                  attn_resolutions=attn_resolutions, z_channels=z_channels,
                  in_channels=in_channels, resolution=resolution,
                  num_groups=num_groups, dropout=dropout, upsample=upsample,
                  group_norm=group_norm, dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs)
    super().__init__(ImageEncoder(**kwargs), ImageDecoder(**kwargs))
