"""Shared PyTorch pieces for the converter tests.

`vgg16_features()` is the torchvision VGG16 `features` stack written from its
layer list (torchvision itself does not load with the CPU torch build here);
`LpipsLayout` holds randomly initialised LPIPS weights under the state-dict
names of the `lpips` package and of taming's `loss.perceptual_loss`;
`stand_in_torchvision()` lets the real `lpips` package build its VGG16 trunk
from `vgg16_features()`.
"""

import contextlib
import sys
import types
from unittest import mock

import torch
from torch import nn

# torchvision's VGG16 configuration: conv widths and 'M' for 2x2 max pools.
VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
             512, 512, 512, 'M', 512, 512, 512, 'M')
# LPIPS cuts `features` into five slices ending at relu1_2 ... relu5_3.
SLICE_ENDS = (4, 9, 16, 23, 30)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
  layers, cin = [], 3
  for v in VGG16_CFG:
    if v == 'M':
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU()]
      cin = v
  return nn.Sequential(*layers)


class _Head(nn.Module):

  def __init__(self, channels):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(),
                               nn.Conv2d(channels, 1, 1, bias=False))


class _Scaling(nn.Module):

  def __init__(self):
    super().__init__()
    self.register_buffer(
        'shift', torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer(
        'scale', torch.tensor([.458, .448, .450])[None, :, None, None])


class LpipsLayout(nn.Module):
  """Random LPIPS weights with the `lpips` / taming state-dict names."""

  def __init__(self):
    super().__init__()
    self.scaling_layer = _Scaling()
    features = vgg16_features()
    self.net = nn.Module()
    start = 0
    for k, end in enumerate(SLICE_ENDS):
      part = nn.Sequential()
      for i in range(start, end):
        part.add_module(str(i), features[i])
      setattr(self.net, f'slice{k + 1}', part)
      start = end
    for k, c in enumerate(LPIPS_CHANNELS):
      setattr(self, f'lin{k}', _Head(c))
      with torch.no_grad():
        getattr(self, f'lin{k}').model[1].weight.uniform_(0.0, 0.1)


@contextlib.contextmanager
def stand_in_torchvision():
  """Imports `lpips` against a stand-in `torchvision.models.vgg16` (the
  layer list above, random weights); yields (lpips module, list of the
  VGG16 models it built). Every module imported here is dropped after."""
  built = []

  def vgg16(*args, **kwargs):
    del args, kwargs
    model = types.SimpleNamespace(features=vgg16_features())
    built.append(model)
    return model

  models = types.ModuleType('torchvision.models')
  models.vgg16 = vgg16
  tv = types.ModuleType('torchvision')
  tv.models = models
  before = set(sys.modules)
  with mock.patch.dict(sys.modules, {'torchvision': tv,
                                     'torchvision.models': models}):
    import lpips  # pylint: disable=g-import-not-at-top
    try:
      yield lpips, built
    finally:
      for name in set(sys.modules) - before:
        if name == 'lpips' or name.startswith('lpips.'):
          del sys.modules[name]
