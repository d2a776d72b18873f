"""Multi-head attention: one module and its functional core.

  dot_product_attention  q, k, v split into heads -> attended values, through
                         `jax.nn.dot_product_attention` (logits and softmax in
                         float32 whatever the compute dtype), with a boolean
                         mask broadcastable to [B, Nq, Nk] and/or causal
                         masking.
  split_heads            [..., N, D] -> [..., N, nh, hd].
  split_fused_qkv        a fused [q | k | v] projection -> q, k, v in heads.
  Attention              the nnx module: input projections (one fused
                         `qkv` linear, or separate `q`, `k`, `v` linears that
                         also allow cross-attention), optional qk-norm
                         (LayerNorm or RMSNorm over each head), attention and
                         the output projection `proj`.

Weights that are not `nnx.Linear`s (frozen teacher weights, 1x1 convs) use
the functional core with their own projections.

A transformer block may subclass `Attention` instead of holding one: the
attention weights (`qkv`, `proj`, `q_norm`, `k_norm`) then sit at the block's
top level (`blocks/0/qkv/kernel`), as in blocks written before this module.

Mask convention: True where query i may attend to key j. A query whose keys
are all masked attends uniformly to all keys (keep at least one key).

Dimension legend:
  B: batch; Nq: queries; Nk: keys (= Nq for self-attention); N: tokens
  D: width; Dc: context width (cross-attention); nh: heads; hd = D / nh
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

QK_NORMS = (None, 'layer', 'rms')


def split_heads(x: Array, num_heads: int) -> Array:
  """[..., N, D] -> [..., N, nh, D / nh] (head-major channel blocks)."""
  d = x.shape[-1]
  if d % num_heads:
    raise ValueError(f'width {d} is not divisible by num_heads {num_heads}')
  return x.reshape(x.shape[:-1] + (num_heads, d // num_heads))


def split_fused_qkv(qkv: Array, num_heads: int) -> tuple[Array, Array, Array]:
  """A fused projection [..., N, 3D] laid out [q | k | v] (each head-major,
  timm's layout) -> q, k, v, each [..., N, nh, hd]."""
  q, k, v = jnp.split(qkv, 3, axis=-1)
  return (split_heads(q, num_heads), split_heads(k, num_heads),
          split_heads(v, num_heads))


def dot_product_attention(q: Array, k: Array, v: Array, *,
                          mask: Array | None = None, causal: bool = False,
                          scale: float | None = None) -> Array:
  """Scaled dot-product attention over heads.

  Args:
    q: [B, Nq, nh, hd] queries.
    k: [B, Nk, nh, hd] keys (q's dtype).
    v: [B, Nk, nh, hd] values (q's dtype).
    mask: optional boolean, broadcastable to [B, Nq, Nk] ([Nk], [Nq, Nk],
      [B, 1, Nk] for key padding, or [B, Nq, Nk]); True = may attend.
    causal: also mask keys after the query (key j > query i).
    scale: logit scale (default hd ** -0.5).

  Returns:
    [B, Nq, nh, hd] in v's dtype. Logits and softmax are float32 (fp32
    accumulation for bf16 inputs).
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f'dot_product_attention expects [B, N, heads, head_dim] '
                     f'q, k, v; got {q.shape}, {k.shape}, {v.shape}')
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    if mask.ndim > 3:
      raise ValueError(f'mask must broadcast to [B, Nq, Nk]; got shape '
                       f'{mask.shape}')
    mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)[:, None]
  if scale is None:
    scale = q.shape[-1] ** -0.5
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                      is_causal=causal)


def _qk_norm(kind: str | None, head_dim: int, epsilon: float, dtype: Dtype,
             rngs: nnx.Rngs) -> nnx.Module | None:
  if kind is None:
    return None
  norm = nnx.LayerNorm if kind == 'layer' else nnx.RMSNorm
  return norm(head_dim, epsilon=epsilon, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head attention: x [B, Nq, D] (context [B, Nk, Dc]) -> [B, Nq, D].

  Weights: `qkv` (D -> 3D, [q | k | v], head-major) when `fused_qkv`, else
  `q` (D -> D), `k` and `v` (Dc -> D); `q_norm`, `k_norm` ([hd] LayerNorm
  or RMSNorm) with `qk_norm`; `proj` (D -> D). Kernels are named
  ('embed', 'heads') in and ('heads', 'embed') out.

  Args:
    width: D.
    num_heads: nh (must divide D).
    fused_qkv: one fused input projection (self-attention only), or three.
    context_dim: Dc, the width of the keys' and values' source (separate
      projections only; default D).
    qk_norm: None, 'layer' (LayerNorm) or 'rms' (RMSNorm) applied to each
      head of q and k before the logits.
    norm_epsilon: qk-norm epsilon.
    causal: causal masking on every call (combined with `mask`).
    use_bias: biases on the projections.
    kernel_init: projection kernel initializer (default: `nnx.Linear`'s).
    scale: logit scale (default hd ** -0.5; FlexTok's muP scale is 8 / hd).
    dtype: compute dtype.
    rngs: `nnx.Rngs`.
  """

  def __init__(self, width: int, num_heads: int, *, fused_qkv: bool = True,
               context_dim: int | None = None, qk_norm: str | None = None,
               norm_epsilon: float = 1e-6, causal: bool = False,
               use_bias: bool = True, kernel_init: Initializer | None = None,
               scale: float | None = None,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads '
                       f'{num_heads}')
    if qk_norm not in QK_NORMS:
      raise ValueError(f'qk_norm must be one of {QK_NORMS}; got {qk_norm!r}')
    if fused_qkv and context_dim not in (None, width):
      raise ValueError('a fused q/k/v projection is self-attention only; use '
                       'fused_qkv=False for a context of another width')
    kw = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
    if kernel_init is not None:
      kw['kernel_init'] = kernel_init

    def linear(din, dout, names):
      return nnx.Linear(din, dout, kernel_metadata=logical(*names),
                        bias_metadata=logical(names[1]), **kw)

    self.num_heads = num_heads
    self.causal = causal
    self.scale = scale
    if fused_qkv:
      self.qkv = linear(width, 3 * width, ('embed', 'heads'))
      self.q = self.k = self.v = None
    else:
      dc = context_dim or width
      self.qkv = None
      self.q = linear(width, width, ('embed', 'heads'))
      self.k = linear(dc, width, ('embed', 'heads'))
      self.v = linear(dc, width, ('embed', 'heads'))
    hd = width // num_heads
    self.q_norm = _qk_norm(qk_norm, hd, norm_epsilon, dtype, rngs)
    self.k_norm = _qk_norm(qk_norm, hd, norm_epsilon, dtype, rngs)
    self.proj = linear(width, width, ('heads', 'embed'))

  def __call__(self, x: Array, mask: Array | None = None, *,
               context: Array | None = None) -> Array:
    """Attends x's queries to its own (or `context`'s) keys.

    Args:
      x: [B, Nq, D].
      mask: optional boolean broadcastable to [B, Nq, Nk] (True = attend).
      context: optional [B, Nk, Dc] keys/values source (cross-attention;
        separate projections only).

    Returns:
      [B, Nq, D].
    """
    b, n, d = x.shape
    nh = self.num_heads
    if self.qkv is not None:
      if context is not None:
        raise ValueError('this Attention has a fused q/k/v projection (self-'
                         'attention only); build it with fused_qkv=False for '
                         'cross-attention')
      q, k, v = split_fused_qkv(self.qkv(x), nh)
    else:
      src = x if context is None else context
      q, k, v = (split_heads(self.q(x), nh), split_heads(self.k(src), nh),
                 split_heads(self.v(src), nh))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    out = dot_product_attention(q, k, v, mask=mask, causal=self.causal,
                                scale=self.scale)
    return self.proj(out.reshape(b, n, d))
