"""Frozen image teachers for FQGAN's semantic sub-codebooks.

A teacher is any NNX module called as `teacher(images)` on images
[B, H, W, 3] in [-1, 1] that returns one feature vector per image [B, D] and
has an `out_dim` attribute (D). Its weights are `Frozen` variables, never
`nnx.Param`: the train step differentiates and optimizes `nnx.Param` only, so
teacher weights travel in the non-parameter ('rest') state unchanged, and the
forward pass also stops their gradients and the output's.

Two teachers are provided:

  * `RandomConvTeacher`: a fixed, randomly initialised small conv net with
    global average pooling. It needs no download and is the default (and the
    offline test) teacher; its features are random projections of the image,
    not semantics.
  * `ViTTeacher`: a CLIP/DINO-style Vision Transformer whose weights are read
    from a LOCAL file in timm's ViT state-dict layout (`ViTTeacher.from_file`).
    Nothing is downloaded.

Dimension legend:
  B: batch size
  H, W: image height and width; S: the teacher's input size
  C: image channels (3)
  P: patch size; g_h, g_w: patch grid (S / P); N: tokens (g_h * g_w + 1)
  D: teacher width (output dimension unless a head projection is used)
  M: MLP hidden width; h: attention heads
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.nn import attention
from tokenizers_jax.nn import partitioning
from tokenizers_jax.nn import weights
# `teachers.Frozen` is the shared frozen-weight type (same class).
from tokenizers_jax.nn.weights import Frozen

Array = jax.Array
Dtype = Any

# Per-channel input normalisation on [0, 1] images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = {
    'imagenet': (IMAGENET_MEAN, IMAGENET_STD),
    'clip': (CLIP_MEAN, CLIP_STD),
    # Maps [0, 1] back to [-1, 1]: the images as given.
    'none': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


# Short names for the many weights built and read below.
_frozen = weights.frozen
_w = weights.frozen_value


def _check_images(images: Array, what: str) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'{what} expects images [B, H, W, 3] in [-1, 1]; got '
                     f'shape {tuple(images.shape)}.')


def resolve_normalization(
    normalization: str | tuple[Sequence[float], Sequence[float]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) on [0, 1] images from a name or an explicit pair.

  Args:
    normalization: 'imagenet' (timm/DINO), 'clip' (OpenAI CLIP), 'none', or a
      `(mean, std)` pair of 3-sequences.
  """
  if isinstance(normalization, str):
    if normalization not in NORMALIZATIONS:
      raise ValueError(f'unknown normalization {normalization!r}; known: '
                       f'{sorted(NORMALIZATIONS)} or a (mean, std) pair.')
    mean, std = NORMALIZATIONS[normalization]
  else:
    mean, std = normalization
  mean = tuple(float(m) for m in mean)
  std = tuple(float(s) for s in std)
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(f'normalization needs 3 means and 3 positive stds; got '
                     f'mean={mean}, std={std}.')
  return mean, std


def interpolate_pos_embed(pos: Array, grid: tuple[int, int],
                          new_grid: tuple[int, int]) -> Array:
  """Bilinearly resizes a grid of positional embeddings.

  Half-pixel centres without antialiasing, i.e. PyTorch's
  `F.interpolate(mode='bilinear', align_corners=False)`.

  Args:
    pos: [g_h * g_w, D] embeddings in row-major grid order.
    grid: (g_h, g_w) of `pos`.
    new_grid: the target grid.

  Returns:
    [new_h * new_w, D].
  """
  grid, new_grid = tuple(grid), tuple(new_grid)
  if pos.shape[0] != grid[0] * grid[1]:
    raise ValueError(f'pos_embed has {pos.shape[0]} positions; grid {grid} '
                     f'needs {grid[0] * grid[1]}.')
  if grid == new_grid:
    return pos
  d = pos.shape[-1]
  img = pos.reshape(grid[0], grid[1], d).astype(jnp.float32)
  out = jax.image.resize(img, (new_grid[0], new_grid[1], d), 'bilinear',
                         antialias=False)
  return out.reshape(new_grid[0] * new_grid[1], d).astype(pos.dtype)


def _layer_norm(x: Array, scale: Frozen, bias: Frozen, eps: float) -> Array:
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  y = (xf - mean) * lax.rsqrt(var + eps)
  y = y * _w(scale, jnp.float32) + _w(bias, jnp.float32)
  return y.astype(x.dtype)


def _activation(name: str):
  acts = {
      'gelu': lambda x: jax.nn.gelu(x, approximate=False),
      'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
      'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
  }
  if name not in acts:
    raise ValueError(f'unknown activation {name!r}; known: {sorted(acts)}.')
  return acts[name]


# -----------------------------------------------------------------------------
# Random conv teacher.
# -----------------------------------------------------------------------------


class RandomConvTeacher(nnx.Module):
  """A fixed random conv net: `num_layers` stride-2 3x3 convs + ReLU, global
  average pooling, a linear map to `out_dim`.

  Widths double per layer from `width`. He-normal weights drawn from `seed`
  (independent of the model's RNGs), zero biases. Images are used as given
  in [-1, 1].

  Args:
    out_dim: D, the feature size.
    width: channels of the first conv.
    seed: the weights' random seed (numpy).
    num_layers: number of convs.
    dtype: compute dtype.
  """

  def __init__(self, out_dim: int = 256, width: int = 32, seed: int = 0, *,
               num_layers: int = 3, dtype: Dtype = jnp.float32):
    if min(out_dim, width, num_layers) < 1:
      raise ValueError(f'out_dim ({out_dim}), width ({width}) and num_layers '
                       f'({num_layers}) must be >= 1.')
    self.out_dim = out_dim
    self.dtype = dtype
    rng = np.random.default_rng(seed)
    kernels, biases = [], []
    cin = 3
    for i in range(num_layers):
      cout = width * 2 ** i
      k = rng.standard_normal((3, 3, cin, cout)) * math.sqrt(2.0 / (9 * cin))
      kernels.append(_frozen(k, 'conv_h', 'conv_w', 'embed_in', 'embed'))
      biases.append(_frozen(np.zeros((cout,)), 'embed'))
      cin = cout
    self.kernels = nnx.List(kernels)
    self.biases = nnx.List(biases)
    head = rng.standard_normal((cin, out_dim)) * math.sqrt(1.0 / cin)
    self.head = _frozen(head, 'embed', 'mlp')

  def __call__(self, images: Array) -> Array:
    """[B, H, W, 3] in [-1, 1] -> [B, D] float32 (gradient-stopped)."""
    _check_images(images, type(self).__name__)
    h = images.astype(self.dtype)
    for kernel, bias in zip(self.kernels, self.biases):
      h = lax.conv_general_dilated(
          h, _w(kernel, self.dtype), window_strides=(2, 2),
          padding=((1, 1), (1, 1)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      h = jax.nn.relu(h + _w(bias, self.dtype))
    pooled = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    return lax.stop_gradient(pooled @ _w(self.head, jnp.float32))


# -----------------------------------------------------------------------------
# ViT teacher.
# -----------------------------------------------------------------------------


class ViTBlock(nnx.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)).

  Weights are stored in JAX layout ([in, out] kernels); `qkv` is fused with
  its output laid out as [q | k | v], each head-major (timm's layout).
  """

  def __init__(self, width: int, mlp_dim: int):
    self.norm1_scale = _frozen(jnp.ones((width,)), 'embed')
    self.norm1_bias = _frozen(jnp.zeros((width,)), 'embed')
    self.qkv_kernel = _frozen(jnp.zeros((width, 3 * width)), 'embed', 'heads')
    self.qkv_bias = _frozen(jnp.zeros((3 * width,)), 'heads')
    self.proj_kernel = _frozen(jnp.zeros((width, width)), 'heads', 'embed')
    self.proj_bias = _frozen(jnp.zeros((width,)), 'embed')
    self.norm2_scale = _frozen(jnp.ones((width,)), 'embed')
    self.norm2_bias = _frozen(jnp.zeros((width,)), 'embed')
    self.fc1_kernel = _frozen(jnp.zeros((width, mlp_dim)), 'embed', 'mlp')
    self.fc1_bias = _frozen(jnp.zeros((mlp_dim,)), 'mlp')
    self.fc2_kernel = _frozen(jnp.zeros((mlp_dim, width)), 'mlp', 'embed')
    self.fc2_bias = _frozen(jnp.zeros((width,)), 'embed')

  def __call__(self, x: Array, *, num_heads: int, eps: float, act,
               dtype: Dtype) -> Array:
    """[B, N, D] -> [B, N, D]."""
    b, n, d = x.shape
    h = _layer_norm(x, self.norm1_scale, self.norm1_bias, eps)
    qkv = h @ _w(self.qkv_kernel, dtype) + _w(self.qkv_bias, dtype)
    q, k, v = attention.split_fused_qkv(qkv, num_heads)
    attn = attention.dot_product_attention(q, k, v).reshape(b, n, d)
    x = x + attn @ _w(self.proj_kernel, dtype) + _w(self.proj_bias, dtype)
    h = _layer_norm(x, self.norm2_scale, self.norm2_bias, eps)
    h = act(h @ _w(self.fc1_kernel, dtype) + _w(self.fc1_bias, dtype))
    return x + h @ _w(self.fc2_kernel, dtype) + _w(self.fc2_bias, dtype)


class ViTTeacher(nnx.Module):
  """CLIP/DINO-style ViT returning the final-LayerNorm CLS token.

  Pipeline: images in [-1, 1] -> [0, 1] -> resized to `image_size` (bilinear,
  antialiased; skipped when `image_size` is None or already matching) ->
  (x - mean) / std -> PxP patch conv -> [CLS; patches] + positional embedding
  (the patch part bilinearly interpolated when the patch grid differs from
  the stored one) -> optional pre-LayerNorm (CLIP's `norm_pre`) -> pre-LN
  blocks -> final LayerNorm -> CLS token (-> optional `head` projection).

  Build with random weights (std 0.02, for tests) or, normally, with
  `ViTTeacher.from_file`.

  Args:
    image_size: S, the size input images are resized to (None: no resize).
    patch_size: P.
    width: D.
    depth: number of blocks.
    num_heads: attention heads (default D // 64, the timm convention).
    mlp_dim: M (default 4 * D).
    pos_grid: (g_h, g_w) of the stored positional embedding (default
      S / P square).
    pre_norm: a LayerNorm before the blocks (timm CLIP models' `norm_pre`).
    head_dim: if set, a bias-free linear head D -> head_dim is applied to the
      CLS output (timm CLIP's image projection `head.weight`).
    ln_eps: LayerNorm epsilon (timm ViT 1e-6; OpenAI CLIP 1e-5).
    act: MLP activation, 'gelu' (exact, timm), 'gelu_tanh' or 'quick_gelu'
      (OpenAI CLIP).
    normalization: 'imagenet' (DINO/timm), 'clip', 'none' or (mean, std).
    dtype: compute dtype (LayerNorm and softmax run in float32).
    seed: random-init seed (numpy, host-side); None gives zero weights, to
      be overwritten by a loader.
  """

  def __init__(self, *, image_size: int | None = 224, patch_size: int = 16,
               width: int = 768, depth: int = 12,
               num_heads: int | None = None, mlp_dim: int | None = None,
               pos_grid: tuple[int, int] | None = None,
               pre_norm: bool = False, head_dim: int | None = None,
               ln_eps: float = 1e-6, act: str = 'gelu',
               normalization: str | tuple = 'imagenet',
               dtype: Dtype = jnp.float32, seed: int | None = 0):
    num_heads = num_heads or max(width // 64, 1)
    mlp_dim = mlp_dim or 4 * width
    if width % num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads '
                       f'{num_heads}.')
    if pos_grid is None:
      if image_size is None or image_size % patch_size:
        raise ValueError(f'pos_grid is needed unless image_size '
                         f'({image_size}) is a multiple of patch_size '
                         f'({patch_size}).')
      pos_grid = (image_size // patch_size,) * 2
    self.image_size = image_size
    self.patch_size = patch_size
    self.width = width
    self.depth = depth
    self.num_heads = num_heads
    self.mlp_dim = mlp_dim
    self.pos_grid = tuple(int(g) for g in pos_grid)
    self.ln_eps = ln_eps
    _activation(act)  # Validates the name.
    self.act = act
    self.mean, self.std = resolve_normalization(normalization)
    self.dtype = dtype
    self.out_dim = head_dim or width
    self.ignored_keys: tuple[str, ...] = ()

    rng = None if seed is None else np.random.default_rng(seed)

    def rand(shape):
      if rng is None:
        return np.zeros(shape, np.float32)
      return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    self.patch_kernel = _frozen(rand((patch_size, patch_size, 3, width)),
                                'conv_h', 'conv_w', 'embed_in', 'embed')
    self.patch_bias = _frozen(jnp.zeros((width,)), 'embed')
    self.cls_token = _frozen(rand((width,)), 'embed')
    n = self.pos_grid[0] * self.pos_grid[1] + 1
    self.pos_embed = _frozen(rand((n, width)), None, 'embed')
    if pre_norm:
      self.pre_norm_scale = _frozen(jnp.ones((width,)), 'embed')
      self.pre_norm_bias = _frozen(jnp.zeros((width,)), 'embed')
    else:
      self.pre_norm_scale = self.pre_norm_bias = None
    blocks = []
    for _ in range(depth):
      blk = ViTBlock(width, mlp_dim)
      for name, shape in (('qkv_kernel', (width, 3 * width)),
                          ('proj_kernel', (width, width)),
                          ('fc1_kernel', (width, mlp_dim)),
                          ('fc2_kernel', (mlp_dim, width))):
        getattr(blk, name).set_value(jnp.asarray(rand(shape)))
      blocks.append(blk)
    self.blocks = nnx.List(blocks)
    self.norm_scale = _frozen(jnp.ones((width,)), 'embed')
    self.norm_bias = _frozen(jnp.zeros((width,)), 'embed')
    self.head = (_frozen(rand((width, head_dim)), 'embed', 'mlp')
                 if head_dim else None)

  # ------------------------------------------------------------- forward

  def preprocess(self, images: Array) -> Array:
    """[B, H, W, 3] in [-1, 1] -> normalised [B, S, S, 3] float32."""
    _check_images(images, type(self).__name__)
    x = (images.astype(jnp.float32) + 1.0) * 0.5
    s = self.image_size
    if s is not None and x.shape[1:3] != (s, s):
      x = jax.image.resize(x, (x.shape[0], s, s, 3), 'bilinear',
                           antialias=True)
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    return (x - mean) / std

  def __call__(self, images: Array) -> Array:
    """[B, H, W, 3] in [-1, 1] -> CLS features [B, out_dim] float32."""
    dt = self.dtype
    x = self.preprocess(images).astype(dt)
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f'ViTTeacher input size {x.shape[1:3]} is not a '
                       f'multiple of the patch size {p}.')
    h = lax.conv_general_dilated(
        x, _w(self.patch_kernel, dt), window_strides=(p, p), padding='VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = h + _w(self.patch_bias, dt)
    b, gh, gw, d = h.shape
    tokens = h.reshape(b, gh * gw, d)
    cls = jnp.broadcast_to(_w(self.cls_token, dt), (b, 1, d))
    tokens = jnp.concatenate([cls, tokens], axis=1)
    pos = _w(self.pos_embed, jnp.float32)
    pos = jnp.concatenate(
        [pos[:1], interpolate_pos_embed(pos[1:], self.pos_grid, (gh, gw))], 0)
    tokens = tokens + pos.astype(dt)
    if self.pre_norm_scale is not None:
      tokens = _layer_norm(tokens, self.pre_norm_scale, self.pre_norm_bias,
                           self.ln_eps)
    for blk in self.blocks:
      tokens = blk(tokens, num_heads=self.num_heads, eps=self.ln_eps,
                   act=_activation(self.act), dtype=dt)
    out = _layer_norm(tokens[:, 0], self.norm_scale, self.norm_bias,
                      self.ln_eps).astype(jnp.float32)
    if self.head is not None:
      out = out @ _w(self.head, jnp.float32)
    return lax.stop_gradient(out)

  # ------------------------------------------------------------- loading

  @classmethod
  def from_file(cls, path: str | os.PathLike, **arch) -> 'ViTTeacher':
    """A ViT teacher with weights from a local timm-layout state dict.

    Reads `.safetensors` (needs the `safetensors` package), `.npz`, or a
    PyTorch file via `torch.load(weights_only=True)` (see
    `nn.weights.load_state_dict`). Depth, width, MLP width, patch size, the
    positional grid, `norm_pre` and (with `use_head=True`) the head size are
    inferred from the keys; `num_heads` cannot be and defaults to D // 64.

    Expected keys: `patch_embed.proj.weight/bias`, `cls_token`, `pos_embed`
    (with a CLS position), `blocks.{i}.norm1.weight/bias`,
    `blocks.{i}.attn.qkv.weight/bias`, `blocks.{i}.attn.proj.weight/bias`,
    `blocks.{i}.norm2.weight/bias`, `blocks.{i}.mlp.fc1.weight/bias`,
    `blocks.{i}.mlp.fc2.weight/bias`, `norm.weight/bias`; optional
    `norm_pre.weight/bias` and `head.weight`. Other top-level keys (a
    classifier `head`, `fc_norm`) are ignored and listed in `ignored_keys`;
    unknown keys inside `blocks.*` (layer scale, q/k norms) and register
    tokens are unsupported and raise.

    Args:
      path: the weights file.
      **arch: `ViTTeacher` arguments (`num_heads`, `image_size`, `ln_eps`,
        `act`, `normalization`, `dtype`), plus `use_head` (apply `head.weight`
        as a projection; default False). `image_size` defaults to the
        checkpoint's native size (grid * patch). `depth`/`width`/`patch_size`/
        `mlp_dim`, if given, must match the file.

    Raises:
      FileNotFoundError: if `path` does not exist.
      ValueError: naming missing keys, wrong shapes, unsupported keys or
        arguments that contradict the file.
    """
    state = weights.load_state_dict(path, 'ViT teacher')
    return cls.from_state_dict(state, **arch)

  @classmethod
  def from_state_dict(cls, state: Mapping[str, np.ndarray],
                      **arch) -> 'ViTTeacher':
    """As `from_file`, from an in-memory {name: array} dict."""
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    arch = dict(arch)
    use_head = bool(arch.pop('use_head', False))
    for k in ('pos_grid', 'pre_norm', 'head_dim', 'seed'):
      if k in arch:
        raise ValueError(f'ViTTeacher.from_file: {k!r} is inferred from the '
                         f'file and cannot be given.')
    for key in ('patch_embed.proj.weight', 'pos_embed'):
      if key not in state:
        raise ValueError(
            f'ViT state dict is missing key {key!r} (needed to infer the '
            f'architecture); its keys start with {sorted(state)[:8]} '
            f'({len(state)} in all).')
    pw = state['patch_embed.proj.weight']
    if pw.ndim != 4 or pw.shape[1] != 3 or pw.shape[2] != pw.shape[3]:
      raise ValueError(f'patch_embed.proj.weight must be [D, 3, P, P]; got '
                       f'{pw.shape}.')
    width, _, patch, _ = pw.shape
    block_ids = {int(m.group(1)) for k in state
                 if (m := re.match(r'blocks\.(\d+)\.', k))}
    depth = max(block_ids) + 1 if block_ids else 0
    fc1 = state.get('blocks.0.mlp.fc1.weight')
    mlp_dim = fc1.shape[0] if fc1 is not None and fc1.ndim == 2 else 4 * width
    n_pos = int(np.prod(state['pos_embed'].shape[:-1]))
    grid = math.isqrt(max(n_pos - 1, 0))
    if grid < 1 or grid * grid != n_pos - 1:
      raise ValueError(
          f'pos_embed {state["pos_embed"].shape} must hold a CLS position plus '
          f'a square patch grid ({n_pos} positions given).')
    inferred = dict(depth=depth, width=width, patch_size=patch,
                    mlp_dim=mlp_dim)
    for k, v in inferred.items():
      if k in arch and arch[k] != v:
        raise ValueError(f'ViTTeacher.from_file: {k}={arch[k]} contradicts '
                         f'the file ({k}={v}).')
      arch[k] = v
    pre_norm = 'norm_pre.weight' in state or 'norm_pre.bias' in state
    head_dim = None
    if use_head:
      if 'head.weight' not in state:
        raise ValueError('use_head=True but the state dict has no '
                         "'head.weight'.")
      head_dim = state['head.weight'].shape[0]
    arch.setdefault('image_size', grid * patch)

    # Expected keys and torch-layout shapes, and how each maps into JAX.
    d, m = width, mlp_dim
    spec = {
        'patch_embed.proj.weight': (d, 3, patch, patch),
        'patch_embed.proj.bias': (d,),
        'cls_token': (1, 1, d),
        'pos_embed': (1, n_pos, d),
        'norm.weight': (d,), 'norm.bias': (d,),
    }
    if pre_norm:
      spec.update({'norm_pre.weight': (d,), 'norm_pre.bias': (d,)})
    if head_dim:
      spec['head.weight'] = (head_dim, d)
    block_spec = {
        'norm1.weight': (d,), 'norm1.bias': (d,),
        'attn.qkv.weight': (3 * d, d), 'attn.qkv.bias': (3 * d,),
        'attn.proj.weight': (d, d), 'attn.proj.bias': (d,),
        'norm2.weight': (d,), 'norm2.bias': (d,),
        'mlp.fc1.weight': (m, d), 'mlp.fc1.bias': (m,),
        'mlp.fc2.weight': (d, m), 'mlp.fc2.bias': (d,),
    }
    for i in range(depth):
      spec.update({f'blocks.{i}.{k}': s for k, s in block_spec.items()})
    missing = [k for k in spec if k not in state]
    if missing:
      raise ValueError(f'ViT state dict is missing keys {missing}; its keys '
                       f'start with {sorted(state)[:8]} ({len(state)} in all).')
    bad = [f'{k}: expected {s}, got {state[k].shape}' for k, s in spec.items()
           if state[k].shape != s and not (k == 'cls_token' and
                                           state[k].size == d)]
    if bad:
      raise ValueError(f'ViT state dict has wrong shapes: {bad}.')
    extra = sorted(k for k in state if k not in spec)
    unsupported = [k for k in extra if k.startswith('blocks.') or
                   k in ('reg_token', 'register_tokens')]
    if unsupported:
      raise ValueError(f'unsupported ViT variant (layer scale, q/k norm or '
                       f'register tokens?): keys {unsupported[:8]} are not '
                       f'handled.')

    model = partitioning.abstract_module(lambda: cls(pos_grid=(grid, grid),
                                       pre_norm=pre_norm, head_dim=head_dim,
                                       seed=None, **arch))

    def put(var, value):
      var.set_value(jnp.asarray(value, jnp.float32))

    put(model.patch_kernel,
        state['patch_embed.proj.weight'].transpose(2, 3, 1, 0))
    put(model.patch_bias, state['patch_embed.proj.bias'])
    put(model.cls_token, state['cls_token'].reshape(d))
    put(model.pos_embed, state['pos_embed'].reshape(n_pos, d))
    if pre_norm:
      put(model.pre_norm_scale, state['norm_pre.weight'])
      put(model.pre_norm_bias, state['norm_pre.bias'])
    for i, blk in enumerate(model.blocks):
      g = lambda k, i=i: state[f'blocks.{i}.{k}']
      put(blk.norm1_scale, g('norm1.weight'))
      put(blk.norm1_bias, g('norm1.bias'))
      put(blk.qkv_kernel, g('attn.qkv.weight').T)
      put(blk.qkv_bias, g('attn.qkv.bias'))
      put(blk.proj_kernel, g('attn.proj.weight').T)
      put(blk.proj_bias, g('attn.proj.bias'))
      put(blk.norm2_scale, g('norm2.weight'))
      put(blk.norm2_bias, g('norm2.bias'))
      put(blk.fc1_kernel, g('mlp.fc1.weight').T)
      put(blk.fc1_bias, g('mlp.fc1.bias'))
      put(blk.fc2_kernel, g('mlp.fc2.weight').T)
      put(blk.fc2_bias, g('mlp.fc2.bias'))
    put(model.norm_scale, state['norm.weight'])
    put(model.norm_bias, state['norm.bias'])
    if head_dim:
      put(model.head, state['head.weight'].T)
    model.ignored_keys = tuple(extra)
    return model


# -----------------------------------------------------------------------------
# Construction from config specs.
# -----------------------------------------------------------------------------

TEACHERS = ('random_conv', 'vit')


def make_teacher(spec: nnx.Module | Mapping[str, Any]) -> nnx.Module:
  """A teacher from a module (returned as is) or a config dict (or ConfigDict).

  Dicts: `{'name': 'random_conv', 'out_dim': ..., 'width': ..., 'seed': ...}`
  or `{'name': 'vit', 'path': '/local/vit.pth', **arch}` (`ViTTeacher.
  from_file`; without `path`, a randomly initialised `ViTTeacher(**arch)`).
  A missing name means 'random_conv'.
  """
  if isinstance(spec, nnx.Module):
    return spec
  if hasattr(spec, 'to_dict'):  # ml_collections.ConfigDict
    spec = spec.to_dict()
  if not isinstance(spec, Mapping):
    raise TypeError(f'a teacher spec must be an nnx.Module or a dict; got '
                    f'{type(spec).__name__}.')
  kw = dict(spec)
  name = kw.pop('name', 'random_conv')
  if name == 'random_conv':
    return RandomConvTeacher(**kw)
  if name == 'vit':
    path = kw.pop('path', None)
    return ViTTeacher.from_file(path, **kw) if path else ViTTeacher(**kw)
  raise ValueError(f'unknown teacher {name!r}; known: {list(TEACHERS)}.')
