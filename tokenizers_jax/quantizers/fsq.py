"""Finite scalar quantization (Mentzer et al., 2023).

Each of L dimensions is bounded to L_i values, rounded with a straight-through
estimator and normalised to [-1, 1]; the implicit codebook has prod(L) codes.
Indices are mixed-radix with the first dimension least significant and always
lie in [0, prod(L)).

Dimension legend:
  ...: leading axes; N = their product
  D: input dimension (`dim`); L: number of FSQ dimensions (len(levels))
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.quantizers import base
from tokenizers_jax.quantizers import functional as F

Array = jax.Array


class FSQ(base.Quantizer):
  """Finite scalar quantizer with the shared interface.

  Args:
    levels: number of values per dimension, e.g. (8, 5, 5, 5).
    dim: input dimension; linear projections when != len(levels).
    rngs: `nnx.Rngs` (used only for the projections).
  """

  def __init__(self, levels: Sequence[int], dim: int | None = None, *,
               rngs: nnx.Rngs | None = None):
    self.levels = tuple(int(l) for l in levels)
    self.codebook_size = F.fsq_codebook_size(self.levels)
    F.fsq_basis(self.levels)  # Validates the size.
    self.codebook_dim = len(self.levels)
    self.dim = dim or self.codebook_dim
    self.num_codebooks = None
    if self.dim != self.codebook_dim:
      if rngs is None:
        raise ValueError('FSQ with dim != len(levels) needs rngs for its projections')
      self.project_in = base.linear(self.dim, self.codebook_dim, rngs,
                                    ('embed', 'code_dim'))
      self.project_out = base.linear(self.codebook_dim, self.dim, rngs,
                                     ('code_dim', 'embed'))
    else:
      self.project_in = self.project_out = None

  def _project_out(self, q: Array) -> Array:
    return q if self.project_out is None else self.project_out(q)

  def _quantize(self, x: Array):
    z = x if self.project_in is None else self.project_in(x)
    return F.fsq_quantize(z, self.levels)

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> base.QuantizerOutput:
    name = type(self).__name__
    base.check_input(x, self.dim, name)
    base.check_mask(mask, x.shape[:-1], name)
    codes, idx = self._quantize(x)
    if not train:
      codes = jax.lax.stop_gradient(codes)
    quantized = self._project_out(codes).astype(x.dtype)
    stats = F.usage_stats(idx, self.codebook_size, mask)
    zero = jnp.zeros((), jnp.float32)
    return base.QuantizerOutput(
        quantized=quantized, indices=idx, loss=zero,
        metrics={'usage': stats['usage'], 'perplexity': stats['perplexity'],
                 'dead_codes': 1.0 - stats['usage']})

  def encode(self, x: Array) -> Array:
    base.check_input(x, self.dim, type(self).__name__)
    return self._quantize(x)[1]

  def lookup(self, indices: Array) -> Array:
    """[...] indices -> [..., D]."""
    return self._project_out(F.fsq_codes(indices, self.levels))

  def decode(self, indices: Array) -> Array:
    base.check_indices(indices, self.codebook_size, type(self).__name__)
    return self.lookup(indices)

  def code_space(self, max_codes: int | None = None) -> base.CodeSpace:
    """The implicit grid codebook (`implicit_codebook`), euclidean.

    Raises:
      ValueError: if it has more than `max_codes` codes.
    """
    size = self.codebook_size
    if max_codes is not None and size > max_codes:
      raise ValueError(
          f'{type(self).__name__}: enumerating the implicit codebook, but '
          f'levels {self.levels} give {size} codes > {max_codes}; use fewer '
          'levels or an explicit codebook (VectorQuantizer)')
    return base.CodeSpace(self.implicit_codebook(), False)

  def implicit_codebook(self) -> Array:
    """All prod(L) codes, [prod(L), L], in index order."""
    return F.fsq_codes(jnp.arange(self.codebook_size, dtype=jnp.int32),
                       self.levels)
