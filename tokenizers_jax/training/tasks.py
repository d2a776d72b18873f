"""Tasks: what the one training loop needs to know about a modality.

`train.train_and_evaluate` is the same for images, audio and EEG: it builds a
mesh, asks the task for the train state, a data iterator and a jit-able train
step, runs the loop (logging, evaluation, orbax checkpoints with the data
iterator, exact resume) and asks the task to evaluate. A task is chosen by
`config.task` ('image' when absent):

  task = tasks.get_task(config)
  task.validate_config(config)              # once, before anything is built
  trainer, state, shardings = task.create(config, mesh)
  it = task.train_iterator(config)          # checkpointable grain iterator
  state, metrics = task.train_step(trainer, state, global_batch)   # pure
  results, picture = task.evaluate(trainer, state, config, mesh,
                                   use_ema=True, num_batches=None)

A task supplies only what is its own: its losses (on top of the model's
named terms, `models/base.py`), its discriminator if any, its data and its
metrics. The state builder, the guarded commit, EMA, the GAN alternation and
the eval loop are the shared core's (`training/core.py`), which also fixes
the state layout that checkpoints, EMA, `init_from` and
`models.tokenizer.Tokenizer.from_workdir` rely on. Conventions:
  * metrics contain `train/loss` and `train/nonfinite_consecutive`
    (`core.step_metrics`); the loop prints `train/loss` and the task's
    `headline` metrics at every log step;
  * `evaluate` returns (dict of python floats keyed 'eval/...', an optional
    uint8 [H, W, 3] picture for TensorBoard, or None);
  * batches are dicts of numpy arrays, leading axis the per-process batch
    (global_batch_size / process_count).

Adding a modality: a model registered in `models/registry.py` that keeps
the contract of `models/base.py`, a data pipeline, and a task module
(validate_config, create = `core.build_state(...)`, train_step, evaluate)
named in `_TASKS` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from typing import Any, Callable

import jax

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
  # Metric keys the loop prints after train/loss (when present).
  headline: tuple[str, ...] = ()
  # Logged after each evaluation when it returns a string (e.g. why a metric
  # that needs local weights was not computed).
  eval_note: Callable[[Any], str | None] = lambda config: None


# Lazily imported: 'module:attribute' of a Task.
_TASKS = {
    'image': 'tokenizers_jax.training.image_task:TASK',
    'audio': 'tokenizers_jax.training.audio_task:TASK',
    'eeg': 'tokenizers_jax.training.eeg_task:TASK',
    'tokens': 'tokenizers_jax.training.tokens_task:TASK',
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


# -----------------------------------------------------------------------------
# Config checks every task makes (before anything is compiled).
# -----------------------------------------------------------------------------


def check_model(config, modality: str) -> type:
  """config.model_name names a registered model of `modality`; returns its
  class (for its static attributes)."""
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  try:
    cls = registry.model_class(config.model_name)
  except ValueError as e:
    raise config_lib.ConfigError(f'config.model_name: {e}') from None
  config_lib.require(
      cls.modality == modality, 'model_name',
      f'{config.model_name!r} is a {cls.modality} model; the {modality} task '
      f'trains {modality} tokenizers')
  return cls


def check_quantizer_name(config) -> None:
  """config.quantizer.name names a registered quantizer."""
  from tokenizers_jax.quantizers import registry  # pylint: disable=g-import-not-at-top
  q = dict(config.quantizer)
  config_lib.require('name' in q, 'quantizer.name', 'missing')
  try:
    cls = registry.get_quantizer_class(q['name'])
  except ValueError as e:
    raise config_lib.ConfigError(f'config.quantizer.name: {e}') from None
  params = inspect.signature(cls.__init__).parameters
  if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
    known = [k for k in params if k not in ('self', 'rngs', 'dim')]
    unknown = sorted(k for k in q if k != 'name' and k not in params)
    config_lib.require(
        not unknown, f'quantizer.{unknown[0] if unknown else ""}',
        f'{unknown} are not arguments of {cls.__name__} (name='
        f'{q["name"]!r}; a key left from another quantizer?); it takes '
        f'{known}. Replace the whole config.quantizer when switching '
        'quantizers')


def check_batch_fits_mesh(config, keys=('global_batch_size',)) -> None:
  """The mesh fits the devices; each config.data[key] batch is positive and
  divisible by the data-parallel size (the 'data' and 'fsdp' axes) and by
  the number of processes."""
  req = config_lib.require
  n_dev = jax.device_count()
  shape = tuple(config.mesh.shape)
  known = math.prod(s for s in shape if s != -1)
  req(n_dev % known == 0, 'mesh.shape',
      f'{shape} does not fit {n_dev} devices')
  sizes = [n_dev // known if s == -1 else s for s in shape]
  data_par = math.prod(s for a, s in zip(config.mesh.axes, sizes)
                       if a in ('data', 'fsdp'))
  for key in keys:
    b = config.data[key]
    req(b > 0, f'data.{key}', 'must be positive')
    req(b % data_par == 0, f'data.{key}',
        f'{b} is not divisible by the data-parallel size {data_par}')
    req(b % jax.process_count() == 0, f'data.{key}',
        f'{b} is not divisible by the number of processes '
        f'{jax.process_count()}')
