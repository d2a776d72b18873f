"""`--from=flextok` against an independent PyTorch FlexTok.

The reference package (apple/ml-flextok) is not installable here (FlexAttention,
hydra, mup), so `RefFlexTok` below is a tiny module written from the
release's description with the release's parameter names and shapes
(`FlexTokFromHub.state_dict()`: `encoder.module_dict.*`,
`decoder.module_dict.*`, `vae.*`): FlexBlocks (parameter-free LayerNorms,
bias-free wq/wk/wv/proj, per-head q/k LayerNorm, logits x 8 / head_dim,
SwiGLU fc1/fc3/fc2), the register-causal `causal_last` encoder mask, FSQ,
the decoder with register posembs added before the nested-dropout mask
token, a learned null condition, adaLN-zero with one modulation set for the
patches and one for the registers, the DiT time embedder (max period 256)
and the adaLN linear head; Euler sampling with classifier-free guidance.
It is randomly initialised (adaLN included, so every path matters) and its
state dict is what the converter reads.

Dimension legend: B batch, h/w latent size, C latent channels, p patch, g
patches per side, N = g² patches, R registers, D / D' encoder / decoder
width, E code width, F time-frequency width.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import flextok as flextok_convert
from tokenizers_jax.models.tokenizer import Tokenizer

safetensors_torch = pytest.importorskip('safetensors.torch')

C, P, G, SIZE = 4, 2, 6, 8          # posemb grid 6 x 6, converted at 4 x 4
D, DD, HD, DEPTH = 32, 48, 8, 2      # encoder / decoder width, head_dim
R, LEVELS, FREQ = 4, (8, 8, 8, 5, 5, 5), 32
E = len(LEVELS)
MAX_T = 1.0
CONFIG = {
    'vae': {'_target_': 'flextok.vae_wrapper.StableDiffusionVAE'},
    'encoder': {
        '_target_': 'flextok.model.utils.wrappers.SequentialModuleDictWrapper',
        'module_dict': {
            'enc_patch_emb': {'patch_sizes': [P, P], 'channels_in': C,
                              'dim': D},
            'enc_posemb_module': {'dim': D, 'max_sizes': [G, G],
                                  'posemb_type': 'sincos'},
            'enc_register_module': {'dim': D, 'n_min': R, 'n_max': R,
                                    'ordering_mode': 'nested'},
            'enc_seq_packer': {'mask_mode': 'causal_last',
                               'pad_to_multiple': 128},
            'enc_transformer': {'dim': D, 'depth': DEPTH, 'head_dim': HD},
            'enc_to_latents': {'dim': D, 'dim_out': E}}},
    'decoder': {
        '_target_': 'flextok.model.utils.wrappers.SequentialModuleDictWrapper',
        'module_dict': {
            'dec_nested_dropout': {'dim': DD, 'size_sampling_mode': 'pow2'},
            'dec_latent_dropout': {'dim': DD, 'dropout_prob': 0.2},
            'dec_time_embedder': {'dim': DD, 'frequency_embedding_size': FREQ,
                                  'max_timestep': MAX_T},
            'dec_seq_packer': {'mask_mode': 'full', 'per_subseq_embs': True},
            'dec_transformer': {'dim': DD, 'depth': DEPTH, 'head_dim': HD,
                                'adaLN_expansion': 2}}},
    'regularizer': {'_target_': 'flextok.regularizers.quantize_fsq.FSQ',
                    'levels': list(LEVELS)},
    'flow_matching_noise_module': {'ln': True},
    'pipeline': {},
}


# -----------------------------------------------------------------------------
# The reference, from the release's description.
# -----------------------------------------------------------------------------


def plain_ln(x):
  return F.layer_norm(x, x.shape[-1:], eps=1e-5)


def moco_sincos(h, w, dim):
  """[1, dim, h, w]: sin/cos of the w index, then of the h index (MoCo v3),
  laid out as the release's build_2d_sincos_posemb does."""
  gw, gh = torch.meshgrid(torch.arange(w, dtype=torch.float32),
                          torch.arange(h, dtype=torch.float32), indexing='ij')
  omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32)
                            / (dim // 4))
  ow = gw.reshape(-1)[:, None] * omega[None]
  oh = gh.reshape(-1)[:, None] * omega[None]
  emb = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], dim=1)
  return emb.reshape(h, w, dim).permute(2, 0, 1)[None].contiguous()


class Attn(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.heads = dim // HD
    self.wq, self.wk, self.wv, self.proj = (
        nn.Linear(dim, dim, bias=False) for _ in range(4))

  def forward(self, x, mask=None):
    b, n, d = x.shape
    q, k, v = (f(x).reshape(b, n, self.heads, HD).transpose(1, 2)
               for f in (self.wq, self.wk, self.wv))
    q, k = plain_ln(q), plain_ln(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                         scale=8.0 / HD)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class GatedMlp(nn.Module):

  def __init__(self, dim):
    super().__init__()
    hidden = int(2 * int(dim * 4.0) / 3)
    self.fc1 = nn.Linear(dim, hidden, bias=False)
    self.fc2 = nn.Linear(hidden, dim, bias=False)
    self.fc3 = nn.Linear(dim, hidden, bias=False)

  def forward(self, x):
    return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):

  def __init__(self, dim, expansion=0):
    super().__init__()
    self.attn, self.mlp = Attn(dim), GatedMlp(dim)
    if expansion:
      self.adaLN_modulation = nn.Sequential(
          nn.SiLU(), nn.Linear(dim, expansion * 6 * dim))

  def forward(self, x, mask=None, emb=None, lengths=None):
    if emb is None:
      x = x + self.attn(plain_ln(x), mask)
      return x + self.mlp(plain_ln(x))
    m = self.adaLN_modulation(emb)                     # [B, exp * 6D]
    m = m.reshape(m.shape[0], len(lengths), -1)        # one set per subseq
    m = torch.cat([m[:, i:i + 1].expand(-1, n, -1)
                   for i, n in enumerate(lengths)], dim=1)
    g_msa, g_mlp, sh_msa, sc_msa, sh_mlp, sc_mlp = m.chunk(6, dim=-1)
    x = x + g_msa * self.attn(plain_ln(x) * (1 + sc_msa) + sh_msa, mask)
    return x + g_mlp * self.mlp(plain_ln(x) * (1 + sc_mlp) + sh_mlp)


class Trunk(nn.Module):

  def __init__(self, dim, expansion=0):
    super().__init__()
    self.blocks = nn.ModuleList(Block(dim, expansion) for _ in range(DEPTH))


def holder(**children):
  m = nn.Module()
  for name, child in children.items():
    setattr(m, name, child)
  return m


def patchify(x):
  """[B, h, w, c] -> [B, N, p p c] ('(n0 p0) (n1 p1) d -> n0 n1 (p0 p1 d)')."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // P, P, w // P, P, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // P) * (w // P), P * P * c)


def unpatchify(t, h, w):
  b = t.shape[0]
  t = t.reshape(b, h // P, w // P, P, P, -1).permute(0, 1, 3, 2, 4, 5)
  return t.reshape(b, h, w, -1)


def cropped_posemb(posembs, g):
  return posembs[:, :, :g, :g].permute(0, 2, 3, 1).reshape(1, g * g, -1)


class RefFlexTok(nn.Module):
  """FlexTokFromHub's parameter layout, tiny; forward per the release."""

  def __init__(self):
    super().__init__()
    pdim = C * P * P
    self.vae = holder(decoder=holder(conv_in=nn.Conv2d(C, 8, 3)))
    self.encoder = holder(module_dict=nn.ModuleDict({
        'enc_patch_emb': holder(patch_proj=nn.Linear(pdim, D)),
        'enc_posemb_module': holder(posembs=nn.Parameter(
            moco_sincos(G, G, D), requires_grad=False)),
        'enc_register_module': holder(registers=nn.Parameter(
            torch.randn(R, D))),
        'enc_transformer': Trunk(D),
        'enc_to_latents': holder(proj=nn.Linear(D, E)),
    }))
    self.decoder = holder(module_dict=nn.ModuleDict({
        'dec_from_latents': holder(proj=nn.Linear(E, DD)),
        'dec_registers_posemb_module': holder(posembs=nn.Parameter(
            torch.randn(1, 1, DD, R))),
        'dec_nested_dropout': holder(dropout_mask_token=nn.Parameter(
            torch.randn(DD))),
        'dec_latent_dropout': holder(nullcond=nn.Parameter(torch.randn(DD))),
        'dec_noise_patch_emb': holder(patch_proj=nn.Linear(pdim, DD)),
        'dec_patches_posemb_module': holder(posembs=nn.Parameter(
            moco_sincos(G, G, DD), requires_grad=False)),
        'dec_time_embedder': holder(mlp=nn.Sequential(
            nn.Linear(FREQ, DD), nn.SiLU(), nn.Linear(DD, DD))),
        'dec_transformer': Trunk(DD, expansion=2),
        'dec_to_patches': holder(
            adaLN_modulation=nn.Sequential(nn.SiLU(), nn.Linear(DD, 2 * DD)),
            proj=nn.Linear(DD, pdim)),
    }))
    lv = torch.tensor(LEVELS)
    self.levels = lv
    self.basis = torch.cumprod(torch.tensor([1] + list(LEVELS[:-1])), 0)

  # FSQ (regularizers/quantize_fsq.py), eps 1e-3.
  def fsq(self, z):
    half_l = (self.levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half_l)
    bounded = torch.tanh(z + shift) * half_l - offset
    quant = bounded.round() / (self.levels // 2)
    ids = ((quant * (self.levels // 2) + self.levels // 2) * self.basis
           ).sum(-1).to(torch.int32)
    return quant, ids

  def ids_to_quant(self, ids):
    digits = (ids[..., None] // self.basis) % self.levels
    return (digits - self.levels // 2) / (self.levels // 2)

  def tokenize(self, x):
    """latents [B, h, w, C] -> ids [B, R]."""
    md = self.encoder.module_dict
    g = x.shape[1] // P
    n = g * g
    t = md['enc_patch_emb'].patch_proj(patchify(x))
    t = t + cropped_posemb(md['enc_posemb_module'].posembs, g)
    reg = md['enc_register_module'].registers[None].expand(x.shape[0], -1, -1)
    seq = torch.cat([t, reg], 1)
    q = torch.arange(n + R)[:, None]
    kv = torch.arange(n + R)[None]
    mask = (kv <= q) | (kv < n)                       # 'causal_last'
    for block in md['enc_transformer'].blocks:
      seq = block(seq, mask)
    z = md['enc_to_latents'].proj(plain_ln(seq[:, n:]))
    return self.fsq(z)[1]

  def registers(self, ids, keep_k, uncond=False):
    md = self.decoder.module_dict
    r = md['dec_from_latents'].proj(self.ids_to_quant(ids).float())
    r = r + md['dec_registers_posemb_module'].posembs[0, :, :, :R].permute(
        0, 2, 1)
    r = r.clone()
    r[:, keep_k:] = md['dec_nested_dropout'].dropout_mask_token
    if uncond:
      r[:] = md['dec_latent_dropout'].nullcond
    return r

  def velocity(self, x_t, t, regs):
    md = self.decoder.module_dict
    b, h, w, _ = x_t.shape
    g = h // P
    n = g * g
    pt = md['dec_noise_patch_emb'].patch_proj(patchify(x_t))
    pt = pt + cropped_posemb(md['dec_patches_posemb_module'].posembs, g)
    half = FREQ // 2
    freqs = (1000.0 / MAX_T) * torch.exp(
        -math.log(256) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = md['dec_time_embedder'].mlp(
        torch.cat([torch.cos(args), torch.sin(args)], -1))
    seq = torch.cat([pt, regs], 1)
    for block in md['dec_transformer'].blocks:
      seq = block(seq, None, temb, (n, R))
    head = md['dec_to_patches']
    shift, scale = head.adaLN_modulation(temb).chunk(2, dim=-1)
    out = head.proj(plain_ln(seq[:, :n]) * (1 + scale[:, None])
                    + shift[:, None])
    return unpatchify(out, h, w)

  def detokenize(self, ids, noise, steps, guidance, apg=False):
    keep = ids.shape[1]
    ids = torch.cat([ids, torch.zeros(ids.shape[0], R - keep,
                                      dtype=ids.dtype)], 1)
    cond, uncond = self.registers(ids, keep), self.registers(ids, keep, True)
    x, dt, running = noise, 1.0 / steps, 0.0
    for i in range(steps, 0, -1):
      t = torch.full((x.shape[0],), i / steps)
      v = self.velocity(x, t, cond)
      if guidance != 1.0:
        vu = self.velocity(x, t, uncond)
        if apg:
          v, running = apg_guidance(v, vu, guidance, running)
        else:
          v = vu + guidance * (v - vu)
      x = x - dt * v
    return x


def apg_guidance(cond, uncond, scale, running, momentum=-0.5, threshold=2.5):
  """The pipeline's normalized guidance (eta 0), per sample over h, w, c."""
  dims = (1, 2, 3)
  diff = cond - uncond + momentum * running
  running = diff
  norm = diff.norm(p=2, dim=dims, keepdim=True)
  diff = diff * torch.minimum(torch.ones_like(norm), threshold / norm)
  unit = F.normalize(cond.double(), dim=dims)
  parallel = ((diff.double() * unit).sum(dim=dims, keepdim=True) * unit)
  orthogonal = (diff.double() - parallel).float()
  return cond + (scale - 1) * orthogonal, running


def _release() -> RefFlexTok:
  torch.manual_seed(0)
  model = RefFlexTok().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'posembs' in name and not p.requires_grad:
        continue  # The fixed sin-cos embeddings.
      if p.ndim == 2 and 'registers' not in name:
        p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
      else:
        p.normal_(0.0, 0.5)
  return model


def _t(x):
  return torch.from_numpy(np.array(x, np.float32))


# -----------------------------------------------------------------------------
# Fixtures: one release, one conversion.
# -----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp('flextok_release')
  model = _release()
  ckpt = os.path.join(root, 'model.safetensors')
  safetensors_torch.save_file(
      {k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
  cfg = os.path.join(root, 'config.json')
  with open(cfg, 'w') as f:
    json.dump(CONFIG, f)
  return model, ckpt, cfg, root


@pytest.fixture(scope='module')
def converted(release):
  _, ckpt, cfg, root = release
  workdir = os.path.join(root, 'workdir')
  report = convert_lib.convert('flextok', ckpt, workdir, reference_config=cfg,
                               image_size=SIZE)
  tokenizer = Tokenizer.from_workdir(workdir)
  return report, tokenizer.model, tokenizer


@pytest.fixture(scope='module')
def latents():
  return np.asarray(jax.random.normal(jax.random.PRNGKey(3), (3, SIZE, SIZE,
                                                              C)))


# -----------------------------------------------------------------------------
# Parity.
# -----------------------------------------------------------------------------


def test_token_ids_equal_the_reference(release, converted, latents):
  ref, model = release[0], converted[1]
  with torch.no_grad():
    want = ref.tokenize(_t(latents)).numpy()
  got = np.asarray(jax.jit(lambda x: model.encode(x))(latents))
  assert got.shape == (3, R)
  np.testing.assert_array_equal(got, want)
  assert len(np.unique(want)) > 3  # Not a degenerate comparison.


def test_one_velocity_evaluation_matches(release, converted, latents):
  """Same noised latents, times and registers (k = R, k = 2, and the null
  condition of the guidance branch) -> the same velocity within 1e-4."""
  ref, model = release[0], converted[1]
  with torch.no_grad():
    ids = ref.tokenize(_t(latents))
  x_t = np.asarray(jax.random.normal(jax.random.PRNGKey(4), latents.shape))
  t = np.asarray([0.9, 0.5, 0.13], np.float32)

  @jax.jit
  def velocities(x, tt, idx):
    zq = model.quantizer.decode(idx)
    outs = []
    for k in (R, 2, 0):
      cond = model.condition(zq, jnp.full((idx.shape[0],), k, jnp.int32))
      outs.append(model.velocity(x, tt, cond))
    return outs

  got = velocities(x_t, t, jnp.asarray(ids.numpy()))
  for out, (k, uncond) in zip(got, ((R, False), (2, False), (2, True))):
    with torch.no_grad():
      want = ref.velocity(_t(x_t), _t(t), ref.registers(ids, k, uncond))
    np.testing.assert_allclose(np.asarray(out), want.numpy(), atol=1e-4,
                               rtol=0)
    assert float(np.abs(want.numpy()).mean()) > 0.1


@pytest.mark.parametrize('guidance', ['cfg', 'apg'])
def test_decode_with_guidance_matches(release, converted, latents, guidance):
  """decode(first 2 ids) = Euler (3 steps) from the same noise, guided
  (scale 3) through the learned null condition: classifier-free guidance, or
  the release's APG (perform_norm_guidance)."""
  ref, model = release[0], converted[1]
  assert model.guidance == 'apg'  # The converted default.
  ids = np.asarray(model.encode(jnp.asarray(latents)))[:, :2]
  key = jax.random.PRNGKey(5)
  model.guidance = guidance
  try:
    got = np.asarray(jax.jit(lambda i: model.decode(
        i, key=key, num_steps=3, guidance_scale=3.0))(ids))
  finally:
    model.guidance = 'apg'
  noise = np.asarray(jax.random.normal(key, latents.shape, jnp.float32))
  with torch.no_grad():
    want = ref.detokenize(torch.from_numpy(ids.astype(np.int64)), _t(noise),
                          3, 3.0, apg=guidance == 'apg').numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_tokenizer_decode_is_the_release_default_decode(release, converted,
                                                        latents):
  """Tokenizer.from_workdir(...).decode: the release's default detokenize
  (25 Euler steps, no guidance) from the model's fixed-seed noise, clipped
  to [-1, 1] as Tokenizer.decode does (image semantics)."""
  ref, model, tokenizer = release[0], converted[1], converted[2]
  with torch.no_grad():
    ids = ref.tokenize(_t(latents))
  got = np.asarray(tokenizer.decode(ids.numpy().astype(np.int32)))
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(model.sample_seed),
                                       latents.shape, jnp.float32))
  with torch.no_grad():
    want = ref.detokenize(ids.long(), _t(noise), 25, 1.0).numpy()
  np.testing.assert_allclose(got, np.clip(want, -1, 1), atol=1e-4, rtol=0)


def test_report_and_config(converted):
  report, model = converted[:2]
  assert report['tensors_converted'] + 2 == report['tensors_in_checkpoint']
  assert report['dropped_on_purpose'] == ['vae.* (2 tensors)']
  arch = report['architecture']
  assert (arch['width'], arch['decoder_width'], arch['num_heads'],
          arch['decoder_num_heads']) == (D, DD, D // HD, DD // HD)
  assert arch['adaln_groups'] == 2 and arch['null_cond'] == 'learned'
  assert tuple(arch['levels']) == LEVELS and arch['grid'] == G
  assert model.channels == C and model.nested_dropout_mode == 'pow2'
  assert model.cond_dropout == pytest.approx(0.2)
  assert any('VAE' in n for n in report['notes'])


# -----------------------------------------------------------------------------
# Errors.
# -----------------------------------------------------------------------------


def _convert_variant(release, tmp_path, edit):
  model, _, cfg, _ = release
  sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
  edit(sd)
  ckpt = os.path.join(tmp_path, 'variant.safetensors')
  safetensors_torch.save_file(sd, ckpt)
  return convert_lib.convert('flextok', ckpt, os.path.join(tmp_path, 'wd'),
                             reference_config=cfg, image_size=SIZE)


def test_a_missing_tensor_is_named(release, tmp_path):
  name = 'decoder.module_dict.dec_transformer.blocks.1.mlp.fc3.weight'
  with pytest.raises(common.ConversionError, match=r'missing: .*' + name):
    _convert_variant(release, tmp_path, lambda sd: sd.pop(name))


def test_an_unknown_tensor_is_named(release, tmp_path):
  name = 'encoder.module_dict.enc_transformer.blocks.0.norm1.weight'
  with pytest.raises(common.ConversionError,
                     match=r'not converted.*' + name.replace('.', r'\.')):
    _convert_variant(release, tmp_path,
                     lambda sd: sd.__setitem__(name, torch.ones(D)))


def test_learnable_patch_posembs_are_refused(release, tmp_path):
  name = 'encoder.module_dict.enc_posemb_module.posembs'
  with pytest.raises(common.ConversionError, match='sin-cos'):
    _convert_variant(release, tmp_path,
                     lambda sd: sd[name].normal_())


def test_shapes_alone_need_the_config_for_head_dim(release):
  """Without config.json the release defaults apply (head_dim 64), which
  these 32/48-wide trunks contradict: the error says to pass the config."""
  sd = common.StateDict(common.read_tensors(release[1]), 'x')
  with pytest.raises(common.ConversionError, match='config.json'):
    flextok_convert.infer_arch(sd)
  arch = flextok_convert.infer_arch(sd, dict(CONFIG))
  assert (arch.depth, arch.decoder_depth, arch.num_registers,
          arch.channels, arch.patch_size) == (DEPTH, DEPTH, R, C, P)
