"""Residual vector quantization with per-example quantizer dropout.

Level l quantizes the residual left by levels 0..l-1; the output is the sum of
the levels' codes. With `quantize_dropout`, each example (leading axis of the
input) keeps a random number of levels n ∈ [cutoff+1, num_quantizers] during
training (SoundStream/DAC: sampled per example, not per batch); dropped levels
contribute nothing, are excluded from every loss and statistic, and are marked
with index -1, which `decode` also treats as "nothing".

Dimension legend:
  B: leading (example) axis; ...: other leading axes; N = all tokens
  D: input dimension; C: code dimension; Q: number of levels
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp

from tokenizers_jax.quantizers import base
from tokenizers_jax.quantizers import functional as F

Array = jax.Array


class ResidualVQ(base.Quantizer):
  """Residual VQ over `num_quantizers` levels of any single-code quantizer.

  Args:
    num_quantizers: Q.
    codebook_size: codes per level.
    dim: input dimension D.
    codebook_dim: optional shared lookup dimension C (projections in/out).
    quantizer: registry name of the level quantizer ('vq' by default; 'fsq'
      and 'lfq' also work). Extra keyword arguments go to every level.
    quantize_dropout: per-example quantizer dropout in training.
    quantize_dropout_prob: fraction of examples that get dropout (others keep
      all levels); 1.0 as SoundStream, 0.5 as DAC.
    quantize_dropout_cutoff_index: levels 0..cutoff are never dropped.
    rngs: `nnx.Rngs`.
  """

  def __init__(
      self,
      num_quantizers: int,
      codebook_size: int,
      dim: int,
      *,
      codebook_dim: int | None = None,
      quantizer: str = 'vq',
      quantize_dropout: bool = False,
      quantize_dropout_prob: float = 1.0,
      quantize_dropout_cutoff_index: int = 0,
      rngs: nnx.Rngs,
      **level_kwargs: Any,
  ):
    from tokenizers_jax.quantizers import registry  # Avoid an import cycle.
    if num_quantizers < 1:
      raise ValueError(f'num_quantizers must be >= 1; got {num_quantizers}')
    if not 0 <= quantize_dropout_cutoff_index < num_quantizers:
      raise ValueError('quantize_dropout_cutoff_index must be in [0, num_quantizers)')
    self.num_quantizers = num_quantizers
    self.dim = dim
    self.codebook_dim = codebook_dim or dim
    self.quantize_dropout = quantize_dropout
    self.quantize_dropout_prob = quantize_dropout_prob
    self.quantize_dropout_cutoff_index = quantize_dropout_cutoff_index
    c = self.codebook_dim
    if c != dim:
      self.project_in = base.linear(dim, c, rngs, ('embed', 'code_dim'))
      self.project_out = base.linear(c, dim, rngs, ('code_dim', 'embed'))
    else:
      self.project_in = self.project_out = None
    cls = registry.get_quantizer_class(quantizer)
    levels = []
    for _ in range(num_quantizers):
      kw = dict(level_kwargs)
      if quantizer in ('vq', 'lfq'):
        kw['codebook_size'] = codebook_size
      levels.append(cls(dim=c, rngs=rngs, **kw))
    self.levels = nnx.List(levels)
    for lvl in levels:
      if lvl.num_codebooks is not None:
        raise ValueError('ResidualVQ levels must be single-code quantizers')
    self.codebook_size = levels[0].codebook_size
    self.num_codebooks = num_quantizers
    self.rng_key = base.QuantizerState(jax.random.key_data(rngs.params()))
    self.step = base.QuantizerState(jnp.zeros((), jnp.uint32))

  def _keep_levels(self, lead_shape: tuple[int, ...]) -> Array:
    """Number of kept levels per example, [B] int32 (dropout in training)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(self.rng_key[...]),
                             self.step[...])
    k_n, k_p = jax.random.split(key)
    b = lead_shape[0] if lead_shape else 1
    lo = self.quantize_dropout_cutoff_index + 1
    n = jax.random.randint(k_n, (b,), lo, self.num_quantizers + 1)
    apply = jax.random.uniform(k_p, (b,)) < self.quantize_dropout_prob
    return jnp.where(apply, n, self.num_quantizers).astype(jnp.int32)

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> base.QuantizerOutput:
    name = type(self).__name__
    base.check_input(x, self.dim, name)
    base.check_mask(mask, x.shape[:-1], name)
    lead = x.shape[:-1]
    z = x if self.project_in is None else self.project_in(x)
    dropout = train and self.quantize_dropout
    if dropout:
      n_keep = self._keep_levels(lead)
      self.step[...] = self.step[...] + 1
      n_keep = n_keep.reshape((-1,) + (1,) * (len(lead) - 1)) if lead else n_keep[0]

    residual = z
    total = None
    indices, losses, metrics = [], [], {}
    for l, level in enumerate(self.levels):
      if dropout:
        keep = jnp.broadcast_to(l < n_keep, lead)  # [...]
        level_mask = keep if mask is None else (keep & mask)
      else:  # Every level kept: no per-level masking work.
        keep, level_mask = None, mask
      out = level(residual, train=train, mask=level_mask)
      q = out.quantized
      if keep is not None:
        q = jnp.where(keep[..., None], q, 0).astype(q.dtype)
      total = q if total is None else total + q
      residual = residual - lax.stop_gradient(q).astype(residual.dtype)
      indices.append(out.indices if keep is None
                     else jnp.where(keep, out.indices, -1))
      losses.append(out.loss)
      for k, v in out.metrics.items():
        metrics[f'{k}/{l}'] = v
    for k in list(out.metrics):
      metrics[k] = sum(metrics[f'{k}/{l}'] for l in range(self.num_quantizers))
      if k in ('usage', 'perplexity', 'dead_codes'):
        metrics[k] = metrics[k] / self.num_quantizers
    quantized = total if self.project_out is None else self.project_out(total)
    return base.QuantizerOutput(
        quantized=quantized.astype(x.dtype),
        indices=jnp.stack(indices, axis=-1).astype(jnp.int32),
        loss=jnp.sum(jnp.stack(losses)).astype(jnp.float32),
        metrics=metrics,
    )

  def encode(self, x: Array) -> Array:
    return self(x, train=False).indices

  def decode(self, indices: Array, num_levels: int | None = None) -> Array:
    """Sum of the levels' codes; index -1 (a dropped level) contributes nothing.

    Args:
      indices: [..., Q] int.
      num_levels: optionally decode only the first levels (coarse-to-fine).
    """
    base.check_indices(indices, self.codebook_size, type(self).__name__,
                       allow_dropped=True)
    if indices.shape[-1] != self.num_quantizers:
      raise ValueError(f'{type(self).__name__}.decode: expected indices of shape '
                       f'(..., {self.num_quantizers}); got {tuple(indices.shape)}')
    return self.lookup(indices, num_levels)

  def lookup(self, indices: Array, num_levels: int | None = None) -> Array:
    """`decode` without its checks: [..., Q] indices -> [..., D]."""
    total = None
    for l, level in enumerate(self.levels):
      if num_levels is not None and l >= num_levels:
        break
      idx = indices[..., l]
      keep = idx >= 0
      q = level.lookup(jnp.maximum(idx, 0))
      q = jnp.where(keep[..., None], q, 0).astype(q.dtype)
      total = q if total is None else total + q
    return total if self.project_out is None else self.project_out(total)

  def codes_per_level(self, indices: Array) -> Array:
    """[..., Q] indices -> [..., Q, C] per-level codes (zeros where dropped)."""
    outs = []
    for l, level in enumerate(self.levels):
      idx = indices[..., l]
      q = level.lookup(jnp.maximum(idx, 0))
      outs.append(jnp.where((idx >= 0)[..., None], q, 0))
    return jnp.stack(outs, axis=-2)

  def sub_quantizers(self) -> tuple[base.Quantizer, ...]:
    """The levels, level l for `indices[..., l]`."""
    return tuple(self.levels)
