"""`--from=maskgit` / `--export=maskgit` against an independent reference.

maskgit is not pip-installable, so the reference here is a small Flax
linen VQVAE written for this test from the description of
google-research/maskgit `maskgit/nets/vqgan_tokenizer.py` (ResBlocks with
GroupNorm + swish and a bias-free 1x1 skip on the branch output when the
width changes, TF-style 2x2 average pooling, nearest-neighbour upsampling
with `jax.image.resize`, no attention, squared-euclidean nearest code). Its
parameter names are those flax's auto-naming gives that layout
(`encoder/ResBlock_3/GroupNorm_1/scale`, ...), i.e. the release's tree. It
is randomly initialised, saved as the release is
(`flax.serialization.msgpack_serialize({'params': ...})`, a file without
extension) and converted; the converted model must give the reference's
token ids exactly and its reconstructions within 1e-4.

Dimension legend: B batch, H/W image size, h/w token grid, K codes, E code
dimension.
"""

import atexit
import dataclasses
import functools
import json
import os
import shutil
import tempfile
from typing import Callable

from flax import nnx
from flax import serialization
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import common
from tokenizers_jax.convert import maskgit as maskgit_convert
from tokenizers_jax.models import registry
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.quantizers.vq import VectorQuantizer
from tokenizers_jax.training import train as train_lib

# Tiny but complete: two levels (f=2), two ResBlocks per level (so the
# ResBlock_{i*R+j} numbering is exercised), a width change (1x1 skips),
# widths that GroupNorm(32) accepts.
VQVAE = dict(filters=32, channel_multipliers=(1, 2), num_res_blocks=2,
             embedding_dim=8, codebook_size=16, conv_downsample=False)
SIZE = 16
OVERRIDES = ('data.source=fake:16', 'data.eval_batch_size=8',
             'data.global_batch_size=8', 'num_grid_images=2')


# -----------------------------------------------------------------------------
# The reference (flax linen, the release's structure and names).
# -----------------------------------------------------------------------------


def _tf_avg_pool(x):
  """2x2 / stride-2 'SAME' average that leaves padding out of the count."""
  window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, 'SAME')
  count = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, window,
                                strides, 'SAME')
  return total / count


class ResBlock(nn.Module):
  """(Named as in the release: flax auto-names it ResBlock_k.)"""
  filters: int
  act: Callable = nn.swish

  @nn.compact
  def __call__(self, x):
    skip = x
    h = nn.GroupNorm()(x)
    h = nn.Conv(self.filters, (3, 3), use_bias=False)(self.act(h))
    h = nn.GroupNorm()(h)
    h = nn.Conv(self.filters, (3, 3), use_bias=False)(self.act(h))
    if x.shape[-1] != self.filters:
      # The release projects the branch output, not the input.
      skip = nn.Conv(self.filters, (1, 1), use_bias=False)(h)
    return h + skip


class RefEncoder(nn.Module):
  cfg: dict

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    x = nn.Conv(c['filters'], (3, 3), use_bias=False)(x)
    mults = c['channel_multipliers']
    for i, m in enumerate(mults):
      width = c['filters'] * m
      for _ in range(c['num_res_blocks']):
        x = ResBlock(width)(x)
      if i < len(mults) - 1:
        if c['conv_downsample']:
          x = nn.Conv(width, (4, 4), strides=(2, 2))(x)
        else:
          x = _tf_avg_pool(x)
    for _ in range(c['num_res_blocks']):
      x = ResBlock(width)(x)
    x = nn.swish(nn.GroupNorm()(x))
    return nn.Conv(c['embedding_dim'], (1, 1))(x)


class RefDecoder(nn.Module):
  cfg: dict

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    mults = c['channel_multipliers']
    width = c['filters'] * mults[-1]
    x = nn.Conv(width, (3, 3), use_bias=True)(x)
    for _ in range(c['num_res_blocks']):
      x = ResBlock(width)(x)
    for i in reversed(range(len(mults))):
      width = c['filters'] * mults[i]
      for _ in range(c['num_res_blocks']):
        x = ResBlock(width)(x)
      if i > 0:
        n, h, w, d = x.shape
        x = jax.image.resize(x, (n, 2 * h, 2 * w, d), method='nearest')
        x = nn.Conv(width, (3, 3))(x)
    x = nn.swish(nn.GroupNorm()(x))
    return nn.Conv(3, (3, 3))(x)


class RefQuantizer(nn.Module):
  cfg: dict

  @nn.compact
  def __call__(self, z):
    codebook = self.param(
        'codebook', nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform'),
        (self.cfg['codebook_size'], z.shape[-1]))
    flat = z.reshape(-1, z.shape[-1])
    d = (jnp.sum(flat ** 2, axis=1, keepdims=True) - 2 * flat @ codebook.T
         + jnp.sum(codebook ** 2, axis=1)[None])
    ids = jnp.argmin(d, axis=-1)
    quantized = jax.nn.one_hot(ids, codebook.shape[0]) @ codebook
    return quantized.reshape(z.shape), ids.reshape(z.shape[:-1])


class RefVQVAE(nn.Module):
  """Images in [0, 1] -> (ids, reconstruction in [0, 1] scale, latent)."""
  cfg: dict

  def setup(self):
    self.encoder = RefEncoder(self.cfg)
    self.decoder = RefDecoder(self.cfg)
    self.quantizer = RefQuantizer(self.cfg)

  def __call__(self, image):
    z = self.encoder(image)
    quantized, ids = self.quantizer(z)
    return ids, self.decoder(quantized), z

  def decode_ids(self, ids):
    codebook = self.quantizer.variables['params']['codebook']
    return self.decoder(jnp.take(codebook, ids, axis=0))


def _images(seed=0, n=2):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _reference_params(cfg: dict, seed: int = 0) -> dict:
  """Random params with non-trivial norms and biases, and a codebook drawn
  near the encoder's latents (so many codes are used)."""
  model = RefVQVAE(cfg)
  x = jnp.asarray((_images(seed) + 1) / 2)
  params = model.init(jax.random.key(seed), x)['params']
  rng = np.random.default_rng(seed + 1)

  def perturb(path, leaf):
    name = path[-1].key
    leaf = np.asarray(leaf)
    if name == 'scale':
      return rng.normal(1.0, 0.2, leaf.shape).astype(np.float32)
    if name == 'bias':
      return rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)
    return leaf

  params = jax.tree_util.tree_map_with_path(perturb, params)
  _, _, z = model.apply({'params': params}, x)
  flat = np.asarray(z).reshape(-1, z.shape[-1])
  pick = rng.choice(len(flat), cfg['codebook_size'], replace=False)
  params['quantizer']['codebook'] = (
      flat[pick] + rng.normal(0, 0.05, flat[pick].shape)).astype(np.float32)
  return params


def _reference_outputs(cfg, params, x):
  """Our-convention images x in [-1, 1] -> (ids, reconstruction in [-1, 1]
  scale, latent), by the reference on (x + 1) / 2."""
  ids, rec, z = RefVQVAE(cfg).apply({'params': params},
                                    jnp.asarray((x + 1) / 2))
  return np.asarray(ids), 2 * np.asarray(rec) - 1, np.asarray(z)


def _save_release(params, path):
  tree = {'params': jax.tree.map(np.asarray, params)}
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(tree))


def _flat(params) -> dict[str, np.ndarray]:
  return {'/'.join(str(k.key) for k in p): np.asarray(v) for p, v in
          jax.tree_util.tree_leaves_with_path(params)}


@functools.cache
def _converted():
  """(params, checkpoint path, workdir, report), converted once."""
  params = _reference_params(VQVAE)
  tmp = tempfile.mkdtemp(prefix='maskgit_convert_')
  atexit.register(shutil.rmtree, tmp, ignore_errors=True)
  ckpt = os.path.join(tmp, 'tokenizer_imagenet256_checkpoint')
  _save_release(params, ckpt)
  workdir = os.path.join(tmp, 'workdir')
  report = convert_lib.convert('maskgit', ckpt, workdir, image_size=SIZE,
                               overrides=OVERRIDES)
  return params, ckpt, workdir, report


@functools.cache
def _tokenizer():
  return Tokenizer.from_workdir(_converted()[2])


# -----------------------------------------------------------------------------
# Tests.
# -----------------------------------------------------------------------------


def test_every_tensor_is_used():
  params, _, _, report = _converted()
  n = len(_flat(params))
  assert report['tensors_in_checkpoint'] == n
  assert report['tensors_converted'] == n
  assert report['dropped_on_purpose'] == []
  arch = report['architecture']
  assert (arch['ch'], tuple(arch['ch_mult']), arch['num_res_blocks'],
          arch['z_channels'], arch['codebook_size']) == (32, (1, 2), 2, 8, 16)
  assert arch['conv_downsample'] is False


def test_tokens_and_reconstructions_match_the_reference():
  params = _converted()[0]
  tok = _tokenizer()
  x = _images(3)
  ids_ref, x_ref, z_ref = _reference_outputs(VQVAE, params, x)
  z = np.asarray(tok.model.encode_latents(jnp.asarray(x)))
  ids = np.asarray(tok.encode(x))
  x_hat = np.asarray(jax.jit(lambda m, i: m.decode(i))(tok.model, ids))
  print(f'latent max abs err {np.abs(z - z_ref).max():.2e}, '
        f'ids equal {np.mean(ids == ids_ref):.4f}, '
        f'reconstruction max abs err {np.abs(x_hat - x_ref).max():.2e}')
  np.testing.assert_allclose(z, z_ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(ids, ids_ref)
  assert len(np.unique(ids)) > 6  # Not a degenerate single-code check.
  np.testing.assert_allclose(x_hat, x_ref, atol=1e-4, rtol=1e-4)
  # The reference's own decode_ids path gives the same images.
  rec = RefVQVAE(VQVAE).apply({'params': params}, jnp.asarray(ids),
                              method=RefVQVAE.decode_ids)
  np.testing.assert_allclose(x_hat, 2 * np.asarray(rec) - 1, atol=1e-4)
  np.testing.assert_allclose(tok.decode(ids), np.clip(x_ref, -1, 1),
                             atol=1e-4)


def _load_in_memory(cfg: dict, params) -> tuple[nnx.Module, dict]:
  """Our model for a reference tree, filled via the converter's names (no
  workdir)."""
  sd = common.StateDict(_flat(params), 'test')
  arch = maskgit_convert.infer_arch(sd, SIZE)
  config = maskgit_convert.build_config(arch, image_size=SIZE)
  model = registry.build_model(config, 0)
  graph, state, rest = nnx.split(model, nnx.Param, ...)
  pure = nnx.to_pure_dict(state)
  filled = jax.tree_util.tree_map_with_path(
      lambda p, leaf: sd.take(maskgit_convert.release_name(
          common.path_key(p), arch), leaf.shape), pure)
  sd.check_complete()
  nnx.replace_by_pure_dict(state, filled)
  return nnx.merge(graph, state, rest), dataclasses.asdict(arch)


def test_conv_downsampling_three_levels_match_the_reference():
  """The other encoder layout (4x4 stride-2 convs between levels: Conv_1 ..
  Conv_{L-1}, conv_out Conv_L), three levels, one block, relu-free swish."""
  cfg = dict(VQVAE, channel_multipliers=(1, 1, 2), num_res_blocks=1,
             conv_downsample=True, codebook_size=8)
  params = _reference_params(cfg, seed=1)
  model, arch = _load_in_memory(cfg, params)
  assert arch['conv_downsample'] and arch['ch_mult'] == (1, 1, 2)
  x = _images(4)
  ids_ref, x_ref, _ = _reference_outputs(cfg, params, x)
  ids = np.asarray(model.encode(jnp.asarray(x)))
  x_hat = np.asarray(model.decode(jnp.asarray(ids)))
  np.testing.assert_array_equal(ids, ids_ref)
  assert len(np.unique(ids)) > 3
  np.testing.assert_allclose(x_hat, x_ref, atol=1e-4, rtol=1e-4)


def _maskgit_quantizer_loss(z, codebook, beta=0.25, ratio=0.1, temp=0.01):
  """MaskGIT's VectorQuantizer training loss (eval-time ids), written out."""
  flat = z.reshape(-1, z.shape[-1])
  d = (jnp.sum(flat ** 2, 1, keepdims=True) - 2 * flat @ codebook.T
       + jnp.sum(codebook ** 2, 1)[None])
  q = jax.nn.one_hot(jnp.argmin(d, -1), codebook.shape[0]) @ codebook
  e_latent = jnp.mean((jax.lax.stop_gradient(q) - flat) ** 2) * beta
  q_latent = jnp.mean((q - jax.lax.stop_gradient(flat)) ** 2)
  logits = -d / temp
  probs = jax.nn.softmax(logits, -1)
  log_probs = jax.nn.log_softmax(logits + 1e-5, -1)
  avg = jnp.mean(probs, 0)
  avg_entropy = -jnp.sum(avg * jnp.log(avg + 1e-5))
  sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, -1))
  return e_latent + q_latent + ratio * (sample_entropy - avg_entropy)


def test_quantizer_loss_matches_maskgit():
  """Value and gradients (to z and to the codebook) of our quantizer with
  the converted options against MaskGIT's loss. The release's entropy adds
  1e-5 inside log(avg_probs); ours does not (a few 1e-5 of the value)."""
  rng = np.random.default_rng(2)
  codebook = jnp.asarray(rng.normal(size=(16, 4)).astype(np.float32))
  z = jnp.asarray(rng.normal(size=(2, 3, 3, 4)).astype(np.float32) * 1.5)
  arch = maskgit_convert.MaskgitArch(
      ch=32, ch_mult=(1,), num_res_blocks=1, z_channels=4, in_channels=3,
      codebook_size=16)
  options = maskgit_convert.quantizer_config(arch)
  assert options.pop('name') == 'vq'
  q = VectorQuantizer(dim=4, rngs=nnx.Rngs(0), **options)
  q.codebook[...] = codebook

  def ours(module, z):
    return module(z, train=True).loss

  value, (g_q, g_z) = nnx.value_and_grad(ours, argnums=(0, 1))(q, z)
  want, (w_c, w_z) = jax.value_and_grad(
      lambda c, z: _maskgit_quantizer_loss(z, c), argnums=(0, 1))(codebook, z)
  print(f'loss {float(value):.6f} vs {float(want):.6f}')
  np.testing.assert_allclose(float(value), float(want), atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(g_z, w_z, atol=1e-4)
  np.testing.assert_allclose(g_q.codebook[...], w_c, atol=1e-4)


def test_architecture_from_the_release_config(tmp_path):
  params = _converted()[0]
  sd = common.StateDict(_flat(params), 'test')
  inferred = maskgit_convert.infer_arch(sd)
  cfg = {'image_size': SIZE, 'vqvae': dict(
      VQVAE, quantizer='vq', entropy_loss_ratio=0.1, entropy_temperature=0.01,
      entropy_loss_type='softmax', commitment_cost=0.25,
      activation_fn='swish', norm_type='GN')}
  path = str(tmp_path / 'vqgan_config.json')
  with open(path, 'w') as f:
    json.dump(cfg, f)
  arch = maskgit_convert.arch_from_config(common.read_config_file(path),
                                          inferred)
  assert arch.structure() == inferred.structure() and arch.resolution == SIZE
  config = maskgit_convert.build_config(arch)
  assert config.data.image_size == SIZE
  assert config.model.quant_conv is False
  assert config.quantizer.entropy_loss_weight == 0.1
  with pytest.raises(convert_lib.ConversionError, match='channel_multipliers'):
    maskgit_convert.arch_from_config(
        {'vqvae': dict(cfg['vqvae'], channel_multipliers=[1, 4])}, inferred)
  with pytest.raises(convert_lib.ConversionError, match='Gumbel'):
    maskgit_convert.arch_from_config(
        {'vqvae': dict(cfg['vqvae'], quantizer='gumbel')}, inferred)
  with pytest.raises(convert_lib.ConversionError, match='norm_type'):
    maskgit_convert.arch_from_config(
        {'vqvae': dict(cfg['vqvae'], norm_type='BN')}, inferred)


def test_flat_files_with_and_without_the_params_level(tmp_path):
  flat = _flat(_converted()[0])
  npz = str(tmp_path / 'tree.npz')
  np.savez(npz, **{f'params/{k}': v for k, v in flat.items()})
  st = str(tmp_path / 'tree.safetensors')
  common.write_tensors(st, flat)
  for path in (npz, st):
    got = maskgit_convert.read_release(path)
    assert sorted(got) == sorted(flat)
    for k, v in flat.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_missing_and_unknown_tensors_are_named(tmp_path):
  params = _converted()[0]
  flat = _flat(params)
  del flat['decoder/ResBlock_3/GroupNorm_1/bias']
  flat['encoder/Extra_0/kernel'] = np.zeros(3, np.float32)
  path = str(tmp_path / 'broken.npz')
  np.savez(path, **flat)
  with pytest.raises(convert_lib.ConversionError) as err:
    convert_lib.convert('maskgit', path, str(tmp_path / 'w'),
                        image_size=SIZE)
  assert 'decoder/ResBlock_3/GroupNorm_1/bias' in str(err.value)
  assert 'encoder/Extra_0/kernel' in str(err.value)
  assert not os.path.exists(tmp_path / 'w')  # Nothing written.
  # A training-state checkpoint: the extra entries are named, with the
  # --ignore that drops them.
  state = {'params': jax.tree.map(np.asarray, params), 'step': np.int32(3),
           'opt_state': {'mu': {'w': np.zeros(2, np.float32)}}}
  path = str(tmp_path / 'train_state_checkpoint')
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(state))
  with pytest.raises(convert_lib.ConversionError) as err:
    convert_lib.convert('maskgit', path, str(tmp_path / 'w'),
                        image_size=SIZE)
  assert 'opt_state/mu/w' in str(err.value)
  assert '--ignore=opt_state --ignore=step' in str(err.value)
  # Not a msgpack file at all.
  junk = str(tmp_path / 'junk_checkpoint')
  with open(junk, 'wb') as f:
    f.write(b'\xc1 not msgpack')
  with pytest.raises(convert_lib.ConversionError, match='msgpack'):
    convert_lib.convert('maskgit', junk, str(tmp_path / 'w2'))


def test_export_round_trip(tmp_path):
  params, _, workdir, _ = _converted()
  out = str(tmp_path / 'exported_checkpoint')
  report = convert_lib.export('maskgit', workdir, out)
  assert report['tensors'] == len(_flat(params))
  with open(out, 'rb') as f:
    tree = serialization.msgpack_restore(f.read())
  assert sorted(tree) == ['params']
  got, want = _flat(tree['params']), _flat(params)
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  with open(report['config']) as f:
    cfg = json.load(f)
  assert cfg['vqvae']['channel_multipliers'] == [1, 2]
  assert cfg['vqvae']['filters'] == 32 and cfg['image_size'] == SIZE
  # The exported file converts back to the same architecture.
  sd = common.StateDict(maskgit_convert.read_release(out), 'exported')
  assert (maskgit_convert.infer_arch(sd).structure()
          == maskgit_convert.arch_from_config(cfg, maskgit_convert.infer_arch(
              sd)).structure())


@pytest.mark.slow  # taming_test's evaluate test covers the same path.
def test_evaluate_reads_the_workdir():
  results = train_lib.evaluate_workdir(_converted()[2], num_batches=1)
  assert np.isfinite(results['eval/psnr']) and results['step'] == 0


def test_init_from_starts_a_run_from_the_converted_weights():
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  workdir = _converted()[2]
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
