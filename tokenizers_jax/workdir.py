"""Reading a training workdir without the training system.

  config = workdir.load_config(path)                 # config.json, upgraded
  params, rest, step, used_ema = workdir.read_generator(path)

`read_generator` restores only the tokenizer's weights (`state['gen']` and
`state['ema']`) of an orbax checkpoint, as host numpy arrays, from the
checkpoint's own array metadata: no model has to be built to read it, the
optimizer and discriminator states are not read, and nothing is unpickled.
`models/tokenizer.py` and the training system's `init_from` both use it.
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


def read_generator(workdir: str, step: int | None = None,
                   use_ema: bool = True):
  """(params, rest, step, used_ema) of a workdir's checkpoint (default the
  latest), as nested dicts of numpy arrays. params are the EMA weights when
  `use_ema` and the run kept an EMA."""
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
    meta = getattr(meta, 'tree', meta)
    if 'gen' not in meta:
      raise ValueError(f'{ckdir}/{step} holds no tokenizer weights '
                       "(state['gen']); is it a tokenizers_jax workdir?")
    ema_meta = meta.get('ema') or {}
    used_ema = bool(use_ema and jax.tree.leaves(ema_meta))
    wanted = {'gen': meta['gen']}
    if used_ema:
      wanted['ema'] = ema_meta
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    state = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                     partial_restore=True)))['state']
  finally:
    mgr.close()
  params = state['ema'] if used_ema else state['gen']['params']
  return params, state['gen'].get('rest') or {}, step, used_ema
