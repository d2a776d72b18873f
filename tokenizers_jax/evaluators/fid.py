"""Frechet Inception Distance: the FID InceptionV3 (Flax NNX) and statistics.

The network is the InceptionV3 of the TensorFlow FID graph (2015-12-05) as
ported for pytorch-fid (`pt_inception-2015-12-05-*.pth`). It is torchvision's
Inception3 layout with three FID-specific changes:
  * InceptionA, InceptionC and the first InceptionE (Mixed_7b): the
    `branch_pool` 3x3 stride-1 pad-1 average pool ignores padded zeros
    (`count_include_pad=False`);
  * the second InceptionE (Mixed_7c): `branch_pool` uses a 3x3 stride-1 pad-1
    MAX pool;
  * the 2048-d "pool3" global average pool is the output (the 1008-way `fc`
    head is not used).
The network accepts any H, W >= 75; the final maps are then at least 1x1.
Every conv is a BasicConv2d: conv without bias, BatchNorm (eps 1e-3, running
statistics) and ReLU. Inputs are images in [-1, 1], resized to 299x299 with
bilinear interpolation (`torch.nn.functional.interpolate(mode='bilinear',
align_corners=False)`, no antialiasing) unless `resize=False`.

Weights load from LOCAL files only, in torchvision's Inception3 state-dict
layout (`Mixed_5b.branch1x1.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`,
...): `.pth`/`.pt` via `torch.load(..., weights_only=True)`, `.safetensors`
or `.npz` (`nn.weights.load_state_dict`). All weights are `nn.weights.Frozen`
variables (never `nnx.Param`): this is an evaluator.

The statistics side (float64 numpy) is `evaluators/frechet.py`; its
`FeatureStats`, `frechet_distance` and `fid_from_features` are re-exported
here.

Example:
  net = InceptionV3.from_file('/data/pt_inception-2015-12-05-6726825d.pth')
  real, fake = FeatureStats(), FeatureStats()
  for x, x_hat in batches:              # [B, H, W, 3] in [-1, 1]
    real.add(net.features(x))
    fake.add(net.features(x_hat))
  fid = fid_from_features(real, fake)

Dimension legend:
  B: batch size
  H, W: image height and width (>= 75 each when resize=False)
  N: number of feature vectors
  D: feature dimension (2048 for pool3)
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, NamedTuple

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.evaluators.frechet import FeatureStats  # pylint: disable=unused-import
from tokenizers_jax.evaluators.frechet import fid_from_features  # pylint: disable=unused-import
from tokenizers_jax.evaluators.frechet import frechet_distance  # pylint: disable=unused-import
from tokenizers_jax.nn import weights

Array = jax.Array

FID_IMAGE_SIZE = 299
MIN_IMAGE_SIZE = 75  # Smallest H/W for which Mixed_7a still yields 1x1.
BN_EPS = 1e-3
# State-dict entries that are not part of the feature network.
IGNORED_PREFIXES = ('fc.', 'AuxLogits.')


# -----------------------------------------------------------------------------
# Layers and blocks; their conv tables are the single source of truth for the
# modules and for the state-dict keys and shapes.
# -----------------------------------------------------------------------------


class ConvSpec(NamedTuple):
  """A BasicConv2d: input/output channels, kernel (kh, kw), stride, padding."""
  cin: int
  cout: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)


def _conv(cin, cout, kernel, stride=1, padding=0) -> ConvSpec:
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return ConvSpec(cin, cout, kernel, stride, padding)


class BasicConv2d(nnx.Module):
  """Conv (no bias) + inference BatchNorm (eps 1e-3) + ReLU, frozen weights."""

  def __init__(self, spec: ConvSpec, params: Mapping[str, np.ndarray]):
    """Wraps `params`: kernel [kh, kw, I, O]; scale, bias, mean, var [O]."""
    self.stride = spec.stride
    self.padding = tuple((p, p) for p in spec.padding)
    def weight(name, *axes):
      return weights.frozen(params[name], *axes)
    self.kernel = weight('kernel', 'conv_h', 'conv_w', 'embed_in', 'embed')
    self.scale = weight('scale', 'embed')
    self.bias = weight('bias', 'embed')
    self.mean = weight('mean', 'embed')
    self.var = weight('var', 'embed')

  def __call__(self, x: Array, precision=None) -> Array:
    kernel = weights.frozen_value(self.kernel, x.dtype)
    y = lax.conv_general_dilated(
        x, kernel, window_strides=(self.stride, self.stride),
        padding=self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=precision)
    scale = self.scale[...] * lax.rsqrt(self.var[...] + BN_EPS)
    shift = self.bias[...] - self.mean[...] * scale
    y = y * lax.stop_gradient(scale) + lax.stop_gradient(shift)
    return jax.nn.relu(y)


def max_pool(x: Array, window: int, stride: int, padding: int = 0) -> Array:
  """Max pool over H, W; padding counts as -inf (torch `max_pool2d`)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                           (1, window, window, 1), (1, stride, stride, 1), pad)


def avg_pool_3x3_exclude_pad(x: Array) -> Array:
  """3x3 stride-1 pad-1 average pool that ignores the padded zeros."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, (1, 3, 3, 1),
                            (1, 1, 1, 1), pad)
  def counts(n):  # Valid taps per output position along one axis.
    i = np.arange(n)
    return np.minimum(i + 1, n - 1) - np.maximum(i - 1, 0) + 1
  count = np.outer(counts(x.shape[1]), counts(x.shape[2]))
  return total / jnp.asarray(count, x.dtype)[None, :, :, None]


STEM = {
    'Conv2d_1a_3x3': _conv(3, 32, 3, stride=2),
    'Conv2d_2a_3x3': _conv(32, 32, 3),
    'Conv2d_2b_3x3': _conv(32, 64, 3, padding=1),
    # 3x3 stride-2 max pool here.
    'Conv2d_3b_1x1': _conv(64, 80, 1),
    'Conv2d_4a_3x3': _conv(80, 192, 3),
    # 3x3 stride-2 max pool here.
}


class _Block(nnx.Module):
  """An Inception block; its convs are attributes named like torchvision's."""

  @staticmethod
  def specs(cin: int, arg: Any) -> dict[str, ConvSpec]:
    """{branch conv name: ConvSpec} for `cin` input channels."""
    raise NotImplementedError

  def __init__(self, cin: int, arg: Any,
               params: Mapping[str, Mapping[str, np.ndarray]]):
    for name, spec in self.specs(cin, arg).items():
      setattr(self, name, BasicConv2d(spec, params[name]))

  def _chain(self, x: Array, names: tuple[str, ...], precision) -> Array:
    for name in names:
      x = getattr(self, name)(x, precision)
    return x


class InceptionA(_Block):
  """Mixed_5b..5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(excl. pad)-1x1."""

  @staticmethod
  def specs(cin: int, pool_features: int) -> dict[str, ConvSpec]:
    return {
        'branch1x1': _conv(cin, 64, 1),
        'branch5x5_1': _conv(cin, 48, 1),
        'branch5x5_2': _conv(48, 64, 5, padding=2),
        'branch3x3dbl_1': _conv(cin, 64, 1),
        'branch3x3dbl_2': _conv(64, 96, 3, padding=1),
        'branch3x3dbl_3': _conv(96, 96, 3, padding=1),
        'branch_pool': _conv(cin, pool_features, 1),
    }

  def __call__(self, x: Array, precision=None) -> Array:
    c = lambda h, *names: self._chain(h, names, precision)
    return jnp.concatenate([
        c(x, 'branch1x1'),
        c(x, 'branch5x5_1', 'branch5x5_2'),
        c(x, 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'),
        c(avg_pool_3x3_exclude_pad(x), 'branch_pool'),
    ], axis=-1)


class InceptionB(_Block):
  """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

  @staticmethod
  def specs(cin: int, _=None) -> dict[str, ConvSpec]:
    return {
        'branch3x3': _conv(cin, 384, 3, stride=2),
        'branch3x3dbl_1': _conv(cin, 64, 1),
        'branch3x3dbl_2': _conv(64, 96, 3, padding=1),
        'branch3x3dbl_3': _conv(96, 96, 3, stride=2),
    }

  def __call__(self, x: Array, precision=None) -> Array:
    c = lambda h, *names: self._chain(h, names, precision)
    return jnp.concatenate([
        c(x, 'branch3x3'),
        c(x, 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'),
        max_pool(x, 3, 2),
    ], axis=-1)


class InceptionC(_Block):
  """Mixed_6b..6e: 1x1 | 1x7/7x1 pair | two 7x1/1x7 pairs | avgpool-1x1."""

  @staticmethod
  def specs(cin: int, c7: int) -> dict[str, ConvSpec]:
    return {
        'branch1x1': _conv(cin, 192, 1),
        'branch7x7_1': _conv(cin, c7, 1),
        'branch7x7_2': _conv(c7, c7, (1, 7), padding=(0, 3)),
        'branch7x7_3': _conv(c7, 192, (7, 1), padding=(3, 0)),
        'branch7x7dbl_1': _conv(cin, c7, 1),
        'branch7x7dbl_2': _conv(c7, c7, (7, 1), padding=(3, 0)),
        'branch7x7dbl_3': _conv(c7, c7, (1, 7), padding=(0, 3)),
        'branch7x7dbl_4': _conv(c7, c7, (7, 1), padding=(3, 0)),
        'branch7x7dbl_5': _conv(c7, 192, (1, 7), padding=(0, 3)),
        'branch_pool': _conv(cin, 192, 1),
    }

  def __call__(self, x: Array, precision=None) -> Array:
    c = lambda h, *names: self._chain(h, names, precision)
    return jnp.concatenate([
        c(x, 'branch1x1'),
        c(x, *(f'branch7x7_{k}' for k in range(1, 4))),
        c(x, *(f'branch7x7dbl_{k}' for k in range(1, 6))),
        c(avg_pool_3x3_exclude_pad(x), 'branch_pool'),
    ], axis=-1)


class InceptionD(_Block):
  """Mixed_7a: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

  @staticmethod
  def specs(cin: int, _=None) -> dict[str, ConvSpec]:
    return {
        'branch3x3_1': _conv(cin, 192, 1),
        'branch3x3_2': _conv(192, 320, 3, stride=2),
        'branch7x7x3_1': _conv(cin, 192, 1),
        'branch7x7x3_2': _conv(192, 192, (1, 7), padding=(0, 3)),
        'branch7x7x3_3': _conv(192, 192, (7, 1), padding=(3, 0)),
        'branch7x7x3_4': _conv(192, 192, 3, stride=2),
    }

  def __call__(self, x: Array, precision=None) -> Array:
    c = lambda h, *names: self._chain(h, names, precision)
    return jnp.concatenate([
        c(x, 'branch3x3_1', 'branch3x3_2'),
        c(x, *(f'branch7x7x3_{k}' for k in range(1, 5))),
        max_pool(x, 3, 2),
    ], axis=-1)


class InceptionE(_Block):
  """Mixed_7b/7c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1.

  `pool` is 'avg' (3x3 average excluding padding; Mixed_7b) or 'max' (3x3
  stride-1 pad-1 max; Mixed_7c).
  """

  @staticmethod
  def specs(cin: int, _=None) -> dict[str, ConvSpec]:
    return {
        'branch1x1': _conv(cin, 320, 1),
        'branch3x3_1': _conv(cin, 384, 1),
        'branch3x3_2a': _conv(384, 384, (1, 3), padding=(0, 1)),
        'branch3x3_2b': _conv(384, 384, (3, 1), padding=(1, 0)),
        'branch3x3dbl_1': _conv(cin, 448, 1),
        'branch3x3dbl_2': _conv(448, 384, 3, padding=1),
        'branch3x3dbl_3a': _conv(384, 384, (1, 3), padding=(0, 1)),
        'branch3x3dbl_3b': _conv(384, 384, (3, 1), padding=(1, 0)),
        'branch_pool': _conv(cin, 192, 1),
    }

  def __init__(self, cin: int, pool: str, params):
    if pool not in ('avg', 'max'):
      raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {pool!r}.")
    super().__init__(cin, pool, params)
    self.pool = pool

  def __call__(self, x: Array, precision=None) -> Array:
    c = lambda h, *names: self._chain(h, names, precision)
    b3 = c(x, 'branch3x3_1')
    bd = c(x, 'branch3x3dbl_1', 'branch3x3dbl_2')
    if self.pool == 'avg':
      pooled = avg_pool_3x3_exclude_pad(x)
    else:
      pooled = max_pool(x, 3, 1, padding=1)
    return jnp.concatenate([
        c(x, 'branch1x1'),
        c(b3, 'branch3x3_2a'), c(b3, 'branch3x3_2b'),
        c(bd, 'branch3x3dbl_3a'), c(bd, 'branch3x3dbl_3b'),
        c(pooled, 'branch_pool'),
    ], axis=-1)


# (name, block class, input channels, block argument): pool_features for A,
# channels_7x7 for C, the branch_pool pooling for E.
BLOCKS = (
    ('Mixed_5b', InceptionA, 192, 32),
    ('Mixed_5c', InceptionA, 256, 64),
    ('Mixed_5d', InceptionA, 288, 64),
    ('Mixed_6a', InceptionB, 288, None),
    ('Mixed_6b', InceptionC, 768, 128),
    ('Mixed_6c', InceptionC, 768, 160),
    ('Mixed_6d', InceptionC, 768, 160),
    ('Mixed_6e', InceptionC, 768, 192),
    ('Mixed_7a', InceptionD, 768, None),
    ('Mixed_7b', InceptionE, 1280, 'avg'),
    ('Mixed_7c', InceptionE, 2048, 'max'),
)


def conv_specs() -> dict[str, ConvSpec]:
  """Every BasicConv2d of the network by torchvision prefix, in graph order."""
  specs = dict(STEM)
  for name, block, cin, arg in BLOCKS:
    for branch, spec in block.specs(cin, arg).items():
      specs[f'{name}.{branch}'] = spec
  return specs


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{state-dict key: torch shape} of every weight the network needs."""
  shapes = {}
  for prefix, s in conv_specs().items():
    shapes[f'{prefix}.conv.weight'] = (s.cout, s.cin) + s.kernel
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{prefix}.bn.{name}'] = (s.cout,)
  return shapes


# -----------------------------------------------------------------------------
# Resizing.
# -----------------------------------------------------------------------------


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float32 weights of torch's bilinear, align_corners=False.

  Source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped below at 0; the
  upper neighbour is clamped to the last pixel; no antialiasing. The
  coordinate is rounded like torch computes it (a float32 scale and a fused
  multiply-add rounded to float32), which reproduces its weights exactly
  rather than to ~1e-5.
  """
  scale = np.float64(np.float32(n_in) / np.float32(n_out))
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
  src = np.maximum(src.astype(np.float32), np.float32(0))
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo.astype(np.float32)
  m = np.zeros((n_out, n_in), np.float32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, lo), np.float32(1) - frac)
  np.add.at(m, (rows, hi), frac)
  return m


def resize_bilinear(images: Array, size: tuple[int, int]) -> Array:
  """Resizes [B, H, W, C] to [B, h, w, C] (float32) like torch's bilinear.

  Matches `torch.nn.functional.interpolate(x, size, mode='bilinear',
  align_corners=False)` (no antialias), as separable matrix products.
  """
  x = jnp.asarray(images, jnp.float32)
  h, w = size
  if (x.shape[1], x.shape[2]) == (h, w):
    return x
  rh = jnp.asarray(bilinear_matrix(x.shape[1], h))
  rw = jnp.asarray(bilinear_matrix(x.shape[2], w))
  hp = lax.Precision.HIGHEST
  x = jnp.einsum('hH,bHWc->bhWc', rh, x, precision=hp)
  return jnp.einsum('wW,bhWc->bhwc', rw, x, precision=hp)


# -----------------------------------------------------------------------------
# The network.
# -----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _jit_features(graphdef, state, images: Array) -> Array:
  return nnx.merge(graphdef, state)(images)


class InceptionV3(nnx.Module):
  """The FID InceptionV3: images [B, H, W, 3] in [-1, 1] -> pool3 [B, 2048].

  Attributes are named like torchvision's Inception3 (`Conv2d_1a_3x3`,
  `Mixed_5b.branch1x1`, ...); each BasicConv2d holds `kernel` (HWIO),
  `scale`, `bias`, `mean` and `var` (the BatchNorm weight, bias and running
  statistics).
  """

  def __init__(self, *, resize: bool = True,
               precision: Any = lax.Precision.HIGHEST,
               params: Mapping[str, Mapping[str, np.ndarray]] | None = None,
               seed: int = 0):
    """Builds the network from `params`, or with random weights.

    Args:
      resize: resize inputs to 299x299 (bilinear, align_corners=False), as
        FID does; with False, inputs must be at least 75x75 and are used as
        given.
      precision: `lax` precision of the convolutions (HIGHEST keeps float32
        accuracy on GPU/TPU matrix units).
      params: weights as returned by `params_from_state_dict`; None gives
        `random_params(seed)` (for tests; FID needs the real weights, see
        `from_file`).
      seed: seed of the random weights when `params` is None.
    """
    params = random_params(seed) if params is None else params
    self.resize = resize
    self.precision = precision
    for name, spec in STEM.items():
      setattr(self, name, BasicConv2d(spec, params[name]))
    for name, block, cin, arg in BLOCKS:
      block_params = {branch: params[f'{name}.{branch}']
                      for branch in block.specs(cin, arg)}
      setattr(self, name, block(cin, arg, block_params))

  @classmethod
  def from_file(cls, path: str | os.PathLike, **kwargs) -> 'InceptionV3':
    """The network with weights from a local `.pth`/`.pt`/`.safetensors`/`.npz`.

    The file must hold a torchvision-layout Inception3 state dict, such as
    pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. Other keyword
    arguments go to the constructor.

    Raises:
      FileNotFoundError: naming the path, if it does not exist.
      ValueError: naming missing or unexpected keys, or wrong shapes.
    """
    state = weights.load_state_dict(path, 'FID InceptionV3')
    return cls(params=params_from_state_dict(state), **kwargs)

  def conv_layers(self) -> dict[str, BasicConv2d]:
    """{torchvision prefix: BasicConv2d} for every conv, in graph order."""
    layers = {}
    for prefix in conv_specs():
      module = self
      for part in prefix.split('.'):
        module = getattr(module, part)
      layers[prefix] = module
    return layers

  def check_images(self, images: Array):
    """Raises ValueError unless `images` is a float [B, H, W, 3] batch."""
    if not hasattr(images, 'dtype'):
      images = np.asarray(images)
    shape, dtype = tuple(images.shape), images.dtype
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f'InceptionV3 expects [B, H, W, 3] images, got {shape}.')
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f'InceptionV3 expects float images in [-1, 1], got dtype {dtype}; '
          'convert uint8 with x / 127.5 - 1.')
    if not self.resize and min(shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(
          f'With resize=False images must be at least {MIN_IMAGE_SIZE}x'
          f'{MIN_IMAGE_SIZE}, got {shape[1]}x{shape[2]}.')

  def __call__(self, images: Array) -> Array:
    """[B, H, W, 3] float images in [-1, 1] -> float32 pool3 features [B, 2048].

    Not jitted; use `features` for the compiled path.
    """
    self.check_images(images)
    x = jnp.asarray(images, jnp.float32)
    if self.resize:
      x = resize_bilinear(x, (FID_IMAGE_SIZE, FID_IMAGE_SIZE))
    p = self.precision
    x = self.Conv2d_1a_3x3(x, p)  # pylint: disable=no-member
    x = self.Conv2d_2a_3x3(x, p)  # pylint: disable=no-member
    x = self.Conv2d_2b_3x3(x, p)  # pylint: disable=no-member
    x = max_pool(x, 3, 2)
    x = self.Conv2d_3b_1x1(x, p)  # pylint: disable=no-member
    x = self.Conv2d_4a_3x3(x, p)  # pylint: disable=no-member
    x = max_pool(x, 3, 2)
    for name, *_ in BLOCKS:
      x = getattr(self, name)(x, p)
    return jnp.mean(x, axis=(1, 2))

  def features(self, images: Array) -> Array:
    """Jit-compiled `__call__`: pool3 features [B, 2048], float32.

    One compilation per input shape; split large inputs into batches.
    """
    self.check_images(images)
    graphdef, state = nnx.split(self)
    return _jit_features(graphdef, state, jnp.asarray(images))


# -----------------------------------------------------------------------------
# Loading torchvision-layout state dicts.
# -----------------------------------------------------------------------------


def _is_ignored(key: str) -> bool:
  return key.startswith(IGNORED_PREFIXES) or key.endswith(
      '.num_batches_tracked')


def params_from_state_dict(
    state: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """Converts a torchvision-layout Inception3 state dict to our parameters.

  `{prefix}.conv.weight` [O, I, kh, kw] becomes `kernel` [kh, kw, I, O];
  `{prefix}.bn.weight/bias/running_mean/running_var` become `scale`, `bias`,
  `mean` and `var`. `fc.*`, `AuxLogits.*` and `*.num_batches_tracked` are
  ignored.

  Args:
    state: {key: array or torch tensor}.

  Returns:
    {conv prefix (e.g. 'Mixed_5b.branch1x1'): {'kernel', 'scale', 'bias',
    'mean', 'var'}: float32 arrays}.

  Raises:
    ValueError: naming missing keys, unexpected keys, or wrong shapes (key,
      expected and actual shape).
  """
  expected = expected_shapes()
  missing = [k for k in expected if k not in state]
  unexpected = sorted(k for k in state
                      if k not in expected and not _is_ignored(k))
  if missing:
    raise ValueError(
        f'FID InceptionV3 state dict is missing {len(missing)} keys, e.g. '
        f'{missing[:8]}; its keys start with {sorted(state)[:8]} '
        f'({len(state)} in all).')
  if unexpected:
    raise ValueError(
        f'FID InceptionV3 state dict has unexpected keys {unexpected[:8]} '
        f'({len(unexpected)} in all).')
  arrays, bad = {}, []
  for key, shape in expected.items():
    value = state[key]
    if hasattr(value, 'detach'):  # A torch tensor.
      value = value.detach().cpu().float().numpy()
    value = np.asarray(value, np.float32)
    if value.shape != shape:
      bad.append(f'{key}: expected {shape}, got {value.shape}')
    arrays[key] = value
  if bad:
    raise ValueError(f'FID InceptionV3 state dict has wrong shapes: {bad}.')
  names = {'scale': 'bn.weight', 'bias': 'bn.bias', 'mean': 'bn.running_mean',
           'var': 'bn.running_var'}
  params = {}
  for prefix in conv_specs():
    entry = {'kernel': arrays[f'{prefix}.conv.weight'].transpose(2, 3, 1, 0)}
    for ours, theirs in names.items():
      entry[ours] = arrays[f'{prefix}.{theirs}']
    params[prefix] = entry
  return params


def random_params(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Random weights in `params_from_state_dict`'s format (numpy, float32).

  He-normal kernels and identity BatchNorm (scale 1, bias 0, mean 0, var 1).
  """
  rng = np.random.default_rng(seed)
  params = {}
  for prefix, s in conv_specs().items():
    fan_in = s.kernel[0] * s.kernel[1] * s.cin
    kernel = rng.standard_normal(s.kernel + (s.cin, s.cout), np.float32)
    ones = np.ones((s.cout,), np.float32)
    params[prefix] = {'kernel': kernel * np.float32(np.sqrt(2.0 / fan_in)),
                      'scale': ones, 'bias': 0 * ones, 'mean': 0 * ones,
                      'var': ones}
  return params
