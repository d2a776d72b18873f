"""`--from=titok` against an independent PyTorch TiTok.

The reference package (bytedance/1d-tokenizer) is not installable here, so
`RefTiTok` below is written from the reference's description
(`modeling/titok.py`, `modeling/modules/blocks.py: TiTokEncoder,
TiTokDecoder, ResidualAttentionBlock`, `modeling/quantizer/quantizer.py:
VectorQuantizer`, `modeling/modules/maskgit_vqgan.py: Decoder, ResnetBlock,
UpsamplingBlock, VectorQuantizer`) with the release's exact parameter names:
tiny, randomly initialised, its `state_dict()` saved as the checkpoint.
Images are in [0, 1] there, NCHW; ours in [-1, 1], NHWC.

Two families: the legacy two-stage release (proxy-code logits whose softmax
mixes `pixel_quantize`'s codes for the fine-tuned MaskGIT-VQGAN
`pixel_decoder`) and the single-stage pixel release (BL-style: the decoder
wider than the encoder).

Dimension legend: B batch, K latent tokens, D / Dd encoder / decoder width,
E token_size, N patches, V proxy codes, Z the pixel decoder's code width.
"""

import atexit
import collections
import functools
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import titok as titok_convert
from tokenizers_jax.models.tokenizer import Tokenizer

IMAGE, PATCH, K, E, CODES, V = 16, 4, 8, 4, 32, 24
# The pixel decoder: hidden_channels, channel_mult (x4 up-sampling = PATCH),
# num_res_blocks, z_channels (torch's GroupNorm(32) needs widths % 32 == 0).
PIX_CH, PIX_MULT, PIX_BLOCKS, Z = 32, (1, 1, 2), 2, 8
OVERRIDES = ('data.source=fake:16', 'data.eval_batch_size=8',
             'data.global_batch_size=8', 'num_grid_images=2')


class Block(nn.Module):
  """ResidualAttentionBlock: x + attn(ln_1(x)); x + mlp(ln_2(x)); LND."""

  def __init__(self, d, heads):
    super().__init__()
    self.ln_1 = nn.LayerNorm(d)
    self.attn = nn.MultiheadAttention(d, heads)
    self.ln_2 = nn.LayerNorm(d)
    self.mlp = nn.Sequential(collections.OrderedDict([
        ('c_fc', nn.Linear(d, 4 * d)), ('gelu', nn.GELU()),
        ('c_proj', nn.Linear(4 * d, d))]))

  def forward(self, x):
    h = self.ln_1(x)
    x = x + self.attn(h, h, h, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


def _param(*shape, scale=0.5):
  return nn.Parameter(scale * torch.randn(*shape))


class Encoder(nn.Module):

  def __init__(self, d, depth, heads, legacy):
    super().__init__()
    self.legacy, self.width = legacy, d
    grid = IMAGE // PATCH
    self.patch_embed = nn.Conv2d(3, d, PATCH, stride=PATCH)
    self.class_embedding = _param(1, d)
    self.positional_embedding = _param(grid ** 2 + 1, d)
    self.latent_token_positional_embedding = _param(K, d)
    self.ln_pre = nn.LayerNorm(d)
    self.transformer = nn.ModuleList([Block(d, heads) for _ in range(depth)])
    self.ln_post = nn.LayerNorm(d)
    self.conv_out = nn.Conv2d(d, E, 1)

  def forward(self, x, latent_tokens):
    b = x.shape[0]
    x = self.patch_embed(x).flatten(2).permute(0, 2, 1)
    x = torch.cat([self.class_embedding.expand(b, -1, -1), x], 1)
    x = x + self.positional_embedding
    lat = latent_tokens.expand(b, -1, -1) + \
        self.latent_token_positional_embedding
    x = self.ln_pre(torch.cat([x, lat], 1)).permute(1, 0, 2)
    for block in self.transformer:
      x = block(x)
    x = x.permute(1, 0, 2)
    lat = self.ln_post(x[:, 1 + (IMAGE // PATCH) ** 2:])
    if self.legacy:  # The release's reshape (not a transpose).
      lat = lat.reshape(b, self.width, K, 1)
    else:
      lat = lat.reshape(b, K, self.width, 1).permute(0, 2, 1, 3)
    return self.conv_out(lat).reshape(b, E, 1, K)


class Decoder(nn.Module):

  def __init__(self, d, depth, heads, legacy):
    super().__init__()
    self.legacy, self.width = legacy, d
    grid = IMAGE // PATCH
    self.decoder_embed = nn.Linear(E, d)
    self.class_embedding = _param(1, d)
    self.positional_embedding = _param(grid ** 2 + 1, d)
    self.mask_token = _param(1, 1, d)
    self.latent_token_positional_embedding = _param(K, d)
    self.ln_pre = nn.LayerNorm(d)
    self.transformer = nn.ModuleList([Block(d, heads) for _ in range(depth)])
    self.ln_post = nn.LayerNorm(d)
    if legacy:
      self.ffn = nn.Sequential(nn.Conv2d(d, 2 * d, 1), nn.Tanh(),
                               nn.Conv2d(2 * d, V, 1))
    else:
      self.ffn = nn.Sequential(nn.Conv2d(d, PATCH * PATCH * 3, 1))
      self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

  def forward(self, zq):
    b, c, _, length = zq.shape
    grid = IMAGE // PATCH
    x = self.decoder_embed(zq.reshape(b, c, length).permute(0, 2, 1))
    masks = self.mask_token.repeat(b, grid ** 2, 1)
    masks = torch.cat([self.class_embedding.expand(b, -1, -1), masks], 1)
    masks = masks + self.positional_embedding
    x = x + self.latent_token_positional_embedding[:length]
    x = self.ln_pre(torch.cat([masks, x], 1)).permute(1, 0, 2)
    for block in self.transformer:
      x = block(x)
    x = self.ln_post(x.permute(1, 0, 2)[:, 1:1 + grid ** 2])
    x = x.permute(0, 2, 1).reshape(b, self.width, grid, grid)
    x = self.ffn(x)
    if self.legacy:
      return x  # [B, V, grid, grid] logits
    # 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
    x = x.reshape(b, PATCH, PATCH, 3, grid, grid)
    x = x.permute(0, 3, 4, 1, 5, 2).reshape(b, 3, IMAGE, IMAGE)
    return self.conv_out(x)


class Quantizer(nn.Module):

  def __init__(self, use_l2_norm):
    super().__init__()
    self.use_l2_norm = use_l2_norm
    self.embedding = nn.Embedding(CODES, E)

  def codebook(self):
    w = self.embedding.weight
    return F.normalize(w, dim=-1) if self.use_l2_norm else w

  def forward(self, z):
    """[B, E, 1, K] -> (z_q [B, E, 1, K], ids [B, 1, K])."""
    b = z.shape[0]
    flat = z.permute(0, 2, 3, 1).reshape(-1, E)
    if self.use_l2_norm:
      flat = F.normalize(flat, dim=-1)
    cb = self.codebook()
    d = (flat ** 2).sum(1, keepdim=True) + (cb ** 2).sum(1) - 2 * flat @ cb.T
    ids = d.argmin(1)
    zq = cb[ids].reshape(b, 1, K, E).permute(0, 3, 1, 2)
    return zq, ids.reshape(b, 1, K)


class PixResBlock(nn.Module):
  """maskgit_vqgan.ResnetBlock: GroupNorm-SiLU-conv3x3 twice (no biases);
  with a width change the 1x1 `nin_shortcut` acts on the block's output."""

  def __init__(self, din, dout):
    super().__init__()
    self.change = din != dout
    self.norm1 = nn.GroupNorm(32, din, eps=1e-6)
    self.conv1 = nn.Conv2d(din, dout, 3, padding=1, bias=False)
    self.norm2 = nn.GroupNorm(32, dout, eps=1e-6)
    self.conv2 = nn.Conv2d(dout, dout, 3, padding=1, bias=False)
    if self.change:
      self.nin_shortcut = nn.Conv2d(dout, dout, 1, bias=False)

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return h + (self.nin_shortcut(h) if self.change else x)


class PixUp(nn.Module):
  """maskgit_vqgan.UpsamplingBlock `block_idx`: ResnetBlocks, then (above
  level 0) nearest 2x and `upsample_conv`."""

  def __init__(self, level):
    super().__init__()
    mult = PIX_MULT[min(level + 1, len(PIX_MULT) - 1)]
    din, dout = PIX_CH * mult, PIX_CH * PIX_MULT[level]
    self.block = nn.ModuleList(
        [PixResBlock(din if j == 0 else dout, dout)
         for j in range(PIX_BLOCKS)])
    self.level = level
    if level:
      self.upsample_conv = nn.Conv2d(dout, dout, 3, padding=1)

  def forward(self, x):
    for block in self.block:
      x = block(x)
    if self.level:
      x = self.upsample_conv(F.interpolate(x, scale_factor=2.0,
                                           mode='nearest'))
    return x


class PixDecoder(nn.Module):
  """maskgit_vqgan.Decoder: conv_in, mid, up (highest level first),
  GroupNorm-SiLU-conv_out; [B, Z, h, w] -> images in [0, 1] scale."""

  def __init__(self):
    super().__init__()
    top = PIX_CH * PIX_MULT[-1]
    self.conv_in = nn.Conv2d(Z, top, 3, padding=1)
    self.mid = nn.ModuleList([PixResBlock(top, top)
                              for _ in range(PIX_BLOCKS)])
    self.up = nn.ModuleList([PixUp(i) for i in range(len(PIX_MULT))])
    self.norm_out = nn.GroupNorm(32, PIX_CH * PIX_MULT[0], eps=1e-6)
    self.conv_out = nn.Conv2d(PIX_CH * PIX_MULT[0], 3, 3, padding=1)

  def forward(self, z):
    h = self.conv_in(z)
    for block in self.mid:
      h = block(h)
    for block in reversed(self.up):
      h = block(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class RefTiTok(nn.Module):
  """TiTok's modules and state-dict names; the legacy model renders its
  proxy logits with the MaskGIT-VQGAN pixel decoder as the release's
  `decode` (finetune_decoder)."""

  def __init__(self, legacy, enc=(64, 2, 2), dec=(64, 1, 2)):
    super().__init__()
    self.encoder = Encoder(*enc, legacy)
    self.decoder = Decoder(*dec, legacy)
    self.latent_tokens = _param(K, enc[0])
    self.quantize = Quantizer(use_l2_norm=legacy)
    if legacy:  # finetune_decoder: the MaskGIT-VQGAN codes and decoder.
      self.pixel_quantize = nn.Module()
      self.pixel_quantize.embedding = nn.Embedding(V, Z)
      self.pixel_decoder = PixDecoder()

  def pixels(self, logits):
    """The release's decode after the TiTok decoder: logits [B, V, h, w] ->
    softmax over V mixing pixel_quantize's codes -> pixel_decoder -> NHWC
    in [-1, 1]."""
    z = torch.einsum('nchw,cd->ndhw', logits.softmax(1),
                     self.pixel_quantize.embedding.weight)
    return (self.pixel_decoder(z).permute(0, 2, 3, 1) * 2 - 1).numpy()

  @torch.no_grad()
  def run(self, x):
    """x NHWC numpy in [-1, 1] -> (ids [B, K], output, z [B, K, E],
    pixels NHWC in [-1, 1]); output is the logits [B, N, V] (legacy) or the
    pixels."""
    x01 = (torch.from_numpy(x).permute(0, 3, 1, 2) + 1) / 2
    z = self.encoder(x01, self.latent_tokens)
    zq, ids = self.quantize(z)
    out = self.decoder(zq)
    if self.decoder.legacy:
      pixels = self.pixels(out)
      out = out.flatten(2).permute(0, 2, 1).numpy()
    else:
      out = pixels = (out.permute(0, 2, 3, 1) * 2 - 1).numpy()
    return (ids[:, 0].numpy(), out, z[:, :, 0].permute(0, 2, 1).numpy(),
            pixels)

  @torch.no_grad()
  def decode_ids(self, ids, pixels=False):
    """The release's decode_tokens: the logits [B, N, V] (legacy, unless
    `pixels`) or the pixels NHWC in [-1, 1]."""
    zq = self.quantize.codebook()[torch.from_numpy(np.asarray(ids))]
    out = self.decoder(zq.permute(0, 2, 1)[:, :, None])
    if self.decoder.legacy:
      if pixels:
        return self.pixels(out)
      return out.flatten(2).permute(0, 2, 1).numpy()
    return (out.permute(0, 2, 3, 1) * 2 - 1).numpy()


def _reference(legacy, **kw) -> RefTiTok:
  torch.manual_seed(1 if legacy else 2)
  model = RefTiTok(legacy, **kw).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):  # Non-trivial affines.
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
    model.quantize.embedding.weight.normal_(0.0, 1.0)
    if legacy:  # Logits of O(3): a softmax far from one-hot or uniform.
      model.decoder.ffn[2].weight.mul_(8.0)
      model.pixel_quantize.embedding.weight.normal_(0.0, 1.0)
  return model


def _tmp():
  tmp = tempfile.mkdtemp(prefix='titok_convert_')
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  return tmp


def _save(model, tmp, name='pytorch_model.bin'):
  sd = model.state_dict()
  path = os.path.join(tmp, name)
  if name.endswith('.safetensors'):
    common.write_tensors(path, {k: v.numpy() for k, v in sd.items()})
  else:
    torch.save(sd, path)
  return path, {k: v.numpy() for k, v in sd.items()}


@functools.cache
def _converted(legacy: bool):
  """(reference, tensors, checkpoint, workdir, report), once per family."""
  if legacy:
    model = _reference(True)
    name = 'pytorch_model.bin'
  else:  # BL-style: the decoder wider (and with more heads) than the encoder.
    model = _reference(False, enc=(64, 1, 2), dec=(96, 2, 3))
    name = 'model.safetensors'
  tmp = _tmp()
  ckpt, tensors = _save(model, tmp, name)
  overrides = OVERRIDES
  if not legacy:  # Heads are not in the tensors (the release: width / 64).
    overrides += ('model.num_heads=2', 'model.decoder_num_heads=3')
  else:
    overrides += ('model.num_heads=2', 'model.decoder_num_heads=2')
  workdir = os.path.join(tmp, 'workdir')
  report = convert_lib.convert('titok', ckpt, workdir, overrides=overrides)
  return model, tensors, ckpt, workdir, report


@functools.cache
def _tokenizer(legacy: bool):
  return Tokenizer.from_workdir(_converted(legacy)[3])


def _images(seed=0, n=3):
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, IMAGE, IMAGE, 3)).astype(np.float32)


@pytest.mark.parametrize('legacy', [True, False])
def test_every_tensor_is_used(legacy):
  _, tensors, _, workdir, report = _converted(legacy)
  pixel = sorted(k for k in tensors if k.startswith(('pixel_quantize.',
                                                     'pixel_decoder.')))
  assert bool(pixel) == legacy
  assert report['dropped_on_purpose'] == []
  assert report['tensors_converted'] == len(tensors)
  arch = report['architecture']
  assert arch['legacy'] == legacy and arch['pixel_decoder'] == legacy
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  model_cfg = config['model']
  assert model_cfg['proxy_codes'] == (V if legacy else 0)
  if legacy:  # The MaskGIT-VQGAN decoder's shape, read off the tensors.
    assert (arch['pixel_ch'], tuple(arch['pixel_ch_mult']),
            arch['pixel_res_blocks'], arch['pixel_z']) == (
                PIX_CH, PIX_MULT, PIX_BLOCKS, Z)
    assert model_cfg['finetune_decoder']
    assert 'encoder' in config['optim']['frozen']
    # A shortcut and an up-sampling conv were mapped (not only plain blocks).
    assert 'pixel_decoder.up.1.block.0.nin_shortcut.weight' in tensors
    assert 'pixel_decoder.up.2.upsample_conv.bias' in tensors
  else:
    assert arch['dec_width'] == 96
    assert model_cfg.get('pixel_decoder') is None


@pytest.mark.parametrize('legacy', [True, False])
def test_ids_and_outputs_match_reference(legacy):
  ref = _converted(legacy)[0]
  tok = _tokenizer(legacy)
  x = _images()
  ids_ref, out_ref, z_ref, pix_ref = ref.run(x)
  z = np.asarray(tok.model.encode_latents(jnp.asarray(x)))
  ids = np.asarray(tok.encode(x))
  both = jax.jit(lambda m, i: (m.decode_logits(i) if legacy else m.decode(i),
                               m.decode(i)))
  out, pix = map(np.asarray, both(tok.model, ids))
  print(f'legacy={legacy}: latent max abs err {np.abs(z - z_ref).max():.2e}, '
        f'ids equal {np.mean(ids == ids_ref):.4f}, output max abs err '
        f'{np.abs(out - out_ref).max():.2e}, pixels max abs err '
        f'{np.abs(pix - pix_ref).max():.2e} (pixel range '
        f'{pix_ref.min():.2f}..{pix_ref.max():.2f})')
  np.testing.assert_allclose(z, z_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(ids, ids_ref)
  assert len(np.unique(ids)) > 4  # Not a degenerate single-code check.
  np.testing.assert_allclose(out, out_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(pix, pix_ref, atol=1e-4, rtol=1e-4)
  assert pix_ref.std() > 0.05  # Images, not a constant.
  if legacy:  # The softmax is neither one-hot nor uniform.
    probs = jax.nn.softmax(out, -1)
    assert 0.05 < float(probs.max(-1).mean()) < 0.9
  # Decoding a prefix of the ids (the release's latent positions [:L]).
  short = np.asarray(ids[:, :3])
  out_short, pix_short = both(tok.model, short)
  np.testing.assert_allclose(out_short, ref.decode_ids(short), atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(pix_short, ref.decode_ids(short, pixels=True),
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(tok.decode(ids), np.clip(pix_ref, -1, 1),
                             atol=1e-4)


def test_missing_and_unknown_tensors_are_named():
  _, tensors, _, _, _ = _converted(False)
  tmp = _tmp()
  bad = dict(tensors)
  del bad['decoder.transformer.1.mlp.c_fc.bias']
  bad['encoder.extra_token'] = np.zeros((3,), np.float32)
  path = os.path.join(tmp, 'bad.safetensors')
  common.write_tensors(path, bad)
  with pytest.raises(common.ConversionError) as err:
    titok_convert.convert(path, os.path.join(tmp, 'w'))
  assert 'decoder.transformer.1.mlp.c_fc.bias' in str(err.value)
  assert 'encoder.extra_token' in str(err.value)
  # The same for the legacy release's pixel decoder.
  legacy = dict(_converted(True)[1])
  del legacy['pixel_decoder.up.0.block.1.conv2.weight']
  legacy['pixel_decoder.up.1.block.0.extra'] = np.zeros((3,), np.float32)
  common.write_tensors(path, legacy)
  with pytest.raises(common.ConversionError) as err:
    titok_convert.convert(path, os.path.join(tmp, 'w'))
  assert 'pixel_decoder.up.0.block.1.conv2.weight' in str(err.value)
  assert 'pixel_decoder.up.1.block.0.extra' in str(err.value)
  legacy = dict(_converted(True)[1])
  legacy['pixel_quantize.embedding.weight'] = np.zeros((V + 1, Z), np.float32)
  common.write_tensors(path, legacy)
  with pytest.raises(common.ConversionError, match='pixel_quantize has'):
    titok_convert.convert(path, os.path.join(tmp, 'w'))
  wrong = dict(tensors)
  wrong['decoder.mask_token'] = np.zeros((1, 1, 5), np.float32)
  common.write_tensors(path, wrong)
  with pytest.raises(common.ConversionError, match='decoder.mask_token'):
    titok_convert.convert(path, os.path.join(tmp, 'w'))
  vae = {k: v for k, v in tensors.items() if not k.startswith('quantize.')}
  common.write_tensors(path, vae)
  with pytest.raises(common.ConversionError, match='VAE'):
    titok_convert.convert(path, os.path.join(tmp, 'w'))


def test_reference_config(monkeypatch):
  """The release's config: sizes give heads and are checked against the
  shapes; use_l2_norm and commitment_cost are read."""
  _, tensors, _, _, _ = _converted(False)
  sd = common.StateDict(tensors, 'test')
  arch = titok_convert.infer_arch(sd)
  assert (arch.enc_width, arch.enc_depth, arch.dec_width, arch.dec_depth,
          arch.num_tokens, arch.token_size, arch.codebook_size,
          arch.image_size, arch.patch_size) == (64, 1, 96, 2, K, E, CODES,
                                                IMAGE, PATCH)
  cfg = {'model': {'vq_model': dict(
      codebook_size=CODES, token_size=E, use_l2_norm=True,
      commitment_cost=0.1, vit_enc_model_size='tiny_enc',
      vit_dec_model_size='tiny_dec', vit_enc_patch_size=PATCH,
      vit_dec_patch_size=PATCH, num_latent_tokens=K, finetune_decoder=False,
      is_legacy=False)}, 'dataset': {'preprocessing': {'crop_size': IMAGE}}}
  with pytest.raises(common.ConversionError, match='tiny_enc'):
    titok_convert.arch_from_config(cfg, arch)
  monkeypatch.setitem(titok_convert.SIZES, 'tiny_enc', (64, 1, 2))
  monkeypatch.setitem(titok_convert.SIZES, 'tiny_dec', (96, 2, 3))
  got = titok_convert.arch_from_config(cfg, arch)
  assert (got.enc_heads, got.dec_heads, got.use_l2_norm,
          got.commitment_cost) == (2, 3, True, 0.1)
  # The real TiTok-L-32 config against these shapes: every mismatch named.
  cfg['model']['vq_model'].update(vit_enc_model_size='large',
                                  vit_dec_model_size='large',
                                  num_latent_tokens=32)
  with pytest.raises(common.ConversionError) as err:
    titok_convert.arch_from_config(cfg, arch)
  for text in ('width', 'layers', 'num_latent_tokens=32'):
    assert text in str(err.value)
  cfg['model']['vq_model']['quantize_mode'] = 'vae'
  with pytest.raises(common.ConversionError, match='vae'):
    titok_convert.arch_from_config(cfg, arch)


@pytest.mark.parametrize('legacy', [True, False])
def test_model_call(legacy):
  """The image-task forward of the converted models: pixels equal to the
  reference's forward."""
  x = _images(seed=1, n=2)
  ref = _converted(legacy)[0]
  out = jax.jit(lambda m, v: m(v, train=False).reconstruction)(
      _tokenizer(legacy).model, jnp.asarray(x))
  want = ref.run(x)[3]
  print(f'legacy={legacy}: forward pixels max abs err '
        f'{np.abs(np.asarray(out) - want).max():.2e}')
  np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_legacy_without_pixel_decoder_gives_logits_only():
  """A legacy (stage-1) state dict without pixel_quantize / pixel_decoder:
  proxy_codes only; decode raises, naming the missing decoder."""
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  tensors = {k: v for k, v in _converted(True)[1].items()
             if not k.startswith(('pixel_quantize.', 'pixel_decoder.'))}
  arch = titok_convert.infer_arch(common.StateDict(tensors, 'test'))
  assert arch.legacy and not arch.pixel_decoder
  config = titok_convert.build_config(arch, None, None)
  common.apply_overrides(config, OVERRIDES + ('model.num_heads=2',
                                              'model.decoder_num_heads=2'))
  assert config.model.get('pixel_decoder') is None
  assert not config.model.get('finetune_decoder')
  model = registry.build_model(config)
  ids = jnp.zeros((1, K), jnp.int32)
  assert model.decode_logits(ids).shape == (1, (IMAGE // PATCH) ** 2, V)
  with pytest.raises(ValueError, match='MaskGIT-VQGAN'):
    model.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize('legacy', [True, False])
def test_evaluate_reads_the_workdir(legacy):
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  results = train_lib.evaluate_workdir(_converted(legacy)[3], num_batches=1)
  assert np.isfinite(results['eval/psnr']) and results['step'] == 0


def test_init_from_starts_a_run_from_the_converted_weights():
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  workdir = _converted(False)[3]
  config = train_lib.load_config(workdir)
  config.init_from = workdir
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, state, _ = tasks.get_task(config).create(config, mesh)
  saved, _ = common.read_workdir_state(workdir)
  key = lambda path: tuple(str(p) for p in path)
  got = {key(p): v for p, v in
         common.flatten(jax.device_get(state['gen']['params'])).items()}
  want = {key(p): v for p, v in common.flatten(saved['gen']['params']).items()}
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
