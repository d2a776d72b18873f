"""Quantizers with one interface: `q(x, train=...) -> QuantizerOutput`,
`q.encode(x) -> indices`, `q.decode(indices) -> quantized`.

Pure math lives in `tokenizers_jax.quantizers.functional` (no Flax import).
"""

from tokenizers_jax.quantizers import functional
from tokenizers_jax.quantizers.base import Quantizer, QuantizerOutput, QuantizerState, traced_checks
from tokenizers_jax.quantizers.fq import FactorizedVQ
from tokenizers_jax.quantizers.fsq import FSQ
from tokenizers_jax.quantizers.lfq import LFQ
from tokenizers_jax.quantizers import perturbation
from tokenizers_jax.quantizers.perturbation import LatentPerturbation
from tokenizers_jax.quantizers.registry import QUANTIZERS, get_quantizer_class, make_quantizer
from tokenizers_jax.quantizers.rvq import ResidualVQ
from tokenizers_jax.quantizers.vq import VectorQuantizer

# Longer, spelled-out aliases.
FiniteScalarQuantizer = FSQ
LookupFreeQuantizer = LFQ
FactorizedVectorQuantizer = FactorizedVQ
ResidualVectorQuantizer = ResidualVQ

__all__ = [
    'FSQ', 'FactorizedVQ', 'FactorizedVectorQuantizer', 'FiniteScalarQuantizer',
    'LFQ', 'LatentPerturbation', 'LookupFreeQuantizer', 'QUANTIZERS',
    'Quantizer', 'QuantizerOutput', 'QuantizerState', 'ResidualVQ',
    'ResidualVectorQuantizer', 'VectorQuantizer',
    'functional', 'get_quantizer_class', 'make_quantizer', 'perturbation',
    'traced_checks',
]
