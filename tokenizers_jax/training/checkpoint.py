"""Orbax checkpoints holding the train state and the grain iterator together.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete); the manager keeps the newest `keep` checkpoints,
and restoring takes the shardings of an abstract target, so arrays come back
sharded as the running job expects.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int, save_interval_steps: int = 1,
            async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_interval_steps,
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any,
         data_iter: Any | None = None, force: bool = False) -> bool:
  args = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    args['data'] = grain.checkpoint.CheckpointSave(data_iter)
  return mgr.save(step, args=ocp.args.Composite(**args), force=force)


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def restore(mgr: ocp.CheckpointManager, state_like: Any,
            data_iter: Any | None = None, step: int | None = None):
  """Restores (state, step) into `state_like`'s structure and shardings.

  The grain iterator, when given, is restored in place.
  """
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None, None
  args = {'state': ocp.args.StandardRestore(abstract_like(state_like))}
  if data_iter is not None:
    args['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mgr.restore(step, args=ocp.args.Composite(**args))
  return restored['state'], step


def restore_state_only(workdir: str, state_like: Any, step: int | None = None):
  """Restore just the train state (for evaluation / `Tokenizer.from_workdir`)."""
  mgr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'))
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {workdir}/checkpoints')
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_like(state_like))))
  mgr.close()
  return restored['state'], step
