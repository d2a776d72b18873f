"""Tests for tokenizers_jax.frontends.magvit2.

References are independent: `torch.nn.functional.pixel_shuffle` for the
depth-to-space channel order and a numpy AdaptiveGroupNorm written from the
formula. Front ends are built abstractly and filled from numpy (eager
initializers compile once per parameter shape on this 2-core CPU).

Dimension legend:
  B: batch, H/W: image size, h/w: latent size, C: channels, Z: latent channels
"""

import numpy as np
import pytest
from flax import nnx
import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F

from tokenizers_jax.frontends import image as image_lib
from tokenizers_jax.frontends import magvit2 as magvit2_lib
from . import fill_params

# Tiny f = 2 config (16x16 -> 8x8) and its f = 4 sibling (16x16 -> 4x4).
F2 = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
          resolution=16, num_groups=4)
F4 = dict(F2, ch_mult=(1, 2, 2))

# Cheap XLA compiles for tiny test shapes.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}
_encode = jax.jit(lambda m, x: m.encode(x), compiler_options=FAST_COMPILE)
_decode = jax.jit(lambda m, z: m.decode(z), compiler_options=FAST_COMPILE)
_decode_key = jax.jit(lambda m, z, k: m.decode(z, noise_key=k),
                      compiler_options=FAST_COMPILE)


@jax.jit(static_argnums=0, compiler_options=FAST_COMPILE)
def _decode_split(graphdef, state, z):
  model = nnx.merge(graphdef, state)
  out = model.decode(z)
  return out, nnx.state(model)


def _decode_stateful(model, z):
  """Like `nnx.jit(decode)`: writes the advanced RNG state back."""
  out, state = _decode_split(*nnx.split(model), z)
  nnx.update(model, state)
  return out


def _flat(state):
  return nnx.to_flat_state(state)


def _build(config, seed=0, dtype=jnp.float32, noise_seed=0):
  """Builds a front end abstractly, then fills parameters from numpy."""
  fe = nnx.eval_shape(lambda: magvit2_lib.Magvit2FrontEnd(
      **config, dtype=dtype, rngs=nnx.Rngs(0)))
  fill_params(fe, seed)
  if fe.noise_rngs is not None:
    fe.noise_rngs.noise.key.set_value(jax.random.key(noise_seed))
    fe.noise_rngs.noise.count.set_value(jnp.zeros((), jnp.uint32))
  return fe


def _images(seed, shape=(2, 16, 16, 3)):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)


@pytest.fixture(scope='module')
def fe2():
  return _build(F2, seed=1)


@pytest.fixture(scope='module')
def fe_noise():
  return _build(dict(F2, noise_concat=True), seed=2, noise_seed=7)


@pytest.fixture(scope='module')
def abstract_f4():
  return nnx.eval_shape(
      lambda: magvit2_lib.Magvit2FrontEnd(**F4, rngs=nnx.Rngs(0)))


# -----------------------------------------------------------------------------
# Building blocks.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('block,channels', [(2, 12), (2, 4), (3, 18)])
def test_depth_to_space_matches_torch_pixel_shuffle(block, channels):
  x = np.random.default_rng(0).normal(size=(2, 3, 5, channels))
  x = x.astype(np.float32)
  got = np.asarray(magvit2_lib.depth_to_space(jnp.asarray(x), block))
  want = F.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), block)
  want = want.permute(0, 2, 3, 1).numpy()
  assert got.shape == (2, 3 * block, 5 * block, channels // block ** 2)
  np.testing.assert_array_equal(got, want)


def test_depth_to_space_channel_rule():
  # Input channel c*4 + i*2 + j -> output channel c at offset (i, j).
  x = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 1, 8)
  y = np.asarray(magvit2_lib.depth_to_space(x, 2))[0]   # [2, 2, 2]
  for c in range(2):
    for i in range(2):
      for j in range(2):
        assert y[i, j, c] == c * 4 + i * 2 + j


def test_depth_to_space_errors():
  with pytest.raises(ValueError, match='not divisible'):
    magvit2_lib.depth_to_space(jnp.zeros((1, 2, 2, 6)), 2)
  with pytest.raises(ValueError, match='rank 4'):
    magvit2_lib.depth_to_space(jnp.zeros((2, 2, 8)), 2)


def _numpy_adagn(x, z, wg, bg, wb, bb, groups, eps=1e-6, ddof=0):
  """Independent float64 AdaptiveGroupNorm: x [B,H,W,D], z [B,h,w,Z]."""
  x = x.astype(np.float64)
  z = z.astype(np.float64)
  b, hh, ww, d = x.shape
  xg = x.reshape(b, hh, ww, groups, d // groups)
  mu = xg.mean(axis=(1, 2, 4), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  xn = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
  zf = z.reshape(b, -1, z.shape[-1])
  n = zf.shape[1]
  zmean = zf.mean(axis=1)
  zvar = ((zf - zmean[:, None]) ** 2).sum(axis=1) / (n - ddof)
  gamma = np.sqrt(zvar + eps) @ wg + bg       # [B, D]
  beta = zmean @ wb + bb
  return xn * gamma[:, None, None, :] + beta[:, None, None, :]


@pytest.mark.parametrize('ddof', [0, 1])
def test_adaptive_group_norm_matches_numpy(ddof):
  rng = np.random.default_rng(5)
  # 12 channels, 4 groups of 3; real initializers (RBG keys compile cheaply).
  norm = magvit2_lib.AdaptiveGroupNorm(
      5, 12, num_groups=4, ddof=ddof,
      rngs=nnx.Rngs(jax.random.key(0, impl='rbg')))
  assert norm.norm.num_groups == 4
  assert norm.norm.scale is None and norm.norm.bias is None  # No affine.
  assert norm.gamma.kernel.shape == (5, 12)
  for lin in (norm.gamma, norm.beta):
    lin.bias.set_value(jnp.asarray(rng.normal(size=12), jnp.float32))
  x = rng.normal(size=(3, 6, 6, 12)).astype(np.float32) * 2.0 + 0.5
  z = rng.normal(size=(3, 2, 3, 5)).astype(np.float32) * 1.5 - 0.3
  got = norm(jnp.asarray(x), jnp.asarray(z))
  want = _numpy_adagn(
      x, z, np.asarray(norm.gamma.kernel[...]), np.asarray(norm.gamma.bias[...]),
      np.asarray(norm.beta.kernel[...]), np.asarray(norm.beta.bias[...]),
      groups=4, ddof=ddof)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match='5 channels'):
    norm(jnp.asarray(x), jnp.zeros((3, 2, 3, 4)))
  with pytest.raises(ValueError, match='batch'):
    norm(jnp.asarray(x), jnp.zeros((2, 2, 3, 5)))


def test_resblock_shortcut_kernel():
  def block(cin, cout, **kw):
    return nnx.eval_shape(lambda: magvit2_lib.Magvit2ResBlock(
        cin, cout, num_groups=4, **kw, rngs=nnx.Rngs(0)))

  assert block(8, 16, shortcut_kernel=3).shortcut.kernel.shape == (
      3, 3, 8, 16)
  assert block(8, 16).shortcut.kernel.shape == (1, 1, 8, 16)
  assert block(8, 8).shortcut is None
  with pytest.raises(ValueError, match='shortcut_kernel'):
    block(8, 16, shortcut_kernel=2)


# -----------------------------------------------------------------------------
# Front end.
# -----------------------------------------------------------------------------


def test_encode_decode_f2(fe2):
  assert fe2.modality == 'image'
  assert fe2.downsample_factor == 2
  assert fe2.latent_shape((2, 16, 16, 3)) == (2, 8, 8, 4)
  assert fe2.latent_shape([1, 32, 16, 3]) == (1, 16, 8, 4)
  z = _encode(fe2, _images(0))
  assert z.shape == (2, 8, 8, 4) and z.dtype == jnp.float32
  x_hat = _decode(fe2, z)
  assert x_hat.shape == (2, 16, 16, 3)
  assert np.all(np.isfinite(np.asarray(x_hat)))
  # No noise: decoding is a pure function of z; a key is ignored.
  np.testing.assert_array_equal(x_hat, _decode(fe2, z))
  np.testing.assert_array_equal(
      x_hat, _decode_key(fe2, z, jax.random.key(3)))
  assert fe2.noise_rngs is None


def test_shapes_f4(abstract_f4):
  fe = abstract_f4
  assert fe.downsample_factor == 4
  assert fe.latent_shape((5, 16, 16, 3)) == (5, 4, 4, 4)
  assert fe.latent_shape((1, 32, 16, 3)) == (1, 8, 4, 4)
  x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  z = jax.eval_shape(lambda m, x: m.encode(x), fe, x)
  assert z.shape == (2, 4, 4, 4)
  x_hat = jax.eval_shape(lambda m, z: m.decode(z), fe, z)
  assert x_hat.shape == (2, 16, 16, 3)


def test_structure_and_no_attention(abstract_f4):
  fe = abstract_f4
  enc, dec = fe.encoder, fe.decoder
  assert [len(l['blocks']) for l in enc.down] == [1, 1, 1]
  assert len(enc.mid_blocks) == 1 and len(dec.mid_blocks) == 1
  assert [len(l['blocks']) for l in dec.up] == [1, 1, 1]
  assert enc.down[0]['downsample'].strides == (2, 2)
  assert enc.down[2]['downsample'] is None
  assert enc.conv_out.kernel.shape == (1, 1, 16, 4)
  assert dec.conv_in.kernel.shape == (3, 3, 4, 16)
  # Depth-to-space upsamplers: conv D -> 4D.
  assert dec.up[2]['upsample'].conv.kernel.shape == (3, 3, 16, 64)
  assert dec.up[1]['upsample'].conv.kernel.shape == (3, 3, 16, 64)
  assert dec.up[0]['upsample'] is None
  # Per-level AdaGN at the level's output width, conditioned on Z channels.
  assert dec.up[0]['norm'].gamma.kernel.shape == (4, 8)
  assert dec.up[2]['norm'].beta.kernel.shape == (4, 16)
  assert dec.norm_out.gamma.kernel.shape == (4, 8)
  assert fe.last_layer is dec.conv_out.kernel
  assert fe.last_layer.shape == (3, 3, 8, 3)
  for _, node in nnx.iter_graph(fe):
    assert not isinstance(node, image_lib.AttnBlock)
  names = {str(p) for path, _ in _flat(nnx.state(fe)) for p in path}
  assert not names & {'attn', 'attns', 'mid_attn', 'q', 'k', 'v', 'proj_out'}


def test_logical_axis_metadata(abstract_f4):
  for _, p in _flat(nnx.state(abstract_f4, nnx.Param)):
    meta = p.get_metadata()
    assert len(meta['out_sharding']) == len(p.shape)
    assert meta['eager_sharding'] is False
  gamma = abstract_f4.decoder.norm_out.gamma.kernel
  assert gamma.get_metadata()['out_sharding'] == ('embed_in', 'embed')


def test_bf16_compute_fp32_params():
  fe = nnx.eval_shape(lambda: magvit2_lib.Magvit2FrontEnd(
      **F2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  for _, p in _flat(nnx.state(fe, nnx.Param)):
    assert p.dtype == jnp.float32
  z = jax.eval_shape(lambda m, x: m.encode(x), fe,
                     jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  assert z.dtype == jnp.bfloat16
  assert jax.eval_shape(lambda m, z: m.decode(z), fe, z).dtype == jnp.bfloat16


def test_gradients_finite(fe2):
  x = _images(1, (1, 16, 16, 3))
  target = _images(2, (1, 16, 16, 3))

  def loss_fn(model):
    return jnp.mean(jnp.square(model(x) - target))

  grads = _flat(
      jax.jit(nnx.grad(loss_fn), compiler_options=FAST_COMPILE)(fe2))
  assert len(grads) == len(_flat(nnx.state(fe2, nnx.Param)))
  zero = []
  for path, g in grads:
    norm = float(jnp.linalg.norm(g[...]))
    assert np.isfinite(norm), path
    if norm <= 1e-9:
      zero.append(path)
  assert not zero, zero
  assert any('gamma' in map(str, path) for path, _ in grads)


def test_noise_concat(fe_noise):
  dec = fe_noise.decoder
  assert fe_noise.noise_concat
  assert dec.conv_in.kernel.shape == (3, 3, 8, 16)          # 2Z -> D.
  assert dec.up[0]['norm'].gamma.kernel.shape == (4, 8)      # z alone.
  z = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = _decode_key(fe_noise, z, k1)
  assert a.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(a, _decode_key(fe_noise, z, k1))
  assert float(jnp.abs(a - _decode_key(fe_noise, z, k2)).max()) > 1e-4

  # No key: the front end's own stream. Deterministic given the module
  # state; a stateful jit call (like nnx.jit) advances the stream.
  saved = jax.tree.map(jnp.copy, nnx.state(fe_noise, nnx.RngState))
  b1 = _decode_stateful(fe_noise, z)
  b2 = _decode_stateful(fe_noise, z)
  assert float(jnp.abs(b1 - b2).max()) > 1e-4
  nnx.update(fe_noise, saved)
  np.testing.assert_array_equal(b1, _decode_stateful(fe_noise, z))
  # A plain jax.jit call sees the same state but drops its update.
  nnx.update(fe_noise, saved)
  np.testing.assert_array_equal(b1, _decode(fe_noise, z))
  np.testing.assert_array_equal(b1, _decode(fe_noise, z))


# -----------------------------------------------------------------------------
# Errors.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('shape,message', [
    ((1, 30, 32, 3), 'not divisible'),
    ((1, 32, 32, 1), '3 channels'),
    ((32, 32, 3), 'rank 4'),
])
def test_bad_image_shapes(abstract_f4, shape, message):
  with pytest.raises(ValueError, match=message):
    abstract_f4.latent_shape(shape)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda m, x: m.encode(x), abstract_f4,
                   jax.ShapeDtypeStruct(shape, jnp.float32))


def test_bad_latent_and_config(abstract_f4):
  with pytest.raises(ValueError, match='4 channels'):
    jax.eval_shape(lambda m, z: m.decode(z), abstract_f4,
                   jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32))
  with pytest.raises(ValueError, match='rank 4'):
    jax.eval_shape(lambda m, z: m.decode(z), abstract_f4,
                   jax.ShapeDtypeStruct((4, 4, 4), jnp.float32))
  with pytest.raises(ValueError, match='resolution'):
    magvit2_lib.Magvit2Config(ch_mult=(1, 2, 2), resolution=30)
  with pytest.raises(ValueError, match='ch_mult'):
    magvit2_lib.Magvit2Config(ch_mult=())
  with pytest.raises(ValueError, match='shortcut_kernel'):
    magvit2_lib.Magvit2Config(shortcut_kernel=5)
  with pytest.raises(ValueError, match='num_res_blocks'):
    magvit2_lib.Magvit2Config(num_res_blocks=-1)
