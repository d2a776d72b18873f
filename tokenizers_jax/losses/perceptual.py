"""LPIPS perceptual distance with a VGG16 backbone, in Flax NNX.

The network is the LPIPS (Zhang et al., 2018) "vgg" variant used by VQGAN:
  1. a fixed scaling layer, (x - shift) / scale, for inputs in [-1, 1];
  2. the convolutional part of VGG16 (torchvision `features` layout: 3x3 convs
     at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, each followed
     by a ReLU, and 2x2 max pools at 4, 9, 16, 23), tapped after relu1_2,
     relu2_2, relu3_3, relu4_3 and relu5_3;
  3. per tap: unit-normalize features across channels, square the difference
     of the two images' features, weight channels with a non-negative 1x1
     linear head (`lin0` .. `lin4`, no bias), average over space;
  4. sum over the five taps.

All weights are `nn.weights.Frozen` variables (not `nnx.Param`), so an
optimizer built with `wrt=nnx.Param` never updates them, and the forward pass
stops their gradients; gradients flow to the input images only. Weights are
loaded from LOCAL files only (nothing is downloaded, see
`nn.weights.load_state_dict`): a torchvision-layout VGG16 state dict and the
LPIPS linear-head state dict, as `.pth`/`.pt` (`torch.load(...,
weights_only=True)`), `.safetensors` or `.npz`.

Without loaded weights the module is a randomly initialized VGG16 (He normal)
with all linear heads equal to 1, i.e. the un-learned LPIPS baseline on random
features: a usable perceptual-loss substitute for offline tests.

Dimension legend:
  B: batch size
  H, W: image height and width (>= 16 so relu5_3 is at least 1x1)
  C: channels of a VGG tap (64, 128, 256, 512, 512)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax import lax
from flax import nnx
import numpy as np

from tokenizers_jax.nn import partitioning
from tokenizers_jax.nn import weights

Array = jax.Array
Dtype = Any
# Former names, kept for callers: losses.PretrainedWeight, read_state_dict.
PretrainedWeight = weights.Frozen
read_state_dict = weights.load_state_dict

# (torchvision `features` index, in channels, out channels) of each 3x3 conv.
VGG16_CONVS = (
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
)
# Conv indices of each stage; a 2x2 max pool precedes every stage but the
# first, and the ReLU after each stage's last conv is an LPIPS tap.
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10


class FrozenConv3x3(nnx.Module):
  """A 3x3, stride-1, pad-1 conv whose weights are `Frozen`."""

  def __init__(self, kernel: Array, bias: Array):
    """Wraps a [3, 3, I, O] kernel and an [O] bias."""
    self.kernel = weights.frozen(kernel, 'conv_h', 'conv_w', 'embed_in',
                                 'embed')
    self.bias = weights.frozen(bias, 'embed')

  def __call__(self, x: Array, precision=None) -> Array:
    kernel = weights.frozen_value(self.kernel, x.dtype)
    bias = weights.frozen_value(self.bias, x.dtype)
    y = lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)
    return y + bias


def _max_pool_2x2(x: Array) -> Array:
  """2x2 stride-2 max pool; an odd trailing row/column is dropped."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16Features(nnx.Module):
  """VGG16 conv trunk returning the five LPIPS taps (post-ReLU)."""

  def __init__(self, *, rngs: nnx.Rngs):
    """Random He-normal kernels (one RNG draw for all), zero biases."""
    self.indices = tuple(i for i, _, _ in VGG16_CONVS)
    sizes = [9 * cin * cout for _, cin, cout in VGG16_CONVS]
    flat = jax.random.normal(rngs.params(), (sum(sizes),), jnp.float32)
    chunks = jnp.split(flat, np.cumsum(sizes)[:-1])
    convs = []
    for chunk, (_, cin, cout) in zip(chunks, VGG16_CONVS):
      kernel = chunk.reshape(3, 3, cin, cout) * np.sqrt(2.0 / (9 * cin))
      convs.append(FrozenConv3x3(kernel, jnp.zeros((cout,), jnp.float32)))
    self.convs = nnx.List(convs)

  def conv(self, index: int) -> FrozenConv3x3:
    """The conv at torchvision `features` index `index`."""
    return self.convs[self.indices.index(index)]

  def __call__(self, x: Array, precision=None) -> list[Array]:
    """[B, H, W, 3] -> five taps [B, H / 2**k, W / 2**k, C_k], k = 0..4."""
    taps = []
    h = x
    for k, stage in enumerate(VGG16_STAGES):
      if k:
        h = _max_pool_2x2(h)
      for index in stage:
        h = jax.nn.relu(self.conv(index)(h, precision=precision))
      taps.append(h)
    return taps


def _normalize_channels(f: Array) -> Array:
  norm = jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True))
  return f / (norm + NORMALIZE_EPS)


class LPIPS(nnx.Module):
  """LPIPS distance between image batches: (x, y) -> [B], float32.

  Example:
    lpips = LPIPS.from_files('/data/vgg16.pth', '/data/lpips_vgg.pth')
    d = lpips(x, x_hat)     # x, x_hat: [B, H, W, 3] in [-1, 1]
  """

  def __init__(self, *, dtype: Dtype = jnp.float32, precision=None,
               rngs: nnx.Rngs | None = None):
    """Builds LPIPS with random VGG16 weights and unit linear heads.

    Args:
      dtype: compute dtype of the VGG trunk (normalization, differences and
        the linear heads run in float32).
      precision: `lax` precision of the VGG convolutions.
      rngs: RNGs for the random VGG16 init (default `nnx.Rngs(0)`); load real
        weights with `load_weights` or build with `from_files`.
    """
    rngs = nnx.Rngs(0) if rngs is None else rngs
    self.dtype = dtype
    self.precision = precision
    self.vgg = VGG16Features(rngs=rngs)
    for k, c in enumerate(LPIPS_CHANNELS):
      setattr(self, f'lin{k}', weights.frozen(jnp.ones((c,)), 'embed'))

  def linear_heads(self) -> list[weights.Frozen]:
    return [getattr(self, f'lin{k}') for k in range(len(LPIPS_CHANNELS))]

  @classmethod
  def from_files(cls, vgg_path: str | os.PathLike, lin_path: str | os.PathLike,
                 **kwargs) -> 'LPIPS':
    """LPIPS with VGG16 and linear-head weights read from local files.

    The module is built abstractly (no random init) and then filled, so the
    files are read and checked before any weight is materialized.
    """
    vgg_state = weights.load_state_dict(vgg_path, 'VGG16')
    lin_state = weights.load_state_dict(lin_path, 'LPIPS')
    model = partitioning.abstract_module(lambda: cls(**kwargs))
    load_vgg16_state_dict(model.vgg, vgg_state)
    load_lpips_linear_state_dict(model, lin_state)
    return model

  def load_weights(self, vgg_path: str | os.PathLike,
                   lin_path: str | os.PathLike) -> 'LPIPS':
    """Loads both state dicts (see `load_vgg16_state_dict`) in place."""
    load_vgg16_state_dict(self.vgg,
                          weights.load_state_dict(vgg_path, 'VGG16'))
    load_lpips_linear_state_dict(self,
                                 weights.load_state_dict(lin_path, 'LPIPS'))
    return self

  def __call__(self, x: Array, y: Array) -> Array:
    """Per-image LPIPS distance [B] between images x and y [B, H, W, 3]."""
    if x.shape != y.shape:
      raise ValueError(f'LPIPS inputs differ in shape: {x.shape} vs {y.shape}.')
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'LPIPS expects [B, H, W, 3] images, got {x.shape}.')
    b = x.shape[0]
    shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
    scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
    xy = jnp.concatenate([x, y], axis=0).astype(jnp.float32)
    xy = ((xy - shift) / scale).astype(self.dtype)
    taps = self.vgg(xy, precision=self.precision)
    total = jnp.zeros((b,), jnp.float32)
    for tap, lin in zip(taps, self.linear_heads()):
      tap = tap.astype(jnp.float32)
      diff = jnp.square(_normalize_channels(tap[:b]) -
                        _normalize_channels(tap[b:]))
      weight = jnp.maximum(weights.frozen_value(lin, jnp.float32), 0.0)
      total = total + jnp.mean(jnp.sum(diff * weight, axis=-1), axis=(1, 2))
    return total


# -----------------------------------------------------------------------------
# Loading local state dicts.
# -----------------------------------------------------------------------------


def _lookup(state: Mapping[str, np.ndarray], candidates: list[str],
            expected: tuple[int, ...], missing: list[str],
            bad_shapes: list[str]) -> np.ndarray | None:
  for key in candidates:
    if key in state:
      value = np.asarray(state[key])
      if value.shape != expected:
        bad_shapes.append(f'{key}: expected {expected}, got {value.shape}')
        return None
      return value
  missing.append(candidates[0])
  return None


def _raise_if_errors(what: str, state: Mapping[str, np.ndarray],
                     missing: list[str], bad_shapes: list[str]):
  if missing:
    sample = sorted(state)[:8]
    raise ValueError(
        f'{what} state dict is missing keys {missing}; its keys start with '
        f'{sample} ({len(state)} in all).')
  if bad_shapes:
    raise ValueError(f'{what} state dict has wrong shapes: {bad_shapes}.')


def load_vgg16_state_dict(vgg: VGG16Features,
                          state: Mapping[str, np.ndarray]) -> None:
  """Copies a torchvision-layout VGG16 state dict into `vgg` (OIHW -> HWIO).

  Accepts `features.{i}.weight/bias` (torchvision VGG16), bare
  `{i}.weight/bias` (a `features` submodule) and `net.slice{k}.{i}.*`
  (an LPIPS/taming checkpoint). Extra keys (the classifier) are ignored.

  Raises:
    ValueError: listing missing keys or wrong shapes; nothing is modified.
  """
  missing, bad_shapes, values = [], [], {}
  for k, stage in enumerate(VGG16_STAGES):
    for i in stage:
      _, cin, cout = VGG16_CONVS[vgg.indices.index(i)]
      for name, shape in (('weight', (cout, cin, 3, 3)), ('bias', (cout,))):
        cands = [f'features.{i}.{name}', f'{i}.{name}',
                 f'net.slice{k + 1}.{i}.{name}']
        values[i, name] = _lookup(state, cands, shape, missing, bad_shapes)
  _raise_if_errors('VGG16', state, missing, bad_shapes)
  for i in vgg.indices:
    conv = vgg.conv(i)
    conv.kernel.set_value(
        jnp.asarray(values[i, 'weight'].transpose(2, 3, 1, 0)))
    conv.bias.set_value(jnp.asarray(values[i, 'bias']))


def load_lpips_linear_state_dict(lpips: LPIPS,
                                 state: Mapping[str, np.ndarray]) -> None:
  """Copies the LPIPS heads `lin{k}.model.1.weight` [1, C, 1, 1] into `lpips`.

  `lin{k}.model.0.weight` (heads saved without dropout) is accepted too.

  Raises:
    ValueError: listing missing keys or wrong shapes; nothing is modified.
  """
  missing, bad_shapes, values = [], [], []
  for k, c in enumerate(LPIPS_CHANNELS):
    cands = [f'lin{k}.model.1.weight', f'lin{k}.model.0.weight']
    values.append(_lookup(state, cands, (1, c, 1, 1), missing, bad_shapes))
  _raise_if_errors('LPIPS linear-head', state, missing, bad_shapes)
  for head, value in zip(lpips.linear_heads(), values):
    head.set_value(jnp.asarray(value.reshape(-1)))
