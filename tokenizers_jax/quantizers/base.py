"""The one interface every quantizer satisfies, and shared module helpers.

A quantizer is an `nnx.Module` called as `q(x, train=..., mask=None)` on
inputs of shape [..., dim] and returning a `QuantizerOutput`. `q.encode(x)`
returns the indices and `q.decode(indices)` returns exactly what `quantized`
was in eval mode.

Code-level access, for tools that work on codes (latent perturbation,
analysis) without knowing the quantizer's class:
  * `q.lookup(indices)`: `decode` without its index checks (traceable);
  * `q.code_space()`: the K codes one index position chooses among, in the
    space where nearness is measured (`CodeSpace`), or None when each
    trailing index position has its own quantizer;
  * `q.sub_quantizers()`: those quantizers, g for `indices[..., g]`
    (FactorizedVQ's factors, ResidualVQ's levels); () otherwise.

Dimension legend:
  ...: any leading (batch / position) axes; N = their product
  D: the input feature dimension (`dim`)
  G: the trailing index axis of multi-code quantizers (levels, factors, groups)
  K: codes per index position (`codebook_size`); C: code dimension
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, NamedTuple

import flax
from flax import nnx
import jax
from jax.experimental import checkify
import jax.numpy as jnp

# Re-exported: quantizers (and older callers) spell it `base.logical`.
from tokenizers_jax.nn.partitioning import logical  # pylint: disable=unused-import

Array = jax.Array


@flax.struct.dataclass
class QuantizerOutput:
  """What every quantizer returns.

  Attributes:
    quantized: [..., D], the input's dtype; straight-through in training.
    indices: int32 [...] (single code) or [..., G] (multi-code quantizers).
    loss: fp32 scalar, the weighted sum of the auxiliary losses.
    metrics: dict of fp32 scalars: each unweighted loss term (`commitment`,
      `codebook`, `entropy`, ...) and `usage`, `perplexity`, `dead_codes`.
  """
  quantized: Array
  indices: Array
  loss: Array
  metrics: dict[str, Array]


class CodeSpace(NamedTuple):
  """The codes of one index position, where nearness is measured.

  Attributes:
    codes: [K, C], code k in row k (the lookup space: after a SimVQ map,
      before any output projection).
    cosine: codes are compared by cosine similarity (l2-normalised) rather
      than by euclidean distance.
  """
  codes: Array
  cosine: bool


class QuantizerState(nnx.BatchStat):
  """Non-gradient quantizer state: EMA statistics, usage counters, init flags.

  A subclass of `nnx.BatchStat`, never an `nnx.Param`, so optimizers built
  with `wrt=nnx.Param` leave it alone and checkpoints keep it.
  """


def is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


# Checks on traced values are opt-in: `checkify.debug_check` gives the traced
# function an effect, and a jitted function with an effect cannot use JAX's C++
# dispatch path (every call then goes through Python: +1.4 ms per call for an
# 8-level RVQ step on a 2-core CPU).
_TRACED_CHECKS = contextvars.ContextVar('tokenizers_jax_traced_checks',
                                        default=False)


@contextlib.contextmanager
def traced_checks(enabled: bool = True) -> Iterator[None]:
  """Check inputs and indices under tracing as well (with `checkify`).

  Inside this context, quantizers traced by `jax.jit` (or any transformation)
  emit `checkify.debug_check`s for NaN/Inf inputs and out-of-range indices,
  which raise when the caller wraps the function with
  `checkify.checkify(..., errors=checkify.user_checks)`. The flag is read at
  trace time and JAX caches traces: make the first call (or `make_jaxpr`) of
  the function inside the context. Eager calls are always checked on the host.
  """
  token = _TRACED_CHECKS.set(enabled)
  try:
    yield
  finally:
    _TRACED_CHECKS.reset(token)


def check_input(x: Array, dim: int, name: str) -> None:
  """Static shape/dtype checks plus a NaN/Inf check.

  The NaN/Inf check runs on the host when called eagerly; under tracing it is
  a `checkify.debug_check` inside `traced_checks()` and nothing otherwise.
  """
  if not hasattr(x, 'shape') or x.ndim < 1:
    raise ValueError(f'{name}: expected an array of shape (..., {dim}); got {x!r}')
  if x.shape[-1] != dim:
    raise ValueError(
        f'{name}: expected inputs of shape (..., {dim}); got shape {tuple(x.shape)}'
        f' (last dimension {x.shape[-1]} != dim={dim})')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{name}: expected a floating-point input; got dtype {x.dtype}')
  msg = f'{name}: input contains NaN or Inf'
  if is_traced(x):
    if _TRACED_CHECKS.get():
      checkify.debug_check(jnp.all(jnp.isfinite(x)), msg)
  elif not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(msg)


def check_mask(mask: Array | None, shape: tuple[int, ...], name: str) -> None:
  if mask is None:
    return
  if tuple(mask.shape) != tuple(shape):
    raise ValueError(f'{name}: mask shape {tuple(mask.shape)} must equal the '
                     f'input shape without its last axis, {tuple(shape)}')


def check_indices(indices: Array, codebook_size: int, name: str,
                  allow_dropped: bool = False) -> None:
  """Dtype and range checks for `decode` (host-side when eager)."""
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f'{name}.decode: indices must be integers; got {indices.dtype}')
  lo = -1 if allow_dropped else 0
  msg = f'{name}.decode: index out of range [{lo}, {codebook_size})'
  ok = lambda: jnp.all((indices >= lo) & (indices < codebook_size))
  if is_traced(indices):
    if _TRACED_CHECKS.get():
      checkify.debug_check(ok(), msg)
  elif not bool(ok()):
    raise ValueError(f'{msg}: found min {int(jnp.min(indices))}, '
                     f'max {int(jnp.max(indices))}')


def flatten_tokens(x: Array, mask: Array | None):
  """[..., D] -> ([N, D], [N] mask or None)."""
  flat = x.reshape(-1, x.shape[-1])
  m = None if mask is None else mask.reshape(-1)
  return flat, m


def masked_mean(values: Array, mask: Array | None) -> Array:
  """Mean of values [N, ...] over valid rows and all trailing elements."""
  v = values.astype(jnp.float32)
  if mask is None:
    return jnp.mean(v)
  w = mask.astype(jnp.float32).reshape((-1,) + (1,) * (v.ndim - 1))
  per_row = v[0].size if v.ndim > 1 else 1
  return jnp.sum(v * w) / jnp.maximum(jnp.sum(w) * per_row, 1.0)


def linear(in_features: int, out_features: int, rngs: nnx.Rngs,
           names=('embed', 'code_dim'), use_bias: bool = True) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, use_bias=use_bias, rngs=rngs,
                    kernel_metadata=logical(*names),
                    bias_metadata=logical(names[1]))


class Quantizer(nnx.Module):
  """Base class: subclasses set `dim`, `codebook_size`, `num_codebooks` and
  implement `__call__`, `encode` and `decode`.

  `num_codebooks` is the size G of the trailing index axis (None when the
  indices have shape x.shape[:-1]); `codebook_size` is the number of codes per
  index position.
  """
  dim: int
  codebook_size: int
  num_codebooks: int | None = None

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> QuantizerOutput:
    raise NotImplementedError

  def encode(self, x: Array) -> Array:
    raise NotImplementedError

  def decode(self, indices: Array) -> Array:
    raise NotImplementedError

  def lookup(self, indices: Array) -> Array:
    """Indices -> quantized vectors [..., D]: `decode` without its checks."""
    raise NotImplementedError

  def code_space(self, max_codes: int | None = None) -> CodeSpace | None:
    """The codes one index position chooses among (see `CodeSpace`).

    Args:
      max_codes: implicit codebooks (FSQ, LFQ) are enumerated; they raise
        ValueError above this many codes.

    Returns:
      The code space, or None when the trailing index positions have their
      own quantizers (`sub_quantizers`).
    """
    del max_codes
    return None

  def sub_quantizers(self) -> tuple[Quantizer, ...]:
    """The quantizers of the trailing index positions, g for
    `indices[..., g]`; () when one code space serves every position."""
    return ()

  def index_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Static shape of `indices` for inputs of `input_shape`."""
    lead = tuple(input_shape[:-1])
    return lead if self.num_codebooks is None else lead + (self.num_codebooks,)
