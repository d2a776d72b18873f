"""Tests for tokenizers_jax.evaluators.fid (FID InceptionV3 and statistics).

The network reference is an independent PyTorch implementation (plain
torch.nn, no torchvision) of the FID InceptionV3, randomly initialized, with
BatchNorm running statistics calibrated on random images and then perturbed,
saved with torch.save; the Flax network loads that file and must give the same
pool3 features. The statistics are checked against numpy (np.mean, np.cov with
ddof=1), scipy.linalg.sqrtm and closed forms.

Dimension legend:
  B: batch, H/W: image size, N: samples, D: feature dimension
"""

import functools
import importlib.util
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax.numpy as jnp
import numpy as np
from scipy import linalg
import torch
from torch import nn
import torch.nn.functional as F

from tokenizers_jax.evaluators import fid


# -----------------------------------------------------------------------------
# The PyTorch reference network.
# -----------------------------------------------------------------------------


class TorchConvBN(nn.Module):
  """conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; keys `conv.*`, `bn.*`."""

  def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride,
                          padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg_no_pad(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class TorchMixedA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TorchConvBN(cin, 64, 1)
    self.branch5x5_1 = TorchConvBN(cin, 48, 1)
    self.branch5x5_2 = TorchConvBN(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = TorchConvBN(cin, 64, 1)
    self.branch3x3dbl_2 = TorchConvBN(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TorchConvBN(96, 96, 3, padding=1)
    self.branch_pool = TorchConvBN(cin, pool_features, 1)

  def forward(self, x):
    a = self.branch1x1(x)
    b = self.branch5x5_2(self.branch5x5_1(x))
    c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    d = self.branch_pool(_avg_no_pad(x))
    return torch.cat([a, b, c, d], dim=1)


class TorchMixedB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TorchConvBN(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = TorchConvBN(cin, 64, 1)
    self.branch3x3dbl_2 = TorchConvBN(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TorchConvBN(96, 96, 3, stride=2)

  def forward(self, x):
    a = self.branch3x3(x)
    b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], dim=1)


class TorchMixedC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TorchConvBN(cin, 192, 1)
    self.branch7x7_1 = TorchConvBN(cin, c7, 1)
    self.branch7x7_2 = TorchConvBN(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = TorchConvBN(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TorchConvBN(cin, c7, 1)
    self.branch7x7dbl_2 = TorchConvBN(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TorchConvBN(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TorchConvBN(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TorchConvBN(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = TorchConvBN(cin, 192, 1)

  def forward(self, x):
    a = self.branch1x1(x)
    b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    c = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2,
                  self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
      c = layer(c)
    d = self.branch_pool(_avg_no_pad(x))
    return torch.cat([a, b, c, d], dim=1)


class TorchMixedD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TorchConvBN(cin, 192, 1)
    self.branch3x3_2 = TorchConvBN(192, 320, 3, stride=2)
    self.branch7x7x3_1 = TorchConvBN(cin, 192, 1)
    self.branch7x7x3_2 = TorchConvBN(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TorchConvBN(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TorchConvBN(192, 192, 3, stride=2)

  def forward(self, x):
    a = self.branch3x3_2(self.branch3x3_1(x))
    b = self.branch7x7x3_4(self.branch7x7x3_3(
        self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], dim=1)


class TorchMixedE(nn.Module):

  def __init__(self, cin, use_max_pool):
    super().__init__()
    self.use_max_pool = use_max_pool
    self.branch1x1 = TorchConvBN(cin, 320, 1)
    self.branch3x3_1 = TorchConvBN(cin, 384, 1)
    self.branch3x3_2a = TorchConvBN(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = TorchConvBN(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TorchConvBN(cin, 448, 1)
    self.branch3x3dbl_2 = TorchConvBN(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = TorchConvBN(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TorchConvBN(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = TorchConvBN(cin, 192, 1)

  def forward(self, x):
    a = self.branch1x1(x)
    b = self.branch3x3_1(x)
    b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], dim=1)
    c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], dim=1)
    if self.use_max_pool:
      pooled = F.max_pool2d(x, 3, stride=1, padding=1)
    else:
      pooled = _avg_no_pad(x)
    return torch.cat([a, b, c, self.branch_pool(pooled)], dim=1)


class TorchFIDInception(nn.Module):
  """NCHW images in [-1, 1] -> [B, 2048] pool3 features."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TorchConvBN(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = TorchConvBN(32, 32, 3)
    self.Conv2d_2b_3x3 = TorchConvBN(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = TorchConvBN(64, 80, 1)
    self.Conv2d_4a_3x3 = TorchConvBN(80, 192, 3)
    self.Mixed_5b = TorchMixedA(192, 32)
    self.Mixed_5c = TorchMixedA(256, 64)
    self.Mixed_5d = TorchMixedA(288, 64)
    self.Mixed_6a = TorchMixedB(288)
    self.Mixed_6b = TorchMixedC(768, 128)
    self.Mixed_6c = TorchMixedC(768, 160)
    self.Mixed_6d = TorchMixedC(768, 160)
    self.Mixed_6e = TorchMixedC(768, 192)
    self.Mixed_7a = TorchMixedD(768)
    self.Mixed_7b = TorchMixedE(1280, use_max_pool=False)
    self.Mixed_7c = TorchMixedE(2048, use_max_pool=True)
    self.fc = nn.Linear(2048, 1008)  # In the real file too; unused for FID.

  def forward(self, x, resize=True):
    if resize:
      x = F.interpolate(x, size=(299, 299), mode='bilinear',
                        align_corners=False)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b',
                 '7c'):
      x = getattr(self, f'Mixed_{name}')(x)
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def _randomize(net):
  """Random BN affine params; running stats from random images, perturbed."""
  gen = torch.Generator().manual_seed(1)
  bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5, generator=gen)
      bn.bias.uniform_(-0.2, 0.2, generator=gen)
      bn.momentum = 1.0  # running stats := this batch's stats.
    net.train()
    net(torch.rand(4, 3, 96, 112, generator=gen) * 2 - 1, resize=False)
    net.eval()
    for bn in bns:
      std = bn.running_var.sqrt()
      bn.running_mean.add_(0.3 * std * torch.randn(std.shape, generator=gen))
      bn.running_var.mul_(torch.empty(std.shape).uniform_(0.5, 2.0,
                                                          generator=gen))


class _Fixture:
  """A random PyTorch FID Inception saved to a temporary directory (once)."""

  def __init__(self):
    torch.manual_seed(0)
    self.net = TorchFIDInception()
    _randomize(self.net)
    self.dir = tempfile.mkdtemp(prefix='fid_test_')
    self.path = os.path.join(self.dir, 'pt_inception-random.pth')
    torch.save(self.net.state_dict(), self.path)
    self.state = {k: v.numpy() for k, v in self.net.state_dict().items()}
    self.model = fid.InceptionV3.from_file(self.path)

  def torch_features(self, images, resize=True):
    with torch.no_grad():
      x = torch.from_numpy(images).permute(0, 3, 1, 2)
      return self.net(x, resize=resize).numpy()


@functools.cache
def _fixture():
  return _Fixture()


def tearDownModule():
  if _fixture.cache_info().currsize:
    shutil.rmtree(_fixture().dir, ignore_errors=True)


def _images(seed, shape):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


class InceptionV3Test(absltest.TestCase):

  def _assert_close(self, got, expected):
    self.assertEqual(got.shape, expected.shape)
    self.assertEqual(got.dtype, np.float32)
    scale = np.abs(expected).max()
    self.assertGreater(scale, 0.0)
    self.assertGreater(np.mean(expected > 0), 0.5)  # Few dead ReLUs.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)

  def test_matches_pytorch_with_resize(self):
    fx = _fixture()
    x = _images(0, (2, 64, 80, 3))  # Non-square, upsampled to 299x299.
    self._assert_close(np.asarray(fx.model.features(x)), fx.torch_features(x))

  def test_matches_pytorch_without_resize(self):
    fx = _fixture()
    # 75 is the smallest size; the final maps are 1x1 and 1x2.
    model = fid.InceptionV3(resize=False, params=fid.params_from_state_dict(
        fx.state))
    x = _images(1, (2, 75, 107, 3))
    self._assert_close(np.asarray(model.features(x)),
                       fx.torch_features(x, resize=False))

  def test_resize_matches_torch_interpolate(self):
    for shape, size in (((2, 5, 7, 3), (11, 4)), ((1, 64, 80, 3), (299, 299)),
                        ((1, 300, 1001, 2), (299, 299))):
      x = _images(2, shape)
      expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size,
                               mode='bilinear', align_corners=False)
      got = fid.resize_bilinear(jnp.asarray(x), size)
      np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(),
                                 atol=1e-6)
    x = _images(3, (1, 6, 6, 3))
    np.testing.assert_array_equal(fid.resize_bilinear(x, (6, 6)), x)

  def test_conversion_layout(self):
    fx = _fixture()
    layers = fx.model.conv_layers()
    self.assertLen(layers, 94)
    for prefix, hwio in (('Mixed_6b.branch7x7_2', (1, 7, 128, 128)),
                         ('Mixed_7c.branch3x3dbl_3b', (3, 1, 384, 384)),
                         ('Conv2d_1a_3x3', (3, 3, 3, 32))):
      w = fx.state[f'{prefix}.conv.weight']
      kernel = layers[prefix].kernel[...]
      self.assertEqual(kernel.shape, hwio)
      np.testing.assert_array_equal(kernel, w.transpose(2, 3, 1, 0))
      np.testing.assert_array_equal(layers[prefix].var[...],
                                    fx.state[f'{prefix}.bn.running_var'])
    self.assertEqual(fx.model.Mixed_7c.pool, 'max')
    self.assertEqual(fx.model.Mixed_7b.pool, 'avg')
    self.assertEmpty(nnx.state(fx.model, nnx.Param))

  def test_other_file_formats(self):
    fx = _fixture()
    ref = fx.model.conv_layers()['Mixed_5d.branch_pool']
    path = os.path.join(fx.dir, 'inception.npz')
    np.savez(path, **fx.state)
    loaded = fid.InceptionV3.from_file(path).conv_layers()
    np.testing.assert_array_equal(loaded['Mixed_5d.branch_pool'].kernel[...],
                                  ref.kernel[...])
    np.testing.assert_array_equal(loaded['Mixed_5d.branch_pool'].mean[...],
                                  ref.mean[...])
    path = os.path.join(fx.dir, 'inception.safetensors')
    if importlib.util.find_spec('safetensors') is None:
      with open(path, 'wb') as f:
        f.write(b'\0')
      with self.assertRaisesRegex(ImportError, 'safetensors'):
        fid.InceptionV3.from_file(path)
    else:
      # pylint: disable-next=g-import-not-at-top
      from safetensors.numpy import save_file
      save_file({k: np.ascontiguousarray(v, np.float32)
                 for k, v in fx.state.items()}, path)
      loaded = fid.InceptionV3.from_file(path).conv_layers()
      np.testing.assert_array_equal(
          loaded['Mixed_5d.branch_pool'].kernel[...], ref.kernel[...])

  def test_loading_errors(self):
    fx = _fixture()
    missing = os.path.join(fx.dir, 'nope.pth')
    with self.assertRaisesRegex(FileNotFoundError, 'nope.pth'):
      fid.InceptionV3.from_file(missing)
    key = 'Mixed_6b.branch7x7_2.conv.weight'
    bad = dict(fx.state)
    bad[key] = np.zeros((128, 128, 7, 1), np.float32)
    with self.assertRaisesRegex(
        ValueError, r'Mixed_6b\.branch7x7_2\.conv\.weight: expected '
        r'\(128, 128, 1, 7\), got \(128, 128, 7, 1\)'):
      fid.params_from_state_dict(bad)
    partial = dict(fx.state)
    del partial['Mixed_7c.branch3x3dbl_3b.bn.running_var']
    with self.assertRaisesRegex(ValueError,
                                r'missing.*Mixed_7c\.branch3x3dbl_3b\.bn'):
      fid.params_from_state_dict(partial)
    extra = dict(fx.state, **{'Mixed_5b.branch7x7_1.conv.weight': np.zeros(1)})
    with self.assertRaisesRegex(ValueError,
                                r'unexpected.*Mixed_5b\.branch7x7_1'):
      fid.params_from_state_dict(extra)
    # The classifier, aux head and BN counters are ignored.
    ignored = dict(fx.state, **{'AuxLogits.fc.weight': np.zeros(1)})
    self.assertIn('fc.weight', ignored)
    self.assertLen(fid.params_from_state_dict(ignored), 94)

  def test_input_errors(self):
    fx = _fixture()
    with self.assertRaisesRegex(ValueError, r'\[B, H, W, 3\]'):
      fx.model.features(np.zeros((1, 80, 80, 1), np.float32))
    with self.assertRaisesRegex(ValueError, 'float images'):
      fx.model.features(np.zeros((1, 80, 80, 3), np.uint8))
    model = fid.InceptionV3(resize=False)
    with self.assertRaisesRegex(ValueError, 'at least 75x75'):
      model.features(np.zeros((1, 74, 80, 3), np.float32))


# -----------------------------------------------------------------------------
# Statistics.
# -----------------------------------------------------------------------------


def _scipy_fid(mu1, s1, mu2, s2):
  covmean = linalg.sqrtm(s1 @ s2).real
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def _random_gaussian(rng, d, n):
  x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
  return x.mean(0), np.cov(x, rowvar=False)


class FrechetDistanceTest(parameterized.TestCase):

  @parameterized.parameters(4, 32)
  def test_matches_scipy(self, d):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_gaussian(rng, d, 3 * d)
    mu2, s2 = _random_gaussian(rng, d, 3 * d)
    expected = _scipy_fid(mu1, s1, mu2, s2)
    self.assertGreater(expected, 1.0)
    self.assertAlmostEqual(fid.frechet_distance(mu1, s1, mu2, s2) / expected,
                           1.0, delta=1e-8)

  def test_identical_is_zero(self):
    mu, s = _random_gaussian(np.random.default_rng(0), 64, 200)
    self.assertLess(abs(fid.frechet_distance(mu, s, mu, s)),
                    1e-9 * np.trace(s))

  def test_closed_form_commuting_and_singular(self):
    rng = np.random.default_rng(1)
    a = np.array([1.0, 4.0, 0.0, 2.5, 0.3])
    b = np.array([0.0, 9.0, 2.0, 2.5, 1.1])
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2)**2)
    self.assertAlmostEqual(
        fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected,
        places=10)
    # A common rotation keeps the distance (the covariances still commute).
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    got = fid.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2,
                               q @ np.diag(b) @ q.T)
    self.assertAlmostEqual(got, expected, places=6)

  def test_errors(self):
    mu, s = np.zeros(3), np.eye(3)
    with self.assertRaisesRegex(ValueError, 'means'):
      fid.frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with self.assertRaisesRegex(ValueError, r'covariances must be \[3, 3\]'):
      fid.frechet_distance(mu, s, mu, np.eye(4))
    with self.assertRaisesRegex(ValueError, 'sigma2 has non-finite'):
      fid.frechet_distance(mu, s, mu, np.full((3, 3), np.nan))


class FeatureStatsTest(absltest.TestCase):

  def test_streaming_matches_numpy(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 6)) * 2 + 5  # An offset mean, like pool3.
    stats = fid.FeatureStats()
    for chunk in np.split(x, [1, 11]):
      stats.add(jnp.asarray(chunk, jnp.float32) if len(chunk) == 1 else chunk)
    x[0] = np.float32(x[0])  # The first batch went through float32.
    self.assertEqual(stats.count, 37)
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-10)
    _, cov0 = stats.mean_cov(ddof=0)
    np.testing.assert_allclose(cov0, np.cov(x, rowvar=False, bias=True),
                               rtol=1e-10)

  def test_merge(self):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 4))
    whole = fid.FeatureStats().add(x)
    merged = fid.FeatureStats().merge(fid.FeatureStats().add(x[:7]))
    merged.merge(fid.FeatureStats()).merge(fid.FeatureStats(4).add(x[7:]))
    self.assertEqual(merged.count, 20)
    for a, b in zip(merged.mean_cov(), whole.mean_cov()):
      np.testing.assert_allclose(a, b, rtol=1e-12)
    with self.assertRaisesRegex(ValueError, 'D=4 and D=3'):
      merged.merge(fid.FeatureStats(3))

  def test_fid_from_features(self):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(40, 8)) + 0.5
    expected = fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                    b.mean(0), np.cov(b, rowvar=False))
    self.assertAlmostEqual(fid.fid_from_features(a, b), expected, places=10)
    self.assertAlmostEqual(
        fid.fid_from_features(fid.FeatureStats().add(a), b), expected,
        places=10)
    self.assertAlmostEqual(fid.fid_from_features(a, a), 0.0, places=9)

  def test_errors(self):
    stats = fid.FeatureStats().add(np.ones((1, 3)))
    with self.assertRaisesRegex(ValueError, 'at least 2 samples'):
      stats.mean_cov()
    with self.assertRaisesRegex(ValueError, 'D=3'):
      stats.add(np.ones((2, 4)))
    with self.assertRaisesRegex(ValueError, r'\[B, D\]'):
      stats.add(np.ones(3))
    nan = np.ones((4, 3))
    nan[2, 1] = np.nan
    with self.assertRaisesRegex(ValueError, 'non-finite.*1 of 4 rows'):
      stats.add(nan)
    self.assertEqual(stats.count, 1)  # Rejected batches are not counted.
    with self.assertRaisesRegex(ValueError, 'dims differ'):
      fid.fid_from_features(np.ones((3, 2)), np.ones((3, 5)))
    with self.assertRaisesRegex(ValueError, r'fid_from_features\(b\).*non'):
      fid.fid_from_features(np.ones((3, 3)), nan)


if __name__ == '__main__':
  absltest.main()
