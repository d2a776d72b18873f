"""`--from=wavtokenizer` / `--export=wavtokenizer` against an independent
PyTorch forward.

WavTokenizer is not pip-installable here (and torchaudio does not load with
the CPU torch), so `TorchWavTokenizer` below is written from the
reference's description (decoder/feature_extractors.py, models.py, heads.py,
modules.py, discriminators.py; encoder/modules/seanet.py, conv.py, lstm.py;
encoder/quantization/core_vq.py), with the reference's parameter names and
registered buffers: a weight-normalised SEANet encoder (reflect padding,
1x1-conv shortcuts, a 2-layer LSTM with skip), the single EuclideanCodebook,
the Vocos backbone (GroupNorm pos_net with attention, AdaLayerNorm ConvNeXt
blocks), the iSTFT head, the conditional MPD and MRD, plus the tensors with
no role (EnCodec's SEANet decoder, the mel-loss buffers, a DAC
discriminator stand-in). Tiny and randomly initialised; its state dict,
saved as a Lightning-style checkpoint, is what the converter reads.

Dimension legend: B batch, N samples, T frames, D code dimension, K codes,
E decoder width, p MPD period.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import weight_norm

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import wavtokenizer as wt
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.training import audio_task
from tokenizers_jax.training import train as train_lib

# Tiny: dowmsamples [5, 4] (encoder strides 4, 5: hop 20), 4 filters, D=8,
# K=16, E=32 (GroupNorm(32) needs a multiple of 32), 2 ConvNeXt blocks.
DOWNSAMPLES = [5, 4]
N_FILTERS, DIM, CODES, E, FFN, LAYERS, ADANORM = 4, 8, 16, 32, 16, 2, 4
HOP = 20
N_FFT = 4 * HOP
MPD_WIDTHS = (4, 8, 8, 16, 16)
MRD_CHANNELS = 4
RESOLUTIONS = ((1024, 256, 1024), (2048, 512, 2048), (512, 128, 512))
N = 2400  # 120 frames; > 1024 so the MRD's 2048-point reflect pad works.
BASE = common.default_base_config('audio_codec.py:test')
YAML = f"""\
model:
  class_path: decoder.experiment.WavTokenizer
  init_args:
    sample_rate: 24000
    initial_learning_rate: 2e-4
    mel_loss_coeff: 45
    mrd_loss_coeff: 1.0
    pretrain_mel_steps: 0
    feature_extractor:
      class_path: decoder.feature_extractors.EncodecFeatures
      init_args:
        encodec_model: encodec_24khz
        bandwidths: [6.6, 6.6, 6.6, 6.6]
        train_codebooks: true
        num_quantizers: 1
        dowmsamples: {DOWNSAMPLES}
        vq_bins: {CODES}
        vq_kmeans: 200
    backbone:
      class_path: decoder.models.VocosBackbone
      init_args:
        input_channels: {DIM}
        dim: {E}
        intermediate_dim: {FFN}
        num_layers: {LAYERS}
        adanorm_num_embeddings: {ADANORM}
    head:
      class_path: decoder.heads.ISTFTHead
      init_args:
        dim: {E}
        n_fft: {N_FFT}
        hop_length: {HOP}
        padding: same
"""


# -----------------------------------------------------------------------------
# The independent PyTorch model (reference names).
# -----------------------------------------------------------------------------


class NormConv1d(nn.Module):

  def __init__(self, *args, **kwargs):
    super().__init__()
    self.conv = weight_norm(nn.Conv1d(*args, **kwargs))


class SConv1d(nn.Module):
  """EnCodec's non-causal conv: reflect padding k_eff - stride, the odd
  sample on the left."""

  def __init__(self, cin, cout, k, stride=1, dilation=1):
    super().__init__()
    self.conv = NormConv1d(cin, cout, k, stride, dilation=dilation)
    self.total = (k - 1) * dilation + 1 - stride

  def forward(self, x):
    right = self.total // 2
    x = F.pad(x, (self.total - right, right), mode='reflect')
    return self.conv.conv(x)


class SEANetResnetBlock(nn.Module):

  def __init__(self, dim, dilation):
    super().__init__()
    self.block = nn.Sequential(nn.ELU(), SConv1d(dim, dim // 2, 3,
                                                 dilation=dilation),
                               nn.ELU(), SConv1d(dim // 2, dim, 1))
    self.shortcut = SConv1d(dim, dim, 1)

  def forward(self, x):
    return self.shortcut(x) + self.block(x)


class SLSTM(nn.Module):

  def __init__(self, dim, layers):
    super().__init__()
    self.lstm = nn.LSTM(dim, dim, layers)

  def forward(self, x):
    x = x.permute(2, 0, 1)
    y, _ = self.lstm(x)
    return (y + x).permute(1, 2, 0)


def seanet_encoder():
  ratios = list(reversed(DOWNSAMPLES))
  mult, layers = 1, [SConv1d(1, N_FILTERS, 7)]
  for r in ratios:
    layers += [SEANetResnetBlock(mult * N_FILTERS, 1), nn.ELU(),
               SConv1d(mult * N_FILTERS, 2 * mult * N_FILTERS, 2 * r, r)]
    mult *= 2
  layers += [SLSTM(mult * N_FILTERS, 2), nn.ELU(),
             SConv1d(mult * N_FILTERS, DIM, 7)]
  enc = nn.Module()
  enc.model = nn.Sequential(*layers)
  return enc


class EuclideanCodebook(nn.Module):

  def __init__(self):
    super().__init__()
    self.register_buffer('inited', torch.Tensor([1.0]))
    self.register_buffer('cluster_size', torch.rand(CODES) * 5)
    self.register_buffer('embed', torch.randn(CODES, DIM) * 0.3)
    self.register_buffer('embed_avg', torch.randn(CODES, DIM))


def group_norm(c):
  return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.norm1 = group_norm(c)
    self.conv1 = nn.Conv1d(c, c, 3, padding=1)
    self.norm2 = group_norm(c)
    self.conv2 = nn.Conv1d(c, c, 3, padding=1)

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    return x + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.norm = group_norm(c)
    self.q, self.k, self.v, self.proj_out = (nn.Conv1d(c, c, 1)
                                             for _ in range(4))

  def forward(self, x):
    h = self.norm(x)
    q, k, v = self.q(h), self.k(h), self.v(h)
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * q.shape[1] ** -0.5,
                      dim=2)
    return x + self.proj_out(torch.bmm(v, w.permute(0, 2, 1)))


class AdaLayerNorm(nn.Module):

  def __init__(self, k, c):
    super().__init__()
    self.scale = nn.Embedding(k, c)
    self.shift = nn.Embedding(k, c)

  def forward(self, x, i):
    x = F.layer_norm(x, (x.shape[-1],), eps=1e-6)
    return x * self.scale(i) + self.shift(i)


class ConvNeXtBlock(nn.Module):

  def __init__(self, c, h):
    super().__init__()
    self.dwconv = nn.Conv1d(c, c, 7, padding=3, groups=c)
    self.norm = AdaLayerNorm(ADANORM, c)
    self.pwconv1 = nn.Linear(c, h)
    self.pwconv2 = nn.Linear(h, c)
    self.gamma = nn.Parameter(torch.rand(c))

  def forward(self, x, i):
    h = self.norm(self.dwconv(x).transpose(1, 2), i)
    h = self.gamma * self.pwconv2(F.gelu(self.pwconv1(h)))
    return x + h.transpose(1, 2)


class VocosBackbone(nn.Module):

  def __init__(self):
    super().__init__()
    self.embed = nn.Conv1d(DIM, E, 7, padding=3)
    self.norm = AdaLayerNorm(ADANORM, E)
    self.convnext = nn.ModuleList([ConvNeXtBlock(E, FFN)
                                   for _ in range(LAYERS)])
    self.final_layer_norm = nn.LayerNorm(E, eps=1e-6)
    self.pos_net = nn.Sequential(ResnetBlock(E), ResnetBlock(E), AttnBlock(E),
                                 ResnetBlock(E), ResnetBlock(E), group_norm(E))

  def forward(self, x, i):
    x = self.pos_net(self.embed(x))
    x = self.norm(x.transpose(1, 2), i).transpose(1, 2)
    for block in self.convnext:
      x = block(x, i)
    return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):

  def __init__(self):
    super().__init__()
    self.register_buffer('window', torch.hann_window(N_FFT))

  def forward(self, spec):  # [B, F, T] complex, 'same' padding.
    pad = (N_FFT - HOP) // 2
    t = spec.shape[-1]
    frames = torch.fft.irfft(spec, N_FFT, dim=1) * self.window[None, :, None]
    size = (t - 1) * HOP + N_FFT
    y = F.fold(frames, (1, size), (1, N_FFT), stride=(1, HOP))[:, 0, 0]
    env = F.fold(self.window.square().expand(1, t, -1).transpose(1, 2),
                 (1, size), (1, N_FFT), stride=(1, HOP)).squeeze()
    return y[:, pad:-pad] / env[pad:-pad]


class ISTFTHead(nn.Module):

  def __init__(self):
    super().__init__()
    self.out = nn.Linear(E, N_FFT + 2)
    self.istft = ISTFT()

  def forward(self, x):
    mag, p = self.out(x).transpose(1, 2).chunk(2, dim=1)
    mag = torch.clip(torch.exp(mag), max=1e2)
    return self.istft(mag * (torch.cos(p) + 1j * torch.sin(p)))


def wn2d(*args, **kwargs):
  return weight_norm(nn.Conv2d(*args, **kwargs))


class DiscriminatorP(nn.Module):

  def __init__(self, period):
    super().__init__()
    self.period = period
    cin, convs = 1, []
    for j, c in enumerate(MPD_WIDTHS):
      convs.append(wn2d(cin, c, (5, 1), (3, 1) if j < 4 else (1, 1),
                        padding=(2, 0)))
      cin = c
    self.convs = nn.ModuleList(convs)
    self.emb = nn.Embedding(ADANORM, cin)
    self.conv_post = wn2d(cin, 1, (3, 1), 1, padding=(1, 0))

  def forward(self, x, i):
    x = x.unsqueeze(1)
    b, c, t = x.shape
    if t % self.period:
      x = F.pad(x, (0, self.period - t % self.period), 'reflect')
    x = x.view(b, c, -1, self.period)
    fmap = []
    for j, conv in enumerate(self.convs):
      x = F.leaky_relu(conv(x), 0.1)
      if j > 0:
        fmap.append(x)
    h = (self.emb(i).view(1, -1, 1, 1) * x).sum(dim=1, keepdim=True)
    x = self.conv_post(x)
    fmap.append(x)
    return torch.flatten(x + h, 1, -1), fmap


class DiscriminatorR(nn.Module):

  def __init__(self, resolution):
    super().__init__()
    self.resolution = resolution
    c = MRD_CHANNELS
    self.convs = nn.ModuleList([
        wn2d(1, c, (7, 5), (2, 2), padding=(3, 2)),
        wn2d(c, c, (5, 3), (2, 1), padding=(2, 1)),
        wn2d(c, c, (5, 3), (2, 2), padding=(2, 1)),
        wn2d(c, c, 3, (2, 1), padding=1),
        wn2d(c, c, 3, (2, 2), padding=1)])
    self.emb = nn.Embedding(ADANORM, c)
    self.conv_post = wn2d(c, 1, (3, 3), padding=(1, 1))

  def forward(self, x, i):
    n_fft, hop, win = self.resolution
    x = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win,
                   window=None, center=True, return_complex=True).abs()
    x = x.unsqueeze(1)
    fmap = []
    for conv in self.convs:
      x = F.leaky_relu(conv(x), 0.1)
      fmap.append(x)
    h = (self.emb(i).view(1, -1, 1, 1) * x).sum(dim=1, keepdim=True)
    x = self.conv_post(x)
    fmap.append(x)
    return torch.flatten(x + h, 1, -1), fmap


class TorchWavTokenizer(nn.Module):
  """The release's state-dict layout (feature_extractor, backbone, head,
  discriminators and the role-less tensors)."""

  def __init__(self):
    super().__init__()
    self.feature_extractor = nn.Module()
    encodec = nn.Module()
    encodec.encoder = seanet_encoder()
    encodec.decoder = nn.Module()  # EnCodec's SEANet decoder: never run.
    encodec.decoder.model = nn.Sequential(SConv1d(DIM, 8, 7))
    encodec.quantizer = nn.Module()
    encodec.quantizer.vq = nn.Module()
    layer = nn.Module()
    layer._codebook = EuclideanCodebook()  # pylint: disable=protected-access
    encodec.quantizer.vq.layers = nn.ModuleList([layer])
    self.feature_extractor.encodec = encodec
    self.backbone = VocosBackbone()
    self.head = ISTFTHead()
    self.multiperioddisc = nn.Module()
    self.multiperioddisc.discriminators = nn.ModuleList(
        [DiscriminatorP(p) for p in (2, 3, 5, 7, 11)])
    self.multiresddisc = nn.Module()
    self.multiresddisc.discriminators = nn.ModuleList(
        [DiscriminatorR(r) for r in RESOLUTIONS])
    self.dac = nn.Module()  # Stand-ins for the DAC discriminator tensors.
    self.dac.conv = wn2d(1, 2, 3)
    self.dacdiscriminator = nn.Module()
    self.dacdiscriminator.discriminator = nn.Module()
    self.dacdiscriminator.discriminator.conv = wn2d(1, 2, 3)
    self.melspec_loss = nn.Module()
    self.melspec_loss.mel_spec = nn.Module()
    self.melspec_loss.mel_spec.register_buffer('fb', torch.rand(33, 5))

  @property
  def codebook(self):
    return self.feature_extractor.encodec.quantizer.vq.layers[0]._codebook  # pylint: disable=protected-access

  def encode(self, audio):
    emb = self.feature_extractor.encodec.encoder.model(audio[:, None])
    x = emb.transpose(1, 2).reshape(-1, DIM)
    e = self.codebook.embed.t()
    dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ e
             + e.pow(2).sum(0, keepdim=True))
    return dist.max(dim=-1).indices.view(audio.shape[0], -1)

  def decode(self, codes, i):
    q = F.embedding(codes, self.codebook.embed).transpose(1, 2)
    return self.head(self.backbone(q, i))


def _randomise(model: nn.Module, seed: int) -> None:
  """Non-trivial values everywhere (norm affines, AdaLN tables, the zero-
  initialised embeddings, weight-norm gains)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('weight_g'):
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
      elif 'norm' in name.split('.')[-2] or name.endswith(('scale.weight',)):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  torch.manual_seed(0)
  model = TorchWavTokenizer().eval()
  _randomise(model, 0)
  d = tmp_path_factory.mktemp('wavtokenizer')
  ckpt = str(d / 'wavtokenizer.ckpt')
  torch.save({'state_dict': model.state_dict(), 'global_step': 7}, ckpt)
  yaml_path = str(d / 'config.yaml')
  with open(yaml_path, 'w') as f:
    f.write(YAML)
  x = torch.from_numpy(np.clip(
      np.random.default_rng(0).normal(size=(2, N)) * 0.3, -0.99,
      0.99).astype(np.float32))
  with torch.no_grad():
    codes = model.encode(x)
    audio = model.decode(codes, torch.tensor([0]))
    disc = ([dsc(x, torch.tensor([0])) for dsc in
             model.multiperioddisc.discriminators]
            + [dsc(x, torch.tensor([0])) for dsc in
               model.multiresddisc.discriminators])
  workdir = str(d / 'converted')
  report = convert_lib.convert(
      'wavtokenizer', ckpt, workdir, reference_config=yaml_path,
      base_config=BASE, ignore=('dac.', 'dacdiscriminator.'))
  return dict(model=model, ckpt=ckpt, yaml=yaml_path, x=x.numpy(),
              codes=codes.numpy(), audio=audio.numpy(), disc=disc,
              workdir=workdir, report=report, dir=d)


@pytest.fixture(scope='module')
def tokenizer(release):
  return Tokenizer.from_workdir(release['workdir'])


def _state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().astype(np.float32) if v.is_floating_point()
          else v.numpy() for k, v in model.state_dict().items()}


# -----------------------------------------------------------------------------
# Tests.
# -----------------------------------------------------------------------------


def test_report_every_tensor_used(release):
  r = release['report']
  sd = _state_dict(release['model'])
  assert r['tensors_in_checkpoint'] == len(sd)
  dropped = [n for n in sd if n.startswith(('dac.', 'dacdiscriminator.'))]
  assert sorted(r['dropped_on_purpose']) == sorted(dropped)
  assert sorted(r['kept_verbatim']) == sorted(
      [n for n in sd if n.startswith(wt.PASSTHROUGH_PREFIXES)]
      + ['head.istft.window'])
  arch = r['architecture']
  assert tuple(arch['strides']) == (4, 5) and arch['lstm_layers'] == 2
  assert arch['adanorm_embeddings'] == ADANORM
  assert arch['cond_embeddings'] == ADANORM


def test_token_ids_and_reconstruction_match(release, tokenizer):
  ids = np.asarray(tokenizer.encode(release['x']))
  np.testing.assert_array_equal(ids, release['codes'])
  assert len(np.unique(ids)) > 3  # Not a degenerate lookup.
  ref = release['audio']
  # The model itself (WavTokenizer does not clip) ...
  y = np.asarray(tokenizer.model.decode(jnp.asarray(ids)))
  assert y.shape == ref.shape == (2, N)
  err = np.max(np.abs(y - ref))
  scale = np.max(np.abs(ref))
  assert err < 1e-4 * max(1.0, scale), (err, scale)
  # ... and Tokenizer.decode, which clips to [-1, 1] by contract.
  clipped = np.asarray(tokenizer.decode(jnp.asarray(ids)))
  np.testing.assert_allclose(clipped, np.clip(ref, -1, 1), atol=1e-4)
  # The whole codec in one call (encode + quantize + decode).
  full = np.asarray(tokenizer.model(jnp.asarray(release['x'])).reconstruction)
  assert np.max(np.abs(full - ref)) < 1e-4 * max(1.0, scale)
  print(f'wavtokenizer parity: ids equal, max |dy| = {err:.2e} '
        f'(|y| max {scale:.2f})')


def test_discriminators_match(release):
  config = train_lib.load_config(release['workdir'])
  state, _ = common.read_workdir_state(release['workdir'])
  from flax import nnx  # pylint: disable=g-import-not-at-top
  _, disc = audio_task.build_models(config)
  graph, params, rest = nnx.split(disc, nnx.Param, ...)
  nnx.replace_by_pure_dict(params, state['disc']['params'])
  disc = nnx.merge(graph, params, rest)
  logits, feats = disc(jnp.asarray(release['x']))
  assert len(logits) == len(release['disc']) == 8
  worst = 0.0
  for ours, (ref_logits, ref_feats), of in zip(logits, release['disc'],
                                               feats):
    ref = ref_logits.numpy()
    got = np.asarray(ours).reshape(ref.shape)
    worst = max(worst, float(np.max(np.abs(got - ref))
                             / max(1.0, np.max(np.abs(ref)))))
    assert len(of) == len(ref_feats)
  assert worst < 1e-4, worst


def test_export_round_trip(release, tmp_path):
  out = str(tmp_path / 'export.safetensors')
  rep = convert_lib.export('wavtokenizer', release['workdir'], out)
  assert os.path.isfile(rep['config'])
  exported = common.read_tensors(out)
  original = _state_dict(release['model'])
  keep = {k: v for k, v in original.items()
          if not k.startswith(('dac.', 'dacdiscriminator.'))}
  assert sorted(exported) == sorted(keep)
  for name, value in keep.items():
    if name.endswith('weight_v'):
      g = name[:-1] + 'g'
      np.testing.assert_allclose(
          wt.fold_weight_norm(exported[g], exported[name]),
          wt.fold_weight_norm(original[g], value), atol=1e-6, err_msg=name)
    elif not name.endswith('weight_g'):
      np.testing.assert_array_equal(exported[name], value, err_msg=name)
  # Convert the export again: the same arrays, bit for bit.
  again = str(tmp_path / 'again')
  convert_lib.convert('wavtokenizer', out, again,
                      reference_config=rep['config'], base_config=BASE)
  a, _ = common.read_workdir_state(release['workdir'])
  b, _ = common.read_workdir_state(again)
  for part in ('params', 'rest'):
    fa, fb = common.flatten(a['gen'][part]), common.flatten(b['gen'][part])
    assert fa.keys() == fb.keys()
    for k in fa:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))
  fa, fb = common.flatten(a['disc']['params']), common.flatten(
      b['disc']['params'])
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


def test_missing_and_unknown_tensors_are_named(release, tmp_path):
  sd = _state_dict(release['model'])
  missing = dict(sd)
  del missing['backbone.convnext.1.gamma']
  path = str(tmp_path / 'missing.safetensors')
  common.write_tensors(path, missing)
  with pytest.raises(common.ConversionError,
                     match=r'backbone\.convnext\.1\.gamma'):
    convert_lib.convert('wavtokenizer', path, str(tmp_path / 'w1'),
                        base_config=BASE,
                        ignore=('dac.', 'dacdiscriminator.'))
  extra = dict(sd)
  extra['backbone.mystery.weight'] = np.zeros((3,), np.float32)
  path = str(tmp_path / 'extra.safetensors')
  common.write_tensors(path, extra)
  with pytest.raises(common.ConversionError, match=r'backbone\.mystery'):
    convert_lib.convert('wavtokenizer', path, str(tmp_path / 'w2'),
                        base_config=BASE,
                        ignore=('dac.', 'dacdiscriminator.'))


def test_dac_needs_an_explicit_request(release, tmp_path):
  with pytest.raises(common.ConversionError, match=r'--ignore=dac\.'):
    convert_lib.convert('wavtokenizer', release['ckpt'], str(tmp_path / 'w'),
                        base_config=BASE)


def test_wrong_config_is_reported(release, tmp_path):
  bad = str(tmp_path / 'bad.yaml')
  with open(bad, 'w') as f:
    f.write(YAML.replace(f'vq_bins: {CODES}', 'vq_bins: 4096'))
  with pytest.raises(common.ConversionError, match='codebook size'):
    convert_lib.convert('wavtokenizer', release['ckpt'], str(tmp_path / 'w'),
                        reference_config=bad, base_config=BASE,
                        ignore=('dac.', 'dacdiscriminator.'))


def test_weight_norm_fold_is_exact_after_export():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(5, 3, 7)).astype(np.float32)
  g, v = wt.unfold_weight_norm(w)
  np.testing.assert_array_equal(wt.fold_weight_norm(g, v), w)
  # And it is the torch definition.
  m = weight_norm(nn.Conv1d(3, 5, 7))
  with torch.no_grad():
    m.weight_g.uniform_(0.5, 2.0)
  m(torch.zeros(1, 3, 7))  # Recomputes .weight.
  np.testing.assert_allclose(
      wt.fold_weight_norm(m.weight_g.detach().numpy(),
                          m.weight_v.detach().numpy()),
      m.weight.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_architecture_from_shapes_equals_the_yaml(release):
  sd = common.StateDict(common.read_tensors(release['ckpt']), 'release')
  inferred = wt.infer_arch(sd)
  from_yaml = wt.arch_from_config(common.read_config_file(release['yaml']),
                                  inferred)
  assert inferred.structure() == from_yaml.structure()
  assert inferred.mpd == ((2, 3, 5, 7, 11), MPD_WIDTHS)
  assert inferred.mrd == (RESOLUTIONS, MRD_CHANNELS)
  assert inferred.wn_style == 'weight_g' and inferred.conv_shortcut


def test_init_from_loads_the_converted_generator(release):
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  workdir = release['workdir']
  config = train_lib.load_config(workdir)
  config.init_from = workdir
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, state, _ = audio_task.create(config, mesh)
  saved, _ = common.read_workdir_state(workdir)
  key = lambda path: tuple(str(p) for p in path)  # Orbax: string indices.
  for part in ('params', 'rest'):
    got = {key(p): v for p, v in common.flatten(
        jax.device_get(state['gen'][part])).items()}
    want = {key(p): v for p, v in common.flatten(saved['gen'][part]).items()}
    for path in want:
      if 'rng_key' in path:
        continue
      np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


@pytest.mark.slow
def test_fine_tuning_from_the_converted_workdir(release, tmp_path):
  """One GAN step of a new run initialised from the converted generator
  (`init_from`), then the evaluation."""
  config = train_lib.load_config(release['workdir'])
  config.init_from = release['workdir']
  config.data.data_dir = str(tmp_path / 'tfds')
  config.total_steps = 1
  config.eval_every = 1
  config.num_eval_batches = 1
  final = train_lib.train_and_evaluate(config, str(tmp_path / 'run'))
  assert final['step'] == 1
  assert np.isfinite(final['eval/mel_distance'])


def test_parametrizations_weight_norm_names(release):
  """Newer torch writes weight norm as parametrizations.weight.original0/1;
  the same kernels come out."""
  sd = _state_dict(release['model'])
  renamed = {}
  for name, value in sd.items():
    name = name.replace('.weight_g', '.parametrizations.weight.original0')
    renamed[name.replace('.weight_v', '.parametrizations.weight.original1')] = (
        value)
  old = wt.infer_arch(common.StateDict(sd, 'old'))
  new_sd = common.StateDict(renamed, 'new')
  new = wt.infer_arch(new_sd)
  assert new.wn_style == 'parametrizations'
  assert new.structure() == old.structure()
  old_sd = common.StateDict(sd, 'old')
  for a, b in zip(wt.generator_table(old), wt.generator_table(new)):
    if a.kind == 'conv_wn':
      shape = wt.to_ours('conv', [sd[a.names[1]]]).shape
      np.testing.assert_array_equal(wt.take(old_sd, a, shape),
                                    wt.take(new_sd, b, shape))
