"""The bottom layer shared by front ends, models, losses and evaluators.

  partitioning  `logical(*names)`: logical-axis metadata for variables.
  attention     one multi-head attention (`Attention`) and its functional core
                (`dot_product_attention`).
  weights       `Frozen` (non-parameter weights) and `load_state_dict` (local
                safetensors / torch / npz weight files).
"""

from tokenizers_jax.nn import partitioning
from tokenizers_jax.nn.partitioning import logical

__all__ = ['logical', 'partitioning']
