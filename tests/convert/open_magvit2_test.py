"""`--from=open_magvit2` against an independent PyTorch Open-MAGVIT2 model.

Open-MAGVIT2 is not pip-installable here, so `OpenMagvit2VQModel` below is
written for this test from the release's description
(src/Open_MAGVIT2/models/lfqgan.py, modules/diffusionmodules/improved_model.py,
modules/vqvae/lookup_free_quantize.py, modules/discriminator/model.py), with
the release's module names, so its `state_dict()` has the release's tensor
names and shapes: bias-free ResBlock convs with GroupNorm(32, eps=1e-6),
`nin_shortcut`, `mid_block`, per-level `adaptive` AdaptiveGroupNorms applied
at the start of each decoder level (unbiased latent variance), a
depth-column-row `Upsampler`, an affine `norm_out`, the parameter-free LFQ
(index = sum_i [z_i > 0] 2^i), the PatchGAN `loss.discriminator.main.*`,
`loss.perceptual_loss.*` (LPIPS) and LitEma's `model_ema.*` buffers. Tiny:
16x16 images, ch 32 (the release's GroupNorm(32) needs widths divisible by
32), two levels (f=2), one ResBlock per level, 6 LFQ bits (64 codes).

Dimension legend: B batch, H/W image size, h/w token grid, Z latent channels
= LFQ bits.
"""

import atexit
import functools
import os
import shutil
import tempfile

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import open_magvit2 as om2
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.quantizers.lfq import LFQ as OurLFQ
from tokenizers_jax.training import train as train_lib

from . import LpipsLayout

CH, CH_MULT, BLOCKS, Z, SIZE = 32, (1, 2), 1, 6, 16
DISC_NDF, DISC_LAYERS = 8, 2
YAML = f"""
model:
  class_path: src.Open_MAGVIT2.models.lfqgan.VQModel
  init_args:
    ddconfig:
      double_z: False
      z_channels: {Z}
      resolution: 128
      in_channels: 3
      out_ch: 3
      ch: {CH}
      ch_mult: {list(CH_MULT)}
      num_res_blocks: {BLOCKS}
    lossconfig:
      target: src.Open_MAGVIT2.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: False
        disc_in_channels: 3
        disc_start: 0
        disc_weight: 0.8
        gen_loss_weight: 0.1
        lecam_loss_weight: 0.05
        codebook_weight: 0.1
        commit_weight: 0.25
        codebook_enlarge_ratio: 3
        codebook_enlarge_steps: 2000
        disc_num_layers: {DISC_LAYERS}
        disc_ndf: {DISC_NDF}
    n_embed: {2 ** Z}
    embed_dim: {Z}
    learning_rate: 1e-4
    sample_minimization_weight: 1.0
    batch_maximization_weight: 0.5
    scheduler_type: "None"
    use_ema: True
data:
  class_path: main.DataModuleFromConfig
  init_args:
    batch_size: 8
    train:
      target: src.Open_MAGVIT2.data.imagenet.ImageNetTrain
      params:
        config:
          size: {SIZE}
"""
OVERRIDES = ('data.source=fake:16', 'data.eval_batch_size=8',
             'data.global_batch_size=8', 'num_grid_images=2')


# -----------------------------------------------------------------------------
# The reference, written from the release's description.
# -----------------------------------------------------------------------------


def _gn(channels, affine=True):
  return nn.GroupNorm(32, channels, eps=1e-6, affine=affine)


class ResBlock(nn.Module):

  def __init__(self, cin, cout):
    super().__init__()
    self.norm1, self.norm2 = _gn(cin), _gn(cout)
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
    if cin != cout:
      self.nin_shortcut = nn.Conv2d(cin, cout, 1, bias=False)

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    skip = self.nin_shortcut(x) if hasattr(self, 'nin_shortcut') else x
    return h + skip


class Encoder(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv_in = nn.Conv2d(3, CH, 3, padding=1, bias=False)
    self.down = nn.ModuleList()
    width = CH
    for level, mult in enumerate(CH_MULT):
      stage = nn.Module()
      stage.block = nn.ModuleList()
      for _ in range(BLOCKS):
        stage.block.append(ResBlock(width, CH * mult))
        width = CH * mult
      if level < len(CH_MULT) - 1:
        stage.downsample = nn.Conv2d(width, width, 3, stride=2, padding=1)
      self.down.append(stage)
    self.mid_block = nn.ModuleList(ResBlock(width, width)
                                   for _ in range(BLOCKS))
    self.norm_out = _gn(width)
    self.conv_out = nn.Conv2d(width, Z, 1)

  def forward(self, x):
    h = self.conv_in(x)
    for stage in self.down:
      for block in stage.block:
        h = block(h)
      if hasattr(stage, 'downsample'):
        h = stage.downsample(h)
    for block in self.mid_block:
      h = block(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class AdaptiveGroupNorm(nn.Module):
  """GroupNorm (no affine) * gamma(std of z) + beta(mean of z)."""

  def __init__(self, z, channels):
    super().__init__()
    self.gn = _gn(channels, affine=False)
    self.gamma = nn.Linear(z, channels)
    self.beta = nn.Linear(z, channels)

  def forward(self, x, z):
    flat = z.flatten(2)                         # [B, Z, h*w]
    std = torch.sqrt(flat.var(dim=-1) + 1e-6)   # unbiased, as torch's default
    return (self.gn(x) * self.gamma(std)[..., None, None]
            + self.beta(flat.mean(dim=-1))[..., None, None])


def depth_to_space_dcr(x, r=2):
  """Channel (i * r + j) * D + c -> channel c at offset (i, j)."""
  b, c, h, w = x.shape
  x = x.reshape(b, r, r, c // (r * r), h, w).permute(0, 3, 4, 1, 5, 2)
  return x.reshape(b, c // (r * r), h * r, w * r)


class Upsampler(nn.Module):

  def __init__(self, dim):
    super().__init__()
    self.conv1 = nn.Conv2d(dim, 4 * dim, 3, padding=1)

  def forward(self, x):
    return depth_to_space_dcr(self.conv1(x))


class Decoder(nn.Module):

  def __init__(self):
    super().__init__()
    width = CH * CH_MULT[-1]
    self.conv_in = nn.Conv2d(Z, width, 3, padding=1)
    self.mid_block = nn.ModuleList(ResBlock(width, width)
                                   for _ in range(BLOCKS))
    up, adaptive = [None] * len(CH_MULT), [None] * len(CH_MULT)
    for level in reversed(range(len(CH_MULT))):
      adaptive[level] = AdaptiveGroupNorm(Z, width)
      stage = nn.Module()
      stage.block = nn.ModuleList()
      for _ in range(BLOCKS):
        stage.block.append(ResBlock(width, CH * CH_MULT[level]))
        width = CH * CH_MULT[level]
      if level > 0:
        stage.upsample = Upsampler(width)
      up[level] = stage
    self.up = nn.ModuleList(up)
    self.adaptive = nn.ModuleList(adaptive)
    self.norm_out = _gn(width)
    self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

  def forward(self, z):
    h = self.conv_in(z)
    for block in self.mid_block:
      h = block(h)
    for level in reversed(range(len(CH_MULT))):
      h = self.adaptive[level](h, z)
      for block in self.up[level].block:
        h = block(h)
      if level > 0:
        h = self.up[level].upsample(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class LFQ(nn.Module):
  """Sign quantization; index = sum_i [z_i > 0] 2^i (channel 0 lowest).
  No parameters, and no persistent buffers."""

  def forward(self, z):
    q = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
    weights = (2 ** torch.arange(z.shape[1])).view(1, -1, 1, 1)
    return q, ((z > 0).long() * weights).sum(1)

  def decode(self, ids):
    bits = (ids[:, None] >> torch.arange(Z).view(1, -1, 1, 1)) & 1
    return bits.float() * 2 - 1


def entropy_loss(z, temperature=0.01, smw=1.0, bmw=1.0, eps=1e-5):
  """The release's entropy terms over all 2^Z codes: z [N, Z]."""
  codes = LFQ().decode(torch.arange(2 ** Z).view(-1, 1, 1))[..., 0, 0]
  logits = 2 * z @ codes.T
  probs = F.softmax(logits / temperature, -1)
  log_probs = F.log_softmax(logits / temperature + eps, -1)
  avg = probs.mean(0)
  avg_entropy = -torch.sum(avg * torch.log(avg + eps))
  sample_entropy = torch.mean(-torch.sum(probs * log_probs, -1))
  return smw * sample_entropy - bmw * avg_entropy


class NLayerDiscriminator(nn.Module):
  """pix2pix PatchGAN with BatchNorm (the release's, = taming's)."""

  def __init__(self, ndf, n_layers):
    super().__init__()
    seq = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers + 1):
      prev, mult = mult, min(2 ** n, 8)
      seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1,
                        1, bias=False),
              nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
    seq += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    self.main = nn.Sequential(*seq)

  def forward(self, x):
    return self.main(x)


class OpenMagvit2VQModel(nn.Module):
  """lfqgan.VQModel's modules and names, without Lightning."""

  def __init__(self):
    super().__init__()
    self.encoder = Encoder()
    self.decoder = Decoder()
    self.quantize = LFQ()
    self.loss = nn.Module()
    self.loss.discriminator = NLayerDiscriminator(DISC_NDF, DISC_LAYERS)
    self.loss.perceptual_loss = LpipsLayout()

  def tokens_and_reconstruction(self, x):
    """NHWC numpy in [-1, 1] -> (ids [B, h, w], x_hat NHWC, z NHWC)."""
    with torch.no_grad():
      z = self.encoder(torch.from_numpy(x).permute(0, 3, 1, 2))
      q, ids = self.quantize(z)
      x_hat = self.decoder(q)
    return (ids.numpy(), x_hat.permute(0, 2, 3, 1).numpy(),
            z.permute(0, 2, 3, 1).numpy())


def _generator_params(model):
  return {n: p for n, p in model.named_parameters()
          if not n.startswith('loss.perceptual_loss.')}


def _reference(seed=0):
  torch.manual_seed(seed)
  model = OpenMagvit2VQModel().eval()
  with torch.no_grad():
    for m in model.modules():  # Non-trivial affines and running statistics.
      if isinstance(m, nn.GroupNorm) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
      if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.3)
        nn.init.normal_(m.bias, 0.0, 0.3)
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.num_batches_tracked.fill_(7)
  return model


@functools.cache
def _converted():
  """(raw model, EMA model, checkpoint tensors, workdir, report), converted
  once for all tests of this module."""
  model = _reference()
  ema_model = _reference()
  sd = dict(model.state_dict())
  # LitEma: a shadow buffer per trainable parameter (generator and
  # discriminator), named without dots, with other values than the weights.
  with torch.no_grad():
    for name, p in _generator_params(ema_model).items():
      p.add_(0.02 * torch.randn_like(p))
      sd[om2.ema_name(name)] = p.detach().clone()
  sd['model_ema.decay'] = torch.tensor(0.999)
  sd['model_ema.num_updates'] = torch.tensor(-1, dtype=torch.int32)
  tmp = tempfile.mkdtemp(prefix='open_magvit2_convert_')
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  ckpt = os.path.join(tmp, 'imagenet_256_L.ckpt')
  torch.save({'state_dict': sd, 'epoch': 3, 'global_step': 1234}, ckpt)
  yaml_path = os.path.join(tmp, 'imagenet_lfqgan_256_L.yaml')
  with open(yaml_path, 'w') as f:
    f.write(YAML)
  workdir = os.path.join(tmp, 'workdir')
  report = convert_lib.convert('open_magvit2', ckpt, workdir,
                               reference_config=yaml_path,
                               overrides=OVERRIDES)
  tensors = {k: v.detach().numpy() for k, v in sd.items()}
  return model, ema_model, tensors, workdir, report


@functools.cache
def _tokenizer(use_ema=True):
  return Tokenizer.from_workdir(_converted()[3], use_ema=use_ema)


def _images(seed=0, n=2):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


# -----------------------------------------------------------------------------
# Tests.
# -----------------------------------------------------------------------------


def test_every_tensor_is_used():
  _, _, tensors, _, report = _converted()
  dropped = report['dropped_on_purpose']
  want = sorted(k for k in tensors if k.endswith('num_batches_tracked')
                or k.startswith('model_ema.lossdiscriminator')
                or k == 'model_ema.num_updates')
  assert dropped == want
  assert report['tensors_converted'] + len(dropped) == len(tensors)
  assert report['tensors_in_checkpoint'] == len(tensors)
  assert report['architecture']['ch_mult'] == CH_MULT
  assert report['architecture']['disc'] == (DISC_NDF, DISC_LAYERS)
  assert report['lpips']['vgg'].endswith('lpips_vgg16.npz')


@pytest.mark.parametrize('use_ema', [True, False])
def test_tokens_and_reconstructions_match_the_reference(use_ema):
  raw, ema, _, _, _ = _converted()
  model = ema if use_ema else raw
  tok = _tokenizer(use_ema)
  x = _images()
  ids_ref, x_ref, z_ref = model.tokens_and_reconstruction(x)
  z = np.asarray(tok.model.encode_latents(jnp.asarray(x)))
  ids = np.asarray(tok.encode(x))
  x_hat = np.asarray(jax.jit(lambda m, i: m.decode(i))(tok.model, ids))
  print(f'ema={use_ema}: latent max abs err {np.abs(z - z_ref).max():.2e}, '
        f'ids equal {np.mean(ids == ids_ref):.4f}, '
        f'reconstruction max abs err {np.abs(x_hat - x_ref).max():.2e}')
  np.testing.assert_allclose(z, z_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(ids, ids_ref)
  assert ids.shape == (2, SIZE // 2, SIZE // 2)
  assert len(np.unique(ids)) > 8  # Not a degenerate single-code check.
  np.testing.assert_allclose(x_hat, x_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(tok.decode(ids), np.clip(x_ref, -1, 1),
                             atol=1e-4)
  # The EMA and the raw weights differ enough to tell them apart.
  other = (raw if use_ema else ema).tokens_and_reconstruction(x)[1]
  assert np.abs(other - x_ref).max() > 1e-2


def test_lfq_index_is_lsb_first():
  """Bit i of the id is [z_i > 0]: one positive channel k gives id 2^k."""
  tok = _tokenizer()
  q = tok.model.quantizer
  z = -np.ones((1, 1, Z, Z), np.float32)
  for k in range(Z):
    z[0, 0, k, k] = 1.0
  ids = np.asarray(q.encode(jnp.asarray(z)))
  np.testing.assert_array_equal(ids[0, 0], 2 ** np.arange(Z))
  _, ref = LFQ()(torch.from_numpy(z).permute(0, 3, 1, 2))
  np.testing.assert_array_equal(ids, ref.numpy())


def test_quantizer_loss_matches_the_release_formula():
  """Entropy (codebook_weight 0.1, smw 1, bmw 0.5) + commitment 0.25 of our
  LFQ with the converted options against the release's entropy_loss over
  all 2^Z codes (whose log(avg + 1e-5) leaves a ~K*1e-5 gap)."""
  config = train_lib.load_config(_converted()[3])
  options = dict(config.quantizer)
  assert options.pop('name') == 'lfq'
  assert options['diversity_gamma'] == 0.5
  assert tuple(config.model.entropy_anneal) == (4.0, 2000)
  q = OurLFQ(dim=Z, rngs=nnx.Rngs(0), **options)
  rng = np.random.default_rng(3)
  z = (0.05 * rng.standard_normal((2, 4, 4, Z))).astype(np.float32)
  ours = float(q(jnp.asarray(z), train=True).loss)
  zt = torch.from_numpy(z.reshape(-1, Z))
  codes = torch.where(zt > 0, 1.0, -1.0)
  want = (0.1 * entropy_loss(zt, bmw=0.5)
          + 0.25 * F.mse_loss(zt, codes)).item()
  print(f'quantizer loss ours {ours:.6f}, reference {want:.6f}')
  np.testing.assert_allclose(ours, want, atol=2e-3)


def test_discriminator_matches_the_reference():
  raw, _, _, workdir, _ = _converted()
  config = train_lib.load_config(workdir)
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  state, _ = common.read_workdir_state(workdir)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer, _, _ = tasks.get_task(config).create(config, mesh)
  disc = trainer.merge_disc(state['disc']['params'], state['disc']['rest'])
  x = _images(1)
  with torch.no_grad():
    want = raw.loss.discriminator(
        torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  got = np.asarray(disc(jnp.asarray(x), train=False))
  print(f'discriminator max abs err {np.abs(got - want).max():.2e}')
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_config_and_frozen_identity_convs():
  _, _, _, workdir, _ = _converted()
  config = train_lib.load_config(workdir)
  assert config.model_name == 'lfqgan'
  assert config.ema_decay == pytest.approx(0.999)
  assert set(om2.IDENTITY_CONVS) <= set(config.optim.frozen)
  assert config.loss.lecam_weight == 0.05 and not config.loss.adaptive_weight
  assert config.loss.disc_weight == pytest.approx(0.1)
  assert config.quantizer.entropy_loss_weight == pytest.approx(0.1)
  state, _ = common.read_workdir_state(workdir)
  for tree in (state['gen']['params'], state['ema']):
    kernel = np.asarray(tree['quant_conv']['kernel'])
    np.testing.assert_array_equal(kernel[0, 0], np.eye(Z))
    np.testing.assert_array_equal(np.asarray(tree['post_quant_conv']['bias']),
                                  np.zeros(Z))


def test_architecture_from_shapes_equals_the_yaml():
  _, _, tensors, _, _ = _converted()
  sd = common.StateDict(tensors, 'test')
  inferred = om2.infer_arch(sd, resolution=SIZE)
  import yaml  # pylint: disable=g-import-not-at-top
  cfg = yaml.safe_load(YAML)
  from_yaml = om2.arch_from_config(cfg, inferred)
  assert inferred.structure() == from_yaml.structure()
  assert from_yaml.resolution == SIZE  # The data size, not ddconfig's 128.
  a, b = om2.build_config(inferred), om2.build_config(from_yaml)
  assert a.model.to_dict() == b.model.to_dict()
  wrong = yaml.safe_load(YAML)
  wrong['model']['init_args']['ddconfig']['ch_mult'] = [1, 4]
  with pytest.raises(convert_lib.ConversionError, match='ch_mult'):
    om2.arch_from_config(wrong, inferred)
  ibq = yaml.safe_load(YAML)
  ibq['model']['class_path'] = 'src.IBQ.models.ibqgan.IBQ'
  with pytest.raises(convert_lib.ConversionError, match='lfqgan.VQModel'):
    om2.arch_from_config(ibq, inferred)
  factorized = yaml.safe_load(YAML)
  factorized['model']['init_args'].update(token_factorization=True,
                                          factorized_bits=[3, 3])
  arch = om2.arch_from_config(factorized, inferred)
  assert om2.quantizer_config(arch)['num_groups'] == 2


def _save(tmp_path, tensors, name='broken.pt'):
  path = str(tmp_path / name)
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
             path)
  return path


def test_missing_and_unknown_tensors_are_named(tmp_path):
  _, _, tensors, _, _ = _converted()
  broken = {k: v for k, v in tensors.items()
            if k not in ('decoder.adaptive.0.gamma.bias',
                         om2.ema_name('encoder.down.0.block.0.conv1.weight'))}
  broken['encoder.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(convert_lib.ConversionError) as err:
    convert_lib.convert('open_magvit2', _save(tmp_path, broken),
                        str(tmp_path / 'w'))
  msg = str(err.value)
  assert 'decoder.adaptive.0.gamma.bias' in msg
  assert 'model_ema.encoderdown0block0conv1weight' in msg
  assert 'encoder.extra.weight' in msg
  assert not os.path.exists(tmp_path / 'w')  # Nothing written.


def test_msb_first_buffers_and_other_discriminators_are_refused(tmp_path):
  _, _, tensors, _, _ = _converted()
  msb = dict(tensors, **{'quantize.mask': 2 ** np.arange(Z)[::-1].copy()})
  with pytest.raises(convert_lib.ConversionError, match='MSB-first'):
    convert_lib.convert('open_magvit2', _save(tmp_path, msb, 'msb.pt'),
                        str(tmp_path / 'w'))
  # A discriminator ours cannot host: refused, naming the flag that skips it.
  other = {k: v for k, v in tensors.items()
           if not k.startswith(('loss.discriminator.',
                                'loss.perceptual_loss.'))}
  other['loss.discriminator.blocks.0.conv.weight'] = np.zeros((8, 3, 3, 3),
                                                              np.float32)
  path = _save(tmp_path, other, 'other.pt')
  with pytest.raises(convert_lib.ConversionError,
                     match='--ignore=loss.discriminator.'):
    convert_lib.convert('open_magvit2', path, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')
  # With the flag: the generator is converted, the report says what was not.
  report = convert_lib.convert('open_magvit2', path, str(tmp_path / 'w'),
                               ignore=('loss.discriminator.',),
                               overrides=OVERRIDES)
  assert 'loss.discriminator.blocks.0.conv.weight' in report[
      'dropped_on_purpose']
  assert report['architecture']['disc'] is None
  assert any('discriminator ignored' in n for n in report['notes'])


def test_init_from_starts_a_run_from_the_converted_weights():
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  workdir = _converted()[3]
  config = train_lib.load_config(workdir)
  config.init_from = workdir
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, state, _ = tasks.get_task(config).create(config, mesh)
  saved, _ = common.read_workdir_state(workdir)
  key = lambda path: tuple(str(p) for p in path)
  got = {key(p): v for p, v in
         common.flatten(jax.device_get(state['gen']['params'])).items()}
  # init_from reads the EMA weights when the workdir keeps them.
  want = {key(p): v for p, v in common.flatten(saved['ema']).items()}
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


def test_export_round_trip_and_strict_load(tmp_path):
  raw, ema, tensors, workdir, _ = _converted()
  out = str(tmp_path / 'open_magvit2.safetensors')
  report = convert_lib.export('open_magvit2', workdir, out)
  assert report['ema']
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  exported = load_file(out)
  assert sorted(exported) == sorted(tensors)
  for name, value in tensors.items():
    if (name.endswith('num_batches_tracked')  # Not kept by our BatchNorm.
        or name.startswith('model_ema.lossdiscriminator')):  # No disc EMA.
      continue
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  # The raw and the EMA weights load strictly into the release's modules.
  x = _images(2)
  for prefix, model in (('', raw), ('model_ema.', ema)):
    fresh = OpenMagvit2VQModel()
    names = fresh.state_dict().keys()
    ema_names = {k for k in names if k.startswith(('encoder.', 'decoder.'))}
    fresh.load_state_dict(
        {k: torch.from_numpy(exported[om2.ema_name(k)] if prefix and k in
                             ema_names else exported[k])
         for k in names}, strict=True)
    ids_a, rec_a, _ = fresh.eval().tokens_and_reconstruction(x)
    ids_b, rec_b, _ = model.tokens_and_reconstruction(x)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(rec_a, rec_b)
  import yaml  # pylint: disable=g-import-not-at-top
  with open(str(tmp_path / 'open_magvit2.yaml')) as f:
    cfg = yaml.safe_load(f)
  args = cfg['model']['init_args']
  assert args['ddconfig']['ch_mult'] == list(CH_MULT)
  assert (args['embed_dim'], args['n_embed']) == (Z, 2 ** Z)
  assert args['batch_maximization_weight'] == 0.5
  loss = args['lossconfig']['params']
  assert loss['gen_loss_weight'] == pytest.approx(0.1)
  assert loss['codebook_enlarge_ratio'] == 3.0
  # The YAML converts back to the same architecture.
  inferred = om2.infer_arch(common.StateDict(tensors, 'test'), SIZE)
  assert om2.arch_from_config(cfg, inferred).structure() == inferred.structure()


def test_export_refuses_what_the_release_cannot_express():
  workdir = _converted()[3]
  config = train_lib.load_config(workdir)
  state, _ = common.read_workdir_state(workdir)
  params = common.flatten(state['gen']['params'])
  om2._check_exportable(config, params)  # pylint: disable=protected-access
  moved = dict(params)
  moved[('quant_conv', 'kernel')] = params[('quant_conv', 'kernel')] * 1.01
  with pytest.raises(convert_lib.ConversionError, match='quant_conv'):
    om2._check_exportable(config, moved)  # pylint: disable=protected-access
  config.model.frontend.depth_to_space_order = 'crd'
  config.model.pre_quant_norm = True
  with pytest.raises(convert_lib.ConversionError) as err:
    om2._check_exportable(config, params)  # pylint: disable=protected-access
  assert 'depth_to_space_order' in str(err.value)
  assert 'pre_quant_norm' in str(err.value)


@pytest.mark.slow
def test_evaluate_reads_the_workdir():
  """The converted workdir as it is (LPIPS files, release loss weights)."""
  results = train_lib.evaluate_workdir(_converted()[3], num_batches=1)
  assert np.isfinite(results['eval/psnr']) and results['step'] == 0
