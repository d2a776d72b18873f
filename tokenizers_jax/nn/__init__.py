"""The bottom layer shared by front ends, models, losses and evaluators.

  partitioning  `logical(*names)`: logical-axis metadata for variables.
  weights       `Frozen` (non-parameter weights) and `load_state_dict` (local
                safetensors / torch / npz weight files).
"""

from tokenizers_jax.nn import partitioning
from tokenizers_jax.nn import weights
from tokenizers_jax.nn.partitioning import logical
from tokenizers_jax.nn.weights import Frozen
from tokenizers_jax.nn.weights import load_state_dict

__all__ = ['Frozen', 'load_state_dict', 'logical', 'partitioning', 'weights']
