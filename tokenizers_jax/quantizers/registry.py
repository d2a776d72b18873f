"""Name -> quantizer class registry, for configs (`dict(name='rvq', **kwargs)`)."""

from __future__ import annotations

import functools
from typing import Any

from flax import nnx

from tokenizers_jax.quantizers import fq, fsq, lfq, rvq, vq

QUANTIZERS = {
    'vq': vq.VectorQuantizer,
    'rvq': rvq.ResidualVQ,
    'fq': fq.FactorizedVQ,
    'lfq': lfq.LFQ,
    'bsq': functools.partial(lfq.LFQ, spherical=True),
    'fsq': fsq.FSQ,
}


def get_quantizer_class(name: str):
  try:
    return QUANTIZERS[name]
  except KeyError:
    raise ValueError(f'unknown quantizer {name!r}; known: {sorted(QUANTIZERS)}') from None


def make_quantizer(name: str, *, rngs: nnx.Rngs, **kwargs: Any):
  """Instantiate a quantizer by registry name, e.g. make_quantizer('vq', codebook_size=..., dim=...)."""
  return get_quantizer_class(name)(rngs=rngs, **kwargs)
