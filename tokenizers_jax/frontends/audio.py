"""Audio front end: a SEANet-style conv waveform encoder and a Vocos decoder
(ConvNeXt blocks + an attention block) with an inverse-STFT head.

Encoder (EnCodec's SEANet, as WavTokenizer uses it): conv k7 -> for each
stride s: residual unit (ELU, conv k3, ELU, conv k1, identity skip), ELU,
strided conv (kernel 2s, stride s) doubling the channels -> optional LSTM
with a skip connection -> ELU, conv k7 to the latent dimension D. Paddings
are EnCodec's non-causal ones (total k - s, the extra sample on the left), so
a signal of N samples (a multiple of the hop) gives exactly N / hop frames.
The hop is the product of the strides: tokens per second = sample_rate / hop.
Not kept from the originals by default: weight normalisation (plain convs; a
converted release has g * v / ||v|| folded in) and reflect padding (zero
padding unless `pad_mode='reflect'`).

Decoder (Vocos backbone as in WavTokenizer): conv k7 embedding -> `pos_net`
(residual block, self-attention block, residual block) -> LayerNorm ->
ConvNeXt blocks (depthwise conv k7, LayerNorm, pointwise MLP with GELU,
layer scale) -> LayerNorm -> iSTFT head: a linear layer predicts, per frame,
log-magnitudes and phases of an n_fft-point spectrum (n_fft = 4 * hop by
default); magnitudes are exp(.) clipped at 100, and an inverse STFT with
'same' padding at the token hop gives exactly T * hop samples. The residual
blocks normalise with LayerNorm over channels (not GroupNorm over time) and the
attention masks padded frames, so padding an utterance does not change what
the decoder does on its valid frames.

Options for released WavTokenizer models (all off by default): `pad_mode=
'reflect'` (EnCodec's SConv1d), `conv_shortcut` (a k1 conv instead of the
identity skip in residual units: EnCodec's true_skip=False),
`lstm_recurrent_bias` (PyTorch's separate bias_hh), `pos_norm='group'` with
`pos_res_blocks=2` and `pos_final_norm` (WavTokenizer's pos_net: GroupNorm(32)
ResNet blocks and attention, two blocks either side of the attention, a
closing GroupNorm; GroupNorm statistics span all frames, padded ones too),
`adanorm_embeddings=K` with `bandwidth_id` (Vocos' AdaLayerNorm: per-id scale
and shift tables [K, E] in the backbone norm and each ConvNeXt norm; the id is
fixed by the config) and `exact_gelu` (erf GELU as torch.nn.GELU).

Dimension legend:
  B: batch; N: samples (N = T * hop); T: frames (tokens)
  C: encoder channels; D: latent dimension; E: decoder width; H: FFN width
  F: iSTFT frequency bins (n_fft // 2 + 1)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.nn import attention
from tokenizers_jax.nn import signal
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array


class ReflectConv(nnx.Conv):
  """nnx.Conv whose input is reflect-padded (EnCodec's SConv1d pad_mode)."""

  def __init__(self, *args, reflect: tuple[int, int], **kwargs):
    super().__init__(*args, padding='VALID', **kwargs)
    self.reflect = tuple(reflect)

  def __call__(self, x: Array) -> Array:
    if any(self.reflect):
      x = jnp.pad(x, ((0, 0), self.reflect, (0, 0)), mode='reflect')
    return super().__call__(x)


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, *, stride: int = 1,
          dilation: int = 1, groups: int = 1, dtype=jnp.float32,
          pad_mode: str = 'zeros') -> nnx.Conv:
  """1D conv on [B, L, C] with EnCodec's non-causal padding."""
  total = (k - 1) * dilation + 1 - stride
  right = total // 2
  kwargs = dict(strides=(stride,), kernel_dilation=(dilation,),
                feature_group_count=groups, dtype=dtype, rngs=rngs,
                kernel_metadata=logical(None, None, 'embed'),
                bias_metadata=logical('embed'))
  if pad_mode == 'reflect':
    return ReflectConv(cin, cout, (k,), reflect=(total - right, right),
                       **kwargs)
  if pad_mode != 'zeros':
    raise ValueError(f"pad_mode must be 'zeros' or 'reflect'; got {pad_mode!r}")
  return nnx.Conv(cin, cout, (k,), padding=[(total - right, right)], **kwargs)


def _linear(cin: int, cout: int, rngs: nnx.Rngs, dtype=jnp.float32,
            names=(None, 'mlp')) -> nnx.Linear:
  return nnx.Linear(cin, cout, dtype=dtype, rngs=rngs,
                    kernel_metadata=logical(*names),
                    bias_metadata=logical(names[1]))


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)


# WavTokenizer's pos_net normalises with GroupNorm(32 groups, eps 1e-6).
POS_GROUPS = 32


def _pos_norm(dim: int, kind: str, rngs: nnx.Rngs) -> nnx.Module:
  if kind == 'layer':
    return _layer_norm(dim, rngs)
  return nnx.GroupNorm(dim, num_groups=POS_GROUPS, epsilon=1e-6,
                       use_fast_variance=False, dtype=jnp.float32, rngs=rngs)


class AdaLayerNorm(nnx.Module):
  """Vocos' AdaLayerNorm: LayerNorm without affine, then the scale and shift
  rows of a fixed conditioning id (tables [K, E])."""

  def __init__(self, num_embeddings: int, dim: int, cond_id: int):
    if not 0 <= cond_id < num_embeddings:
      raise ValueError(f'bandwidth_id {cond_id} is not in [0, '
                       f'{num_embeddings})')
    self.scale = nnx.Param(jnp.ones((num_embeddings, dim), jnp.float32),
                           **logical(None, None))
    self.shift = nnx.Param(jnp.zeros((num_embeddings, dim), jnp.float32),
                           **logical(None, None))
    self.cond_id = cond_id

  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + 1e-6)
    return y * self.scale[self.cond_id] + self.shift[self.cond_id]


def _backbone_norm(dim: int, config: 'AudioConfig', rngs: nnx.Rngs):
  if config.adanorm_embeddings:
    return AdaLayerNorm(config.adanorm_embeddings, dim, config.bandwidth_id)
  return _layer_norm(dim, rngs)


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  """Sizes of the audio front end.

  Attributes:
    n_filters: channels of the encoder's first conv (doubled at each stride).
    strides: encoder strides; hop = their product.
    dim: D, the latent dimension (encoder output, decoder input).
    residual_layers: residual units before each strided conv.
    lstm_layers: LSTM layers after the strided convs (0: none).
    dec_dim: E, the decoder width.
    dec_ffn: H, the ConvNeXt MLP width.
    num_convnext: ConvNeXt blocks.
    attn_blocks: self-attention blocks in `pos_net` (each between two
      residual blocks' worth of context; 0 disables attention).
    n_fft: iSTFT size; None: 4 * hop. n_fft - hop must be even.
    pad_mode: encoder conv padding, 'zeros' or 'reflect' (EnCodec).
    conv_shortcut: residual units skip through a k1 conv (EnCodec's
      true_skip=False) instead of the identity.
    lstm_recurrent_bias: the LSTM keeps PyTorch's second (recurrent) bias.
    pos_norm: 'layer' (per-frame LayerNorm) or 'group' (GroupNorm(32) over
      channels and time, WavTokenizer) in pos_net's blocks.
    pos_res_blocks: residual blocks on each side of each attention block.
    pos_final_norm: pos_net ends with a norm of kind `pos_norm`.
    adanorm_embeddings: K > 0: AdaLayerNorm tables [K, E] in the backbone
      norm and the ConvNeXt norms (Vocos' bandwidth conditioning).
    bandwidth_id: the AdaLayerNorm row used.
    exact_gelu: erf GELU (torch.nn.GELU) instead of the tanh approximation.
  """
  n_filters: int = 8
  strides: tuple[int, ...] = (4, 5, 8)
  dim: int = 64
  residual_layers: int = 1
  lstm_layers: int = 0
  dec_dim: int = 64
  dec_ffn: int = 192
  num_convnext: int = 2
  attn_blocks: int = 1
  n_fft: int | None = None
  pad_mode: str = 'zeros'
  conv_shortcut: bool = False
  lstm_recurrent_bias: bool = False
  pos_norm: str = 'layer'
  pos_res_blocks: int = 1
  pos_final_norm: bool = False
  adanorm_embeddings: int = 0
  bandwidth_id: int = 0
  exact_gelu: bool = False

  def __post_init__(self):
    if not self.strides or min(self.strides) < 1:
      raise ValueError(f'strides must be non-empty and positive: '
                       f'{self.strides}')
    if min(self.n_filters, self.dim, self.dec_dim, self.dec_ffn) < 1:
      raise ValueError('n_filters, dim, dec_dim and dec_ffn must be >= 1')
    if (self.fft_size - self.hop) % 2 or self.fft_size < self.hop:
      raise ValueError(f'n_fft={self.fft_size} must be >= hop={self.hop} '
                       'with n_fft - hop even')
    if self.pad_mode not in ('zeros', 'reflect'):
      raise ValueError(f"pad_mode must be 'zeros' or 'reflect'; got "
                       f'{self.pad_mode!r}')
    if self.pos_norm not in ('layer', 'group'):
      raise ValueError(f"pos_norm must be 'layer' or 'group'; got "
                       f'{self.pos_norm!r}')
    if self.pos_norm == 'group' and self.dec_dim % POS_GROUPS:
      raise ValueError(f"pos_norm='group' needs dec_dim divisible by "
                       f'{POS_GROUPS}; got {self.dec_dim}')
    if self.pos_res_blocks < 1:
      raise ValueError('pos_res_blocks must be >= 1')
    if self.adanorm_embeddings and not (
        0 <= self.bandwidth_id < self.adanorm_embeddings):
      raise ValueError(f'bandwidth_id {self.bandwidth_id} is not in [0, '
                       f'{self.adanorm_embeddings})')

  @property
  def hop(self) -> int:
    return math.prod(self.strides)

  @property
  def fft_size(self) -> int:
    return self.n_fft if self.n_fft else 4 * self.hop


class ResidualUnit(nnx.Module):
  """SEANet residual unit: skip(x) + conv1(ELU(conv3(ELU(x)))), skip the
  identity or (conv_shortcut) a k1 conv."""

  def __init__(self, ch: int, dilation: int, rngs: nnx.Rngs, dtype,
               pad_mode: str = 'zeros', conv_shortcut: bool = False):
    hidden = max(ch // 2, 1)
    self.conv1 = _conv(ch, hidden, 3, rngs, dilation=dilation, dtype=dtype,
                       pad_mode=pad_mode)
    self.conv2 = _conv(hidden, ch, 1, rngs, dtype=dtype, pad_mode=pad_mode)
    self.shortcut = (_conv(ch, ch, 1, rngs, dtype=dtype, pad_mode=pad_mode)
                     if conv_shortcut else None)

  def __call__(self, x: Array) -> Array:
    skip = x if self.shortcut is None else self.shortcut(x)
    return skip + self.conv2(jax.nn.elu(self.conv1(jax.nn.elu(x))))


class LSTM(nnx.Module):
  """Stacked LSTM over time with a skip connection (EnCodec's SLSTM)."""

  def __init__(self, dim: int, num_layers: int, rngs: nnx.Rngs, dtype,
               recurrent_bias: bool = False):
    self.inp = nnx.List([_linear(dim, 4 * dim, rngs, dtype)
                         for _ in range(num_layers)])
    self.rec = nnx.List([nnx.Linear(dim, 4 * dim, use_bias=False, dtype=dtype,
                                    rngs=rngs,
                                    kernel_metadata=logical(None, 'mlp'))
                         for _ in range(num_layers)])
    # PyTorch's bias_hh (gate order i, f, o, u as the kernels); it only adds
    # to the input bias, kept apart so a release's tensors round-trip.
    self.rec_bias = (nnx.List([nnx.Param(jnp.zeros((4 * dim,), jnp.float32),
                                         **logical('mlp'))
                               for _ in range(num_layers)])
                     if recurrent_bias else None)
    self.dim = dim

  def __call__(self, x: Array) -> Array:
    h_seq = x
    for n, (inp, rec) in enumerate(zip(self.inp, self.rec)):
      gates_x = inp(h_seq)  # [B, T, 4D]
      if self.rec_bias is not None:
        gates_x = gates_x + self.rec_bias[n][...].astype(gates_x.dtype)
      kernel = rec.kernel[...]

      def step(carry, g, kernel=kernel):
        h, c = carry
        g = g + h @ kernel.astype(g.dtype)
        i, f, o, u = jnp.split(g, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

      zeros = jnp.zeros((x.shape[0], self.dim), gates_x.dtype)
      _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(gates_x, 0, 1))
      h_seq = jnp.swapaxes(hs, 0, 1)
    return x + h_seq


class AudioEncoder(nnx.Module):
  """SEANet encoder: waveform [B, N] -> latents [B, N / hop, D]."""

  def __init__(self, config: AudioConfig, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.config = config
    ch = config.n_filters
    pm = config.pad_mode
    self.conv_in = _conv(1, ch, 7, rngs, dtype=dtype, pad_mode=pm)
    blocks, downs = [], []
    for s in config.strides:
      blocks.append(nnx.List([ResidualUnit(ch, 2 ** j, rngs, dtype, pm,
                                           config.conv_shortcut)
                              for j in range(config.residual_layers)]))
      downs.append(_conv(ch, 2 * ch, 2 * s, rngs, stride=s, dtype=dtype,
                         pad_mode=pm))
      ch *= 2
    self.blocks = nnx.List(blocks)
    self.downs = nnx.List(downs)
    self.lstm = (LSTM(ch, config.lstm_layers, rngs, dtype,
                      config.lstm_recurrent_bias)
                 if config.lstm_layers else None)
    self.conv_out = _conv(ch, config.dim, 7, rngs, dtype=dtype, pad_mode=pm)
    self.hop = config.hop
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    check_waveform(x, self.hop)
    h = self.conv_in(x[..., None].astype(self.dtype))
    for units, down in zip(self.blocks, self.downs):
      for unit in units:
        h = unit(h)
      h = down(jax.nn.elu(h))
    if self.lstm is not None:
      h = self.lstm(h)
    return self.conv_out(jax.nn.elu(h))


class ResBlock1d(nnx.Module):
  """Vocos pos_net residual block with per-frame LayerNorm (or GroupNorm)
  and SiLU."""

  def __init__(self, dim: int, rngs: nnx.Rngs, dtype, norm: str = 'layer'):
    self.norm1 = _pos_norm(dim, norm, rngs)
    self.conv1 = _conv(dim, dim, 3, rngs, dtype=dtype)
    self.norm2 = _pos_norm(dim, norm, rngs)
    self.conv2 = _conv(dim, dim, 3, rngs, dtype=dtype)

  def __call__(self, x: Array) -> Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)).astype(x.dtype))
    h = self.conv2(jax.nn.silu(self.norm2(h)).astype(x.dtype))
    return x + h


class AttnBlock(nnx.Module):
  """Single-head self-attention over frames (Vocos/WavTokenizer pos_net),
  with padded frames masked out as keys."""

  def __init__(self, dim: int, rngs: nnx.Rngs, dtype, norm: str = 'layer'):
    self.norm = _pos_norm(dim, norm, rngs)
    self.qkv = _linear(dim, 3 * dim, rngs, dtype)
    self.proj = _linear(dim, dim, rngs, dtype, names=('mlp', None))

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    h = self.norm(x).astype(x.dtype)
    q, k, v = attention.split_fused_qkv(self.qkv(h), 1)
    key_mask = None if mask is None else mask[:, None, :]
    out = attention.dot_product_attention(q, k, v, mask=key_mask)
    return x + self.proj(out[..., 0, :])


class ConvNeXtBlock(nnx.Module):
  """Depthwise conv k7 -> LayerNorm -> Linear-GELU-Linear -> layer scale."""

  def __init__(self, dim: int, ffn: int, scale: float, rngs: nnx.Rngs, dtype,
               config: AudioConfig | None = None):
    self.dwconv = _conv(dim, dim, 7, rngs, groups=dim, dtype=dtype)
    self.norm = (_layer_norm(dim, rngs) if config is None
                 else _backbone_norm(dim, config, rngs))
    self.fc1 = _linear(dim, ffn, rngs, dtype)
    self.fc2 = _linear(ffn, dim, rngs, dtype, names=('mlp', None))
    self.gamma = nnx.Param(jnp.full((dim,), scale, jnp.float32),
                           **logical(None))
    self.exact_gelu = bool(config is not None and config.exact_gelu)

  def __call__(self, x: Array) -> Array:
    h = self.norm(self.dwconv(x)).astype(x.dtype)
    h = self.fc2(jax.nn.gelu(self.fc1(h), approximate=not self.exact_gelu))
    return x + (self.gamma[...] * h).astype(x.dtype)


class ISTFTHead(nnx.Module):
  """Linear -> (log-magnitude, phase) -> complex spectrum -> iSTFT ('same')."""

  def __init__(self, dim: int, n_fft: int, hop: int, rngs: nnx.Rngs, dtype):
    # n_fft + 2 outputs rarely divide a mesh axis: shard the width instead.
    self.out = _linear(dim, n_fft + 2, rngs, dtype, names=('mlp', None))
    self.n_fft = n_fft
    self.hop = hop

  def __call__(self, x: Array) -> Array:
    h = self.out(x).astype(jnp.float32)
    log_mag, phase = jnp.split(h, 2, axis=-1)
    mag = jnp.minimum(jnp.exp(jnp.minimum(log_mag, 20.0)), 1e2)
    spec = jax.lax.complex(mag * jnp.cos(phase), mag * jnp.sin(phase))
    return signal.istft(spec, self.n_fft, self.hop, padding='same')


class AudioDecoder(nnx.Module):
  """Vocos decoder: latents [B, T, D] -> waveform [B, T * hop]."""

  def __init__(self, config: AudioConfig, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.config = config
    e = config.dec_dim
    self.embed = _conv(config.dim, e, 7, rngs, dtype=dtype)
    pn, nres = config.pos_norm, config.pos_res_blocks
    pos = [ResBlock1d(e, rngs, dtype, pn) for _ in range(nres)]
    for _ in range(config.attn_blocks):
      pos += [AttnBlock(e, rngs, dtype, pn)]
      pos += [ResBlock1d(e, rngs, dtype, pn) for _ in range(nres)]
    self.pos_net = nnx.List(pos)
    self.pos_final_norm = (_pos_norm(e, pn, rngs) if config.pos_final_norm
                           else None)
    self.norm = _backbone_norm(e, config, rngs)
    scale = 1.0 / max(config.num_convnext, 1)
    self.blocks = nnx.List([ConvNeXtBlock(e, config.dec_ffn, scale, rngs, dtype,
                                          config)
                            for _ in range(config.num_convnext)])
    self.final_norm = _layer_norm(e, rngs)
    self.head = ISTFTHead(e, config.fft_size, config.hop, rngs, dtype)
    self.hop = config.hop

  @property
  def last_layer(self) -> nnx.Param:
    """The iSTFT head's linear kernel [E, n_fft + 2]."""
    return self.head.out.kernel

  def __call__(self, z: Array, mask: Array | None = None) -> Array:
    if z.ndim != 3 or z.shape[-1] != self.config.dim:
      raise ValueError(f'AudioDecoder expects latents [B, T, {self.config.dim}]'
                       f'; got shape {tuple(z.shape)}')
    h = self.embed(z)
    for block in self.pos_net:
      h = block(h, mask) if isinstance(block, AttnBlock) else block(h)
    if self.pos_final_norm is not None:
      h = self.pos_final_norm(h).astype(z.dtype)
    h = self.norm(h).astype(z.dtype)
    for block in self.blocks:
      h = block(h)
    return self.head(self.final_norm(h).astype(z.dtype))


def check_waveform(x: Array, hop: int) -> None:
  """[B, N] floating waveforms with N a multiple of the hop, or ValueError."""
  if not hasattr(x, 'ndim') or x.ndim != 2:
    raise ValueError(f'audio input must be waveforms [B, N]; got shape '
                     f'{getattr(x, "shape", None)}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'audio input must be floating point in [-1, 1]; got '
                    f'dtype {x.dtype}')
  if x.shape[1] % hop or x.shape[1] == 0:
    raise ValueError(f'audio length {x.shape[1]} must be a positive multiple '
                     f'of the hop {hop} (pad or crop to a whole number of '
                     'frames)')


class AudioFrontEnd(nnx.Module):
  """Encoder/decoder pair: `encode`, `decode`, `latent_shape`, `last_layer`.

  Args:
    sample_rate: Hz (for `tokens_per_second`).
    dtype: compute dtype; the iSTFT and norms run in float32.
    rngs: `nnx.Rngs`.
    **kwargs: `AudioConfig` fields.
  """

  modality = 'audio'

  def __init__(self, *, sample_rate: int = 16000, dtype=jnp.float32,
               rngs: nnx.Rngs, **kwargs):
    config = AudioConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in kwargs.items()})
    self.config = config
    self.encoder = AudioEncoder(config, dtype=dtype, rngs=rngs)
    self.decoder = AudioDecoder(config, dtype=dtype, rngs=rngs)
    self.sample_rate = sample_rate
    self.hop = config.hop
    self.downsample_factor = config.hop
    self.z_channels = config.dim

  @property
  def tokens_per_second(self) -> float:
    return self.sample_rate / self.hop

  @property
  def last_layer(self) -> nnx.Param:
    return self.decoder.last_layer

  def encode(self, x: Array, train: bool = False) -> Array:
    """Waveforms [B, N] in [-1, 1] -> latents [B, N / hop, D]."""
    del train
    return self.encoder(x)

  def decode(self, z: Array, train: bool = False,
             mask: Array | None = None) -> Array:
    """Latents [B, T, D] (optional frame mask [B, T]) -> [B, T * hop]."""
    del train
    return self.decoder(z, mask)

  def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    b, n = tuple(input_shape)
    if n % self.hop:
      raise ValueError(f'audio length {n} is not a multiple of the hop '
                       f'{self.hop}')
    return (b, n // self.hop, self.config.dim)

  def __call__(self, x: Array, train: bool = False) -> Array:
    return self.decode(self.encode(x))
