"""`--from=taming` / `--export=taming` against the real taming-transformers
modules (the `taming-transformers==0.0.1` wheel: Encoder, Decoder,
VectorQuantizer, NLayerDiscriminator).

Its `VQModel` needs pytorch_lightning, so the test builds a module with the
same attributes (`encoder`, `decoder`, `quantize`, `quant_conv`,
`post_quant_conv`, `loss.discriminator`, `loss.perceptual_loss`), i.e. the
same state-dict layout, tiny and randomly initialised, and saves it as a
Lightning-style checkpoint ({'state_dict': ..., 'global_step': ...}).

Dimension legend: B batch, H/W image size, h/w token grid, K codes, E code
dimension.
"""

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import taming as taming_convert
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.quantizers.vq import VectorQuantizer
from tokenizers_jax.training import train as train_lib

from . import LpipsLayout

taming_model = pytest.importorskip('taming.modules.diffusionmodules.model')
taming_quantize = pytest.importorskip('taming.modules.vqvae.quantize')
taming_disc = pytest.importorskip('taming.modules.discriminator.model')

# Tiny but complete: two levels (f=2), attention at the 16x16 level and in
# the middle, widths that taming's GroupNorm(32) accepts.
DDCONFIG = dict(double_z=False, z_channels=16, resolution=32, in_channels=3,
                out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[16], dropout=0.0)
N_EMBED, EMBED_DIM = 64, 8
LOSS = dict(disc_conditional=False, disc_in_channels=3, disc_start=100,
            disc_weight=0.8, codebook_weight=1.0, disc_num_layers=2,
            disc_ndf=8, perceptual_weight=1.0)
YAML = f"""\
model:
  base_learning_rate: 4.5e-6
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {EMBED_DIM}
    n_embed: {N_EMBED}
    ddconfig:
      double_z: False
      z_channels: 16
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: False
        disc_in_channels: 3
        disc_start: 100
        disc_weight: 0.8
        codebook_weight: 1.0
        disc_num_layers: 2
        disc_ndf: 8
"""
# Evaluation on in-memory images (no dataset to prepare).
OVERRIDES = ('data.source=fake:16', 'data.eval_batch_size=8',
             'data.global_batch_size=8', 'num_grid_images=2')


class TamingVQModel(nn.Module):
  """taming.models.vqgan.VQModel's modules and names, without Lightning."""

  def __init__(self):
    super().__init__()
    self.encoder = taming_model.Encoder(**DDCONFIG)
    self.decoder = taming_model.Decoder(**DDCONFIG)
    self.quantize = taming_quantize.VectorQuantizer(N_EMBED, EMBED_DIM,
                                                    beta=0.25)
    self.quant_conv = nn.Conv2d(DDCONFIG['z_channels'], EMBED_DIM, 1)
    self.post_quant_conv = nn.Conv2d(EMBED_DIM, DDCONFIG['z_channels'], 1)
    self.loss = nn.Module()
    self.loss.discriminator = taming_disc.NLayerDiscriminator(
        input_nc=3, ndf=LOSS['disc_ndf'],
        n_layers=LOSS['disc_num_layers']).apply(taming_disc.weights_init)
    self.loss.perceptual_loss = LpipsLayout()

  def tokens_and_reconstruction(self, x):
    """NHWC numpy in [-1, 1] -> (ids [B, h, w], x_hat NHWC, z [B, h, w, E])."""
    with torch.no_grad():
      h = self.quant_conv(self.encoder(torch.from_numpy(x).permute(0, 3, 1,
                                                                   2)))
      zq, _, (_, _, idx) = self.quantize(h)
      x_hat = self.decoder(self.post_quant_conv(zq))
    b, _, hh, ww = h.shape
    return (idx.reshape(b, hh, ww).numpy(),
            x_hat.permute(0, 2, 3, 1).numpy(), h.permute(0, 2, 3, 1).numpy())


def _reference() -> TamingVQModel:
  torch.manual_seed(0)
  model = TamingVQModel().eval()
  with torch.no_grad():
    for m in model.modules():  # Non-trivial affines and running statistics.
      if isinstance(m, nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.num_batches_tracked.fill_(7)
    model.quantize.embedding.weight.normal_(0.0, 0.5)
  return model


@functools.cache
def _converted():
  """(reference model, its state dict as numpy, checkpoint path, workdir,
  report): converted once for all tests of this module."""
  model = _reference()
  tmp = tempfile.mkdtemp(prefix='taming_convert_')
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  sd = model.state_dict()
  ckpt = os.path.join(tmp, 'last.ckpt')
  # A Lightning checkpoint that loads with weights_only=True.
  torch.save({'state_dict': sd, 'epoch': 3, 'global_step': 1234}, ckpt)
  yaml_path = os.path.join(tmp, 'model.yaml')
  with open(yaml_path, 'w') as f:
    f.write(YAML)
  workdir = os.path.join(tmp, 'workdir')
  report = convert_lib.convert('taming', ckpt, workdir,
                               reference_config=yaml_path,
                               overrides=OVERRIDES)
  tensors = {k: v.detach().numpy() for k, v in sd.items()}
  return model, tensors, ckpt, workdir, report


@functools.cache
def _tokenizer():
  return Tokenizer.from_workdir(_converted()[3])


def _images(seed=0, n=2):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def test_every_tensor_is_used():
  _, tensors, _, _, report = _converted()
  dropped = report['dropped_on_purpose']
  assert dropped == sorted(k for k in tensors if
                           k.endswith('num_batches_tracked'))
  assert report['tensors_converted'] + len(dropped) == len(tensors)
  assert report['tensors_in_checkpoint'] == len(tensors)
  assert tuple(report['architecture']['attn_levels']) == (1,)
  assert report['lpips']['vgg'].endswith('lpips_vgg16.npz')


def test_tokens_and_reconstructions_match_taming():
  model = _converted()[0]
  tok = _tokenizer()
  x = _images()
  ids_ref, x_ref, z_ref = model.tokens_and_reconstruction(x)
  z = np.asarray(tok.model.encode_latents(jnp.asarray(x)))
  ids = np.asarray(tok.encode(x))
  x_hat = np.asarray(jax.jit(lambda m, i: m.decode(i))(tok.model, ids))
  print(f'latent max abs err {np.abs(z - z_ref).max():.2e}, '
        f'ids equal {np.mean(ids == ids_ref):.4f}, '
        f'reconstruction max abs err {np.abs(x_hat - x_ref).max():.2e}')
  np.testing.assert_allclose(z, z_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(ids, ids_ref)
  assert len(np.unique(ids)) > 4  # Not a degenerate single-code check.
  np.testing.assert_allclose(x_hat, x_ref, atol=1e-4, rtol=1e-4)
  # The public decode is the same, clipped to the image range.
  np.testing.assert_allclose(tok.decode(ids), np.clip(x_ref, -1, 1),
                             atol=1e-4)


def test_discriminator_and_lpips_match_taming():
  model, _, _, workdir, _ = _converted()
  config = train_lib.load_config(workdir)
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  state, _ = common.read_workdir_state(workdir)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer, _, _ = tasks.get_task(config).create(config, mesh)
  disc = trainer.merge_disc(state['disc']['params'], state['disc']['rest'])
  x = _images(1)
  with torch.no_grad():
    want = model.loss.discriminator(
        torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  got = np.asarray(disc(jnp.asarray(x), train=False))
  print(f'discriminator max abs err {np.abs(got - want).max():.2e}')
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # LPIPS: the checkpoint's weights went to the files the config names.
  lp = trainer.extras['lpips']
  conv = getattr(model.loss.perceptual_loss.net.slice5, '28')
  np.testing.assert_array_equal(
      np.asarray(lp.vgg.conv(28).kernel[...]),
      conv.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      np.asarray(lp.lin4[...]),
      model.loss.perceptual_loss.lin4.model[1].weight.detach().numpy()
      .reshape(-1))


@pytest.mark.parametrize('legacy', [True, False])
def test_quantizer_losses_match_both_beta_placements(legacy):
  """Loss value and gradients (to z and to the codebook) of our quantizer
  with the converted options against taming's VectorQuantizer (legacy, the
  placement every release uses) or the paper's placement (legacy=False)."""
  torch.manual_seed(1)
  ref = taming_quantize.VectorQuantizer(16, 4, beta=0.25)
  with torch.no_grad():
    ref.embedding.weight.normal_()
  z = torch.randn(2, 4, 3, 3, requires_grad=True)
  _, loss, (_, _, idx) = ref(z)
  if not legacy:  # The paper's placement: beta on the commitment term.
    zf = z.permute(0, 2, 3, 1)
    codes = ref.embedding.weight[idx[:, 0]].reshape(zf.shape)
    loss = (0.25 * torch.mean((codes.detach() - zf) ** 2)
            + torch.mean((codes - zf.detach()) ** 2))
  loss.backward()
  arch = taming_convert.TamingArch(
      ch=32, ch_mult=(1,), num_res_blocks=1, attn_levels=(), z_channels=4,
      in_channels=3, embed_dim=4, n_embed=16, legacy=legacy)
  options = taming_convert.quantizer_config(arch)
  name = options.pop('name')
  assert name == 'vq'
  q = VectorQuantizer(dim=4, rngs=nnx.Rngs(0), **options)
  q.codebook[...] = jnp.asarray(ref.embedding.weight.detach().numpy())
  z_ours = jnp.asarray(z.detach().permute(0, 2, 3, 1).numpy())

  def loss_fn(module, z):
    return module(z, train=False).loss

  value, (g_q, g_z) = nnx.value_and_grad(loss_fn, argnums=(0, 1))(q, z_ours)
  np.testing.assert_allclose(float(value), float(loss.detach()), rtol=1e-5)
  np.testing.assert_allclose(g_z, z.grad.permute(0, 2, 3, 1).numpy(),
                             atol=1e-6)
  np.testing.assert_allclose(g_q.codebook[...],
                             ref.embedding.weight.grad.numpy(), atol=1e-6)


def test_architecture_from_shapes_equals_the_yaml():
  _, tensors, _, _, _ = _converted()
  sd = common.StateDict(tensors, 'test')
  inferred = taming_convert.infer_arch(sd, resolution=32)
  from_yaml = taming_convert.arch_from_config(
      {'model': {'target': 'taming.models.vqgan.VQModel', 'params': dict(
          embed_dim=EMBED_DIM, n_embed=N_EMBED, ddconfig=DDCONFIG,
          lossconfig=dict(params=LOSS))}}, inferred)
  assert inferred.structure() == from_yaml.structure()
  assert inferred.attn_levels == (1,) and inferred.disc == (8, 2)
  a = taming_convert.build_config(inferred)
  b = taming_convert.build_config(from_yaml)
  assert a.model.to_dict() == b.model.to_dict()
  assert a.quantizer.to_dict() == b.quantizer.to_dict()
  assert a.model.frontend.attn_resolutions == (16,)
  assert a.quantizer.commitment_weight == 1.0  # legacy: beta on the codebook.
  assert a.quantizer.codebook_weight == 0.25
  # Another image size keeps attention at the same level.
  c = taming_convert.build_config(inferred, image_size=64)
  assert c.model.frontend.attn_resolutions == (32,)
  # A config that disagrees with the tensors is refused.
  wrong = dict(DDCONFIG, ch_mult=[1, 4])
  with pytest.raises(convert_lib.ConversionError, match='ch_mult'):
    taming_convert.arch_from_config(
        {'model': {'params': dict(embed_dim=EMBED_DIM, n_embed=N_EMBED,
                                  ddconfig=wrong)}}, inferred)
  with pytest.raises(convert_lib.ConversionError, match='GumbelVQ'):
    taming_convert.arch_from_config(
        {'model': {'target': 'taming.models.vqgan.GumbelVQ',
                   'params': dict(ddconfig=DDCONFIG)}}, inferred)


def test_missing_and_unknown_tensors_are_named(tmp_path):
  _, tensors, _, _, _ = _converted()
  broken = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()
            if k != 'decoder.up.0.block.1.norm2.bias'}
  broken['encoder.extra.weight'] = torch.zeros(3)
  path = str(tmp_path / 'broken.pt')
  torch.save(broken, path)
  with pytest.raises(convert_lib.ConversionError) as err:
    convert_lib.convert('taming', path, str(tmp_path / 'w'))
  assert 'decoder.up.0.block.1.norm2.bias' in str(err.value)
  assert 'encoder.extra.weight' in str(err.value)
  assert not os.path.exists(tmp_path / 'w')  # Nothing written.


class _Opaque:
  """Stands for the Python objects a Lightning checkpoint pickles."""


def test_a_checkpoint_that_needs_unpickling_gets_the_extraction_command(
    tmp_path):
  path = str(tmp_path / 'epoch=3.ckpt')
  torch.save({'state_dict': {'quant_conv.weight': torch.zeros(1)},
              'callbacks': _Opaque()}, path)
  with pytest.raises(convert_lib.ConversionError) as err:
    common.read_tensors(path)
  msg = str(err.value)
  assert 'weights_only=True' in msg
  assert (f"torch.load('{path}', map_location='cpu', weights_only=False)"
          "['state_dict']") in msg
  assert str(tmp_path / 'epoch=3_state_dict.pt') in msg


def test_export_round_trip_and_strict_load(tmp_path):
  model, tensors, _, workdir, _ = _converted()
  out = str(tmp_path / 'vqgan.safetensors')
  run = subprocess.run(
      [sys.executable, '-m', 'tokenizers_jax.convert', '--export=taming',
       f'--workdir={workdir}', f'--output={out}'],
      capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert run.returncode == 0, run.stderr[-3000:]
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  exported = load_file(out)
  assert sorted(exported) == sorted(tensors)
  for name, value in tensors.items():
    if name.endswith('num_batches_tracked'):
      continue  # Not kept by our BatchNorm.
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  fresh = TamingVQModel()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                        strict=True)
  x = _images(2)
  ids_a, rec_a, _ = fresh.eval().tokens_and_reconstruction(x)
  ids_b, rec_b, _ = model.tokens_and_reconstruction(x)
  np.testing.assert_array_equal(ids_a, ids_b)
  np.testing.assert_array_equal(rec_a, rec_b)
  # The YAML next to it describes the same VQModel.
  import yaml  # pylint: disable=g-import-not-at-top
  with open(str(tmp_path / 'vqgan.yaml')) as f:
    params = yaml.safe_load(f)['model']['params']
  assert params['ddconfig'] == DDCONFIG
  assert (params['embed_dim'], params['n_embed']) == (EMBED_DIM, N_EMBED)
  assert params['legacy'] is True and params['beta'] == 0.25
  loss = params['lossconfig']['params']
  assert (loss['disc_ndf'], loss['disc_num_layers']) == (8, 2)


def _copy_without_perceptual_loss(workdir, dest):
  """The workdir with loss.perceptual_weight = 0 (as converting with
  --set=loss.perceptual_weight=0 gives): evaluation does not use LPIPS."""
  shutil.copytree(workdir, dest)
  path = os.path.join(dest, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config['loss']['perceptual_weight'] = 0.0
  with open(path, 'w') as f:
    json.dump(config, f)
  return str(dest)


def test_evaluate_reads_the_workdir(tmp_path):
  workdir = _copy_without_perceptual_loss(_converted()[3], tmp_path / 'w')
  results = train_lib.evaluate_workdir(workdir, num_batches=1)
  assert np.isfinite(results['eval/psnr']) and results['step'] == 0
  assert results['eval/num_images'] == 8


def test_evaluate_with_the_release_loss_config():
  """The converted config keeps the release's perceptual_weight=1 and the
  LPIPS files; creating the train state under `jax.set_mesh` (as
  evaluate_workdir does) then builds LPIPS abstractly under the mesh."""
  workdir = _converted()[3]
  results = train_lib.evaluate_workdir(workdir, num_batches=1)
  assert np.isfinite(results['eval/psnr'])


def test_init_from_starts_a_run_from_the_converted_weights():
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  workdir = _converted()[3]
  config = train_lib.load_config(workdir)
  config.init_from = workdir
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  _, state, _ = tasks.get_task(config).create(config, mesh)
  saved, _ = common.read_workdir_state(workdir)
  # (orbax stores list indices as string keys.)
  key = lambda path: tuple(str(p) for p in path)
  got = {key(p): v for p, v in
         common.flatten(jax.device_get(state['gen']['params'])).items()}
  want = {key(p): v for p, v in common.flatten(saved['gen']['params']).items()}
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
  # The release's PatchGAN comes along (GAN fine-tuning), BatchNorm
  # statistics included.
  for part in ('params', 'rest'):
    got = {key(p): v for p, v in
           common.flatten(jax.device_get(state['disc'][part])).items()}
    want = {key(p): v for p, v in common.flatten(saved['disc'][part]).items()}
    assert got.keys() == want.keys() and want
    for path in want:
      np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


@pytest.mark.slow  # A training run on the converted workdir (about 50 s).
def test_train_continues_in_the_converted_workdir(tmp_path):
  """`train` on the converted workdir itself resumes its step-0 checkpoint
  (which has no data-iterator item) with the release's weights."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(_converted()[3], workdir)
  config = train_lib.load_config(workdir)
  with config.unlocked():
    config.total_steps = 1
    config.eval_every = config.checkpoint_every = 1
    config.num_eval_batches = 1
  saved, _ = common.read_workdir_state(workdir)
  train_lib.train_and_evaluate(config, workdir)
  state, step = common.read_workdir_state(workdir)
  assert step == 1
  # One step from the release's weights (the encoder moved, a little).
  a = saved['gen']['params']['frontend']['encoder']['conv_in']['kernel']
  b = state['gen']['params']['frontend']['encoder']['conv_in']['kernel']
  assert np.all(np.isfinite(b)) and 0 < np.max(np.abs(a - b)) < 0.1
