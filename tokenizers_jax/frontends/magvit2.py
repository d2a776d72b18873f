"""Image front end in the MAGVIT-v2 / Open-MAGVIT2 design (no attention).

A drop-in alternative to `ImageFrontEnd` (same `encode`, `decode`,
`latent_shape`, `last_layer`, `z_channels`, `downsample_factor`, all from the
bases in `tokenizers_jax.frontends.common`), built from convolutions only:

  Encoder: 3x3 `conv_in`; per resolution level `num_res_blocks` ResBlocks and,
    between levels, a 3x3 stride-2 conv; `num_res_blocks` middle ResBlocks;
    GroupNorm, swish and a 1x1 conv to `z_channels`.
  Decoder: 3x3 `conv_in` from the latent to the widest width;
    `num_res_blocks` middle ResBlocks; per level, lowest resolution first,
    `num_res_blocks` ResBlocks, an AdaptiveGroupNorm conditioned on the
    latent and (except at the full-resolution level) a depth-to-space
    upsampler (3x3 conv to 4x the channels, then a 2x2 pixel shuffle); a
    final AdaptiveGroupNorm, swish and 3x3 conv to the image channels.

AdaptiveGroupNorm modulates a non-affine GroupNorm with a per-sample scale and
shift predicted from the spatial standard deviation and mean of the decoder's
input latent, a global style signal that survives quantization.

With `noise_concat=True` (the WeTok generative decoder), Gaussian noise of the
latent's shape is concatenated to the latent before the decoder's `conv_in`
(so it takes 2Z channels); the AdaptiveGroupNorms still see the latent alone.

Layout options of the released Open-MAGVIT2 tokenizer (TencentARC), each off
by default (the defaults above are unchanged):
  conv_bias=False          no bias in the ResBlock convs, their skip
                           projection and the encoder's `conv_in`.
  adaptive_norm='before'   each decoder level starts with its
                           AdaptiveGroupNorm, at the level's input width,
                           instead of ending with it.
  decoder_norm_out='group' the decoder's final norm is an affine GroupNorm
                           instead of an AdaptiveGroupNorm.
  adaptive_norm_ddof=1     the latent variance of the AdaptiveGroupNorms is
                           the unbiased estimate (torch's `Tensor.var`).
  depth_to_space_order='dcr'  the upsampler's channel order is depth-column-
                           row (channel `(i * r + j) * D + c`) instead of
                           `pixel_shuffle`'s column-row-depth.

Parameters carry logical axis names through `out_sharding` metadata with
`eager_sharding=False`, as in `tokenizers_jax.frontends.image`.

Dimension legend:
  B: batch size
  H, W: image height and width
  h, w: latent grid height and width (H // f, W // f)
  C: image channels (`in_channels`, 3 for RGB)
  D: hidden channels at a level (`ch * ch_mult[i]`)
  Z: latent channels (`z_channels`)
  f: downsample factor, 2 ** (len(ch_mult) - 1)
  r: depth-to-space block size (2)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tokenizers_jax.frontends.common import (
    DecoderBase, EncoderBase, FrontEndBase, LevelConfigMixin,
    _check_rank_channels)
from tokenizers_jax.frontends.image import (
    NORM_EPSILON, _conv, _norm, group_count)
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any


DEPTH_TO_SPACE_ORDERS = ('crd', 'dcr')
ADAPTIVE_NORM_POSITIONS = ('after', 'before')
DECODER_NORMS_OUT = ('adaptive', 'group')


def depth_to_space(x: Array, block_size: int = 2, order: str = 'crd') -> Array:
  """Moves channel blocks into space: [B, h, w, D*r*r] -> [B, h*r, w*r, D].

  order='crd' (default) matches `torch.nn.functional.pixel_shuffle` applied
  to the NCHW transpose: input channel `c * r * r + i * r + j` lands in
  output channel `c` at spatial offset `(i, j)` inside each r x r block.
  order='dcr' (depth-column-row, Open-MAGVIT2's `depth_to_space`) reads
  channel `(i * r + j) * D + c` instead.
  """
  if order not in DEPTH_TO_SPACE_ORDERS:
    raise ValueError(f'depth_to_space order must be one of '
                     f'{DEPTH_TO_SPACE_ORDERS}: {order!r}.')
  if x.ndim != 4:
    raise ValueError(
        f'depth_to_space expects NHWC with rank 4, got shape {x.shape}.')
  r = int(block_size)
  b, hh, ww, d = x.shape
  if r < 1 or d % (r * r):
    raise ValueError(
        f'Channel count {d} is not divisible by block_size ** 2 = {r * r}.')
  if order == 'dcr':
    x = x.reshape(b, hh, ww, r, r, d // (r * r))   # [B, h, w, i, j, D]
    x = x.transpose(0, 1, 3, 2, 4, 5)              # [B, h, i, w, j, D]
  else:
    x = x.reshape(b, hh, ww, d // (r * r), r, r)   # [B, h, w, D, i, j]
    x = x.transpose(0, 1, 4, 2, 5, 3)              # [B, h, i, w, j, D]
  return x.reshape(b, hh * r, ww * r, d // (r * r))


def _conv_nb(in_ch: int, out_ch: int, kernel: int, *, use_bias: bool,
             dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A stride-1 'SAME' conv like `image._conv`, optionally without bias."""
  if use_bias:
    return _conv(in_ch, out_ch, kernel, dtype=dtype, param_dtype=param_dtype,
                 rngs=rngs)
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), padding='SAME', use_bias=False,
      dtype=dtype, param_dtype=param_dtype, rngs=rngs,
      kernel_metadata=logical('conv_h', 'conv_w', 'embed_in', 'embed'))


def _linear(in_features: int, out_features: int, *, dtype: Dtype,
            param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      in_features, out_features, dtype=dtype, param_dtype=param_dtype,
      rngs=rngs, kernel_metadata=logical('embed_in', 'embed'),
      bias_metadata=logical('embed'))


class AdaptiveGroupNorm(nnx.Module):
  """GroupNorm without affine, modulated by statistics of the latent.

  out = GroupNorm(x) * gamma(std(z)) + beta(mean(z)), where std and mean are
  per sample and per latent channel over the latent's h x w positions
  (std = sqrt(var + eps)), and gamma, beta are Linear layers Z -> D.
  """

  def __init__(self, z_channels: int, channels: int, *, num_groups: int = 32,
               epsilon: float = NORM_EPSILON, ddof: int = 0,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the norm.

    Args:
      z_channels: channels Z of the conditioning latent.
      channels: channels D of the normalized features.
      num_groups: GroupNorm groups (clipped to a divisor of `channels`).
      epsilon: GroupNorm epsilon, also added to the latent's variance.
      ddof: delta degrees of freedom of the latent variance (0: population
        variance, defined even for a 1x1 latent; 1: the unbiased estimate
        that `torch.Tensor.var` computes by default).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: parameter RNGs.
    """
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.z_channels = z_channels
    self.epsilon = epsilon
    self.ddof = ddof
    self.norm = nnx.GroupNorm(
        channels, num_groups=group_count(channels, num_groups),
        epsilon=epsilon, use_bias=False, use_scale=False, **kw)
    self.gamma = _linear(z_channels, channels, **kw)
    self.beta = _linear(z_channels, channels, **kw)

  def __call__(self, x: Array, z: Array) -> Array:
    """x [B, H, W, D], latent z [B, h, w, Z] -> [B, H, W, D]."""
    _check_rank_channels(z.shape, self.z_channels, 'AdaptiveGroupNorm latent')
    if z.shape[0] != x.shape[0]:
      raise ValueError(
          f'Latent batch {z.shape[0]} does not match feature batch '
          f'{x.shape[0]}.')
    z32 = z.astype(jnp.float32)
    mean = jnp.mean(z32, axis=(1, 2))                                # [B, Z]
    std = jnp.sqrt(jnp.var(z32, axis=(1, 2), ddof=self.ddof) + self.epsilon)
    scale = self.gamma(std)[:, None, None, :]                        # [B,1,1,D]
    shift = self.beta(mean)[:, None, None, :]
    return self.norm(x) * scale + shift


class Magvit2ResBlock(nnx.Module):
  """GroupNorm-swish-conv3x3 twice, plus a skip (projected if widths differ).

  The projection is a `shortcut_kernel` x `shortcut_kernel` conv (1 or 3).
  With `conv_bias=False` the three convs have no bias (Open-MAGVIT2).
  """

  def __init__(self, in_ch: int, out_ch: int, *, num_groups: int = 32,
               shortcut_kernel: int = 1, conv_bias: bool = True,
               dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if shortcut_kernel not in (1, 3):
      raise ValueError(f'shortcut_kernel must be 1 or 3: {shortcut_kernel}.')
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    ckw = dict(use_bias=conv_bias, **kw)
    self.norm1 = _norm(in_ch, num_groups, **kw)
    self.conv1 = _conv_nb(in_ch, out_ch, 3, **ckw)
    self.norm2 = _norm(out_ch, num_groups, **kw)
    self.conv2 = _conv_nb(out_ch, out_ch, 3, **ckw)
    self.shortcut = (_conv_nb(in_ch, out_ch, shortcut_kernel, **ckw)
                     if in_ch != out_ch else None)

  def __call__(self, x: Array) -> Array:
    """[B, H, W, D_in] -> [B, H, W, D_out]."""
    h = self.conv1(nnx.swish(self.norm1(x)))
    h = self.conv2(nnx.swish(self.norm2(h)))
    if self.shortcut is not None:
      x = self.shortcut(x)
    return x + h


class DepthToSpaceUpsample(nnx.Module):
  """3x3 conv D -> 4D, then 2x2 depth-to-space: [B,H,W,D] -> [B,2H,2W,D]."""

  def __init__(self, channels: int, *, order: str = 'crd',
               dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if order not in DEPTH_TO_SPACE_ORDERS:
      raise ValueError(f'depth_to_space order must be one of '
                       f'{DEPTH_TO_SPACE_ORDERS}: {order!r}.')
    self.order = order
    self.conv = _conv(channels, 4 * channels, 3, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """[B, H, W, D] -> [B, 2H, 2W, D]."""
    return depth_to_space(self.conv(x), 2, self.order)


@dataclasses.dataclass(frozen=True)
class Magvit2Config(LevelConfigMixin):
  """Validated, hashable architecture settings shared by encoder and decoder.

  Field meanings are documented in `Magvit2Encoder.__init__`.
  """
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 4
  z_channels: int = 18
  in_channels: int = 3
  resolution: int = 256
  num_groups: int = 32
  shortcut_kernel: int = 1
  noise_concat: bool = False
  conv_bias: bool = True
  adaptive_norm: str = 'after'
  decoder_norm_out: str = 'adaptive'
  adaptive_norm_ddof: int = 0
  depth_to_space_order: str = 'crd'

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(int(m) for m in self.ch_mult))
    object.__setattr__(self, 'noise_concat', bool(self.noise_concat))
    object.__setattr__(self, 'conv_bias', bool(self.conv_bias))
    self._check_levels()
    if self.shortcut_kernel not in (1, 3):
      raise ValueError(
          f'shortcut_kernel must be 1 or 3: {self.shortcut_kernel}.')
    for name, known in (('adaptive_norm', ADAPTIVE_NORM_POSITIONS),
                        ('decoder_norm_out', DECODER_NORMS_OUT),
                        ('depth_to_space_order', DEPTH_TO_SPACE_ORDERS)):
      if getattr(self, name) not in known:
        raise ValueError(f'{name} must be one of {known}: '
                         f'{getattr(self, name)!r}.')
    if self.adaptive_norm_ddof not in (0, 1):
      raise ValueError(
          f'adaptive_norm_ddof must be 0 or 1: {self.adaptive_norm_ddof}.')
    self._check_resolution()


def _make_config(ch, ch_mult, num_res_blocks, z_channels, in_channels,
                 resolution, num_groups, shortcut_kernel, noise_concat,
                 layout):
  return Magvit2Config(
      ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
      z_channels=z_channels, in_channels=in_channels, resolution=resolution,
      num_groups=num_groups, shortcut_kernel=shortcut_kernel,
      noise_concat=noise_concat, **layout)


def _res_blocks(width_in: int, width_out: int, count: int,
                bkw: dict[str, Any]) -> tuple[nnx.List, int]:
  """`count` chained Magvit2ResBlocks; the first maps `width_in` to `width_out`.

  Returns the blocks and the width after them (`width_in` if `count` is 0).
  """
  blocks = []
  for _ in range(count):
    blocks.append(Magvit2ResBlock(width_in, width_out, **bkw))
    width_in = width_out
  return nnx.List(blocks), width_in


class Magvit2Encoder(EncoderBase):
  """Conv encoder: [B, H, W, C] in [-1, 1] -> [B, H/f, W/f, Z].

  Attributes:
    conv_in, down (per level: `blocks`, `downsample`), mid_blocks, norm_out,
    conv_out.
  """

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 4, z_channels: int = 18,
               in_channels: int = 3, resolution: int = 256,
               num_groups: int = 32, shortcut_kernel: int = 1,
               noise_concat: bool = False, conv_bias: bool = True,
               adaptive_norm: str = 'after',
               decoder_norm_out: str = 'adaptive',
               adaptive_norm_ddof: int = 0, depth_to_space_order: str = 'crd',
               dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    """Builds the encoder.

    Args:
      ch: base channel count.
      ch_mult: channel multiplier per resolution level; the image is halved
        between consecutive levels, so f = 2 ** (len(ch_mult) - 1).
      num_res_blocks: ResBlocks per level, and in the middle stage.
      z_channels: latent channels (18 for Open-MAGVIT2's 2^18 LFQ codebook).
      in_channels: image channels.
      resolution: nominal image size; only validated (a multiple of f).
      num_groups: GroupNorm groups (clipped to a divisor of each width).
      shortcut_kernel: kernel size (1 or 3) of the ResBlock skip projection
        used where a block changes width.
      noise_concat: decoder option (see `Magvit2Decoder`); unused here.
      conv_bias: False drops the biases of the ResBlock convs (and their
        skip projections) and of the encoder's `conv_in` (Open-MAGVIT2).
      adaptive_norm, decoder_norm_out, adaptive_norm_ddof,
        depth_to_space_order: decoder options (see `Magvit2Decoder`);
        validated, unused here.
      dtype: compute dtype.
      param_dtype: parameter dtype.
      rngs: parameter RNGs.
    """
    layout = dict(conv_bias=conv_bias, adaptive_norm=adaptive_norm,
                  decoder_norm_out=decoder_norm_out,
                  adaptive_norm_ddof=adaptive_norm_ddof,
                  depth_to_space_order=depth_to_space_order)
    cfg = _make_config(ch, ch_mult, num_res_blocks, z_channels, in_channels,
                       resolution, num_groups, shortcut_kernel, noise_concat,
                       layout)
    super().__init__(cfg)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    bkw = dict(num_groups=cfg.num_groups,
               shortcut_kernel=cfg.shortcut_kernel, conv_bias=cfg.conv_bias,
               **kw)

    self.conv_in = _conv_nb(cfg.in_channels, cfg.ch, 3,
                            use_bias=cfg.conv_bias, **kw)
    levels = []
    width = cfg.ch
    for level, mult in enumerate(cfg.ch_mult):
      blocks, width = _res_blocks(width, cfg.ch * mult, cfg.num_res_blocks,
                                  bkw)
      last = level == len(cfg.ch_mult) - 1
      # Symmetric padding 1: an even size halves exactly.
      downsample = None if last else _conv(
          width, width, 3, stride=2, padding=((1, 1), (1, 1)), **kw)
      levels.append(nnx.Dict(blocks=blocks, downsample=downsample))
    self.down = nnx.List(levels)
    self.mid_blocks, _ = _res_blocks(width, width, cfg.num_res_blocks, bkw)
    self.norm_out = _norm(width, cfg.num_groups, **kw)
    self.conv_out = _conv(width, cfg.z_channels, 1, **kw)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    """[B, H, W, C] -> [B, H/f, W/f, Z] (in the compute dtype).

    `train` is accepted for interface parity; the encoder has no dropout or
    batch statistics, so it changes nothing.
    """
    del train
    self.output_shape(x.shape)
    h = self.conv_in(x)
    for level in self.down:
      for block in level['blocks']:
        h = block(h)
      if level['downsample'] is not None:
        h = level['downsample'](h)
    for block in self.mid_blocks:
      h = block(h)
    return self.conv_out(nnx.swish(self.norm_out(h)))


class Magvit2Decoder(DecoderBase):
  """Conv decoder with latent-conditioned norms: [B, h, w, Z] -> [B, H, W, C].

  With `noise_concat`, `conv_in` reads [z, noise] (2Z channels). The noise
  comes from `noise_key` when given, else from this module's own
  `noise_rngs` stream, so calls inside `nnx.jit` need no key plumbing. The
  stream is module state: under `nnx.jit` (or eagerly) each call advances it;
  under plain `jax.jit` the update is dropped. Either way a decode is a
  deterministic function of (parameters, stream state, z), so evaluation is
  reproducible given the module state; pass `noise_key` for full control.

  Attributes:
    conv_in, mid_blocks, up (per level, indexed by level as in the encoder:
    `blocks`, `norm`, `upsample`), norm_out, conv_out, noise_rngs.
    `last_layer` is the output conv kernel.
  """

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 4, z_channels: int = 18,
               in_channels: int = 3, resolution: int = 256,
               num_groups: int = 32, shortcut_kernel: int = 1,
               noise_concat: bool = False, noise_seed: int = 0,
               conv_bias: bool = True, adaptive_norm: str = 'after',
               decoder_norm_out: str = 'adaptive',
               adaptive_norm_ddof: int = 0, depth_to_space_order: str = 'crd',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the decoder; arguments as in `Magvit2Encoder`, plus:

    Args:
      noise_concat: concatenate Gaussian noise of z's shape to z before
        `conv_in` (WeTok's generative decoder).
      noise_seed: seed of the `noise_rngs` stream (used with `noise_concat`
        when `decode` gets no `noise_key`).
      conv_bias: False drops the biases of the ResBlock convs and their skip
        projections (Open-MAGVIT2).
      adaptive_norm: 'after' (default): each level's AdaptiveGroupNorm
        follows its ResBlocks; 'before': it precedes them, at the level's
        input width (Open-MAGVIT2).
      decoder_norm_out: 'adaptive' (default): the final norm is an
        AdaptiveGroupNorm; 'group': an affine GroupNorm (Open-MAGVIT2).
      adaptive_norm_ddof: ddof of the AdaptiveGroupNorms' latent variance
        (0 default; 1 = torch's unbiased `var`, Open-MAGVIT2).
      depth_to_space_order: the upsamplers' channel order, 'crd'
        (pixel_shuffle, default) or 'dcr' (Open-MAGVIT2).

    `in_channels` is the number of image channels produced.
    """
    layout = dict(conv_bias=conv_bias, adaptive_norm=adaptive_norm,
                  decoder_norm_out=decoder_norm_out,
                  adaptive_norm_ddof=adaptive_norm_ddof,
                  depth_to_space_order=depth_to_space_order)
    cfg = _make_config(ch, ch_mult, num_res_blocks, z_channels, in_channels,
                       resolution, num_groups, shortcut_kernel, noise_concat,
                       layout)
    super().__init__(cfg)
    self.noise_concat = cfg.noise_concat
    self.noise_rngs = nnx.Rngs(noise=noise_seed) if cfg.noise_concat else None
    self.norm_before = cfg.adaptive_norm == 'before'
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    bkw = dict(num_groups=cfg.num_groups,
               shortcut_kernel=cfg.shortcut_kernel, conv_bias=cfg.conv_bias,
               **kw)
    nkw = dict(num_groups=cfg.num_groups, ddof=cfg.adaptive_norm_ddof, **kw)

    width = cfg.ch * cfg.ch_mult[-1]
    conv_in_ch = 2 * cfg.z_channels if cfg.noise_concat else cfg.z_channels
    self.conv_in = _conv(conv_in_ch, width, 3, **kw)
    self.mid_blocks, _ = _res_blocks(width, width, cfg.num_res_blocks, bkw)
    levels = [None] * len(cfg.ch_mult)
    for level in reversed(range(len(cfg.ch_mult))):
      width_in = width
      blocks, width = _res_blocks(width, cfg.ch * cfg.ch_mult[level],
                                  cfg.num_res_blocks, bkw)
      levels[level] = nnx.Dict(
          blocks=blocks,
          norm=AdaptiveGroupNorm(
              cfg.z_channels, width_in if self.norm_before else width, **nkw),
          upsample=(None if level == 0 else DepthToSpaceUpsample(
              width, order=cfg.depth_to_space_order, **kw)))
    self.up = nnx.List(levels)
    self.adaptive_norm_out = cfg.decoder_norm_out == 'adaptive'
    self.norm_out = (AdaptiveGroupNorm(cfg.z_channels, width, **nkw)
                     if self.adaptive_norm_out
                     else _norm(width, cfg.num_groups, **kw))
    self.conv_out = _conv(width, cfg.in_channels, 3, **kw)

  def __call__(self, z: Array, *, train: bool = False,
               noise_key: Array | None = None) -> Array:
    """[B, h, w, Z] -> [B, h*f, w*f, C] (in the compute dtype).

    Args:
      z: (quantized) latents.
      train: accepted for interface parity; changes nothing.
      noise_key: PRNG key of the concatenated noise; with `noise_concat` and
        no key, the next key of `noise_rngs`. Ignored without `noise_concat`.
    """
    del train
    self.output_shape(z.shape)
    style = z
    if self.noise_concat:
      if noise_key is None:
        noise_key = self.noise_rngs.noise()
      noise = jax.random.normal(noise_key, z.shape, jnp.float32)
      z = jnp.concatenate([z, noise.astype(z.dtype)], axis=-1)
    h = self.conv_in(z)
    for block in self.mid_blocks:
      h = block(h)
    for level in reversed(range(len(self.up))):
      stage = self.up[level]
      if self.norm_before:
        h = stage['norm'](h, style)
      for block in stage['blocks']:
        h = block(h)
      if not self.norm_before:
        h = stage['norm'](h, style)
      if stage['upsample'] is not None:
        h = stage['upsample'](h)
    h = self.norm_out(h, style) if self.adaptive_norm_out else self.norm_out(h)
    return self.conv_out(nnx.swish(h))


class Magvit2FrontEnd(FrontEndBase):
  """MAGVIT-v2 encoder/decoder pair for images (`modality='image'`).

  Interchangeable with `ImageFrontEnd`. Example (f = 4, 32x32 -> 8x8):

    fe = Magvit2FrontEnd(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                         z_channels=18, resolution=32, rngs=nnx.Rngs(0))
    z = fe.encode(x)        # [B, 32, 32, 3] -> [B, 8, 8, 18]
    x_hat = fe.decode(z)    # -> [B, 32, 32, 3]

  With `noise_concat=True`, `decode(z, noise_key=key)` is a function of the
  key; without a key it draws from the front end's own `noise_rngs` stream
  (module state, advanced by each eager or `nnx.jit` call), so decodes are
  deterministic given the module state.
  """

  modality = 'image'

  def __init__(self, *, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 4, z_channels: int = 18,
               in_channels: int = 3, resolution: int = 256,
               num_groups: int = 32, shortcut_kernel: int = 1,
               noise_concat: bool = False, noise_seed: int = 0,
               conv_bias: bool = True, adaptive_norm: str = 'after',
               decoder_norm_out: str = 'adaptive',
               adaptive_norm_ddof: int = 0, depth_to_space_order: str = 'crd',
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    """Builds both halves; arguments as in `Magvit2Encoder`/`Magvit2Decoder`."""
    kwargs = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                  z_channels=z_channels, in_channels=in_channels,
                  resolution=resolution, num_groups=num_groups,
                  shortcut_kernel=shortcut_kernel, noise_concat=noise_concat,
                  conv_bias=conv_bias, adaptive_norm=adaptive_norm,
                  decoder_norm_out=decoder_norm_out,
                  adaptive_norm_ddof=adaptive_norm_ddof,
                  depth_to_space_order=depth_to_space_order,
                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    super().__init__(Magvit2Encoder(**kwargs),
                     Magvit2Decoder(noise_seed=noise_seed, **kwargs))
    self.noise_concat = self.config.noise_concat

  @property
  def noise_rngs(self) -> nnx.Rngs | None:
    """The decoder's noise stream (None without `noise_concat`)."""
    return self.decoder.noise_rngs

  def decode(self, z: Array, train: bool = False, *,
             noise_key: Array | None = None) -> Array:
    """Latents [B, h, w, Z] -> images [B, h*f, w*f, C].

    `noise_key` seeds the concatenated noise with `noise_concat` (see the
    class docstring); it is ignored otherwise.
    """
    return self.decoder(z, train=train, noise_key=noise_key)

  def __call__(self, x: Array, train: bool = False, *,
               noise_key: Array | None = None) -> Array:
    """Autoencodes without quantization: decode(encode(x))."""
    return self.decode(self.encode(x, train=train), train=train,
                       noise_key=noise_key)
