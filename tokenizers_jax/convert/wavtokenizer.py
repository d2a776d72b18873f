r"""WavTokenizer checkpoints <-> our audio-codec workdirs.

  python -m tokenizers_jax.convert --from=wavtokenizer \
      --checkpoint=wavtokenizer_small_600_24k_4096.ckpt \
      --reference_config=wavtokenizer_smalldata_frame40_3s_nq1_code4096_\
dim512_kmeans200_attn.yaml \
      --ignore=dac. --ignore=dacdiscriminator. --workdir=/tmp/wavtokenizer40
  python -m tokenizers_jax.convert --export=wavtokenizer \
      --workdir=/tmp/wavtokenizer40 --output=/tmp/wavtokenizer40.safetensors

(the YAML name is one word, split here). The release is a Lightning
checkpoint of `decoder/experiment.py: WavTokenizer` (its `state_dict`,
readable with weights_only=True, or a safetensors / npz of it). It maps onto
`models/audio_codec.py: AudioCodec` with the front-end options that
reproduce it (`wavtokenizer_frontend`). With FE = feature_extractor.encodec.,
E = frontend/encoder/, D = frontend/decoder/ (`generator_table` is the
complete list):

  FE encoder.model.0.conv.conv                 E conv_in
  FE encoder.model.{b+j}.block.{1,3}.conv.conv E blocks/{i}/{j}/conv1, conv2
  FE encoder.model.{b+j}.shortcut.conv.conv    E blocks/{i}/{j}/shortcut
  FE encoder.model.{b+r+1}.conv.conv           E downs/{i}
      (b = 1 + i (r + 2), r residual layers per stage; the ELUs have no
      tensors)
  FE encoder.model.{L}.lstm.weight_ih_l{n}, bias_ih_l{n}
                                               E lstm/inp/{n}/kernel, bias
  FE encoder.model.{L}.lstm.weight_hh_l{n}, bias_hh_l{n}
                                  E lstm/rec/{n}/kernel, rec_bias/{n}
  FE encoder.model.{L+2}.conv.conv             E conv_out
  FE quantizer.vq.layers.0._codebook.{embed, embed_avg, cluster_size, inited}
                   quantizer/{codebook, embed_avg, cluster_size, initialized}
                   (generator state, not parameters)
  backbone.embed                               D embed
  backbone.pos_net.{0,1,3,4}.{norm1,conv1,norm2,conv2}
                                               D pos_net/{0,1,3,4}/*
  backbone.pos_net.2.{norm, q, k, v, proj_out} D pos_net/2/{norm, qkv, proj}
  backbone.pos_net.5                           D pos_final_norm
  backbone.norm (.scale/.shift.weight or LN)   D norm
  backbone.convnext.{i}.{dwconv, norm, pwconv1, pwconv2, gamma}
                           D blocks/{i}/{dwconv, norm, fc1, fc2, gamma}
  backbone.final_layer_norm                    D final_norm
  head.out                                     D head/out

Layouts: Conv1d [O, I, k] -> [k, I, O]; Linear and 1x1 convs [O, I] ->
[I, O]; the attention's q, k, v 1x1 convs are fused into one [E, 3E]
projection; PyTorch's LSTM gate order (i, f, g, o) becomes ours (i, f, o, g).
Weight-normalised convs (`weight_g`/`weight_v`, or the newer
`parametrizations.weight.original0/1`) are folded into plain kernels,
w = v * (g / ||v||) (norm over all axes but the output channel); export
writes g = ||w||, v = w, which folds back to the same kernel bit for bit.

Tensors with no role in the codec's function: `feature_extractor.encodec.
decoder.*` (EnCodec's SEANet decoder, which WavTokenizer builds but never
runs), `melspec_loss.*` (torchaudio's mel buffers) and `head.istft.window`
(checked to be the periodic Hann window). The first two are kept verbatim in
`workdir/wavtokenizer_passthrough.safetensors` and written back by export,
as is the window (torch's float32 rounding; a workdir trained here gets our
`hann_window`).

Discriminators: `multiperioddisc.*` (HiFi-GAN MPD with a bandwidth embedding)
and `multiresddisc.*` (Vocos MRD) become our `AudioDiscriminator` (options
`mpd_channels=(32, 128, 512, 1024, 1024)`, `mrd_style='vocos'`,
`cond_embeddings`). `dac.*` and `dacdiscriminator.discriminator.*` (the DAC
discriminator: MPD + multi-band complex STFT) have no counterpart: the
conversion stops unless they are dropped on request
(`--ignore=dac. --ignore=dacdiscriminator.`), and the report lists them.

Dimension legend: K codes, D latent (code) dimension, E decoder width, H
ConvNeXt FFN width, C encoder channels, k kernel size.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from tokenizers_jax.convert import common

FE = 'feature_extractor.encodec.'
ENC = FE + 'encoder.model.'
VQ = FE + 'quantizer.vq.layers.0._codebook.'
BB = 'backbone.'
PASSTHROUGH_PREFIXES = (FE + 'decoder.', 'melspec_loss.')
PASSTHROUGH_FILE = 'wavtokenizer_passthrough.safetensors'
DAC_PREFIXES = ('dac.', 'dacdiscriminator.')
MPD = 'multiperioddisc.discriminators.'
MRD = 'multiresddisc.discriminators.'
# PyTorch LSTM gates (i, f, g, o) -> ours (i, f, o, g).
_GATES = (0, 1, 3, 2)
WN_STYLES = ('weight_g', 'parametrizations', 'none')


@dataclasses.dataclass(frozen=True)
class WavTokArch:
  """A WavTokenizer release's architecture.

  strides: in the order the encoder applies them (EnCodec reverses the
    config's `dowmsamples`).
  """
  n_filters: int
  strides: tuple[int, ...]
  dim: int
  residual_layers: int
  conv_shortcut: bool
  lstm_layers: int
  codebook_size: int
  dec_dim: int
  dec_ffn: int
  num_convnext: int
  adanorm_embeddings: int
  n_fft: int
  sample_rate: int = 24000
  kmeans_iters: int = 200
  wn_style: str = 'weight_g'
  # ((periods), conv widths) / ((n_fft, hop, win) resolutions, channels).
  mpd: tuple[tuple[int, ...], tuple[int, ...]] | None = None
  mrd: tuple[tuple[tuple[int, int, int], ...], int] | None = None
  cond_embeddings: int = 0
  loss: tuple[tuple[str, Any], ...] = ()

  @property
  def hop(self) -> int:
    return int(np.prod(self.strides))

  def structure(self) -> tuple:
    return (self.n_filters, self.strides, self.dim, self.codebook_size,
            self.dec_dim, self.dec_ffn, self.num_convnext,
            self.adanorm_embeddings, self.n_fft)


# -----------------------------------------------------------------------------
# Weight norm.
# -----------------------------------------------------------------------------


def _wn_norm(w: np.ndarray) -> np.ndarray:
  """||w|| over every axis but the first (torch's norm_except_dim(w, 2, 0)),
  shaped [O, 1, ...]."""
  w = np.asarray(w, np.float32)
  return np.sqrt(np.sum(np.square(w), axis=tuple(range(1, w.ndim)),
                        keepdims=True, dtype=np.float32)).astype(np.float32)


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
  """v * (g / ||v||) in float32."""
  g = np.asarray(g, np.float32).reshape((-1,) + (1,) * (v.ndim - 1))
  return (np.asarray(v, np.float32) * (g / _wn_norm(v))).astype(np.float32)


def unfold_weight_norm(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(g, v) = (||w||, w): `fold_weight_norm(g, v)` gives w back exactly."""
  w = np.asarray(w, np.float32)
  return _wn_norm(w), w


def _wn_names(prefix: str, style: str) -> tuple[str, ...]:
  if style == 'weight_g':
    return (prefix + '.weight_g', prefix + '.weight_v')
  if style == 'parametrizations':
    return (prefix + '.parametrizations.weight.original0',
            prefix + '.parametrizations.weight.original1')
  return (prefix + '.weight',)


def detect_wn_style(sd: common.StateDict) -> str:
  names = sd.names(ENC)
  if any(n.endswith('.weight_v') for n in names):
    return 'weight_g'
  if any('.parametrizations.weight.original1' in n for n in names):
    return 'parametrizations'
  return 'none'


# -----------------------------------------------------------------------------
# The name table: one entry per tensor of ours.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """Our variable `path` (in 'params' or 'rest') <-> release tensor(s)."""
  path: tuple
  names: tuple[str, ...]
  kind: str  # see _IMPORT


def _conv_entries(ours: tuple, theirs: str, wn: str | None) -> list[Entry]:
  """A Conv1d (weight-normalised with style `wn`, or plain when None)."""
  if wn is None or wn == 'none':
    kernel = Entry(ours + ('kernel',), (theirs + '.weight',), 'conv')
  else:
    kernel = Entry(ours + ('kernel',), _wn_names(theirs, wn), 'conv_wn')
  return [kernel, Entry(ours + ('bias',), (theirs + '.bias',), 'vec')]


def _linear_entries(ours: tuple, theirs: str) -> list[Entry]:
  return [Entry(ours + ('kernel',), (theirs + '.weight',), 'linear'),
          Entry(ours + ('bias',), (theirs + '.bias',), 'vec')]


def _norm_entries(ours: tuple, theirs: str) -> list[Entry]:
  return [Entry(ours + ('scale',), (theirs + '.weight',), 'vec'),
          Entry(ours + ('bias',), (theirs + '.bias',), 'vec')]


def _backbone_norm_entries(ours: tuple, theirs: str,
                           arch: WavTokArch) -> list[Entry]:
  if arch.adanorm_embeddings:
    return [Entry(ours + ('scale',), (theirs + '.scale.weight',), 'vec'),
            Entry(ours + ('shift',), (theirs + '.shift.weight',), 'vec')]
  return _norm_entries(ours, theirs)


def encoder_layout(arch: WavTokArch) -> dict[str, int]:
  """Indices of `encoder.model.{i}` (EnCodec's nn.Sequential)."""
  r = arch.residual_layers
  last = 1 + len(arch.strides) * (r + 2)
  return {'lstm': last if arch.lstm_layers else -1,
          'conv_out': last + (2 if arch.lstm_layers else 1)}


def generator_table(arch: WavTokArch) -> list[Entry]:
  """Every generator variable (params, then the quantizer's state)."""
  wn = arch.wn_style
  enc = ('frontend', 'encoder')
  dec = ('frontend', 'decoder')
  out = _conv_entries(enc + ('conv_in',), ENC + '0.conv.conv', wn)
  r = arch.residual_layers
  for i in range(len(arch.strides)):
    b = 1 + i * (r + 2)
    for j in range(r):
      unit = enc + ('blocks', i, j)
      p = f'{ENC}{b + j}.'
      out += _conv_entries(unit + ('conv1',), p + 'block.1.conv.conv', wn)
      out += _conv_entries(unit + ('conv2',), p + 'block.3.conv.conv', wn)
      if arch.conv_shortcut:
        out += _conv_entries(unit + ('shortcut',), p + 'shortcut.conv.conv',
                             wn)
    out += _conv_entries(enc + ('downs', i), f'{ENC}{b + r + 1}.conv.conv', wn)
  layout = encoder_layout(arch)
  if arch.lstm_layers:
    p = f'{ENC}{layout["lstm"]}.lstm.'
    for n in range(arch.lstm_layers):
      out += [
          Entry(enc + ('lstm', 'inp', n, 'kernel'), (f'{p}weight_ih_l{n}',),
                'lstm_w'),
          Entry(enc + ('lstm', 'inp', n, 'bias'), (f'{p}bias_ih_l{n}',),
                'lstm_b'),
          Entry(enc + ('lstm', 'rec', n, 'kernel'), (f'{p}weight_hh_l{n}',),
                'lstm_w'),
          Entry(enc + ('lstm', 'rec_bias', n), (f'{p}bias_hh_l{n}',),
                'lstm_b')]
  out += _conv_entries(enc + ('conv_out',),
                       f'{ENC}{layout["conv_out"]}.conv.conv', wn)
  # Decoder.
  out += _conv_entries(dec + ('embed',), BB + 'embed', None)
  for i in (0, 1, 3, 4):
    blk, p = dec + ('pos_net', i), f'{BB}pos_net.{i}.'
    out += _norm_entries(blk + ('norm1',), p + 'norm1')
    out += _conv_entries(blk + ('conv1',), p + 'conv1', None)
    out += _norm_entries(blk + ('norm2',), p + 'norm2')
    out += _conv_entries(blk + ('conv2',), p + 'conv2', None)
  att, p = dec + ('pos_net', 2), f'{BB}pos_net.2.'
  out += _norm_entries(att + ('norm',), p + 'norm')
  out += [Entry(att + ('qkv', 'kernel'),
                tuple(f'{p}{n}.weight' for n in 'qkv'), 'qkv_w'),
          Entry(att + ('qkv', 'bias'), tuple(f'{p}{n}.bias' for n in 'qkv'),
                'qkv_b')]
  out += [Entry(att + ('proj', 'kernel'), (p + 'proj_out.weight',), 'conv1x1'),
          Entry(att + ('proj', 'bias'), (p + 'proj_out.bias',), 'vec')]
  out += _norm_entries(dec + ('pos_final_norm',), BB + 'pos_net.5')
  out += _backbone_norm_entries(dec + ('norm',), BB + 'norm', arch)
  for i in range(arch.num_convnext):
    blk, p = dec + ('blocks', i), f'{BB}convnext.{i}.'
    out += _conv_entries(blk + ('dwconv',), p + 'dwconv', None)
    out += _backbone_norm_entries(blk + ('norm',), p + 'norm', arch)
    out += _linear_entries(blk + ('fc1',), p + 'pwconv1')
    out += _linear_entries(blk + ('fc2',), p + 'pwconv2')
    out.append(Entry(blk + ('gamma',), (p + 'gamma',), 'vec'))
  out += _norm_entries(dec + ('final_norm',), BB + 'final_layer_norm')
  out += _linear_entries(dec + ('head', 'out'), 'head.out')
  return out


def quantizer_table() -> list[Entry]:
  """The EMA codebook's state (ours in the generator's `rest`)."""
  q = ('quantizer',)
  return [Entry(q + ('codebook',), (VQ + 'embed',), 'vec'),
          Entry(q + ('embed_avg',), (VQ + 'embed_avg',), 'vec'),
          Entry(q + ('cluster_size',), (VQ + 'cluster_size',), 'vec'),
          Entry(q + ('initialized',), (VQ + 'inited',), 'flag')]


def discriminator_table(arch: WavTokArch, wn: str) -> list[Entry]:
  """MPD + MRD variables of our AudioDiscriminator."""
  out = []
  if arch.mpd is not None:
    for i in range(len(arch.mpd[0])):
      p, ours = f'{MPD}{i}.', ('mpd', i)
      for j in range(5):
        out += _conv_entries(ours + ('convs', j, 'conv'), f'{p}convs.{j}', wn)
      out += _conv_entries(ours + ('post', 'conv'), p + 'conv_post', wn)
      if arch.cond_embeddings:
        out.append(Entry(ours + ('emb', 'table'), (p + 'emb.weight',), 'vec'))
  if arch.mrd is not None:
    for i in range(len(arch.mrd[0])):
      p, ours = f'{MRD}{i}.', ('mrd', i)
      for j in range(5):
        out += _conv_entries(ours + ('convs', j, 'conv'), f'{p}convs.{j}', wn)
      out += _conv_entries(ours + ('post', 'conv'), p + 'conv_post', wn)
      if arch.cond_embeddings:
        out.append(Entry(ours + ('emb', 'table'), (p + 'emb.weight',), 'vec'))
  return out


# -----------------------------------------------------------------------------
# Tensor transforms (theirs -> ours and back).
# -----------------------------------------------------------------------------


def _conv_in(w: np.ndarray) -> np.ndarray:
  """[O, I, k] -> [k, I, O]; [O, I, kh, kw] -> [kh, kw, I, O]."""
  if w.ndim == 3:
    return np.ascontiguousarray(np.transpose(w, (2, 1, 0)))
  return common.conv_from_torch(w)


def _conv_out(w: np.ndarray) -> np.ndarray:
  if w.ndim == 3:
    return np.ascontiguousarray(np.transpose(w, (2, 1, 0)))
  return common.conv_to_torch(w)


def _gates(x: np.ndarray, order=_GATES) -> np.ndarray:
  parts = np.split(x, 4, axis=0)
  return np.concatenate([parts[i] for i in order], axis=0)


def _torch_shape(kind: str, shape: tuple) -> list[tuple]:
  """The release tensor shape(s) an entry of ours with `shape` needs."""
  if kind in ('conv', 'conv_wn'):
    s = ((shape[2], shape[1], shape[0]) if len(shape) == 3 else
         (shape[3], shape[2], shape[0], shape[1]))
    if kind == 'conv':
      return [s]
    return [(s[0],) + (1,) * (len(s) - 1), s]
  if kind in ('linear', 'lstm_w'):
    return [(shape[1], shape[0])]
  if kind == 'conv1x1':
    return [(shape[1], shape[0], 1)]
  if kind == 'qkv_w':
    e = shape[0]
    return [(e, e, 1)] * 3
  if kind == 'qkv_b':
    return [(shape[0] // 3,)] * 3
  if kind == 'flag':
    return [(1,)]
  return [tuple(shape)]


def to_ours(kind: str, tensors: list[np.ndarray]) -> np.ndarray:
  if kind == 'conv':
    return _conv_in(tensors[0])
  if kind == 'conv_wn':
    return _conv_in(fold_weight_norm(*tensors))
  if kind == 'linear':
    return np.ascontiguousarray(tensors[0].T)
  if kind == 'conv1x1':
    return np.ascontiguousarray(tensors[0][..., 0].T)
  if kind == 'qkv_w':
    return np.concatenate([t[..., 0].T for t in tensors], axis=1)
  if kind == 'qkv_b':
    return np.concatenate(tensors, axis=0)
  if kind == 'lstm_w':
    return np.ascontiguousarray(_gates(tensors[0]).T)
  if kind == 'lstm_b':
    return _gates(tensors[0])
  if kind == 'flag':
    return np.asarray(bool(tensors[0].reshape(-1)[0]))
  return np.asarray(tensors[0])


def to_theirs(kind: str, value: np.ndarray) -> list[np.ndarray]:
  value = np.asarray(value)
  if kind == 'conv':
    return [_conv_out(value.astype(np.float32))]
  if kind == 'conv_wn':
    g, v = unfold_weight_norm(_conv_out(value.astype(np.float32)))
    return [g, v]
  if kind == 'linear':
    return [np.ascontiguousarray(value.T)]
  if kind == 'conv1x1':
    return [np.ascontiguousarray(value.T)[..., None]]
  if kind == 'qkv_w':
    return [np.ascontiguousarray(p.T)[..., None]
            for p in np.split(value, 3, axis=1)]
  if kind == 'qkv_b':
    return list(np.split(value, 3, axis=0))
  if kind == 'lstm_w':
    return [_gates(np.ascontiguousarray(value.T))]
  if kind == 'lstm_b':
    return [_gates(value)]
  if kind == 'flag':
    return [np.asarray([1.0 if bool(value) else 0.0], np.float32)]
  return [value.astype(np.float32) if np.issubdtype(value.dtype, np.floating)
          else value]


def take(sd: common.StateDict, entry: Entry, shape: tuple) -> np.ndarray | None:
  shapes = _torch_shape(entry.kind, tuple(shape))
  got = [sd.take(n, s) for n, s in zip(entry.names, shapes)]
  if any(g is None for g in got):
    return None
  return to_ours(entry.kind, got)


# -----------------------------------------------------------------------------
# Architecture.
# -----------------------------------------------------------------------------


def _weight_shape(sd: common.StateDict, prefix: str, style: str) -> tuple:
  name = _wn_names(prefix, style)[-1]
  if name not in sd:
    raise common.ConversionError(f'{name} not found (a weight-normalised '
                                 f'conv of style {style!r} was expected)')
  return sd.shape(name)


def _count(sd: common.StateDict, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _encoder_modules(sd: common.StateDict) -> dict[int, str]:
  """encoder.model index -> 'res' | 'lstm' | 'conv'."""
  kinds = {}
  for name in sd.names(ENC):
    idx, _, rest = name[len(ENC):].partition('.')
    if not idx.isdigit():
      raise common.ConversionError(f'{name}: not a SEANetEncoder tensor')
    kind = ('res' if rest.startswith('block.') or rest.startswith('shortcut.')
            else 'lstm' if rest.startswith('lstm.') else 'conv')
    if kinds.setdefault(int(idx), kind) != kind:
      raise common.ConversionError(f'encoder.model.{idx} mixes tensors of '
                                   'different layer kinds')
  return kinds


def infer_arch(sd: common.StateDict) -> WavTokArch:
  """The architecture read off the tensor shapes."""
  for name in (VQ + 'embed', BB + 'embed.weight', 'head.out.weight'):
    if name not in sd:
      raise common.ConversionError(
          f'{name} not found: not a WavTokenizer (EncodecFeatures + '
          f'VocosBackbone + ISTFTHead) state dict; its keys start with '
          f'{sd.names()[:6]}')
  if f'{FE}quantizer.vq.layers.1._codebook.embed' in sd:
    raise common.ConversionError(
        'the quantizer has more than one codebook (num_quantizers > 1); only '
        'the single-VQ releases are supported')
  if any(n.startswith(BB + 'resnet.') for n in sd.names(BB)):
    raise common.ConversionError('VocosResNetBackbone is not supported '
                                 '(only VocosBackbone)')
  style = detect_wn_style(sd)
  kinds = _encoder_modules(sd)
  order = sorted(kinds)
  if not order or order[0] != 0 or kinds[0] != 'conv':
    raise common.ConversionError('encoder.model.0 is not the input conv')
  n_filters, cin, k0 = _weight_shape(sd, ENC + '0.conv.conv', style)
  if cin != 1:
    raise common.ConversionError(f'the encoder takes {cin} channels; ours '
                                 'takes mono waveforms')
  if k0 != 7:
    raise common.ConversionError(f'encoder input kernel {k0}; ours is 7')
  # Walk the Sequential: stages of residual blocks then a strided conv.
  strides, per_stage, i, ch = [], [], 1, n_filters
  while True:
    r = 0
    while kinds.get(i) == 'res':
      r, i = r + 1, i + 1
    if r == 0:
      break
    down = i + 1  # An ELU (no tensors) sits before the strided conv.
    if kinds.get(down) != 'conv' or i in kinds:
      raise common.ConversionError(f'encoder.model.{down}: expected the '
                                   'strided conv of a stage')
    cout, cin, k = _weight_shape(sd, f'{ENC}{down}.conv.conv', style)
    if cin != ch or cout != 2 * ch or k % 2:
      raise common.ConversionError(
          f'encoder.model.{down}: conv {cin}->{cout} k{k}; SEANet doubles '
          f'{ch} channels with kernel 2 x stride')
    strides.append(k // 2)
    per_stage.append(r)
    ch, i = cout, down + 1
  if not strides or len(set(per_stage)) != 1:
    raise common.ConversionError(f'encoder stages with {per_stage} residual '
                                 'layers; ours has the same number per stage')
  r = per_stage[0]
  lstm_layers = 0
  if kinds.get(i) == 'lstm':
    lstm_layers = _count(sd, f'{ENC}{i}.lstm.weight_ih_l{{}}')
    i += 1
  if kinds.get(i + 1) != 'conv' or i in kinds:
    raise common.ConversionError(f'encoder.model.{i + 1}: expected the output '
                                 'conv')
  dim, cin, k = _weight_shape(sd, f'{ENC}{i + 1}.conv.conv', style)
  if k != 7:
    raise common.ConversionError(f'encoder output kernel {k}; ours is 7')
  if max(order) != i + 1:
    raise common.ConversionError(f'encoder.model.{max(order)}: tensors past '
                                 'the output conv')
  first = f'{ENC}1.'
  conv_shortcut = f'{first}shortcut.conv.conv.bias' in sd
  rk = _weight_shape(sd, first + 'block.1.conv.conv', style)
  if rk[2] != 3 or rk[0] != n_filters // 2:
    raise common.ConversionError(
        f'residual conv {rk}: ours has kernel 3 and compress 2')
  k_codes, d = sd.shape(VQ + 'embed')
  if d != dim:
    raise common.ConversionError(f'codebook dimension {d} != encoder output '
                                 f'{dim}')
  e, din, _ = sd.shape(BB + 'embed.weight')
  if din != dim:
    raise common.ConversionError(f'backbone.embed takes {din} channels, the '
                                 f'codes have {dim}')
  for blk in (0, 1, 3, 4):
    if f'{BB}pos_net.{blk}.conv1.weight' not in sd:
      raise common.ConversionError(
          f'{BB}pos_net.{blk}.conv1.weight not found: the pos_net is not '
          "WavTokenizer's (ResnetBlock x2, AttnBlock, ResnetBlock x2, "
          'GroupNorm)')
  if f'{BB}pos_net.2.q.weight' not in sd or f'{BB}pos_net.5.weight' not in sd:
    raise common.ConversionError('backbone.pos_net.2 (attention) or .5 (norm) '
                                 'not found')
  if any(n.startswith(f'{BB}pos_net.6.') for n in sd.names(BB)):
    raise common.ConversionError('backbone.pos_net has more than 6 layers')
  if f'{BB}pos_net.0.temb_proj.weight' in sd:
    raise common.ConversionError('pos_net ResnetBlocks with a timestep '
                                 'projection are not supported')
  num_convnext = _count(sd, BB + 'convnext.{}.dwconv.weight')
  ffn = sd.shape(BB + 'convnext.0.pwconv1.weight')[0]
  adanorm = (sd.shape(BB + 'norm.scale.weight')[0]
             if BB + 'norm.scale.weight' in sd else 0)
  n_fft = sd.shape('head.out.weight')[0] - 2
  mpd = mrd = None
  cond = 0
  if f'{MPD}0.conv_post.bias' in sd:
    periods = _count(sd, MPD + '{}.conv_post.bias')
    if periods > 5:
      raise common.ConversionError(f'{periods} period discriminators; the '
                                   'release has 5 (periods 2, 3, 5, 7, 11)')
    if _count(sd, MPD + '0.convs.{}.bias') != 5:
      raise common.ConversionError('the period discriminators do not have '
                                   "HiFi-GAN's 5 convs")
    widths = tuple(sd.shape(f'{MPD}0.convs.{j}.bias')[0] for j in range(5))
    mpd = ((2, 3, 5, 7, 11)[:periods], widths)
    if f'{MPD}0.emb.weight' in sd:
      cond = sd.shape(f'{MPD}0.emb.weight')[0]
  if f'{MRD}0.conv_post.bias' in sd:
    n = _count(sd, MRD + '{}.conv_post.bias')
    if n != 3:
      raise common.ConversionError(f'{n} resolution discriminators; Vocos has '
                                   '3 ((1024, 256), (2048, 512), (512, 128))')
    channels = sd.shape(f'{MRD}0.convs.0.bias')[0]
    mrd = (((1024, 256, 1024), (2048, 512, 2048), (512, 128, 512)), channels)
    if f'{MRD}0.emb.weight' in sd:
      cond = sd.shape(f'{MRD}0.emb.weight')[0]
  return WavTokArch(
      n_filters=n_filters, strides=tuple(strides), dim=dim,
      residual_layers=r, conv_shortcut=conv_shortcut, lstm_layers=lstm_layers,
      codebook_size=k_codes, dec_dim=e, dec_ffn=ffn,
      num_convnext=num_convnext, adanorm_embeddings=adanorm, n_fft=n_fft,
      wn_style=style, mpd=mpd, mrd=mrd, cond_embeddings=cond)


# The release YAML's training options that our config takes over.
_LOSS_KEYS = ('mel_loss_coeff', 'mrd_loss_coeff', 'pretrain_mel_steps',
              'initial_learning_rate')


def _init_args(node: dict, key: str) -> dict:
  sub = node.get(key) or {}
  return dict(sub.get('init_args') or {}) if isinstance(sub, dict) else {}


def arch_from_config(cfg: dict, inferred: WavTokArch) -> WavTokArch:
  """The architecture of a release YAML (`model.init_args`), checked against
  the tensors."""
  model = cfg.get('model', cfg)
  args = model.get('init_args', model) if isinstance(model, dict) else {}
  if not isinstance(args, dict) or 'feature_extractor' not in args:
    raise common.ConversionError(
        'the reference config has no model.init_args.feature_extractor (a '
        'WavTokenizer training YAML, e.g. configs/wavtokenizer_smalldata_'
        'frame40_3s_nq1_code4096_dim512_kmeans200_attn.yaml, is expected)')
  fe = _init_args(args, 'feature_extractor')
  bb = _init_args(args, 'backbone')
  hd = _init_args(args, 'head')
  for key, cls in (('feature_extractor', 'EncodecFeatures'),
                   ('backbone', 'VocosBackbone'), ('head', 'ISTFTHead')):
    path = str((args.get(key) or {}).get('class_path', cls))
    if not path.endswith(cls):
      raise common.ConversionError(f'model.init_args.{key} is {path!r}; only '
                                   f'{cls} is supported')
  if int(fe.get('num_quantizers', 1)) != 1:
    raise common.ConversionError('num_quantizers != 1 is not supported')
  if hd.get('padding', 'same') != 'same':
    raise common.ConversionError("ISTFTHead padding must be 'same'")
  downs = tuple(int(s) for s in fe.get('dowmsamples', (6, 5, 5, 4)))
  hop = int(hd.get('hop_length', np.prod(downs)))
  if hop != int(np.prod(downs)):
    raise common.ConversionError(f'head hop_length {hop} differs from the '
                                 f'encoder hop {int(np.prod(downs))}')
  if int(bb.get('input_channels', inferred.dim)) != inferred.dim:
    raise common.ConversionError('backbone.input_channels differs from the '
                                 'codebook dimension')
  bands = fe.get('bandwidths')
  loss = {k: args[k] for k in _LOSS_KEYS if isinstance(
      args.get(k), (int, float)) and not isinstance(args.get(k), bool)}
  arch = dataclasses.replace(
      inferred, strides=tuple(reversed(downs)),
      codebook_size=int(fe.get('vq_bins', inferred.codebook_size)),
      kmeans_iters=int(fe.get('vq_kmeans', 800)),
      dec_dim=int(bb.get('dim', inferred.dec_dim)),
      dec_ffn=int(bb.get('intermediate_dim', inferred.dec_ffn)),
      num_convnext=int(bb.get('num_layers', inferred.num_convnext)),
      adanorm_embeddings=int(bb.get('adanorm_num_embeddings') or 0),
      n_fft=int(hd.get('n_fft', inferred.n_fft)),
      sample_rate=int(args.get('sample_rate', 24000)),
      loss=tuple(sorted(loss.items())))
  if bands is not None and inferred.cond_embeddings and (
      len(bands) != inferred.cond_embeddings):
    raise common.ConversionError(f'{len(bands)} bandwidths but discriminator '
                                 f'embeddings for {inferred.cond_embeddings}')
  if arch.structure() != inferred.structure():
    names = ('n_filters', 'strides (encoder order)', 'dim', 'codebook size',
             'dec_dim', 'dec_ffn', 'num_convnext', 'adanorm embeddings',
             'n_fft')
    diffs = [f'{n}: config {a}, tensors {b}' for n, a, b in
             zip(names, arch.structure(), inferred.structure()) if a != b]
    raise common.ConversionError('the reference config does not describe '
                                 'this checkpoint: ' + '; '.join(diffs))
  return arch


# -----------------------------------------------------------------------------
# Our config.
# -----------------------------------------------------------------------------


def wavtokenizer_frontend(arch: WavTokArch, bandwidth_id: int = 0) -> dict:
  """`config.model.frontend` reproducing the release."""
  return dict(
      n_filters=arch.n_filters, strides=tuple(arch.strides), dim=arch.dim,
      residual_layers=arch.residual_layers, lstm_layers=arch.lstm_layers,
      dec_dim=arch.dec_dim, dec_ffn=arch.dec_ffn,
      num_convnext=arch.num_convnext, attn_blocks=1, n_fft=arch.n_fft,
      pad_mode='reflect', conv_shortcut=arch.conv_shortcut,
      lstm_recurrent_bias=bool(arch.lstm_layers), pos_norm='group',
      pos_res_blocks=2, pos_final_norm=True,
      adanorm_embeddings=arch.adanorm_embeddings,
      bandwidth_id=bandwidth_id if arch.adanorm_embeddings else 0,
      exact_gelu=True)


def quantizer_config(arch: WavTokArch) -> dict:
  """EnCodec's EuclideanCodebook: EMA 0.99, k-means init, dead codes < 2."""
  return dict(name='vq', codebook_size=arch.codebook_size, ema_update=True,
              decay=0.99, eps=1e-5, kmeans_init=True,
              kmeans_iters=arch.kmeans_iters, threshold_ema_dead_code=2.0,
              commitment_weight=1.0, use_cosine_sim=False)


def disc_config(arch: WavTokArch, bandwidth_id: int = 0) -> dict | None:
  if arch.mpd is None and arch.mrd is None:
    return None
  return dict(
      periods=tuple(arch.mpd[0]) if arch.mpd else (),
      resolutions=(tuple(tuple(r[:2]) for r in arch.mrd[0])
                   if arch.mrd else ()),
      mpd_channels=tuple(arch.mpd[1]) if arch.mpd else (32, 128, 512, 1024,
                                                         1024),
      mrd_channels=arch.mrd[1] if arch.mrd else 64, mrd_layers=4,
      mrd_first_stride=1, mrd_style='vocos', mpd_first_feature=False,
      cond_embeddings=arch.cond_embeddings,
      cond_id=bandwidth_id if arch.cond_embeddings else 0)


def build_config(arch: WavTokArch, base_config: str | None = None,
                 bandwidth_id: int = 0):
  """configs/audio_codec.py:paper with the release's architecture."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = common.load_base_config(
      base_config or common.default_base_config('audio_codec.py:paper'))
  if c.get('model_name') != 'audio_codec':
    raise common.ConversionError(
        'the base config must be an audio_codec config; got '
        f'model_name={c.get("model_name")}')
  c.data.sample_rate = arch.sample_rate
  c.model.frontend = ml_collections.ConfigDict(
      wavtokenizer_frontend(arch, bandwidth_id), type_safe=False)
  c.quantizer = ml_collections.ConfigDict(quantizer_config(arch),
                                          type_safe=False)
  disc = disc_config(arch, bandwidth_id)
  if disc is not None:
    c.disc = ml_collections.ConfigDict(disc, type_safe=False)
  # The release's objective (decoder/experiment.py, loss.py): 45 x L1 log-mel
  # (100 mels, n_fft 1024, hop 256), 1000 x commitment, hinge GAN + feature
  # matching; AdamW (torch defaults: betas 0.9/0.999, weight decay 0.01).
  loss = dict(arch.loss)
  c.loss.mel_weight = float(loss.get('mel_loss_coeff', 45.0))
  c.loss.mel_scales = ((1024, 100),)
  c.loss.quantizer_weight = 1000.0
  c.loss.gan_loss = 'hinge'
  c.loss.disc_weight = 1.0
  c.loss.fm_weight = 1.0
  c.loss.disc_start = int(loss.get('pretrain_mel_steps', 0))
  lr = float(loss.get('initial_learning_rate', 2e-4))
  for opt in (c.optim, c.disc_optim):
    opt.lr, opt.b1, opt.b2, opt.weight_decay = lr, 0.9, 0.999, 0.01
  return c


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def _abstract_models(config):
  from tokenizers_jax.training import audio_task  # pylint: disable=g-import-not-at-top
  return common.abstract_variables(lambda: audio_task.build_models(config))


def _set(tree: dict, path: tuple, value) -> None:
  node = tree
  for k in path[:-1]:
    node = node[k]
  node[path[-1]] = value


def _get(tree: dict, path: tuple):
  """tree[path]; a restored checkpoint spells list indices as strings."""
  node = tree
  for k in path:
    node = node[k] if k in node else node[str(k)]
  return node


def _fill_from(sd: common.StateDict, table: list[Entry], template: dict
               ) -> dict:
  """A copy of `template` (pure dict of shapes) with every entry taken from
  `sd`; `template` leaves not in the table are an internal error."""
  import jax  # pylint: disable=g-import-not-at-top
  flat = common.flatten(template)
  want = {e.path for e in table}
  extra = sorted('/'.join(map(str, p)) for p in flat if p not in want)
  if extra:
    raise common.ConversionError('internal: variables without a WavTokenizer '
                                 'counterpart: ' + ', '.join(extra))
  out = jax.tree.map(lambda x: None, template)
  for e in table:
    if e.path not in flat:
      raise common.ConversionError(f'internal: {e.path} is not in our model')
    _set(out, e.path, take(sd, e, flat[e.path].shape))
  return out


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None, bandwidth_id: int = 0,
            overrides: tuple[str, ...] = (), ignore: tuple[str, ...] = (),
            overwrite: bool = False, **unused) -> dict:
  """Converts a WavTokenizer checkpoint into a training workdir.

  Args:
    checkpoint: the Lightning checkpoint (or its state dict: .ckpt/.pt/.pth
      loadable with weights_only=True, .safetensors or .npz).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's YAML/JSON; without it the architecture
      is read off the tensor shapes (sample rate 24 kHz, 200 k-means
      iterations: the released configs' values).
    base_config: our config the workdir starts from (default
      configs/audio_codec.py:paper).
    bandwidth_id: the AdaLayerNorm row (and discriminator embedding) used;
      every released model is evaluated with 0.
    overrides: 'key=value' config overrides, applied last.
    ignore: tensor-name prefixes to drop on purpose (the DAC discriminator
      needs `dac.` and `dacdiscriminator.`).
    overwrite: replace the checkpoints already in `workdir`.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  unused = {k: v for k, v in unused.items() if v not in (None, (), False)}
  if unused:
    raise common.ConversionError(f'--from=wavtokenizer does not take '
                                 f'{sorted(unused)}')
  sd = common.StateDict(common.read_tensors(checkpoint),
                        f'WavTokenizer checkpoint {checkpoint!r}')
  sd.skip_prefixes(ignore)
  dac = [n for n in sd.names() if n.startswith(DAC_PREFIXES)
         and n not in sd.skipped]
  if dac:
    raise common.ConversionError(
        f'{len(dac)} tensors of the DAC discriminator ({dac[0]}, ...) have '
        'no counterpart in our AudioDiscriminator; drop them on purpose with '
        '--ignore=dac. --ignore=dacdiscriminator.')
  arch = infer_arch(sd)
  if any(p.startswith(('multiperioddisc', MPD)) for p in ignore):
    arch = dataclasses.replace(arch, mpd=None)
  if any(p.startswith(('multiresddisc', MRD)) for p in ignore):
    arch = dataclasses.replace(arch, mrd=None)
  if arch.mpd is None and arch.mrd is None:
    arch = dataclasses.replace(arch, cond_embeddings=0)
  if reference_config:
    arch = arch_from_config(common.read_config_file(reference_config), arch)
  config = build_config(arch, base_config, bandwidth_id)
  notes = []
  if arch.mpd is None and arch.mrd is None:
    notes.append('no MPD/MRD in the checkpoint: the discriminator starts '
                 'random')
  mrd_coeff = float(dict(arch.loss).get('mrd_loss_coeff', 1.0))
  if mrd_coeff != 1.0:
    notes.append(f'mrd_loss_coeff={mrd_coeff}: our loss weighs MPD and MRD '
                 'alike (loss.disc_weight = loss.fm_weight = 1)')
  if arch.adanorm_embeddings:
    notes.append(f'AdaLayerNorm row {bandwidth_id} of '
                 f'{arch.adanorm_embeddings} is used (the release trains a '
                 'random row per step and evaluates row 0); all rows are '
                 'kept and exported')
  common.apply_overrides(config, overrides)

  (gp, gr), (dp, dr) = _abstract_models(config)
  gen = _fill_from(sd, generator_table(arch), gp)
  q_rest = {p: take(sd, e, common.flatten(gr)[p].shape)
            for e in quantizer_table() for p in [e.path]}
  disc_params = None
  if arch.mpd is not None or arch.mrd is not None:
    if common.flatten(dr):
      raise common.ConversionError('internal: the discriminator has state')
    disc_params = _fill_from(sd, discriminator_table(arch, arch.wn_style), dp)
  window = sd.take('head.istft.window', (arch.n_fft,))
  if window is not None:
    from tokenizers_jax.nn import signal  # pylint: disable=g-import-not-at-top
    if not np.allclose(window, signal.hann_window(arch.n_fft), atol=1e-6):
      raise common.ConversionError('head.istft.window is not the periodic '
                                   'Hann window our iSTFT uses')
    passthrough = {'head.istft.window': window}
  else:
    passthrough = {}
  for prefix in PASSTHROUGH_PREFIXES:
    for name in sd.names(prefix):
      if name not in sd.skipped:
        passthrough[name] = sd.take(name)
  sd.check_complete()

  def fill(state):
    state['gen']['params'] = gen
    rest = state['gen']['rest']
    for path, value in q_rest.items():
      _set(rest, path, np.asarray(value).astype(
          np.asarray(_get(rest, path)).dtype))
    if disc_params is not None:
      state['disc']['params'] = disc_params
    if common.flatten(state['ema']):
      import jax  # pylint: disable=g-import-not-at-top
      state['ema'] = jax.tree.map(np.array, gen)
    return state

  report = common.conversion_report(
      'wavtokenizer', checkpoint, reference_config, arch, sd, notes,
      tensors_converted=len(sd.used) - len(sd.skipped) - len(passthrough),
      kept_verbatim=sorted(passthrough))
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  if passthrough:
    common.write_tensors(os.path.join(workdir, PASSTHROUGH_FILE), passthrough)
  return report


# -----------------------------------------------------------------------------
# Export.
# -----------------------------------------------------------------------------


def arch_from_ours(config) -> WavTokArch:
  """The WavTokArch of one of our audio-codec configs (must use the
  WavTokenizer front-end options)."""
  fe, q = dict(config.model.frontend), dict(config.quantizer)
  want = dict(pad_mode='reflect', pos_norm='group', pos_res_blocks=2,
              pos_final_norm=True, attn_blocks=1, exact_gelu=True)
  problems = [f'model.frontend.{k}={fe.get(k)!r} (WavTokenizer: {v!r})'
              for k, v in want.items() if fe.get(k) != v]
  if fe.get('lstm_layers', 0) and not fe.get('lstm_recurrent_bias'):
    problems.append('model.frontend.lstm_recurrent_bias must be True')
  if config.get('model_name') != 'audio_codec':
    problems.append('model_name must be audio_codec')
  if q.get('name') != 'vq' or not q.get('ema_update') or q.get(
      'use_cosine_sim') or q.get('codebook_dim') not in (None, fe.get('dim')):
    problems.append('the quantizer must be a plain EMA VQ (EnCodec '
                    'EuclideanCodebook)')
  if problems:
    raise common.ConversionError('this workdir cannot be written as a '
                                 'WavTokenizer: ' + '; '.join(problems))
  d = dict(config.disc)
  mpd = mrd = None
  if (len(tuple(d.get('mpd_channels', ()))) == 5
      and not d.get('mpd_first_feature', True) and d.get('periods')):
    mpd = (tuple(int(p) for p in d['periods']),
           tuple(int(c) for c in d['mpd_channels']))
  if d.get('mrd_style') == 'vocos' and d.get('resolutions'):
    mrd = (tuple((int(n), int(h), int(n)) for n, h in d['resolutions']),
           int(d.get('mrd_channels', 64)))
  from tokenizers_jax.frontends.audio import AudioConfig  # pylint: disable=g-import-not-at-top
  ac = AudioConfig(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in fe.items()})
  return WavTokArch(
      n_filters=ac.n_filters, strides=tuple(ac.strides), dim=ac.dim,
      residual_layers=ac.residual_layers, conv_shortcut=ac.conv_shortcut,
      lstm_layers=ac.lstm_layers, codebook_size=int(q['codebook_size']),
      dec_dim=ac.dec_dim, dec_ffn=ac.dec_ffn, num_convnext=ac.num_convnext,
      adanorm_embeddings=ac.adanorm_embeddings, n_fft=ac.fft_size,
      sample_rate=int(config.data.sample_rate),
      kmeans_iters=int(q.get('kmeans_iters', 10)),
      mpd=mpd, mrd=mrd,
      cond_embeddings=int(d.get('cond_embeddings', 0)) if (mpd or mrd)
      else 0)


def release_config(arch: WavTokArch, config) -> dict:
  """The WavTokenizer training YAML (as a dict) of one of our configs."""
  k = arch.adanorm_embeddings or arch.cond_embeddings or 4
  return {'model': {
      'class_path': 'decoder.experiment.WavTokenizer',
      'init_args': {
          'sample_rate': arch.sample_rate,
          'initial_learning_rate': float(config.optim.lr),
          'mel_loss_coeff': float(config.loss.mel_weight),
          'mrd_loss_coeff': 1.0, 'num_warmup_steps': 0,
          'pretrain_mel_steps': int(config.loss.disc_start),
          'feature_extractor': {
              'class_path': 'decoder.feature_extractors.EncodecFeatures',
              'init_args': {
                  'encodec_model': 'encodec_24khz',
                  'bandwidths': [6.6] * k, 'train_codebooks': True,
                  'num_quantizers': 1,
                  'dowmsamples': [int(s) for s in reversed(arch.strides)],
                  'vq_bins': arch.codebook_size,
                  'vq_kmeans': arch.kmeans_iters}},
          'backbone': {
              'class_path': 'decoder.models.VocosBackbone',
              'init_args': {
                  'input_channels': arch.dim, 'dim': arch.dec_dim,
                  'intermediate_dim': arch.dec_ffn,
                  'num_layers': arch.num_convnext,
                  'adanorm_num_embeddings': arch.adanorm_embeddings or None}},
          'head': {
              'class_path': 'decoder.heads.ISTFTHead',
              'init_args': {'dim': arch.dec_dim, 'n_fft': arch.n_fft,
                            'hop_length': arch.hop, 'padding': 'same'}}}}}


def _emit(out: dict, entry: Entry, value) -> None:
  for name, tensor in zip(entry.names, to_theirs(entry.kind, value)):
    out[name] = np.ascontiguousarray(tensor)


def export(workdir: str, output: str, *, use_ema: bool = True,
           discriminator: bool = True, passthrough: bool = True,
           **unused) -> dict:
  """Writes a workdir's codec in the WavTokenizer checkpoint layout.

  `output` ends in .safetensors (or .pt/.pth/.bin for torch.save, .npz); the
  release YAML goes next to it. Weight-normalised convs are written in the
  `weight_g`/`weight_v` form (g = ||w||, v = w). The SEANet decoder and mel
  buffers kept by the conversion are written back (`passthrough`); a workdir
  trained here has none, so the reference loads its export with
  strict=False. The discriminator (MPD + Vocos MRD) is included when the
  workdir's has the release's layout.
  """
  del unused  # lpips=...: the common export flags.
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  config = train_lib.load_config(workdir)
  arch = dataclasses.replace(arch_from_ours(config),
                             wn_style=_converted_wn_style(workdir))
  state, step = common.read_workdir_state(workdir)
  ema = state.get('ema') or {}
  used_ema = bool(use_ema and common.flatten(ema))
  params = ema if used_ema else state['gen']['params']
  out: dict[str, np.ndarray] = {}
  for e in generator_table(arch):
    _emit(out, e, _get(params, e.path))
  rest = state['gen']['rest']
  for e in quantizer_table():
    _emit(out, e, _get(rest, e.path))
  from tokenizers_jax.nn import signal  # pylint: disable=g-import-not-at-top
  out['head.istft.window'] = signal.hann_window(arch.n_fft)
  notes = []
  if discriminator and (arch.mpd or arch.mrd):
    for e in discriminator_table(arch, arch.wn_style):
      _emit(out, e, _get(state['disc']['params'], e.path))
  elif discriminator:
    notes.append('the discriminator is not in the release layout (5 MPD '
                 "convs, mpd_first_feature=False, mrd_style='vocos'): not "
                 'exported')
  extra = os.path.join(workdir, PASSTHROUGH_FILE)
  if passthrough and os.path.isfile(extra):
    out.update(common.read_tensors(extra))
  elif passthrough:
    notes.append('no passthrough tensors (SEANet decoder, mel buffers) in the '
                 "workdir: load the export with strict=False")
  common.write_tensors(output, out)
  cfg_path = _write_yaml(output, release_config(arch, config))
  return {'target': 'wavtokenizer', 'workdir': os.path.abspath(workdir),
          'step': int(step), 'ema': used_ema,
          'output': os.path.abspath(output), 'config': cfg_path,
          'tensors': len(out), 'notes': notes}


def _converted_wn_style(workdir: str) -> str:
  """The weight-norm naming of the release a workdir was converted from
  (`conversion.json`), else `weight_g`/`weight_v`."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'conversion.json')
  if os.path.isfile(path):
    with open(path) as f:
      report = json.load(f)
    style = (report.get('architecture') or {}).get('wn_style')
    if report.get('source') == 'wavtokenizer' and style in WN_STYLES[:2]:
      return style
  return 'weight_g'


def _write_yaml(output: str, cfg: dict) -> str:
  stem = os.path.splitext(os.path.abspath(output))[0]
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError:
    import json  # pylint: disable=g-import-not-at-top
    path = stem + '.json'
    with open(path, 'w') as f:
      json.dump(cfg, f, indent=2)
    return path
  path = stem + '.yaml'
  with open(path, 'w') as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
  return path
