"""The bottom layer shared by front ends, models, losses and evaluators.

  partitioning  `logical(*names)`: logical-axis metadata for variables.
  attention     one multi-head attention (`Attention`) and its functional core
                (`dot_product_attention`, through jax.nn.dot_product_attention).
  conv          convolutions in forms XLA:CPU runs fast: `conv_general_dilated`
                (for `nnx.Conv`; a fast input gradient where XLA:CPU's is
                pathological, map <= kernel), stride 2 as space-to-depth,
                nearest 2x upsampling + 3x3 conv as sub-pixel convs.
  norm          `GroupNorm`: `nnx.GroupNorm` with per-channel-first
                statistics (faster on XLA:CPU).
  signal        STFT/iSTFT, magnitude, mel filterbanks, log-mel, frame masks
                (pure functions; `losses.spectral` re-exports them).
  weights       `Frozen` (non-parameter weights) and `load_state_dict` (local
                safetensors / torch / npz weight files).
"""

from tokenizers_jax.nn import attention
from tokenizers_jax.nn import conv
from tokenizers_jax.nn import norm
from tokenizers_jax.nn import partitioning
from tokenizers_jax.nn import signal
from tokenizers_jax.nn import weights
from tokenizers_jax.nn.attention import Attention
from tokenizers_jax.nn.attention import dot_product_attention
from tokenizers_jax.nn.partitioning import logical
from tokenizers_jax.nn.weights import Frozen
from tokenizers_jax.nn.weights import load_state_dict

__all__ = ['Attention', 'Frozen', 'attention', 'conv', 'dot_product_attention',
           'load_state_dict', 'logical', 'norm', 'partitioning', 'signal',
           'weights']
