"""Reading a training workdir without the training system.

  config = workdir.load_config(path)                 # config.json, upgraded
  params, rest, step, used_ema = workdir.read_generator(path)
  state, step = workdir.read_state(path)

`read_generator` restores only the tokenizer's weights (`state['gen']` and
`state['ema']`) of an orbax checkpoint, as host numpy arrays, from the
checkpoint's own array metadata: no model has to be built to read it, the
optimizer and discriminator states are not read, and nothing is unpickled.
`models/tokenizer.py` and the training system's `init_from` both use it;
`read_state` restores a whole train state the same way (converters).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from tokenizers_jax import config_lib

load_config = config_lib.load_workdir_config


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def latest_step(workdir: str) -> int | None:
  ckdir = checkpoint_dir(workdir)
  if not os.path.isdir(ckdir):
    return None
  mgr = ocp.CheckpointManager(ckdir)
  try:
    return mgr.latest_step()
  finally:
    mgr.close()


def _restore(workdir: str, step: int | None, select):
  """(select(metadata) restored as numpy arrays, step): the arrays of the
  subtree `select` picks from a checkpoint's metadata tree."""
  ckdir = checkpoint_dir(workdir)
  if not os.path.isdir(ckdir):
    raise FileNotFoundError(f'no checkpoints under {ckdir}')
  mgr = ocp.CheckpointManager(
      ckdir, item_handlers={'state': ocp.PyTreeCheckpointHandler()})
  try:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {ckdir}')
    if step not in mgr.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {ckdir}; '
                              f'steps: {sorted(mgr.all_steps())}')
    meta = mgr.item_metadata(step)['state']
    wanted = select(getattr(meta, 'tree', meta), f'{ckdir}/{step}')
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    state = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                     partial_restore=True)))['state']
  finally:
    mgr.close()
  return state, step


def read_state(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """(the whole train state, step) of a workdir's checkpoint (default the
  latest) as nested dicts of numpy arrays."""
  return _restore(workdir, step, lambda meta, where: meta)


def read_generator(workdir: str, step: int | None = None,
                   use_ema: bool = True):
  """(params, rest, step, used_ema) of a workdir's checkpoint (default the
  latest), as nested dicts of numpy arrays. params are the EMA weights when
  `use_ema` and the run kept an EMA."""
  used = []

  def select(meta, where):
    if 'gen' not in meta:
      raise ValueError(f'{where} holds no tokenizer weights '
                       "(state['gen']); is it a tokenizers_jax workdir?")
    ema_meta = meta.get('ema') or {}
    used.append(bool(use_ema and jax.tree.leaves(ema_meta)))
    return {'gen': meta['gen'], **({'ema': ema_meta} if used[0] else {})}

  state, step = _restore(workdir, step, select)
  params = state['ema'] if used[0] else state['gen']['params']
  return params, state['gen'].get('rest') or {}, step, used[0]


def read_discriminator(workdir: str, step: int | None = None):
  """(params, rest, step) of the discriminator(s) in a workdir's checkpoint
  (default the latest), or None when the run had none."""
  def select(meta, where):
    del where
    return {'disc': meta['disc']} if meta.get('disc') else {}

  state, step = _restore(workdir, step, select)
  if not state.get('disc'):
    return None
  return state['disc']['params'], state['disc'].get('rest') or {}, step
