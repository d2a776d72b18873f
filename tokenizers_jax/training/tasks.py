"""Tasks: what the one training loop needs to know about a modality.

`train.train_and_evaluate` is the same for images, audio and EEG: it builds a
mesh, asks the task for the train state, a data iterator and a jit-able train
step, runs the loop (logging, evaluation, orbax checkpoints with the data
iterator, exact resume) and asks the task to evaluate. A task is chosen by
`config.task` ('image' when absent):

  task = tasks.get_task(config)
  task.validate_config(config)
  trainer, state, shardings = task.create(config, mesh)
  it = task.train_iterator(config)          # checkpointable grain iterator
  state, metrics = task.train_step(trainer, state, global_batch)   # pure
  results, image = task.evaluate(trainer, state, config, mesh,
                                 use_ema=True, num_batches=None)

Conventions every task keeps, so that checkpoints, EMA and
`models.tokenizer.Tokenizer.from_workdir` work unchanged:
  * `state` is a pytree of arrays with `state['step']` (int32 scalar),
    `state['gen'] = {'params', 'rest'}` (the tokenizer's nnx pure dicts),
    `state['ema']` (EMA of the tokenizer params, or {} when
    `config.ema_decay == 0`) and the non-finite counters
    `state['nonfinite_consecutive']`, `state['nonfinite_total']`;
  * `trainer.merge_gen(params, rest, copy=True)` rebuilds the tokenizer;
  * metrics contain `train/loss` and `train/nonfinite_consecutive`
    (`train/recon` and `quant/usage` are logged when present);
  * `evaluate` returns (dict of python floats keyed 'eval/...', an optional
    uint8 [H, W, 3] picture of reconstructions for TensorBoard, or None);
  * batches are dicts of numpy arrays, leading axis the per-process batch
    (global_batch_size / process_count).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from tokenizers_jax import config_lib


@dataclasses.dataclass(frozen=True)
class Task:
  """The modality-specific pieces of a training run (see module docstring)."""
  name: str
  validate_config: Callable[[Any], None]
  create: Callable[..., tuple]
  train_step: Callable[..., tuple]
  train_iterator: Callable[[Any], Any]
  evaluate: Callable[..., tuple]
  # Logged after each evaluation when it returns a string (e.g. why a metric
  # that needs local weights was not computed).
  eval_note: Callable[[Any], str | None] = lambda config: None


# Lazily imported: 'module:attribute' of a Task.
_TASKS = {
    'image': 'tokenizers_jax.training.image_task:TASK',
    'audio': 'tokenizers_jax.training.audio_task:TASK',
    'eeg': 'tokenizers_jax.training.eeg_task:TASK',
}


def task_name(config) -> str:
  return config.get('task', 'image') if hasattr(config, 'get') else 'image'


def get_task(config_or_name) -> Task:
  """The Task for a config (its `task` field, default 'image') or a name."""
  name = (config_or_name if isinstance(config_or_name, str)
          else task_name(config_or_name))
  if name not in _TASKS:
    raise config_lib.ConfigError(
        f'config.task: unknown task {name!r}; known: {sorted(_TASKS)}')
  module, attr = _TASKS[name].split(':')
  return getattr(importlib.import_module(module), attr)
