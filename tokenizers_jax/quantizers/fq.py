"""Factorized quantization (FQGAN): independent sub-codebooks over separate
projections of the input, with a disentanglement regulariser.

Factor i projects the input to `codebook_dim` (its own linear map), quantizes
it with its own sub-codebook (an l2-normalised `VectorQuantizer` by default),
and the factors' codes are concatenated and projected back to `dim`. The
disentanglement loss is mean over factor pairs and tokens of ⟨q̂_i, q̂_j⟩² on
l2-normalised factor outputs (FQGAN: weight 0.1).

Dimension legend:
  ...: leading axes; N = their product
  D: input dimension; F: number of factors; C: per-factor code dimension
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.quantizers import base
from tokenizers_jax.quantizers import functional as F
from tokenizers_jax.quantizers import vq as vq_lib

Array = jax.Array


class FactorizedVQ(base.Quantizer):
  """FQGAN factorized quantizer.

  Args:
    num_factors: F (2 = Dual, 3 = Triple).
    codebook_size: codes per sub-codebook.
    dim: input dimension D.
    codebook_dim: per-factor code dimension C (FQGAN: 8).
    disentangle_weight: weight of the disentanglement loss.
    use_cosine_sim: l2-normalised sub-codebooks (FQGAN default: True).
    rngs: `nnx.Rngs`.
    **vq_kwargs: further `VectorQuantizer` arguments for every factor.
  """

  def __init__(self, num_factors: int, codebook_size: int, dim: int, *,
               codebook_dim: int = 8, disentangle_weight: float = 0.1,
               use_cosine_sim: bool = True, rngs: nnx.Rngs, **vq_kwargs: Any):
    if num_factors < 1:
      raise ValueError(f'num_factors must be >= 1; got {num_factors}')
    self.num_factors = num_factors
    self.codebook_size = codebook_size
    self.dim = dim
    self.codebook_dim = codebook_dim
    self.num_codebooks = num_factors
    self.disentangle_weight = disentangle_weight
    self.project_in = nnx.List([
        base.linear(dim, codebook_dim, rngs, ('embed', 'code_dim'))
        for _ in range(num_factors)])
    self.factors = nnx.List([
        vq_lib.VectorQuantizer(codebook_size, codebook_dim,
                               use_cosine_sim=use_cosine_sim, rngs=rngs,
                               **vq_kwargs)
        for _ in range(num_factors)])
    self.project_out = base.linear(num_factors * codebook_dim, dim, rngs,
                                   ('code_dim', 'embed'))

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> base.QuantizerOutput:
    name = type(self).__name__
    base.check_input(x, self.dim, name)
    base.check_mask(mask, x.shape[:-1], name)
    outs = [fac(proj(x), train=train, mask=mask)
            for proj, fac in zip(self.project_in, self.factors)]
    flat_q = [o.quantized.reshape(-1, self.codebook_dim) for o in outs]
    m = None if mask is None else mask.reshape(-1)
    dis = F.disentanglement_loss(flat_q, m)
    metrics = {'disentanglement': dis}
    for i, o in enumerate(outs):
      for k, v in o.metrics.items():
        metrics[f'{k}/{i}'] = v
    for k in outs[0].metrics:
      vals = jnp.stack([o.metrics[k] for o in outs])
      metrics[k] = jnp.mean(vals) if k in ('usage', 'perplexity', 'dead_codes') else jnp.sum(vals)
    loss = sum(o.loss for o in outs) + self.disentangle_weight * dis
    cat = jnp.concatenate([o.quantized for o in outs], axis=-1)
    return base.QuantizerOutput(
        quantized=self.project_out(cat).astype(x.dtype),
        indices=jnp.stack([o.indices for o in outs], axis=-1),
        loss=loss.astype(jnp.float32), metrics=metrics)

  def encode(self, x: Array) -> Array:
    base.check_input(x, self.dim, type(self).__name__)
    return jnp.stack([fac.encode(proj(x)) for proj, fac in
                      zip(self.project_in, self.factors)], axis=-1)

  def decode_factors(self, indices: Array) -> list[Array]:
    """Per-factor codes (before the output projection), for analysis."""
    return [fac.lookup(indices[..., i]) for i, fac in enumerate(self.factors)]

  def lookup(self, indices: Array) -> Array:
    """[..., F] indices -> [..., D]."""
    return self.project_out(jnp.concatenate(self.decode_factors(indices), -1))

  def decode(self, indices: Array) -> Array:
    base.check_indices(indices, self.codebook_size, type(self).__name__)
    if indices.shape[-1] != self.num_factors:
      raise ValueError(f'FactorizedVQ.decode: expected indices of shape '
                       f'(..., {self.num_factors}); got {tuple(indices.shape)}')
    return self.lookup(indices)

  def sub_quantizers(self) -> tuple[base.Quantizer, ...]:
    """The factors' VectorQuantizers, factor i for `indices[..., i]`."""
    return tuple(self.factors)
