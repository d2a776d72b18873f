"""Tests for tokenizers_jax.frontends.image.

The reference is an independent PyTorch (NCHW) implementation of the VQGAN
encoder/decoder written below from the architecture description; the Flax
modules get its random weights and must reproduce its outputs.

Dimension legend:
  B: batch, H/W: image size, h/w: latent size, C: channels, Z: latent channels
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax.frontends import image as image_lib
from . import fill_params

# A tiny config for the PyTorch parity test (f = 2, attention at 8x8).
PARITY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
              z_channels=4, resolution=16, num_groups=4)
# The CI-sized VQGAN front end of REFERENCES.md (f = 4, 32x32 -> 8x8).
CI = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
          z_channels=32, resolution=32)


# -----------------------------------------------------------------------------
# Independent PyTorch reference.
# -----------------------------------------------------------------------------


def _tnorm(c, groups):
  return nn.GroupNorm(image_lib.group_count(c, groups), c, eps=1e-6)


class TorchResBlock(nn.Module):

  def __init__(self, cin, cout, groups):
    super().__init__()
    self.norm1 = _tnorm(cin, groups)
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
    self.norm2 = _tnorm(cout, groups)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
    self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
    return skip + h


class TorchAttn(nn.Module):

  def __init__(self, c, groups):
    super().__init__()
    self.norm = _tnorm(c, groups)
    self.q, self.k, self.v, self.proj_out = (
        nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, x):
    b, c, hh, ww = x.shape
    h = self.norm(x)
    q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)   # b, n, c
    k = self.k(h).reshape(b, c, hh * ww)                     # b, c, m
    v = self.v(h).reshape(b, c, hh * ww)                     # b, c, m
    attn = torch.softmax(torch.bmm(q, k) / c ** 0.5, dim=2)  # b, n, m
    out = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + self.proj_out(out)


class TorchDown(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, stride=2)

  def forward(self, x):
    return self.conv(F.pad(x, (0, 1, 0, 1)))


class TorchUp(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


def _level(blocks, attns, name, resample):
  d = nn.ModuleDict(dict(blocks=nn.ModuleList(blocks),
                         attns=nn.ModuleList(attns)))
  if resample is not None:
    d[name] = resample
  return d


class TorchEncoder(nn.Module):

  def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions,
               z_channels, resolution, num_groups, in_channels=3):
    super().__init__()
    g = num_groups
    self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
    levels, cin, res = [], ch, resolution
    for i, m in enumerate(ch_mult):
      blocks, attns = [], []
      for _ in range(num_res_blocks):
        blocks.append(TorchResBlock(cin, ch * m, g))
        cin = ch * m
        if res in attn_resolutions:
          attns.append(TorchAttn(cin, g))
      last = i == len(ch_mult) - 1
      levels.append(_level(blocks, attns, 'downsample',
                           None if last else TorchDown(cin)))
      res //= 2
    self.down = nn.ModuleList(levels)
    self.mid_block_1 = TorchResBlock(cin, cin, g)
    self.mid_attn = TorchAttn(cin, g)
    self.mid_block_2 = TorchResBlock(cin, cin, g)
    self.norm_out = _tnorm(cin, g)
    self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)

  def forward(self, x):
    h = self.conv_in(x)
    for level in self.down:
      for i, block in enumerate(level['blocks']):
        h = block(h)
        if len(level['attns']):
          h = level['attns'][i](h)
      if 'downsample' in level:
        h = level['downsample'](h)
    h = self.mid_block_2(self.mid_attn(self.mid_block_1(h)))
    return self.conv_out(F.silu(self.norm_out(h)))


class TorchDecoder(nn.Module):

  def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions,
               z_channels, resolution, num_groups, out_channels=3):
    super().__init__()
    g = num_groups
    cin = ch * ch_mult[-1]
    res = resolution // 2 ** (len(ch_mult) - 1)
    self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
    self.mid_block_1 = TorchResBlock(cin, cin, g)
    self.mid_attn = TorchAttn(cin, g)
    self.mid_block_2 = TorchResBlock(cin, cin, g)
    levels = [None] * len(ch_mult)
    for i in reversed(range(len(ch_mult))):
      blocks, attns = [], []
      for _ in range(num_res_blocks + 1):
        blocks.append(TorchResBlock(cin, ch * ch_mult[i], g))
        cin = ch * ch_mult[i]
        if res in attn_resolutions:
          attns.append(TorchAttn(cin, g))
      levels[i] = _level(blocks, attns, 'upsample',
                         TorchUp(cin) if i else None)
      res *= 2
    self.up = nn.ModuleList(levels)
    self.norm_out = _tnorm(cin, g)
    self.conv_out = nn.Conv2d(cin, out_channels, 3, padding=1)

  def forward(self, z):
    h = self.mid_block_2(self.mid_attn(self.mid_block_1(self.conv_in(z))))
    for i in reversed(range(len(self.up))):
      level = self.up[i]
      for j, block in enumerate(level['blocks']):
        h = block(h)
        if len(level['attns']):
          h = level['attns'][j](h)
      if 'upsample' in level:
        h = level['upsample'](h)
    return self.conv_out(F.silu(self.norm_out(h)))


def _copy_torch_into_flax(torch_module, flax_module):
  """Copies weights by path; returns the number of tensors copied."""
  tstate = {k: v.detach().numpy() for k, v in
            torch_module.state_dict().items()}
  copied = 0
  for path, var in _flat(nnx.state(flax_module, nnx.Param)):
    *prefix, leaf = (str(p) for p in path)
    tname = '.'.join(prefix + [{'kernel': 'weight', 'scale': 'weight',
                                'bias': 'bias'}[leaf]])
    value = tstate.pop(tname)
    if leaf == 'kernel':
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    var[...] = jnp.asarray(value)
    copied += 1
  assert not tstate, f'unused torch tensors: {sorted(tstate)}'
  return copied


@functools.cache
def _ci_frontend():
  """The CI config, built abstractly (shapes and metadata, no arrays)."""
  return nnx.eval_shape(
      lambda: image_lib.ImageFrontEnd(num_groups=8, **CI, rngs=nnx.Rngs(0)))


def _build(config, dtype=jnp.float32, seed=0):
  """Builds a front end abstractly, then fills it from numpy.

  On this 2-core CPU the eager initializers compile once per parameter shape
  (about 0.5 s each); filling an abstract module avoids that. The real
  initializers are exercised by `test_real_init`.
  """
  fe = nnx.eval_shape(
      lambda: image_lib.ImageFrontEnd(**config, dtype=dtype, rngs=nnx.Rngs(0)))
  fill_params(fe, seed)
  return fe


@functools.cache
def _parity_frontend(dtype=jnp.float32):
  return _build(PARITY, dtype, seed=3)


# Cheap XLA compiles for tiny test shapes (this CPU has 2 cores).
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}
# Shared jitted calls: equal module structures and shapes reuse one compile.
_encode = jax.jit(lambda m, x: m.encode(x), compiler_options=FAST_COMPILE)
_decode = jax.jit(lambda m, z: m.decode(z), compiler_options=FAST_COMPILE)


def _flat(state):
  return nnx.to_flat_state(state)


class GroupCountTest(parameterized.TestCase):

  @parameterized.parameters((128, 32, 32), (16, 32, 16), (24, 32, 24),
                            (48, 32, 24), (20, 8, 5), (7, 4, 1), (64, 6, 4))
  def test_known_answers(self, channels, groups, expected):
    self.assertEqual(image_lib.group_count(channels, groups), expected)


class ImageFrontEndTest(parameterized.TestCase):

  @parameterized.parameters(('repeat', 'flax'), ('subpixel', 'channel_sums'))
  def test_encoder_decoder_match_pytorch(self, upsample, group_norm):
    torch.manual_seed(0)
    tenc, tdec = TorchEncoder(**PARITY).eval(), TorchDecoder(**PARITY).eval()
    # Non-trivial norm affines, so their copy is checked too.
    for m in list(tenc.modules()) + list(tdec.modules()):
      if isinstance(m, nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
    fe = _build(dict(PARITY, upsample=upsample, group_norm=group_norm),
                seed=1)
    self.assertEqual({l['upsample'].mode for l in fe.decoder.up[1:]},
                     {upsample})
    self.assertEqual(type(fe.encoder.norm_out) is nnx.GroupNorm,
                     group_norm == 'flax')
    n_enc = _copy_torch_into_flax(tenc, fe.encoder)
    n_dec = _copy_torch_into_flax(tdec, fe.decoder)
    self.assertGreater(n_enc, 30)
    self.assertGreater(n_dec, 40)

    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3))
    x = x.astype(np.float32)
    with torch.no_grad():
      tz = tenc(torch.from_numpy(x).permute(0, 3, 1, 2))
      tx = tdec(tz)
    tz = tz.permute(0, 2, 3, 1).numpy()
    tx = tx.permute(0, 2, 3, 1).numpy()
    z = _encode(fe, x)
    x_hat = _decode(fe, jnp.asarray(tz))
    self.assertEqual(z.shape, (2, 8, 8, 4))
    np.testing.assert_allclose(z, tz, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x_hat, tx, rtol=1e-4, atol=1e-4)

  def test_ci_config_shapes_f4(self):
    fe = _ci_frontend()
    self.assertEqual(fe.modality, 'image')
    self.assertEqual(fe.downsample_factor, 4)
    self.assertEqual(fe.latent_shape((5, 32, 32, 3)), (5, 8, 8, 32))
    self.assertEqual(fe.latent_shape((1, 64, 32, 3)), (1, 16, 8, 32))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    z = jax.eval_shape(lambda m, x: m.encode(x), fe, x)
    self.assertEqual(z.shape, (2, 8, 8, 32))
    x_hat = jax.eval_shape(lambda m, z: m.decode(z), fe, z)
    self.assertEqual(x_hat.shape, (2, 32, 32, 3))

  def test_taming_f16_structure(self):
    fe = nnx.eval_shape(lambda: image_lib.ImageFrontEnd(rngs=nnx.Rngs(0)))
    self.assertEqual(fe.downsample_factor, 16)
    self.assertEqual(fe.latent_shape((1, 256, 256, 3)), (1, 16, 16, 256))
    # Attention only at the 16x16 level: 2 blocks in the encoder, 3 in the
    # decoder, plus one mid attention each.
    self.assertEqual([len(l['attns']) for l in fe.encoder.down],
                     [0, 0, 0, 0, 2])
    self.assertEqual([len(l['attns']) for l in fe.decoder.up],
                     [0, 0, 0, 0, 3])
    self.assertEqual([len(l['blocks']) for l in fe.decoder.up], [3] * 5)
    self.assertIsNone(fe.encoder.down[4]['downsample'])
    self.assertIsNone(fe.decoder.up[0]['upsample'])
    self.assertEqual(fe.encoder.conv_out.kernel.shape, (3, 3, 512, 256))
    self.assertEqual(fe.last_layer.shape, (3, 3, 128, 3))

  def test_gradients_reach_every_parameter(self):
    # Mid-block attention only, to keep the backward compile small.
    fe = _build(dict(PARITY, attn_resolutions=()), seed=4)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)

    def loss_fn(model):
      return jnp.mean(jnp.square(model(x) - target))

    grads = _flat(
        jax.jit(nnx.grad(loss_fn), compiler_options=FAST_COMPILE)(fe))
    self.assertLen(grads, len(_flat(nnx.state(fe, nnx.Param))))
    zero, nonzero = [], []
    for path, g in grads:
      norm = float(jnp.linalg.norm(g[...]))
      self.assertTrue(np.isfinite(norm), path)
      (nonzero if norm > 1e-7 else zero).append(path)
    # Softmax is invariant to the key bias (it shifts every score of a query
    # by the same amount), so exactly the key biases get zero gradient.
    self.assertLen(zero, 2)  # The encoder's and the decoder's mid attention.
    for path in zero:
      self.assertEqual(path[-2:], ('k', 'bias'), path)
    self.assertGreater(len(nonzero), 60)

  def test_bf16_compute_fp32_params(self):
    fe32 = _parity_frontend()
    fe16 = _parity_frontend(jnp.bfloat16)
    for _, p in _flat(nnx.state(fe16, nnx.Param)):
      self.assertEqual(p[...].dtype, jnp.float32)
    x = jnp.asarray(
        np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    z16, z32 = _encode(fe16, x), _encode(fe32, x)
    self.assertEqual(z16.dtype, jnp.bfloat16)
    self.assertEqual(z32.dtype, jnp.float32)
    rel = jnp.linalg.norm(z16.astype(jnp.float32) - z32) / jnp.linalg.norm(z32)
    self.assertLess(float(rel), 0.05)

  def test_logical_axis_metadata_without_mesh(self):
    fe = _ci_frontend()
    kernel = fe.encoder.conv_in.kernel
    self.assertEqual(kernel.get_metadata()['out_sharding'],
                     ('conv_h', 'conv_w', 'embed_in', 'embed'))
    self.assertFalse(kernel.get_metadata()['eager_sharding'])
    self.assertEqual(fe.encoder.conv_in.bias.get_metadata()['out_sharding'],
                     ('embed',))
    self.assertEqual(fe.encoder.norm_out.scale.get_metadata()['out_sharding'],
                     ('embed',))
    for _, p in _flat(nnx.state(fe, nnx.Param)):
      self.assertLen(p.get_metadata()['out_sharding'], len(p.shape))

  @parameterized.named_parameters(
      ('not_divisible', (1, 30, 32, 3), 'not divisible'),
      ('wrong_channels', (1, 32, 32, 1), '3 channels'),
      ('wrong_rank', (32, 32, 3), 'rank 4'))
  def test_bad_image_shapes(self, shape, message):
    fe = _ci_frontend()
    with self.assertRaisesRegex(ValueError, message):
      fe.latent_shape(shape)
    with self.assertRaisesRegex(ValueError, message):
      jax.eval_shape(lambda m, x: m.encode(x), fe,
                     jax.ShapeDtypeStruct(shape, jnp.float32))

  def test_bad_latent_and_config(self):
    fe = _ci_frontend()
    with self.assertRaisesRegex(ValueError, '32 channels'):
      jax.eval_shape(lambda m, z: m.decode(z), fe,
                     jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32))
    with self.assertRaisesRegex(ValueError, 'resolution'):
      image_lib.ImageConfig(ch_mult=(1, 2, 2), resolution=30)
    with self.assertRaisesRegex(ValueError, 'ch_mult'):
      image_lib.ImageConfig(ch_mult=())
    with self.assertRaisesRegex(ValueError, 'Unknown upsample'):
      image_lib.ImageConfig(upsample='bilinear')
    with self.assertRaisesRegex(ValueError, 'Unknown group_norm'):
      image_lib.ImageConfig(group_norm='welford')

  def test_real_init(self):
    # Whole front ends are built abstractly above; the initializers run here.
    # An RBG key keeps the per-shape initializer compiles cheap on CPU.
    rngs = nnx.Rngs(jax.random.key(0, impl='rbg'))
    block = image_lib.ResnetBlock(16, 32, num_groups=8, rngs=rngs)
    kernel = block.conv2.kernel[...]  # [3, 3, 32, 32], LeCun normal.
    self.assertAlmostEqual(float(jnp.std(kernel)), (9 * 32) ** -0.5,
                           delta=0.1 * (9 * 32) ** -0.5)
    np.testing.assert_array_equal(block.conv1.bias[...], 0.0)
    np.testing.assert_array_equal(block.norm2.scale[...], 1.0)
    self.assertEqual(block.nin_shortcut.kernel.shape, (1, 1, 16, 32))
    self.assertEqual(block.norm1.num_groups, 8)
    self.assertIsNone(image_lib.ResnetBlock(8, 8, rngs=rngs).nin_shortcut)

  def test_dropout_only_in_train_mode(self):
    block = image_lib.ResnetBlock(
        8, 8, num_groups=4, dropout=0.5,
        rngs=nnx.Rngs(jax.random.key(0, impl='rbg')))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 4, 8)),
                    jnp.float32)
    a = block(x, train=True)
    b = block(x, train=True)
    self.assertGreater(float(jnp.abs(a - b).max()), 0.0)
    np.testing.assert_array_equal(block(x), block(x, train=False))


if __name__ == '__main__':
  absltest.main()
