"""The model contract every tokenizer keeps.

A tokenizer model is an `nnx.Module` with

  modality: str                      'image' | 'audio' | 'eeg'
  loss_terms: tuple[str, ...]        names of the terms `__call__` reports
  codebook_size: int                 codes per index position
  __call__(inputs, *, train, rng=None, step=None, **modality_kwargs)
      -> ModelOutput
  encode(inputs) -> int32 token ids
  decode(ids) -> inputs' space
  last_layer                         (optional) the decoder's output weight,
                                     for the GAN's adaptive weight

`ModelOutput.terms` are *unweighted* named loss terms (f32 scalars): the
task weights them from `config.loss.weights` (and `config.loss.
quantizer_weight` for the 'quantizer' term, the quantizer's own loss, which
the quantizer has already weighted internally: commitment, entropy, ...).
Losses that need more than the model (reconstruction against the input,
perceptual, adversarial) are the task's.

`ModelOutput.aux` holds modality-specific arrays that evaluation needs
(e.g. NeuroRVQ's encoder output and per-branch quantizer outputs); training
ignores it.
"""

from __future__ import annotations

from typing import Any

from flax import struct
import jax

from tokenizers_jax.quantizers import base as qbase

Array = jax.Array

MODALITIES = ('image', 'audio', 'eeg')


@struct.dataclass
class ModelOutput:
  """What a tokenizer's forward pass returns.

  Attributes:
    reconstruction: the model's rendering of the input (same shape).
    quantizer: the QuantizerOutput of the codes (for multi-quantizer models,
      their combination: stacked indices, summed loss, averaged metrics).
    terms: unweighted named loss terms, f32 scalars (weighted by the task).
    metrics: f32 scalars logged under `quant/` (quantizer and model
      statistics).
    aux: modality-specific arrays for evaluation (not logged).
  """
  reconstruction: Array
  quantizer: qbase.QuantizerOutput
  terms: dict[str, Array]
  metrics: dict[str, Array]
  aux: dict[str, Any] = struct.field(default_factory=dict)


def output(reconstruction: Array, qout: qbase.QuantizerOutput,
           terms: dict[str, Array] | None = None,
           metrics: dict[str, Array] | None = None,
           aux: dict[str, Any] | None = None) -> ModelOutput:
  """A ModelOutput whose terms start with the quantizer's own loss
  ('quantizer') and whose metrics start with the quantizer's metrics."""
  return ModelOutput(
      reconstruction=reconstruction, quantizer=qout,
      terms={'quantizer': qout.loss, **(terms or {})},
      metrics={**qout.metrics, **(metrics or {})}, aux=dict(aux or {}))
