"""Pure-JAX quantization math (no Flax), usable from Linen, Equinox or plain JAX.

Every function here is jit-, vmap- and sharding-friendly: no host syncs, no
Python branching on array values, no one-hot matrices. Under `jax.jit` with
global (NamedSharding) arrays, every mean/count below is over the *global*
batch, whatever the device mesh.

Dimension legend:
  N: number of tokens (flattened batch and positions)
  K: number of codes in a codebook
  D: code dimension
  G: number of groups (sub-codebooks) of an LFQ code
  B: bits per LFQ group (each group has 2**B codes)
  L: number of FSQ dimensions (len(levels))
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

# The nearest-code search lives in its own module; its public names are part
# of this functional API too.
from tokenizers_jax.quantizers.search import (  # pylint: disable=g-bad-import-order,unused-import
    DENSE_SEARCH_MAX_ELEMENTS, SEARCH_BLOCK, SEARCH_TILE_ELEMENTS, code_scores,
    gather_codes, nearest_code)

Array = jax.Array

# -----------------------------------------------------------------------------
# Straight-through estimators.
# -----------------------------------------------------------------------------


def straight_through(z: Array, q: Array) -> Array:
  """Straight-through estimator: the value is exactly `q`, the gradient flows to `z`.

  Written as `q + (z - sg(z))` rather than `z + sg(q - z)`, so the forward value
  equals `q` bitwise (`z - sg(z)` is exactly zero for finite `z`).
  """
  return q + (z - lax.stop_gradient(z)).astype(q.dtype)


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  """x / max(||x||, eps) along `axis`, computed in fp32 and cast back."""
  xf = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(xf * xf, axis=axis, keepdims=True))
  return (xf / jnp.maximum(norm, eps)).astype(x.dtype)


def rotation_trick(z: Array, q: Array, eps: float = 1e-6) -> Array:
  """Rotation trick (Fifty et al., 2025): value exactly `q`; gradient `sg(λR)`.

  R is the rotation taking z/||z|| to q/||q|| in the plane they span
  (R = I - 2 w wᵀ + 2 q̂ ẑᵀ with w = (ẑ+q̂)/||ẑ+q̂||), λ = ||q||/||z||. The
  gradient reaching `z` is the upstream gradient rotated by Rᵀ and scaled.

  Args:
    z: [..., D] encoder output.
    q: [..., D] selected codes (treated as constants).
  """
  zf = z.astype(jnp.float32)
  qf = lax.stop_gradient(q).astype(jnp.float32)
  z_norm = jnp.linalg.norm(lax.stop_gradient(zf), axis=-1, keepdims=True)
  q_norm = jnp.linalg.norm(qf, axis=-1, keepdims=True)
  u = lax.stop_gradient(zf) / jnp.maximum(z_norm, eps)
  v = qf / jnp.maximum(q_norm, eps)
  w = l2_normalize(u + v, eps=eps)
  rotated = (
      zf
      - 2.0 * jnp.sum(zf * w, -1, keepdims=True) * w
      + 2.0 * jnp.sum(zf * u, -1, keepdims=True) * v
  )
  rotated = rotated * (q_norm / jnp.maximum(z_norm, eps))
  return q + (rotated - lax.stop_gradient(rotated)).astype(q.dtype)


# -----------------------------------------------------------------------------
# Entropy terms.
# -----------------------------------------------------------------------------


def entropy(probs: Array, axis: int = -1) -> Array:
  """Shannon entropy in nats; 0·log 0 = 0.

  Computed as p·log(max(p, tiny)) rather than xlogy: where a probability
  underflows to exactly 0, xlogy's derivative is infinite and the backward
  pass would produce inf * 0 = NaN; this form has the same value and a finite
  gradient.
  """
  probs = jnp.asarray(probs)
  tiny = jnp.finfo(jnp.float32).tiny if probs.dtype != jnp.float64 else 1e-300
  return -jnp.sum(probs * jnp.log(jnp.maximum(probs, tiny)), axis=axis)


def _weights(n: int, mask: Array | None) -> Array:
  if mask is None:
    return jnp.ones((n,), jnp.float32)
  return mask.reshape(n).astype(jnp.float32)


def entropy_terms(
    logits: Array, mask: Array | None = None
) -> tuple[Array, Array]:
  """MaskGIT/MAGVIT entropy terms over a dense logit matrix.

  Args:
    logits: [N, K]; p(k|n) = softmax(logits[n]).
    mask: optional [N] bool; masked tokens are ignored.

  Returns:
    (E_n[H(p(·|n))], H(E_n[p(·|n)])): the per-sample entropy, to minimise, and
    the entropy of the batch-average distribution, to maximise.
  """
  n = logits.shape[0]
  w = _weights(n, mask)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  per_sample = jnp.sum(w * -jnp.sum(p * logp, axis=-1)) / denom
  avg = jnp.sum(p * w[:, None], axis=0) / denom
  return per_sample, entropy(avg)


# -----------------------------------------------------------------------------
# Lookup-free quantization (MAGVIT-v2 LFQ, WeTok group LFQ, BSQ).
# -----------------------------------------------------------------------------


def lfq_quantize(z: Array, scale: float = 1.0) -> tuple[Array, Array]:
  """Sign quantization with LSB-first indices.

  Bit i of the index is 1 where z[..., i] > 0 (the first dimension is the least
  significant bit, as in MAGVIT-v2 / Open-MAGVIT2; vector-quantize-pytorch uses
  the opposite, MSB-first, order). Zero maps to -scale.

  Args:
    z: [..., B] with B <= 31.
    scale: code magnitude.

  Returns:
    (codes [..., B] in {-scale, +scale} with z's dtype, indices [...] int32).
  """
  bits = z.shape[-1]
  if bits > 31:
    raise ValueError(f'lfq_quantize supports at most 31 bits per group; got {bits}')
  positive = z > 0
  codes = jnp.where(positive, scale, -scale).astype(z.dtype)
  weights = (1 << np.arange(bits)).astype(np.int32)
  indices = jnp.sum(positive.astype(jnp.int32) * weights, axis=-1)
  return codes, indices.astype(jnp.int32)


def lfq_bits(indices: Array, bits: int) -> Array:
  """LSB-first bit expansion: [...] int -> [..., bits] in {0, 1} (int32)."""
  shifts = np.arange(bits, dtype=np.int32)
  return (indices[..., None] >> shifts) & 1


def lfq_codes(indices: Array, bits: int, scale: float = 1.0,
              dtype=jnp.float32) -> Array:
  """Inverse of `lfq_quantize`: indices [...] -> codes [..., bits]."""
  b = lfq_bits(indices, bits)
  return jnp.where(b == 1, scale, -scale).astype(dtype)


def _log_code_probs(lp1: Array, lp0: Array, bit_table: Array) -> Array:
  """log p(code) for the codes listed in bit_table, from per-bit log probs.

  lp1, lp0: [N, G, b] log p(bit=1), log p(bit=0); bit_table: [C, b] in {0,1}.
  Returns [N, G, C].
  """
  base = jnp.sum(lp0, axis=-1, keepdims=True)
  return base + jnp.einsum('ngb,cb->ngc', lp1 - lp0, bit_table.astype(lp1.dtype))


def lfq_entropy_terms(
    z: Array,
    *,
    temperature: float = 0.01,
    scale: float = 1.0,
    mask: Array | None = None,
    max_block_elements: int = 1 << 24,
) -> tuple[Array, Array]:
  """Exact LFQ entropy terms without materialising N x 2^B logits.

  p(c|z) = softmax_c(2⟨z, c⟩ / τ) over the 2^B codes c ∈ {±scale}^B of a group.
  Because the code set is a product of per-bit choices, p factorises into
  independent bits with p(bit_i = 1) = σ(4·scale·z_i/τ). Hence
    * E_n[H(p(·|z_n))] = E_n[Σ_i H(σ(4·scale·z_ni/τ))]   (closed form), and
    * the batch average p̄(c) = E_n[p_lo(c_lo|z_n)·p_hi(c_hi|z_n)] is a matrix
      product of the distributions over the low and high halves of the bits,
      [2^(B/2), N] @ [N, 2^(B/2)]. Its entropy is accumulated over row blocks
      of at most `max_block_elements` in `lax.scan`.
  Both terms are computed per group over the group's 2^B codes (never the
  product codebook) and averaged over groups; the batch term uses the global
  batch under jit.

  Args:
    z: [N, G, B] pre-quantization values.
    temperature: τ.
    scale: code magnitude.
    mask: optional [N] bool.
    max_block_elements: memory bound for one block of p̄.

  Returns:
    (per_sample_entropy, codebook_entropy), fp32 scalars in nats.
  """
  n, g, bits = z.shape
  w = _weights(n, mask)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  a = (4.0 * scale / temperature) * z.astype(jnp.float32)
  lp1 = jax.nn.log_sigmoid(a)
  lp0 = jax.nn.log_sigmoid(-a)
  bit_entropy = -(jnp.exp(lp1) * lp1 + jnp.exp(lp0) * lp0)
  per_sample = jnp.sum(w[:, None] * jnp.sum(bit_entropy, -1)) / (denom * g)

  lo_bits = bits // 2
  hi_bits = bits - lo_bits
  hi_table = lfq_bits(jnp.arange(2 ** hi_bits, dtype=jnp.int32), hi_bits)
  p_hi = jnp.exp(_log_code_probs(lp1[..., lo_bits:], lp0[..., lo_bits:],
                                 hi_table))  # [N, G, 2^hi]
  p_hi = p_hi * (w / denom)[:, None, None]
  num_lo = 2 ** lo_bits
  rows = max(1, min(num_lo, max_block_elements // max(g * 2 ** hi_bits, 1)))
  num_blocks = -(-num_lo // rows)
  lo_codes = jnp.arange(num_blocks * rows, dtype=jnp.int32)
  valid = (lo_codes < num_lo).reshape(num_blocks, rows)
  lo_table = lfq_bits(lo_codes, max(lo_bits, 1))[..., :lo_bits]
  lo_table = lo_table.reshape(num_blocks, rows, lo_bits)
  lp1_lo, lp0_lo = lp1[..., :lo_bits], lp0[..., :lo_bits]

  @jax.checkpoint
  def block_entropy(table, ok):
    p_lo = jnp.exp(_log_code_probs(lp1_lo, lp0_lo, table))  # [N, G, rows]
    p_lo = jnp.where(ok[None, None, :], p_lo, 0.0)
    p_bar = jnp.einsum('ngi,ngj->gij', p_lo, p_hi)
    # Finite gradient where code probabilities underflow to 0 (see entropy).
    return entropy(p_bar, axis=None)

  def body(total, block):
    return total + block_entropy(*block), None

  total, _ = lax.scan(body, jnp.zeros((), jnp.float32), (lo_table, valid))
  return per_sample, total / g


# -----------------------------------------------------------------------------
# Finite scalar quantization.
# -----------------------------------------------------------------------------


def _levels_array(levels: Sequence[int]) -> np.ndarray:
  lv = np.asarray(levels, dtype=np.int64)
  if lv.ndim != 1 or lv.size == 0 or np.any(lv < 2):
    raise ValueError(f'FSQ levels must be a non-empty list of ints >= 2; got {levels}')
  return lv


def fsq_basis(levels: Sequence[int]) -> np.ndarray:
  """Mixed-radix basis, first dimension least significant: cumprod([1]+L[:-1])."""
  lv = _levels_array(levels)
  if int(np.prod(lv)) >= 2 ** 31:
    raise ValueError(f'FSQ codebook size prod({list(levels)}) must be < 2**31')
  return np.concatenate([[1], np.cumprod(lv[:-1])]).astype(np.int32)


def fsq_bound(z: Array, levels: Sequence[int], eps: float = 1e-3) -> Array:
  """Bound z so that rounding yields exactly L_i values per dimension.

  half_l = (L-1)(1+eps)/2; even L are offset by 1/2 and the input is shifted
  by arctanh(offset/half_l) (the arctanh correction; vector-quantize-pytorch
  issue #94), so z = 0 maps to the code 0 for even L too.
  """
  lv = _levels_array(levels).astype(np.float64)
  half_l = (lv - 1) * (1 + eps) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  zf = z.astype(jnp.float32)
  return (jnp.tanh(zf + shift.astype(np.float32)) * half_l.astype(np.float32)
          - offset.astype(np.float32))


def fsq_quantize(z: Array, levels: Sequence[int]) -> tuple[Array, Array]:
  """FSQ: bound, round (straight-through), normalise to [-1, 1].

  Args:
    z: [..., L].
    levels: L ints.

  Returns:
    (codes [..., L] in z's dtype, values (d - L//2)/(L//2) for digits
     d ∈ [0, L); indices [...] int32 in [0, prod(L)), mixed radix with the
     first dimension least significant).
  """
  lv = _levels_array(levels)
  half_width = (lv // 2).astype(np.float32)
  bounded = fsq_bound(z, levels)
  rounded = jnp.round(lax.stop_gradient(bounded))
  # Guard against any out-of-range value (e.g. from a non-finite input).
  lo = -half_width
  hi = (lv - 1 - lv // 2).astype(np.float32)
  rounded = jnp.clip(rounded, lo, hi)
  digits = (rounded + half_width).astype(jnp.int32)
  indices = jnp.sum(digits * fsq_basis(levels), axis=-1)
  codes = straight_through(bounded, rounded) / half_width
  return codes.astype(z.dtype), indices


def fsq_codes(indices: Array, levels: Sequence[int], dtype=jnp.float32) -> Array:
  """Inverse of `fsq_quantize`: indices [...] -> codes [..., L]."""
  lv = _levels_array(levels)
  half_width = (lv // 2).astype(np.float32)
  digits = (indices[..., None] // fsq_basis(levels)) % lv.astype(np.int32)
  return ((digits.astype(jnp.float32) - half_width) / half_width).astype(dtype)


def fsq_codebook_size(levels: Sequence[int]) -> int:
  return int(np.prod(_levels_array(levels)))


# -----------------------------------------------------------------------------
# Codebook statistics, k-means, dead-code restart.
# -----------------------------------------------------------------------------


def code_counts(indices: Array, codebook_size: int,
                mask: Array | None = None) -> Array:
  """Weighted bincount of indices [N] over [K]; negative indices are ignored."""
  indices = indices.reshape(-1)
  w = _weights(indices.shape[0], mask)
  w = jnp.where(indices >= 0, w, 0.0)
  return jnp.zeros((codebook_size,), jnp.float32).at[
      jnp.maximum(indices, 0)].add(w)


def usage_stats(indices: Array, codebook_size: int,
                mask: Array | None = None) -> dict[str, Array]:
  """Codebook usage of one assignment.

  Returns dict with `usage` (fraction of codes used at least once),
  `perplexity` (exp of the entropy of the code frequencies) and `counts` [K].
  """
  counts = code_counts(indices, codebook_size, mask)
  total = jnp.maximum(jnp.sum(counts), 1e-12)
  return {
      'usage': jnp.mean((counts > 0).astype(jnp.float32)),
      'perplexity': jnp.exp(entropy(counts / total)),
      'counts': counts,
  }


def sample_rows(key: Array, x: Array, num: int,
                mask: Array | None = None) -> Array:
  """Draw `num` rows of x [N, D] (without replacement when N >= num)."""
  n = x.shape[0]
  p = None
  if mask is not None:
    w = mask.reshape(n).astype(jnp.float32)
    p = w / jnp.maximum(jnp.sum(w), 1.0)
  idx = jax.random.choice(key, n, (num,), replace=n < num, p=p)
  return jnp.take(x, idx, axis=0)


def kmeans(
    key: Array,
    x: Array,
    num_clusters: int,
    num_iters: int = 10,
    *,
    mask: Array | None = None,
    cosine: bool = False,
    chunk_size: int | None | str = 'auto',
) -> tuple[Array, Array]:
  """Lloyd's k-means, fully inside jit (no host sync).

  Centroids start from samples of x; empty clusters keep their centroid.
  Under jit with a sharded x the sums and counts are global.

  Args:
    key: PRNG key (must be the same on every host: a replicated value).
    x: [N, D] data.
    num_clusters: K.
    num_iters: Lloyd iterations.
    mask: optional [N] bool of valid rows.
    cosine: l2-normalise data and centroids (spherical k-means).

  Returns:
    (centroids [K, D] fp32, cluster sizes [K] fp32 of the last assignment).
  """
  x = lax.stop_gradient(x).astype(jnp.float32)
  if cosine:
    x = l2_normalize(x)
  n = x.shape[0]
  w = _weights(n, mask)
  centroids = sample_rows(key, x, num_clusters, mask)

  def step(_, carry):
    c, _ = carry
    idx, _ = nearest_code(x, c, chunk_size=chunk_size)
    counts = jnp.zeros((num_clusters,), jnp.float32).at[idx].add(w)
    sums = jnp.zeros_like(c).at[idx].add(x * w[:, None])
    new = jnp.where(counts[:, None] > 0,
                    sums / jnp.maximum(counts, 1e-12)[:, None], c)
    if cosine:
      new = l2_normalize(new)
    return new, counts

  return lax.fori_loop(0, num_iters, step,
                       (centroids, jnp.zeros((num_clusters,), jnp.float32)))


def ema_update(old: Array, new: Array, decay: Array | float) -> Array:
  """old·decay + new·(1-decay)."""
  return old * decay + new * (1.0 - decay)


def laplace_smoothed_codebook(cluster_size: Array, embed_sum: Array,
                              eps: float = 1e-5) -> Array:
  """EMA codebook with Laplace smoothing (VQ-VAE-2 / Sonnet / VQP).

  cs' = (cs + eps) / (Σcs + K·eps) · Σcs;  codebook = embed_sum / cs'.
  """
  k = cluster_size.shape[-1]
  total = jnp.sum(cluster_size, axis=-1, keepdims=True)
  smoothed = (cluster_size + eps) / (total + k * eps) * total
  return embed_sum / smoothed[..., None]


def orthogonal_regularization(codebook: Array) -> Array:
  """Shin et al. 2021: mean over code pairs of cos²; minimum at orthogonal codes.

  ‖ĈĈᵀ - I‖² / K² computed on l2-normalised codes (K x K, for small K).
  """
  c = l2_normalize(codebook.astype(jnp.float32))
  k = c.shape[0]
  gram = c @ c.T
  return jnp.sum(jnp.square(gram - jnp.eye(k))) / (k * k)


def disentanglement_loss(factors: Sequence[Array],
                         mask: Array | None = None) -> Array:
  """FQGAN disentanglement: mean over pairs and tokens of ⟨q̂_i, q̂_j⟩².

  Each factor [N, d] is l2-normalised first. Returns 0 for one factor.
  """
  if len(factors) < 2:
    return jnp.zeros((), jnp.float32)
  normed = [l2_normalize(f.astype(jnp.float32)) for f in factors]
  n = normed[0].shape[0]
  w = _weights(n, mask)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  terms = []
  for i in range(len(normed)):
    for j in range(i + 1, len(normed)):
      dots = jnp.sum(normed[i] * normed[j], axis=-1)
      terms.append(jnp.sum(w * dots * dots) / denom)
  return jnp.mean(jnp.stack(terms))


def num_bits(codebook_size: int) -> int:
  """log2 of a power-of-two codebook size, with a clear error otherwise."""
  bits = int(round(math.log2(codebook_size))) if codebook_size > 0 else -1
  if bits < 1 or 2 ** bits != codebook_size:
    raise ValueError(f'codebook_size must be a power of two >= 2; got {codebook_size}')
  return bits
