"""`--from=neurorvq` against an independent PyTorch NeuroRVQ tokenizer.

The release (`KonstantinosBarmpas/NeuroRVQ`) is not pip-installable, so
`RefTokenizer` below is written here from the release's description, with
its state-dict names and shapes (`NeuroRVQ_EEG/NeuroRVQ.py`: encoder /
decoder `NeuroRVQFM`, `MultiDimentionalTemporalConv` as
`encoder.patch_embed.conv{j}_{g}` / `norm{j}_{g}`, decoder
`patch_embed_{g}.proj` 1x1 convs, `fc_norm_{g}` + Identity heads,
`encode_task_layer_{g}`, `decode_task_layer_{amplitude,angle_sin,angle_cos}`;
LaBraM-style blocks with `attn.qkv` + `q_bias`/`v_bias`, qk-norm and
`gamma_1/2`; `quantize_{g}.layers.{l}` NormEMAVectorQuantizers with
`embedding.{weight,cluster_size,embed_avg,initted}` and `cluster_size`),
tiny and randomly initialised: 3 channels, 2 patches of 40 samples, width
20, 2 + 1 blocks, 3 RVQ levels x 16 codes per branch.

Dimension legend: B batch, N channels, A patches, T patch size, D width,
E code dim, G branches, L levels.
"""

import functools
import math
import os
import shutil
import tempfile
import atexit

import jax
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import neurorvq as nrvq
from tokenizers_jax.models.tokenizer import Tokenizer

KERNELS = ((21, 9), (15, 7), (9, 5), (5, 3))
T, K, D, HEADS, E, V, LEVELS = 40, 4, 20, 2, 8, 16, 3
DEPTH, DEC_DEPTH, N_PATCHES, MLP = 2, 1, 4, 2.0
CHANNELS = ('Fp1', 'Cz', 'O2')
A = 2
ELECTRODES = nrvq.EEG_V1_ELECTRODES
OVERRIDES = (f'data.channels={CHANNELS!r}', 'data.num_patches=2',
             'data.global_batch_size=8', 'data.eval_batch_size=8')
YAML = f"""\
patch_size: {T}
n_patches: {N_PATCHES}
num_classes: 5
n_code: {V}
code_dim: {E}
embed_dim: {D}
in_chans_encoder: 1
out_chans_encoder: {K}
depth_encoder: {DEPTH}
depth_decoder: {DEC_DEPTH}
decoder_out_dim: {T}
num_heads_tokenizer: {HEADS}
mlp_ratio_tokenizer: {MLP}
qkv_bias_tokenizer: True
init_values_tokenizer: 0.1
"""


# -----------------------------------------------------------------------------
# The reference, written from the release's description.
# -----------------------------------------------------------------------------


class Attention(nn.Module):

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    hd = dim // heads
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.q_norm = nn.LayerNorm(hd, eps=1e-6)
    self.k_norm = nn.LayerNorm(hd, eps=1e-6)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias),
                      self.v_bias])
    qkv = F.linear(x, self.qkv.weight, bias)
    qkv = qkv.reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    q, k = self.q_norm(q), self.k_norm(k)
    att = ((q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  """Pre-LN block, LayerNorm eps 1e-5 (torch's default), layer scale."""

  def __init__(self, dim, heads):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * MLP))
    self.gamma_1 = nn.Parameter(torch.full((dim,), 0.1))
    self.gamma_2 = nn.Parameter(torch.full((dim,), 0.1))

  def forward(self, x):
    x = x + self.gamma_1 * self.attn(self.norm1(x))
    return x + self.gamma_2 * self.mlp(self.norm2(x))


class MultiScaleConv(nn.Module):
  """Four branches: conv(1, k1) GN(4) GELU pool 2, conv(1, k2) GN GELU pool 4
  on the [B, 1, N*A, T] image; out [B, N*A, (T/8)*K] time-major."""

  def __init__(self):
    super().__init__()
    for g, (k1, k2) in enumerate(KERNELS, 1):
      setattr(self, f'conv1_{g}', nn.Conv2d(1, K, (1, k1),
                                            padding=(0, k1 // 2)))
      setattr(self, f'norm1_{g}', nn.GroupNorm(4, K))
      setattr(self, f'conv2_{g}', nn.Conv2d(K, K, (1, k2),
                                            padding=(0, k2 // 2)))
      setattr(self, f'norm2_{g}', nn.GroupNorm(4, K))

  def forward(self, x):
    b, n, a, t = x.shape
    x = x.reshape(b, 1, n * a, t)
    outs = []
    for g in range(1, len(KERNELS) + 1):
      h = x
      for j, pool in ((1, 2), (2, 4)):
        h = getattr(self, f'norm{j}_{g}')(getattr(self, f'conv{j}_{g}')(h))
        h = F.avg_pool2d(F.gelu(h), (1, pool))
      outs.append(h.permute(0, 2, 3, 1).reshape(b, n * a, -1))  # (T C)
    return outs


class PatchEmbed(nn.Module):

  def __init__(self):
    super().__init__()
    self.proj = nn.Conv2d(E, D, 1)

  def forward(self, x):  # [B, E, N, A] -> [B, N*A, D]
    return self.proj(x).flatten(2).transpose(1, 2)


class FM(nn.Module):
  """NeuroRVQFM: cls token, spatial (pos_embed) and temporal (time_embed)
  embeddings, shared blocks, per-branch fc_norm (heads are Identity)."""

  def __init__(self, encoder, depth):
    super().__init__()
    self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
    if encoder:
      self.patch_embed = MultiScaleConv()
    else:
      for g in range(1, 5):
        setattr(self, f'patch_embed_{g}', PatchEmbed())
    self.pos_embed = nn.Parameter(torch.zeros(len(ELECTRODES) + 1, D))
    self.time_embed = nn.Parameter(torch.zeros(N_PATCHES, D))
    self.blocks = nn.ModuleList([Block(D, HEADS) for _ in range(depth)])
    for g in range(1, 5):
      setattr(self, f'fc_norm_{g}', nn.LayerNorm(D))

  def run(self, x, t_ix, s_ix, g):
    """x [B, L, D] tokens of branch g (1-based) -> [B, L, D]."""
    b = x.shape[0]
    x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1)
    s = F.pad(s_ix, (1, 0), value=0)
    x = x + self.pos_embed[s.reshape(-1)].reshape(s.shape[0], -1, D)
    x = torch.cat([x[:, :1], x[:, 1:] + self.time_embed[t_ix.reshape(-1)]
                   .reshape(t_ix.shape[0], -1, D)], 1)
    for blk in self.blocks:
      x = blk(x)
    return getattr(self, f'fc_norm_{g}')(x[:, 1:])


class EmbeddingEMA(nn.Module):

  def __init__(self):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(V, E), requires_grad=False)
    self.cluster_size = nn.Parameter(torch.zeros(V), requires_grad=False)
    self.embed_avg = nn.Parameter(torch.zeros(V, E), requires_grad=False)
    self.register_buffer('initted', torch.Tensor([True]))


class NormQuantizer(nn.Module):
  """Eval forward: l2-normalise, nearest code by squared distance."""

  def __init__(self):
    super().__init__()
    self.embedding = EmbeddingEMA()
    self.register_buffer('cluster_size', torch.zeros(V))

  def forward(self, z):  # [B, E, N, A]
    z = F.normalize(z.permute(0, 2, 3, 1), p=2, dim=-1)
    flat = z.reshape(-1, E)
    w = self.embedding.weight
    d = (flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1)
         - 2 * flat @ w.t())
    idx = d.argmin(1)
    zq = F.embedding(idx, w).view(z.shape)
    zq = z + (zq - z).detach()
    return zq.permute(0, 3, 1, 2), idx


class RVQ(nn.Module):

  def __init__(self):
    super().__init__()
    self.layers = nn.ModuleList([NormQuantizer() for _ in range(LEVELS)])

  def forward(self, x):
    out, residual, ids = torch.zeros_like(x), x, []
    for layer in self.layers:
      q, idx = layer(residual)
      residual = residual - q
      out = out + q
      ids.append(idx)
    return out, torch.stack(ids)


class RefTokenizer(nn.Module):

  def __init__(self):
    super().__init__()
    self.encoder = FM(True, DEPTH)
    self.decoder = FM(False, DEC_DEPTH)
    for g in range(1, 5):
      setattr(self, f'quantize_{g}', RVQ())
      setattr(self, f'encode_task_layer_{g}', nn.Sequential(
          nn.Linear(D, D), nn.Tanh(), nn.Linear(D, E)))
    self.decode_task_layer_amplitude = nn.Sequential(
        nn.Linear(4 * D, D), nn.GELU(), nn.Linear(D, T))
    self.decode_task_layer_angle_sin = nn.Sequential(
        nn.Linear(4 * D, D), nn.Tanh(), nn.Linear(D, T), nn.Tanh())
    self.decode_task_layer_angle_cos = nn.Sequential(
        nn.Linear(4 * D, D), nn.Tanh(), nn.Linear(D, T), nn.Tanh())

  @staticmethod
  def embedding_ix(n, a, channel_ids):
    t_ix = torch.arange(N_PATCHES - a, N_PATCHES).repeat(n).reshape(1, -1)
    s_ix = torch.tensor(channel_ids).repeat_interleave(a).reshape(1, -1)
    return t_ix, s_ix

  @torch.no_grad()
  def run(self, x, channel_ids):
    """x [B, N, A*T] -> dict(z [G, B, N*A, E], ids [G, L, B, N*A],
    amplitude / sin / cos [B, N*A, T], signal [B, N, A*T])."""
    b, n, _ = x.shape
    x = x.reshape(b, n, -1, T)
    a = x.shape[2]
    t_ix, s_ix = self.embedding_ix(n, a, channel_ids)
    feats = self.encoder.patch_embed(x)
    zs, ids, quant = [], [], []
    for g, h in enumerate(feats, 1):
      h = self.encoder.run(h, t_ix, s_ix, g)
      z = getattr(self, f'encode_task_layer_{g}')(h)
      zs.append(z)
      q, idx = getattr(self, f'quantize_{g}')(
          z.reshape(b, n, a, E).permute(0, 3, 1, 2))
      quant.append(q)
      ids.append(idx.reshape(LEVELS, b, n * a))
    dec = torch.cat([
        self.decoder.run(getattr(self.decoder, f'patch_embed_{g}')(q),
                         t_ix, s_ix, g) for g, q in enumerate(quant, 1)], 2)
    amp = self.decode_task_layer_amplitude(dec)
    sin = self.decode_task_layer_angle_sin(dec)
    cos = self.decode_task_layer_angle_cos(dec)
    log_amp = torch.log1p(torch.abs(torch.fft.fft(x, dim=-1)))
    mean = log_amp.mean(dim=(1, 2, 3), keepdim=True)
    std = torch.sqrt(log_amp.var(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8))
    mag = torch.expm1(amp.reshape(b, n, a, T) * std + mean).reshape(b, -1, T)
    signal = torch.fft.ifft(torch.complex(mag * cos, mag * sin)).real
    return dict(z=torch.stack(zs).numpy(), ids=torch.stack(ids).numpy(),
                amplitude=amp.numpy(), sin=sin.numpy(), cos=cos.numpy(),
                signal=signal.reshape(b, n, a * T).numpy())


def _reference() -> RefTokenizer:
  torch.manual_seed(0)
  model = RefTokenizer().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(('cls_token', 'pos_embed', 'time_embed')):
        p.normal_(0.0, 0.5)
      elif name.endswith(('q_bias', 'v_bias')):
        p.normal_(0.0, 0.2)
      elif 'gamma_' in name:
        p.uniform_(0.5, 1.5)
    for m in model.modules():
      if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
      if isinstance(m, NormQuantizer):
        m.embedding.weight.copy_(F.normalize(torch.randn(V, E), dim=-1))
        m.embedding.embed_avg.copy_(torch.randn(V, E))
        m.embedding.cluster_size.uniform_(0, 5)
        m.cluster_size.uniform_(0, 5)
  return model


# -----------------------------------------------------------------------------
# Conversion (once per module).
# -----------------------------------------------------------------------------


@functools.cache
def _converted():
  model = _reference()
  tmp = tempfile.mkdtemp(prefix='neurorvq_convert_')
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  tensors = {k: v.detach().numpy().copy() for k, v in
             model.state_dict().items()}
  ckpt = os.path.join(tmp, 'NeuroRVQ_EEG_tokenizer_v1.pt')
  torch.save(model.state_dict(), ckpt)
  yaml_path = os.path.join(tmp, 'NeuroRVQ_EEG_v1.yml')
  with open(yaml_path, 'w') as f:
    f.write(YAML)
  workdir = os.path.join(tmp, 'workdir')
  report = convert_lib.convert('neurorvq', ckpt, workdir,
                               reference_config=yaml_path,
                               overrides=OVERRIDES)
  return model, tensors, tmp, workdir, report


@functools.cache
def _tokenizer():
  return Tokenizer.from_workdir(_converted()[3])


def _signal(seed=0, b=2):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, len(CHANNELS), A * T)).astype(np.float32)


def _channel_ids():
  return [ELECTRODES.index(c.lower()) for c in CHANNELS]


def test_every_tensor_is_used():
  _, tensors, _, _, report = _converted()
  dropped = report['dropped_on_purpose']
  assert dropped == sorted(k for k in tensors if k.endswith(
      ('embedding.cluster_size', 'embedding.embed_avg', 'embedding.initted')))
  assert report['tensors_converted'] + len(dropped) == len(tensors)
  assert report['tensors_in_checkpoint'] == len(tensors)
  arch = report['architecture']
  assert tuple(map(tuple, arch['branches'])) == KERNELS
  assert (arch['depth'], arch['decoder_depth'], arch['num_heads'],
          arch['num_quantizers'], arch['layer_scale']) == (
              DEPTH, DEC_DEPTH, HEADS, LEVELS, True)
  assert report['channel_ids'] == _channel_ids()


def test_tokens_and_reconstruction_match_reference():
  model = _converted()[0]
  tok = _tokenizer()
  x = _signal()
  ref = model.run(torch.from_numpy(x), _channel_ids())
  m = tok.model
  ids_jax = np.asarray(jax.numpy.asarray(m.channel_ids))
  z = np.asarray(m.frontend.encode(jax.numpy.asarray(x), ids_jax))
  ids, stats = tok.encode_with_stats(x)
  ids = np.asarray(ids)  # [B, N, A, G, L]
  b, n = x.shape[:2]
  # Ours [B, G, N, A, E] vs the reference's [G, B, N*A, E].
  z_ref = ref['z'].reshape(4, b, n, A, E).transpose(1, 0, 2, 3, 4)
  ids_ref = ref['ids'].reshape(4, LEVELS, b, n, A).transpose(2, 3, 4, 0, 1)
  x_hat = np.asarray(tok.decode(ids, stats))
  print(f'latent max abs err {np.abs(z - z_ref).max():.2e}, ids equal '
        f'{np.mean(ids == ids_ref):.4f}, signal max abs err '
        f'{np.abs(x_hat - ref["signal"]).max():.2e} (signal scale '
        f'{np.abs(ref["signal"]).max():.2f})')
  np.testing.assert_allclose(z, z_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(ids, ids_ref)
  for lvl in range(LEVELS):  # Not a degenerate single-code check.
    assert len(np.unique(ids[..., lvl])) > 3
  np.testing.assert_allclose(x_hat, ref['signal'], atol=1e-4, rtol=1e-4)
  # The decoder heads themselves.
  pred = m.frontend.decode(
      jax.numpy.stack([q.decode(jax.numpy.asarray(ids[:, :, :, g]))
                       for g, q in enumerate(m.quantizers)], 1), ids_jax)
  for key in ('amplitude', 'sin', 'cos'):
    np.testing.assert_allclose(np.asarray(pred[key]).reshape(b, n * A, T),
                               ref[key], atol=1e-4, rtol=1e-4)


def test_right_aligned_time_embedding_matters():
  """A one-patch window uses the last temporal embedding, as the release."""
  model = _converted()[0]
  x = _signal(1)[:, :, :T]
  ref = model.run(torch.from_numpy(x), _channel_ids())
  ids = np.asarray(_tokenizer().encode(x))
  np.testing.assert_array_equal(
      ids, ref['ids'].reshape(4, LEVELS, 2, 3, 1).transpose(2, 3, 4, 0, 1))


def _write(tensors, name):
  path = os.path.join(_converted()[2], name)
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()},
             path)
  return path


def test_missing_and_unknown_tensors_are_errors(tmp_path):
  tensors = dict(_converted()[1])
  gone = 'decoder.blocks.0.attn.q_bias'
  del tensors[gone]
  tensors['encoder.extra_thing.weight'] = np.zeros((3,), np.float32)
  with pytest.raises(common.ConversionError) as e:
    convert_lib.convert('neurorvq', _write(tensors, 'broken.pt'),
                        str(tmp_path / 'w'), overrides=OVERRIDES)
  assert gone in str(e.value) and 'encoder.extra_thing.weight' in str(e.value)


def test_config_and_channel_errors(tmp_path):
  _, _, tmp, _, _ = _converted()
  ckpt = os.path.join(tmp, 'NeuroRVQ_EEG_tokenizer_v1.pt')
  bad = os.path.join(tmp, 'bad.yml')
  with open(bad, 'w') as f:
    f.write(YAML.replace(f'depth_encoder: {DEPTH}', 'depth_encoder: 12'))
  with pytest.raises(common.ConversionError, match='depth_encoder'):
    convert_lib.convert('neurorvq', ckpt, str(tmp_path / 'a'),
                        reference_config=bad, overrides=OVERRIDES)
  with pytest.raises(common.ConversionError, match='XYZ'):
    convert_lib.convert('neurorvq', ckpt, str(tmp_path / 'b'),
                        overrides=OVERRIDES + ("data.channels=('Fp1','XYZ')",))
  tensors = dict(_converted()[1])
  tensors['quantize_2.layers.1.embedding.weight'] = 3 * tensors[
      'quantize_2.layers.1.embedding.weight']
  with pytest.raises(common.ConversionError, match='l2-normalised'):
    convert_lib.convert('neurorvq', _write(tensors, 'unnormed.pt'),
                        str(tmp_path / 'c'), overrides=OVERRIDES)
