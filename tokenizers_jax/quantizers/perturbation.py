"""Latent perturbation (RobustTok, "Robust Latent Matters", Qiu et al., 2025).

During tokenizer training a fraction β of the samples of a batch is chosen;
in a chosen sample each code is replaced, with probability α, by a code drawn
uniformly among its δ nearest codes (nearest in the quantizer's code space,
the code itself excluded). The decoder thus learns to reconstruct from the
slightly wrong latents a generator produces. β is annealed over training
(`anneal_factor`). The same perturbation with fixed α, β, δ gives pFID at
evaluation: the FID of reconstructions decoded from perturbed latents.

Three layers:
  * `nearest_code_table(codes, delta)`: [K, δ] neighbour table of a codebook.
  * `perturb_indices(key, indices, table, alpha, beta)`: the random
    replacement on integer indices, for any quantizer.
  * `perturb_output(quantizer, qout, key, ...)`: applies it to a
    `QuantizerOutput`; the new `quantized` has the value of the decoded
    perturbed indices and the gradient of the unperturbed output.
  `LatentPerturbation` bundles the hyper-parameters and the schedule.

Code spaces (where "nearest" is measured) come from the quantizer's public
interface (`base.Quantizer`), whatever its class: `sub_quantizers()` gives
one table per trailing index position, else `code_space()` one table for
all positions:
  * VectorQuantizer: the lookup codebook in C (after the SimVQ map;
    l2-normalised and compared by cosine when `use_cosine_sim`), i.e. the
    space of the nearest-code search, before `project_out`.
  * FactorizedVQ: each factor's own codebook; one table per factor.
  * ResidualVQ: every level is perturbed with its own level's table (each
    level's code is one code position, chosen independently with prob. α);
    dropped levels (index -1) are left alone.
  * FSQ: the implicit grid codebook (normalised codes in [-1, 1]^L).
  * LFQ / BSQ: the 2^b sign codes of one group (one table shared by all
    groups; euclidean order = Hamming order).
  Implicit codebooks (FSQ, LFQ) are enumerated only up to
  `MAX_IMPLICIT_CODES` = 2^16 codes per index position.

Cost: a table costs O(K²·C) multiply-adds plus a top-δ over K for each of the
K rows, computed in row chunks of `chunk_size` (memory chunk_size x K fp32).
Learned codebooks change every step, so by default `perturb_output` rebuilds
the table inside the jitted step from the current codebook (K=16384, C=8:
about 2.1 G multiply-adds and a top-100 over 2.7e8 scores per step; about
1 s on a busy 2-core CPU, not yet timed on an accelerator). The implicit
FSQ/LFQ codebooks never change: build their tables once with
`code_tables` outside the step and pass them as `tables=`. A stale table for
a learned codebook (say rebuilt every few hundred steps) is also valid input;
replacements are then near in the codebook the table was built from.

Ties (equidistant codes, common on the FSQ/LFQ grids) are broken by the lower
index, so on a grid the δ-th neighbour ring may be cut deterministically.

Dimension legend:
  K: codes per index position; C: code dimension; δ: neighbours per code
  B: samples (the leading axis of the indices); ...: other index axes
  G: trailing index axis of multi-code quantizers (factors, levels, groups)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.quantizers import base
from tokenizers_jax.quantizers import functional as F

Array = jax.Array
# One [K, δ] table for every code position, or one per trailing index (G).
Tables = Union[Array, Sequence[Array]]

# Largest implicit (FSQ / LFQ) codebook that is enumerated for a table.
MAX_IMPLICIT_CODES = 1 << 16
# 'auto' row chunks keep one chunk's score matrix under this many elements
# (fp32: 64 MiB).
TABLE_CHUNK_ELEMENTS = 1 << 24


# -----------------------------------------------------------------------------
# Neighbour tables.
# -----------------------------------------------------------------------------


def nearest_code_table(
    codes: Array,
    delta: int,
    *,
    cosine: bool = False,
    chunk_size: int | None | str = 'auto',
) -> Array:
  """For each code its δ nearest other codes, nearest first.

  Distances are squared euclidean (`cosine=False`) or cosine distances of the
  l2-normalised codes (`cosine=True`); the code itself is excluded (exact
  duplicates of it are not). Ties go to the lower index. Rows are processed in
  chunks of `chunk_size` codes with `lax.map`, so only a chunk_size x K score
  matrix exists at a time; every chunking gives the same table. Traceable
  (jit-friendly); no gradient flows through it.

  Args:
    codes: [K, C] codebook.
    delta: δ, with 1 <= δ < K.
    cosine: rank by cosine similarity instead of euclidean distance.
    chunk_size: rows per chunk: an int, None (all K rows at once), or 'auto'
      (chunks of at most TABLE_CHUNK_ELEMENTS scores).

  Returns:
    int32 [K, δ]: row k lists the indices of the δ codes nearest to code k.

  Raises:
    ValueError: if codes is not [K, C] or δ is not in [1, K).
  """
  if codes.ndim != 2:
    raise ValueError(f'nearest_code_table: codes must have shape [K, C]; '
                     f'got {tuple(codes.shape)}')
  num_codes = codes.shape[0]
  delta = int(delta)
  if not 1 <= delta < num_codes:
    raise ValueError(f'nearest_code_table: delta must be in [1, K) = [1, '
                     f'{num_codes}) (the code itself is excluded); got {delta}')
  if chunk_size == 'auto':
    chunk_size = max(1, TABLE_CHUNK_ELEMENTS // num_codes)
  elif chunk_size is not None and int(chunk_size) < 1:
    raise ValueError(f'nearest_code_table: chunk_size must be >= 1; got {chunk_size}')
  rows = num_codes if chunk_size is None else min(int(chunk_size), num_codes)

  c = lax.stop_gradient(codes).astype(jnp.float32)
  if cosine:
    c = F.l2_normalize(c)
    # Cosine distance 1 - <a, b> orders like -<a, b>.
    col_term = jnp.zeros((num_codes,), jnp.float32)
  else:
    # ||a - b||² orders like ||b||² - 2<a, b> for a fixed row a.
    col_term = jnp.sum(c * c, axis=-1)
  num_chunks = -(-num_codes // rows)
  padded = jnp.pad(c, ((0, num_chunks * rows - num_codes), (0, 0)))
  chunks = padded.reshape(num_chunks, rows, c.shape[-1])
  starts = jnp.arange(num_chunks, dtype=jnp.int32) * rows
  cols = jnp.arange(num_codes, dtype=jnp.int32)

  def chunk_table(args):
    block, start = args
    dots = jnp.einsum('rc,kc->rk', block, c, precision=lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)
    scores = col_term[None, :] - (1.0 if cosine else 2.0) * dots
    row_ids = start + jnp.arange(rows, dtype=jnp.int32)
    scores = jnp.where(cols[None, :] == row_ids[:, None], jnp.inf, scores)
    # + 0.0 turns -0.0 into +0.0, so that equal distances tie exactly.
    _, idx = lax.top_k(-scores + 0.0, delta)
    return idx.astype(jnp.int32)

  table = lax.map(chunk_table, (chunks, starts))
  return table.reshape(num_chunks * rows, delta)[:num_codes]


def _code_space(quantizer: base.Quantizer) -> base.CodeSpace:
  """The code space of a quantizer with one code space for every position."""
  name = type(quantizer).__name__
  code_space = getattr(quantizer, 'code_space', None)
  try:
    space = code_space(MAX_IMPLICIT_CODES) if callable(code_space) else None
  except ValueError as e:  # An implicit codebook too large to enumerate.
    raise ValueError(f'latent perturbation: {e}, or pass precomputed '
                     'tables=') from None
  if space is None:
    raise TypeError(
        f'latent perturbation does not know the code space of {name}; it '
        'needs a quantizer (base.Quantizer) whose code_space() or '
        'sub_quantizers() says where its codes lie')
  return space


def code_tables(
    quantizer: base.Quantizer,
    delta: int,
    *,
    chunk_size: int | None | str = 'auto',
) -> Tables:
  """Neighbour tables of a quantizer's current codebook(s).

  Traceable: call it inside the jitted step for learned codebooks, or once
  outside for the fixed FSQ / LFQ codebooks (see the module docstring).

  Args:
    quantizer: any `base.Quantizer` (VectorQuantizer, FactorizedVQ,
      ResidualVQ, FSQ, LFQ, ...).
    delta: δ.
    chunk_size: as in `nearest_code_table`.

  Returns:
    One int32 [K, δ] table of `quantizer.code_space()` (VectorQuantizer, FSQ,
    LFQ: grouped LFQ shares one table across groups), or a tuple with one
    table per `quantizer.sub_quantizers()` entry, i.e. per trailing index
    (FactorizedVQ: per factor; ResidualVQ: per level).

  Raises:
    TypeError: for an object with neither a code space nor sub-quantizers.
    ValueError: for an implicit codebook above MAX_IMPLICIT_CODES codes or
      δ >= K.
  """
  def table(q):
    codes, cosine = _code_space(q)
    return nearest_code_table(codes, delta, cosine=cosine,
                              chunk_size=chunk_size)

  sub_quantizers = getattr(quantizer, 'sub_quantizers', tuple)
  subs = sub_quantizers()
  if subs:
    return tuple(table(q) for q in subs)
  return table(quantizer)


# -----------------------------------------------------------------------------
# Perturbation of indices.
# -----------------------------------------------------------------------------


def anneal_factor(step: Array | int, start: int | None,
                  end: int | None) -> Array:
  """Annealing factor for β: 1 until `start`, linear to 0 at `end`, then 0.

  Annealing is off (factor 1 at every step) when `start` or `end` is None or
  `end <= start`. Traceable in `step`.

  Returns:
    fp32 scalar (shape of `step`) in [0, 1].
  """
  step = jnp.asarray(step, jnp.float32)
  if start is None or end is None or end <= start:
    return jnp.ones_like(step)
  return jnp.clip((float(end) - step) / float(end - start), 0.0, 1.0)


def _check_probability(value: Any, name: str) -> None:
  if base.is_traced(value):
    return
  v = np.asarray(value)
  if v.shape != () or not 0.0 <= float(v) <= 1.0:
    raise ValueError(f'perturb_indices: {name} must be a scalar probability in '
                     f'[0, 1]; got {value!r}')


def perturb_indices(
    key: Array,
    indices: Array,
    table: Tables,
    alpha: float | Array,
    beta: float | Array,
) -> tuple[Array, dict[str, Array]]:
  """Replaces codes by random near codes in a random subset of samples.

  Each sample (index along axis 0) is chosen with probability β; in a chosen
  sample every code position (every other axis, the trailing group axis
  included) is replaced independently with probability α by
  `table[code, r]`, r uniform in [0, δ). Negative indices (dropped RVQ
  levels) are never replaced. α and β may be traced scalars (an annealed β).

  Args:
    key: PRNG key.
    indices: int [B, ...] or [B, ..., G].
    table: one int [K, δ] table for every position, or a sequence of G tables
      (sizes may differ), table g for `indices[..., g]`.
    alpha: α, per-code probability within a chosen sample.
    beta: β, per-sample probability.

  Returns:
    (new indices, same shape and dtype; info) with info the fp32 scalars
    `sample_fraction` (fraction of samples chosen) and `code_fraction`
    (fraction of the non-negative codes replaced).

  Raises:
    ValueError: for a rank-0 index array, a probability outside [0, 1], or a
      number of tables that does not match the trailing axis.
    TypeError: for non-integer indices.
  """
  if indices.ndim < 1:
    raise ValueError('perturb_indices: indices need a leading sample axis; '
                     f'got shape {tuple(indices.shape)}')
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f'perturb_indices: indices must be integers; got {indices.dtype}')
  _check_probability(alpha, 'alpha')
  _check_probability(beta, 'beta')
  per_position = not hasattr(table, 'shape')
  tables = list(table) if per_position else [table]
  for t in tables:
    if t.ndim != 2:
      raise ValueError(f'perturb_indices: a table must have shape [K, delta]; '
                       f'got {tuple(t.shape)}')
  if per_position and (indices.ndim < 2 or indices.shape[-1] != len(tables)):
    raise ValueError(
        f'perturb_indices: {len(tables)} tables need indices of shape '
        f'[B, ..., {len(tables)}]; got {tuple(indices.shape)}')

  k_sample, k_code, k_col = jax.random.split(key, 3)
  num_samples = indices.shape[0]
  chosen = jax.random.uniform(k_sample, (num_samples,)) < beta
  per_code = jax.random.uniform(k_code, indices.shape) < alpha
  valid = indices >= 0
  replace = (chosen.reshape((-1,) + (1,) * (indices.ndim - 1))
             & per_code & valid)

  safe = jnp.maximum(indices, 0)
  deltas = np.asarray([t.shape[1] for t in tables], np.int32)
  maxval = int(deltas[0]) if not per_position else deltas
  cols = jax.random.randint(k_col, indices.shape, 0, maxval, jnp.int32)
  if per_position:
    near = jnp.stack([t[safe[..., g], cols[..., g]]
                      for g, t in enumerate(tables)], axis=-1)
  else:
    near = tables[0][safe, cols]
  new = jnp.where(replace, near.astype(indices.dtype), indices)

  num_valid = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
  info = {
      'sample_fraction': jnp.mean(chosen.astype(jnp.float32)),
      'code_fraction': jnp.sum(replace.astype(jnp.float32)) / num_valid,
  }
  return new, info


# -----------------------------------------------------------------------------
# Perturbation of a quantizer output.
# -----------------------------------------------------------------------------


def perturb_output(
    quantizer: base.Quantizer,
    qout: base.QuantizerOutput,
    key: Array,
    *,
    alpha: float | Array,
    beta: float | Array,
    delta: int | None = None,
    tables: Tables | None = None,
    chunk_size: int | None | str = 'auto',
) -> tuple[base.QuantizerOutput, dict[str, Array]]:
  """Perturbs a quantizer output's codes; the gradient is left unchanged.

  The new `quantized` is `sg(decode(new)) + (quantized - sg(quantized))`: its
  value is exactly `quantizer.decode(new indices)` (cast to the output dtype)
  and its gradient, to the encoder (straight-through) and to the quantizer's
  parameters, is exactly that of the unperturbed `qout.quantized`; this is the
  same gradient as `quantized + sg(decode(new) - decode(old))`, without its
  rounding. Works on training and evaluation (pFID) outputs alike.

  Args:
    quantizer: the quantizer that produced `qout` (see `code_tables`).
    qout: its output, `quantized` [..., D] and `indices` [B, ...(, G)].
    key: PRNG key.
    alpha: α.
    beta: β (e.g. `LatentPerturbation.beta_at(step)`; may be traced).
    delta: δ; needed unless `tables` is given.
    tables: precomputed `code_tables(quantizer, delta)`; by default they are
      built from the quantizer's current codebook (O(K²·C), see the module
      docstring).
    chunk_size: row chunks for building the tables.

  Returns:
    (the output with `quantized` and `indices` replaced, loss and metrics
     unchanged; info from `perturb_indices`).

  Raises:
    ValueError: if neither or inconsistent `delta` / `tables` are given.
  """
  name = type(quantizer).__name__
  if tables is None:
    if delta is None:
      raise ValueError('perturb_output: give delta (or precomputed tables)')
    tables = code_tables(quantizer, delta, chunk_size=chunk_size)
  for t in ([tables] if hasattr(tables, 'shape') else tables):
    if t.ndim != 2 or t.shape[0] != quantizer.codebook_size or (
        delta is not None and t.shape[1] != delta):
      raise ValueError(
          f'perturb_output: {name} needs tables of shape '
          f'[{quantizer.codebook_size}, {delta if delta is not None else "delta"}];'
          f' got {tuple(t.shape)}')
  new_indices, info = perturb_indices(key, qout.indices, tables, alpha, beta)
  value = lax.stop_gradient(quantizer.decode(new_indices))
  q = qout.quantized
  quantized = value.astype(q.dtype) + (q - lax.stop_gradient(q))
  return qout.replace(quantized=quantized, indices=new_indices), info


@dataclasses.dataclass(frozen=True)
class LatentPerturbation:
  """RobustTok latent perturbation settings (paper: α=1, β=0.1, δ=100).

  Attributes:
    alpha: α, per-code replacement probability in a chosen sample.
    beta: β, per-sample probability before annealing.
    delta: δ, neighbours a replacement is drawn from.
    anneal_start: β is multiplied by `anneal_factor(step, anneal_start,
      anneal_end)`: 1 before anneal_start, linear to 0 at anneal_end.
    anneal_end: None (or <= anneal_start) disables annealing.
    chunk_size: row chunks for building tables.
  """
  alpha: float = 1.0
  beta: float = 0.1
  delta: int = 100
  anneal_start: int | None = None
  anneal_end: int | None = None
  chunk_size: int | None | str = 'auto'

  def __post_init__(self):
    for name in ('alpha', 'beta'):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f'LatentPerturbation: {name} must be in [0, 1]; got {v}')
    if self.delta < 1:
      raise ValueError(f'LatentPerturbation: delta must be >= 1; got {self.delta}')

  @classmethod
  def from_config(cls, cfg: Any) -> 'LatentPerturbation | None':
    """Settings from a config mapping; None when absent or off (α or β = 0).

    Keys: alpha, beta, delta, and optionally anneal_start / anneal_end (None,
    or end <= start, means no annealing). Unknown keys raise ValueError.
    """
    if cfg is None:
      return None
    cfg = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    known = {'alpha', 'beta', 'delta', 'anneal_start', 'anneal_end', 'chunk_size'}
    unknown = set(cfg) - known
    if unknown:
      raise ValueError(f'perturb: unknown keys {sorted(unknown)}; known: '
                       f'{sorted(known)}')
    if not cfg or not cfg.get('alpha', 1.0) or not cfg.get('beta', 0.1):
      return None
    return cls(**cfg)

  def beta_at(self, step: Array | int | None) -> Array:
    """Annealed β at `step` (β itself when step is None)."""
    if step is None:
      return jnp.asarray(self.beta, jnp.float32)
    return self.beta * anneal_factor(step, self.anneal_start, self.anneal_end)

  def __call__(
      self,
      quantizer: base.Quantizer,
      qout: base.QuantizerOutput,
      key: Array,
      step: Array | int | None = None,
      tables: Tables | None = None,
  ) -> tuple[base.QuantizerOutput, dict[str, Array]]:
    """`perturb_output` with these settings and β annealed at `step`.

    info gets the annealed `beta` too.
    """
    beta = self.beta_at(step)
    out, info = perturb_output(quantizer, qout, key, alpha=self.alpha,
                               beta=beta, delta=self.delta, tables=tables,
                               chunk_size=self.chunk_size)
    return out, dict(info, beta=beta)
