"""`--from=lpips`: the `lpips` wheel's linear heads + a torchvision-layout
VGG16 trunk -> the files `LPIPS.from_files` reads.

The reference is the `lpips` package itself (`LPIPS(net='vgg',
pretrained=True, pnet_rand=True)`: the wheel's calibrated heads on a random
trunk). torchvision does not load with this CPU torch build, so the trunk
comes from a stand-in `torchvision.models.vgg16` built from VGG16's layer
list (tests/convert/__init__.py); everything else is the package's code.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from tokenizers_jax import convert as convert_lib
from tokenizers_jax.convert import lpips as lpips_convert
from tokenizers_jax.losses import perceptual

from . import stand_in_torchvision

if importlib.util.find_spec('lpips') is None:
  pytest.skip('the lpips package is not installed', allow_module_level=True)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(lpips.LPIPS, path of its trunk as a torchvision state dict)."""
  torch.manual_seed(0)
  with stand_in_torchvision() as (lpips, built):
    model = lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True,
                        verbose=False).eval()
  (vgg,) = built
  trunk = {f'features.{k}': v for k, v in vgg.features.state_dict().items()}
  trunk['classifier.0.weight'] = torch.randn(4, 8)  # Not used by LPIPS.
  trunk['classifier.0.bias'] = torch.randn(4)
  path = str(tmp_path_factory.mktemp('vgg') / 'vgg16.pth')
  torch.save(trunk, path)
  return model, path


def _images(seed, n=2, size=32):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_matches_the_lpips_package(reference, tmp_path):
  model, vgg_path = reference
  report = convert_lib.convert('lpips', None, str(tmp_path), vgg=vgg_path)
  assert report['heads'] == lpips_convert.default_heads_path()
  assert report['tensors_read'] == 5 + 26 + 2
  assert report['left_out'] == ['classifier.0.bias', 'classifier.0.weight']
  ours = perceptual.LPIPS.from_files(report['vgg_path'], report['lin_path'])
  x, y = _images(0), _images(1)
  with torch.no_grad():
    want = model(torch.from_numpy(x).permute(0, 3, 1, 2),
                 torch.from_numpy(y).permute(0, 3, 1, 2)).reshape(-1).numpy()
  got = np.asarray(jax.jit(lambda m, a, b: m(a, b))(ours, x, y))
  print('LPIPS ours vs lpips package:', got, want,
        'max abs diff', np.abs(got - want).max())
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The heads are the wheel's calibrated ones, copied exactly.
  shipped = torch.load(report['heads'], map_location='cpu', weights_only=True)
  heads = np.load(report['lin_path'])
  for k in range(5):
    np.testing.assert_array_equal(heads[f'lin{k}.model.1.weight'],
                                  shipped[f'lin{k}.model.1.weight'].numpy())


def test_one_file_with_trunk_and_heads(reference, tmp_path):
  """The lpips/taming layout (net.slice*, lin*, scaling_layer) in one file."""
  model, vgg_path = reference
  full = str(tmp_path / 'lpips_full.pth')
  torch.save(model.state_dict(), full)
  report = convert_lib.convert('lpips', full, str(tmp_path / 'out'))
  assert report['tensors_read'] == len(model.state_dict())
  trunk = np.load(report['vgg_path'])
  ref = torch.load(vgg_path, map_location='cpu', weights_only=True)
  for i in (0, 2, 5, 28):
    np.testing.assert_array_equal(trunk[f'features.{i}.weight'],
                                  ref[f'features.{i}.weight'].numpy())
  with pytest.raises(convert_lib.ConversionError, match='drop --vgg'):
    convert_lib.convert('lpips', full, str(tmp_path / 'x'), vgg=vgg_path)


def test_errors_name_the_problem(reference, tmp_path):
  _, vgg_path = reference
  with pytest.raises(convert_lib.ConversionError, match='--vgg=PATH'):
    convert_lib.convert('lpips', None, str(tmp_path))
  bad = torch.load(vgg_path, map_location='cpu', weights_only=True)
  del bad['features.28.bias']
  bad['features.99.weight'] = torch.zeros(1)
  bad_path = str(tmp_path / 'bad.pth')
  torch.save(bad, bad_path)
  with pytest.raises(convert_lib.ConversionError) as err:
    convert_lib.convert('lpips', None, str(tmp_path), vgg=bad_path)
  assert 'features.28.bias' in str(err.value)
  assert 'features.99.weight' in str(err.value)


def test_command_line(reference, tmp_path):
  _, vgg_path = reference
  out = subprocess.run(
      [sys.executable, '-m', 'tokenizers_jax.convert', '--from=lpips',
       f'--vgg={vgg_path}', f'--workdir={tmp_path}'],
      capture_output=True, text=True, timeout=120, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.returncode == 0, out.stderr[-2000:]
  assert '--config.loss.lpips_vgg_path=' in out.stdout
  assert os.path.isfile(tmp_path / lpips_convert.VGG_FILE)
  assert os.path.isfile(tmp_path / lpips_convert.LIN_FILE)
