"""Tests for tokenizers_jax.losses.perceptual (LPIPS with VGG16).

The reference is an independent PyTorch implementation (plain torch.nn, no
torchvision) of the VGG16 `features` stack and of LPIPS, randomly initialized
and saved with torch.save; the Flax LPIPS loads those files and must give the
same distances.

Dimension legend:
  B: batch, H/W: image size, C: channels of a VGG tap
"""

import functools
import os
import shutil
import tempfile

from absl.testing import absltest
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from tokenizers_jax.losses import perceptual

# torchvision's VGG16 configuration: conv widths and 'M' for max pools.
VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
             512, 512, 512, 'M', 512, 512, 512, 'M')
TAP_INDICES = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
# Cheap XLA compiles for tiny test shapes (this CPU has 2 cores).
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


class TorchVGG16(nn.Module):

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for v in VGG16_CFG:
      if v == 'M':
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
        cin = v
    self.features = nn.Sequential(*layers)


class TorchLinearHead(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1,
                                                       bias=False))


class TorchLinearHeads(nn.Module):

  def __init__(self):
    super().__init__()
    for k, c in enumerate((64, 128, 256, 512, 512)):
      setattr(self, f'lin{k}', TorchLinearHead(c))


def torch_lpips(vgg, heads, x, y):
  """LPIPS on NCHW tensors in [-1, 1] -> [B]."""
  shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

  def taps(img):
    h, out = (img - shift) / scale, []
    for i, layer in enumerate(vgg.features):
      h = layer(h)
      if i in TAP_INDICES:
        out.append(h)
      if i == TAP_INDICES[-1]:
        return out

  def unit(f):
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)

  total = 0.0
  for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
    head = getattr(heads, f'lin{k}').model
    total = total + head((unit(fx) - unit(fy)) ** 2).mean(dim=(2, 3))
  return total[:, 0]


class _Fixture:
  """Random PyTorch weights saved to a temporary directory (built once)."""

  def __init__(self):
    torch.manual_seed(0)
    self.vgg = TorchVGG16().eval()
    for m in self.vgg.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        nn.init.uniform_(m.bias, -0.1, 0.1)
    self.heads = TorchLinearHeads().eval()
    for p in self.heads.parameters():  # LPIPS heads are non-negative.
      nn.init.uniform_(p, 0.0, 0.2)
    self.dir = tempfile.mkdtemp(prefix='lpips_test_')
    self.vgg_path = os.path.join(self.dir, 'vgg16.pth')
    self.lin_path = os.path.join(self.dir, 'lpips_vgg_lin.pth')
    torch.save(self.vgg.state_dict(), self.vgg_path)
    torch.save(self.heads.state_dict(), self.lin_path)
    self.vgg_state = {k: v.numpy() for k, v in self.vgg.state_dict().items()}
    self.lin_state = {k: v.numpy() for k, v in self.heads.state_dict().items()}
    self.lpips = perceptual.LPIPS.from_files(self.vgg_path, self.lin_path)
    self.run = jax.jit(lambda m, x, y: m(x, y), compiler_options=FAST_COMPILE)

  def torch_distance(self, x, y):
    with torch.no_grad():
      return torch_lpips(self.vgg, self.heads,
                         torch.from_numpy(x).permute(0, 3, 1, 2),
                         torch.from_numpy(y).permute(0, 3, 1, 2)).numpy()


@functools.cache
def _fixture():
  return _Fixture()


def tearDownModule():
  if _fixture.cache_info().currsize:
    shutil.rmtree(_fixture().dir, ignore_errors=True)


def _images(seed, shape):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, shape).astype(np.float32)
  y = np.clip(x + 0.3 * rng.normal(size=shape), -1, 1).astype(np.float32)
  return x, y


class LPIPSTest(absltest.TestCase):

  def test_matches_pytorch(self):
    fx = _fixture()
    # 24x40 checks the floor of odd sizes in the pools (3x5 -> 1x2).
    for seed, shape in ((0, (2, 32, 32, 3)), (1, (1, 24, 40, 3))):
      x, y = _images(seed, shape)
      expected = fx.torch_distance(x, y)
      got = fx.run(fx.lpips, jnp.asarray(x), jnp.asarray(y))
      self.assertEqual(got.shape, (shape[0],))
      self.assertTrue(np.all(expected > 0))
      np.testing.assert_allclose(got, expected, rtol=1e-4)

  def test_identity_symmetry_and_ordering(self):
    fx = _fixture()
    x, y = _images(2, (2, 32, 32, 3))
    np.testing.assert_array_equal(fx.run(fx.lpips, x, x), 0.0)
    np.testing.assert_allclose(fx.run(fx.lpips, x, y), fx.run(fx.lpips, y, x),
                               rtol=1e-6)
    # A small perturbation is closer than a large one.
    near = fx.run(fx.lpips, x, 0.95 * x + 0.05 * y)
    far = fx.run(fx.lpips, x, y)
    self.assertTrue(np.all(near < far))

  def test_weights_frozen_and_input_gradient(self):
    fx = _fixture()
    self.assertEmpty(jax.tree.leaves(nnx.state(fx.lpips, nnx.Param)))
    graphdef, state = nnx.split(fx.lpips)
    x, y = _images(3, (1, 32, 32, 3))

    def loss(state, x):
      return jnp.sum(nnx.merge(graphdef, state)(x, y))

    g_state, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)),
                           compiler_options=FAST_COMPILE)(state, x)
    for leaf in jax.tree.leaves(g_state):
      self.assertEqual(float(jnp.abs(leaf).max()), 0.0)
    self.assertTrue(bool(jnp.all(jnp.isfinite(g_x))))
    self.assertGreater(float(jnp.abs(g_x).max()), 0.0)

  def test_conversion_layout(self):
    fx = _fixture()
    w = fx.vgg_state['features.17.weight']  # [512, 256, 3, 3] OIHW.
    np.testing.assert_array_equal(fx.lpips.vgg.conv(17).kernel[...],
                                  w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(fx.lpips.lin3[...],
                                  fx.lin_state['lin3.model.1.weight'].ravel())
    self.assertEqual(fx.lpips.vgg.conv(0).kernel.get_metadata()['out_sharding'],
                     ('conv_h', 'conv_w', 'embed_in', 'embed'))

  def test_npz_and_prefixed_keys(self):
    fx = _fixture()
    # LPIPS/taming checkpoints name the trunk `net.slice{k}.{index}.*`.
    slice_of = {i: k + 1 for k, stage in enumerate(perceptual.VGG16_STAGES)
                for i in stage}
    renamed = {}
    for key, value in fx.vgg_state.items():
      index = int(key.split('.')[1])
      renamed[f'net.slice{slice_of[index]}.{index}.{key.split(".")[2]}'] = value
    path = os.path.join(fx.dir, 'lpips_full.npz')
    np.savez(path, **renamed, **fx.lin_state)
    model = perceptual.LPIPS.from_files(path, path)
    for i, _, _ in perceptual.VGG16_CONVS:
      np.testing.assert_array_equal(model.vgg.conv(i).kernel[...],
                                    fx.lpips.vgg.conv(i).kernel[...])
      np.testing.assert_array_equal(model.vgg.conv(i).bias[...],
                                    fx.lpips.vgg.conv(i).bias[...])
    for a, b in zip(model.linear_heads(), fx.lpips.linear_heads()):
      np.testing.assert_array_equal(a[...], b[...])

  def test_negative_heads_are_clamped(self):
    fx = _fixture()
    x, y = _images(4, (2, 32, 32, 3))
    neg, zero = nnx.clone(fx.lpips), nnx.clone(fx.lpips)
    neg.lin2[...] = -jnp.abs(fx.lpips.lin2[...])
    zero.lin2[...] = jnp.zeros_like(fx.lpips.lin2[...])
    np.testing.assert_allclose(fx.run(neg, x, y), fx.run(zero, x, y),
                               rtol=1e-6)

  def test_loading_errors(self):
    fx = _fixture()
    missing = os.path.join(fx.dir, 'nope.pth')
    with self.assertRaisesRegex(FileNotFoundError, 'nope.pth'):
      perceptual.LPIPS.from_files(missing, fx.lin_path)
    partial = dict(fx.vgg_state)
    del partial['features.28.bias']
    path = os.path.join(fx.dir, 'partial.npz')
    np.savez(path, **partial)
    with self.assertRaisesRegex(ValueError,
                                r'missing keys.*features\.28\.bias'):
      perceptual.load_vgg16_state_dict(fx.lpips.vgg,
                                       perceptual.read_state_dict(path))
    bad = dict(fx.lin_state)
    bad['lin2.model.1.weight'] = np.ones((1, 128, 1, 1), np.float32)
    with self.assertRaisesRegex(ValueError,
                                r'lin2\.model\.1\.weight: expected '
                                r'\(1, 256, 1, 1\), got \(1, 128, 1, 1\)'):
      perceptual.load_lpips_linear_state_dict(fx.lpips, bad)
    # A failed load leaves the weights untouched.
    np.testing.assert_array_equal(
        fx.lpips.lin2[...], fx.lin_state['lin2.model.1.weight'].ravel())
    with self.assertRaisesRegex(ValueError, 'expects'):
      fx.lpips(jnp.zeros((1, 32, 32, 1)), jnp.zeros((1, 32, 32, 1)))


if __name__ == '__main__':
  absltest.main()
