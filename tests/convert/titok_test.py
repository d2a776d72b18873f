"""`--from=titok` against an independent PyTorch TiTok.

The reference package (bytedance/1d-tokenizer) is not installable here, so
`RefTiTok` below is written from the reference's description
(`modeling/titok.py`, `modeling/modules/blocks.py: TiTokEncoder,
TiTokDecoder, ResidualAttentionBlock`, `modeling/quantizer/quantizer.py:
VectorQuantizer`) with the release's exact parameter names: tiny, randomly
initialised, its `state_dict()` saved as the checkpoint. Images are in
[0, 1] there, NCHW; ours in [-1, 1], NHWC.

Two families: the legacy two-stage release (proxy-code logits, a pixel
decoder we do not host) and the single-stage pixel release (BL-style: the
decoder wider than the encoder).

Dimension legend: B batch, K latent tokens, D / Dd encoder / decoder width,
E token_size, N patches, V proxy codes.
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


class RefTiTok(nn.Module):
  """TiTok's modules and state-dict names (no pixel decoder forward)."""

  def __init__(self, legacy, enc=(64, 2, 2), dec=(64, 1, 2)):
    super().__init__()
    self.encoder = Encoder(*enc, legacy)
    self.decoder = Decoder(*dec, legacy)
    self.latent_tokens = _param(K, enc[0])
    self.quantize = Quantizer(use_l2_norm=legacy)
    if legacy:  # finetune_decoder: stand-ins for the MaskGIT-VQGAN decoder.
      self.pixel_quantize = nn.Module()
      self.pixel_quantize.embedding = nn.Embedding(V, 8)
      self.pixel_decoder = nn.Module()
      self.pixel_decoder.conv_in = nn.Conv2d(8, 4, 3)

  @torch.no_grad()
  def run(self, x):
    """x NHWC numpy in [-1, 1] -> (ids [B, K], output, z [B, K, E]); output
    is the logits [B, N, V] (legacy) or pixels NHWC in [-1, 1]."""
    x01 = (torch.from_numpy(x).permute(0, 3, 1, 2) + 1) / 2
    z = self.encoder(x01, self.latent_tokens)
    zq, ids = self.quantize(z)
    out = self.decoder(zq)
    if self.decoder.legacy:
      out = out.flatten(2).permute(0, 2, 1)
    else:
      out = out.permute(0, 2, 3, 1) * 2 - 1
    return (ids[:, 0].numpy(), out.numpy(),
            z[:, :, 0].permute(0, 2, 1).numpy())

  @torch.no_grad()
  def decode_ids(self, ids):
    """The release's decode_tokens (without the pixel decoder)."""
    zq = self.quantize.codebook()[torch.from_numpy(np.asarray(ids))]
    out = self.decoder(zq.permute(0, 2, 1)[:, :, None])
    if self.decoder.legacy:
      return out.flatten(2).permute(0, 2, 1).numpy()
    return (out.permute(0, 2, 3, 1) * 2 - 1).numpy()


def _reference(legacy, **kw) -> RefTiTok:
  torch.manual_seed(1 if legacy else 2)
  model = RefTiTok(legacy, **kw).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.LayerNorm):  # Non-trivial affines.
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
    model.quantize.embedding.weight.normal_(0.0, 1.0)
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
  assert report['dropped_on_purpose'] == pixel
  assert report['tensors_converted'] + len(pixel) == len(tensors)
  assert report['architecture']['legacy'] == legacy
  if legacy:  # The pixel decoder's tensors are kept, unchanged.
    saved = common.read_tensors(report['pixel_decoder_file'])
    assert sorted(saved) == pixel
    for k in pixel:
      np.testing.assert_array_equal(saved[k], tensors[k])
  else:
    assert report['architecture']['dec_width'] == 96
  with open(os.path.join(workdir, 'config.json')) as f:
    model_cfg = json.load(f)['model']
  assert model_cfg['proxy_codes'] == (V if legacy else 0)


@pytest.mark.parametrize('legacy', [True, False])
def test_ids_and_outputs_match_reference(legacy):
  ref = _converted(legacy)[0]
  tok = _tokenizer(legacy)
  x = _images()
  ids_ref, out_ref, z_ref = ref.run(x)
  z = np.asarray(tok.model.encode_latents(jnp.asarray(x)))
  ids = np.asarray(tok.encode(x))
  out = np.asarray(jax.jit(lambda m, i: m.decode_logits(i)
                           if legacy else m.decode(i))(tok.model, ids))
  print(f'legacy={legacy}: latent max abs err {np.abs(z - z_ref).max():.2e}, '
        f'ids equal {np.mean(ids == ids_ref):.4f}, output max abs err '
        f'{np.abs(out - out_ref).max():.2e}')
  np.testing.assert_allclose(z, z_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(ids, ids_ref)
  assert len(np.unique(ids)) > 4  # Not a degenerate single-code check.
  np.testing.assert_allclose(out, out_ref, atol=1e-4, rtol=1e-4)
  # Decoding a prefix of the ids (the release's latent positions [:L]).
  short = np.asarray(ids[:, :3])
  out_short = jax.jit(lambda m, i: m.decode_logits(i) if legacy
                      else m.decode(i))(tok.model, short)
  np.testing.assert_allclose(out_short, ref.decode_ids(short), atol=1e-4,
                             rtol=1e-4)
  if legacy:
    with pytest.raises(ValueError, match='MaskGIT-VQGAN'):
      tok.decode(ids)
  else:
    np.testing.assert_allclose(tok.decode(ids), np.clip(out_ref, -1, 1),
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


def test_model_call():
  """The image-task forward of the converted models: pixels equal to the
  reference (single-stage); a clear error where the pixel decoder is
  missing (legacy)."""
  x = _images(seed=1, n=2)
  ref = _converted(False)[0]
  out = _tokenizer(False).model(jnp.asarray(x), train=False)
  np.testing.assert_allclose(out.reconstruction, ref.run(x)[1], atol=1e-4,
                             rtol=1e-4)
  with pytest.raises(ValueError, match='decode_logits'):
    _tokenizer(True).model(jnp.asarray(x), train=False)


@pytest.mark.slow
def test_evaluate_reads_the_workdir():
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  results = train_lib.evaluate_workdir(_converted(False)[3], num_batches=1)
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
