"""Transformer pieces shared by the 1D image tokenizers (TiTok, FlexTok).

  Attention        multi-head self-attention with an optional boolean mask
                   (True = the query may attend to the key); the shared
                   `tokenizers_jax.nn.attention.Attention`, re-exported.
  Mlp              two linears with GELU.
  Block            pre-LN block: x + attn(LN(x)), x + mlp(LN(x)).
  AdaLNZeroBlock   DiT's block: LayerNorm without affine, shift/scale/gate
                   from a conditioning vector through a zero-initialised
                   linear, so each block starts as the identity.
  Transformer      `depth` Blocks + a final LayerNorm.
  AdaLNTransformer `depth` AdaLNZeroBlocks + a final adaLN-modulated
                   LayerNorm (zero-initialised modulation).
  sincos_1d/2d     fixed sine-cosine positional embeddings (MAE layout).
  learned_pos      a learned positional embedding Param (std 0.02).
  timestep_embedding  sinusoidal embedding of scalar times.
  patchify/unpatchify images <-> patch tokens.

Scores and softmax run in float32 whatever the compute dtype.

Dimension legend:
  B: batch; N: tokens (Nq queries, Nk keys); D: width; M: MLP width
  nh: heads; hd: head width (D / nh); C: conditioning width
  H, W: image size; P: patch size; c: image channels
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.nn.attention import Attention
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any
LN_EPS = 1e-6


def linear(din: int, dout: int, names=('embed', 'mlp'), *,
           dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
           zero: bool = False) -> nnx.Linear:
  kw = {}
  if zero:
    kw = dict(kernel_init=nnx.initializers.zeros_init(),
              bias_init=nnx.initializers.zeros_init())
  return nnx.Linear(din, dout, dtype=dtype, rngs=rngs,
                    kernel_metadata=logical(*names),
                    bias_metadata=logical(names[1]), **kw)


def layer_norm(width: int, *, affine: bool = True, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs, epsilon: float = LN_EPS) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=epsilon, dtype=dtype, use_bias=affine,
                       use_scale=affine, rngs=rngs,
                       scale_metadata=logical('embed'),
                       bias_metadata=logical('embed'))


class Mlp(nnx.Module):
  """fc2(GELU(fc1(x))); GELU's tanh approximation unless
  `gelu_approximate=False` (the exact erf form, PyTorch's `nn.GELU()`)."""

  def __init__(self, width: int, hidden: int, *, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs, gelu_approximate: bool = True):
    self.fc1 = linear(width, hidden, ('embed', 'mlp'), dtype=dtype, rngs=rngs)
    self.fc2 = linear(hidden, width, ('mlp', 'embed'), dtype=dtype, rngs=rngs)
    self.gelu_approximate = gelu_approximate

  def __call__(self, x: Array) -> Array:
    return self.fc2(nnx.gelu(self.fc1(x), approximate=self.gelu_approximate))


class Block(nnx.Module):
  """Pre-LN transformer block (`ln_eps`: the LayerNorms' epsilon;
  `gelu_approximate`: see `Mlp`)."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, *,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs,
               ln_eps: float = LN_EPS, gelu_approximate: bool = True):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = layer_norm(width, epsilon=ln_eps, **kw)
    self.attn = Attention(width, num_heads, **kw)
    self.norm2 = layer_norm(width, epsilon=ln_eps, **kw)
    self.mlp = Mlp(width, max(int(width * mlp_ratio), 1),
                   gelu_approximate=gelu_approximate, **kw)

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    x = x + self.attn(self.norm1(x), mask)
    return x + self.mlp(self.norm2(x))


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """x [B, N, D] * (1 + scale [B, D]) + shift [B, D]."""
  return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNZeroBlock(nnx.Module):
  """DiT block with adaLN-zero conditioning on c [B, C].

  (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c)), the
  linear initialised to zero;
  x += gate1 * attn(modulate(LN(x), shift1, scale1));
  x += gate2 * mlp(modulate(LN(x), shift2, scale2)).
  """

  def __init__(self, width: int, num_heads: int, cond_dim: int,
               mlp_ratio: float = 4.0, *, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = layer_norm(width, affine=False, **kw)
    self.attn = Attention(width, num_heads, **kw)
    self.norm2 = layer_norm(width, affine=False, **kw)
    self.mlp = Mlp(width, max(int(width * mlp_ratio), 1), **kw)
    self.ada = linear(cond_dim, 6 * width, ('mlp', 'embed'), zero=True, **kw)

  def __call__(self, x: Array, c: Array, mask: Array | None = None) -> Array:
    sh1, sc1, g1, sh2, sc2, g2 = jnp.split(self.ada(nnx.silu(c)), 6, axis=-1)
    x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1), mask)
    return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class Transformer(nnx.Module):
  """`depth` pre-LN Blocks and a final LayerNorm: [B, N, D] -> [B, N, D]
  (`ln_eps`, `gelu_approximate`: see `Block`)."""

  def __init__(self, width: int, depth: int, num_heads: int,
               mlp_ratio: float = 4.0, *, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs, ln_eps: float = LN_EPS,
               gelu_approximate: bool = True):
    self.blocks = nnx.List([
        Block(width, num_heads, mlp_ratio, dtype=dtype, rngs=rngs,
              ln_eps=ln_eps, gelu_approximate=gelu_approximate)
        for _ in range(depth)])
    self.norm = layer_norm(width, dtype=dtype, rngs=rngs, epsilon=ln_eps)

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    for block in self.blocks:
      x = block(x, mask)
    return self.norm(x)


class AdaLNTransformer(nnx.Module):
  """`depth` AdaLNZeroBlocks and a final LayerNorm modulated by c.

  `__call__(x, c, mask, return_layer=i)` also returns the hidden states after
  block i (1-based; for feature-alignment losses such as REPA).
  """

  def __init__(self, width: int, depth: int, num_heads: int, cond_dim: int,
               mlp_ratio: float = 4.0, *, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        AdaLNZeroBlock(width, num_heads, cond_dim, mlp_ratio, **kw)
        for _ in range(depth)])
    self.norm = layer_norm(width, affine=False, **kw)
    self.ada = linear(cond_dim, 2 * width, ('mlp', 'embed'), zero=True, **kw)

  def __call__(self, x: Array, c: Array, mask: Array | None = None,
               return_layer: int | None = None):
    hidden = None
    for i, block in enumerate(self.blocks):
      x = block(x, c, mask)
      if return_layer == i + 1:
        hidden = x
    shift, scale = jnp.split(self.ada(nnx.silu(c)), 2, axis=-1)
    out = modulate(self.norm(x), shift, scale)
    return out if return_layer is None else (out, hidden)


# -----------------------------------------------------------------------------
# Positional and time embeddings; patches.
# -----------------------------------------------------------------------------


def _sincos(pos: np.ndarray, dim: int) -> np.ndarray:
  """[N] positions -> [N, dim]: sin in the first half, cos in the second,
  frequencies 10000^(-i / (dim/2))."""
  if dim % 2:
    raise ValueError(f'sin-cos embedding dimension must be even; got {dim}')
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  angles = pos.astype(np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_1d(n: int, dim: int) -> np.ndarray:
  """Fixed [n, dim] float32 embedding of positions 0..n-1."""
  return _sincos(np.arange(n), dim).astype(np.float32)


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
  """Fixed [h*w, dim] float32 embedding of a row-major h x w grid: the first
  half embeds the row, the second half the column."""
  if dim % 4:
    raise ValueError(f'2D sin-cos embedding dimension must be a multiple of '
                     f'4; got {dim}')
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.concatenate([_sincos(rows.reshape(-1), dim // 2),
                         _sincos(cols.reshape(-1), dim // 2)],
                        axis=1).astype(np.float32)


def learned_pos(n: int, dim: int, rngs: nnx.Rngs) -> nnx.Param:
  init = 0.02 * jax.random.normal(rngs.params(), (n, dim), jnp.float32)
  return nnx.Param(init, **logical(None, 'embed'))


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0,
                       scale: float = 1000.0) -> Array:
  """t [B] in [0, 1] -> [B, dim] ([cos | sin] of scale * t * frequencies)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / half)
  args = scale * t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def patchify(x: Array, p: int) -> Array:
  """[B, H, W, c] -> [B, (H/P)(W/P), P*P*c], patches row-major."""
  b, h, w, c = x.shape
  if h % p or w % p:
    raise ValueError(f'image size {h}x{w} is not divisible by the patch size '
                     f'{p}')
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: Array, p: int, h: int, w: int) -> Array:
  """Inverse of `patchify`: [B, (H/P)(W/P), P*P*c] -> [B, H, W, c]."""
  b, n, d = t.shape
  c = d // (p * p)
  t = t.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return t.reshape(b, h, w, c)
