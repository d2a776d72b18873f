"""Resuming a run: the newest usable checkpoint, checked against the config.

  restored, step = resume.restore_latest_good(mgr, state, it, workdir=workdir,
                                              config=config)

Walks the checkpoints newest first and restores the first one that is whole:

  * a damaged one (unreadable metadata JSON, a missing item, array files that
    cannot be read) is named in a warning with what is wrong, and the next
    older one is tried;
  * a leftover partial save (`<step>.orbax-checkpoint-tmp`, or a step
    directory that orbax does not count as committed) is named too.

Nothing is deleted: damaged and partial directories are renamed to
`<step>.corrupt-<time>` / `<step>.partial-<time>` next to the others (orbax
would otherwise overwrite them when the run saves that step again, or delete
them as old), and the warning gives the new name.

Before restoring, the checkpoint's array metadata (orbax's item metadata) is
compared with the state the config builds; a mismatch (the model or the
quantizer changed) raises `IncompatibleCheckpointError` listing the parameter
paths whose shape or dtype differ, those missing on either side, and the keys
of `workdir/config.json` that differ from the new config.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from tokenizers_jax.training import checkpoint as ckpt_lib

_MAX_LISTED = 25
_TMP_SUFFIX = '.orbax-checkpoint-tmp'


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoint does not fit the state the config builds."""


class NoUsableCheckpointError(RuntimeError):
  """The workdir has checkpoints but none of them can be restored."""


# ----------------------------------------------------------------------------
# Inspecting checkpoint directories.
# ----------------------------------------------------------------------------


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  text = text[0] if text else ''
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _json_problem(path: str) -> str | None:
  try:
    with open(path) as f:
      json.load(f)
  except (OSError, ValueError) as e:
    return f'{path}: unreadable metadata ({_first_line(e)})'
  return None


def inspect_step(step_dir: str, items: tuple[str, ...]) -> str | None:
  """What is wrong with one checkpoint directory, or None if it looks whole.

  Checks that every expected item directory exists, every metadata file
  (`_CHECKPOINT_METADATA`, `_METADATA`, `*.json`) parses, and orbax can read
  the state's array metadata. Array contents are checked by restoring.

  Args:
    step_dir: a checkpoint directory, `<workdir>/checkpoints/<step>`.
    items: the item names it must hold ('state', and 'data' for the grain
      iterator).

  Returns:
    A description of the first problem found, or None.
  """
  for item in items:
    if not os.path.isdir(os.path.join(step_dir, item)):
      return f'{os.path.join(step_dir, item)}: missing'
  for root, _, files in os.walk(step_dir):
    for name in sorted(files):
      if (name in ('_CHECKPOINT_METADATA', '_METADATA')
          or name.endswith('.json')):
        problem = _json_problem(os.path.join(root, name))
        if problem:
          return problem
  try:
    _state_metadata(step_dir)
  except Exception as e:  # pylint: disable=broad-except
    return (f'{os.path.join(step_dir, "state")}: unreadable array metadata '
            f'({_first_line(e)})')
  return None


def _state_metadata(step_dir: str) -> Any:
  """orbax's metadata tree (shape, dtype per array) of a saved state."""
  meta = ocp.StandardCheckpointHandler().metadata(
      epath.Path(os.path.join(step_dir, 'state')))
  return getattr(meta, 'tree', meta)


def leftover_partial_saves(ckdir: str, committed: list[int]) -> list[str]:
  """Directories of saves that never completed (see module docstring)."""
  out = []
  if not os.path.isdir(ckdir):
    return out
  for name in sorted(os.listdir(ckdir)):
    path = os.path.join(ckdir, name)
    if not os.path.isdir(path):
      continue
    if _TMP_SUFFIX in name:
      out.append(path)
    elif re.fullmatch(r'\d+', name) and int(name) not in committed:
      out.append(path)
  return out


# ----------------------------------------------------------------------------
# Comparing a checkpoint with the state the config builds.
# ----------------------------------------------------------------------------


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path):
          (tuple(int(d) for d in leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in leaves}


def _fmt(spec) -> str:
  shape, dtype = spec
  return f'{dtype}[{",".join(map(str, shape))}]'


def _listed(lines: list[str]) -> list[str]:
  if len(lines) <= _MAX_LISTED:
    return lines
  return lines[:_MAX_LISTED] + [f'... and {len(lines) - _MAX_LISTED} more']


def state_differences(saved_meta, state_like) -> list[str]:
  """Lines naming each leaf whose shape/dtype differ or that one side lacks.

  Args:
    saved_meta: orbax's metadata tree of a saved state (shapes and dtypes).
    state_like: the state (or abstract state) the current config builds.

  Returns:
    Human-readable lines, empty when the trees fit.
  """
  saved, now = _flat(saved_meta), _flat(state_like)
  changed = [f'{p}: {_fmt(saved[p])} in the checkpoint, {_fmt(now[p])} now'
             for p in sorted(saved.keys() & now.keys()) if saved[p] != now[p]]
  extra = [f'{p}: {_fmt(saved[p])}' for p in sorted(saved.keys() - now.keys())]
  missing = [f'{p}: {_fmt(now[p])}' for p in sorted(now.keys() - saved.keys())]
  lines = []
  for title, group in (
      ('arrays whose shape/dtype differ', changed),
      ('extra: in the checkpoint only', extra),
      ('missing: in the new state only', missing)):
    if group:
      lines.append(f'{title} ({len(group)}):')
      lines += ['  ' + l for l in _listed(group)]
  return lines


def _flat_config(tree, prefix: str = '') -> dict[str, Any]:
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_flat_config(v, f'{prefix}{k}.'))
    if not tree and prefix:
      out[prefix[:-1]] = {}
  else:
    out[prefix[:-1]] = tree
  return out


def config_differences(workdir: str, config) -> list[str]:
  """Lines `key: old -> new` for the keys of `workdir/config.json` that
  differ from `config` (empty when the file is missing or unreadable)."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      old = _flat_config(json.load(f))
  except (OSError, ValueError):
    return []
  new = _flat_config(json.loads(config.to_json_best_effort()))
  absent = '(absent)'
  return [f'{k}: {json.dumps(old.get(k, absent))} -> '
          f'{json.dumps(new.get(k, absent))}'
          for k in sorted(old.keys() | new.keys())
          if old.get(k, absent) != new.get(k, absent)]


# ----------------------------------------------------------------------------
# Restoring.
# ----------------------------------------------------------------------------


def _set_aside(paths_and_kinds: list[tuple[str, str]]) -> None:
  """Renames unusable checkpoint directories (process 0) and warns."""
  if not paths_and_kinds:
    return
  multi = jax.process_count() > 1
  if multi:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('resume:before_set_aside')
  if jax.process_index() == 0:
    stamp = time.strftime('%Y%m%dT%H%M%S')
    for path, kind in paths_and_kinds:
      step = re.match(r'\d*', os.path.basename(path)).group() or 'unknown'
      new = os.path.join(os.path.dirname(path), f'{step}.{kind}-{stamp}')
      n = 1
      while os.path.exists(new):
        n += 1
        new = os.path.join(os.path.dirname(path), f'{step}.{kind}-{stamp}-{n}')
      os.rename(path, new)
      logging.warning('Moved the unusable checkpoint directory %s to %s '
                      '(kept for inspection; nothing was deleted).', path, new)
  if multi:
    multihost_utils.sync_global_devices('resume:after_set_aside')


def restore_latest_good(mgr: ocp.CheckpointManager, state_like: Any,
                        data_iter: Any | None, *, workdir: str, config):
  """Restores the newest usable checkpoint (see the module docstring).

  Args:
    mgr: the run's checkpoint manager.
    state_like: the freshly created state (structure, shapes, shardings).
    data_iter: the grain iterator, restored in place; or None.
    workdir: the training directory (for `config.json`).
    config: the config of this run.

  Returns:
    (state, step), or (None, None) when the workdir has no checkpoint.

  Raises:
    IncompatibleCheckpointError: the newest usable checkpoint does not fit the
      state built from `config`.
    NoUsableCheckpointError: checkpoints exist but none can be restored.
  """
  ckdir = str(mgr.directory)
  steps = sorted(mgr.all_steps(), reverse=True)
  unusable = []
  for path in leftover_partial_saves(ckdir, steps):
    logging.warning('Ignoring the partial checkpoint %s: a save that never '
                    'completed (the run stopped while writing it).', path)
    unusable.append((path, 'partial'))
  items = ('state',) if data_iter is None else ('state', 'data')
  problems = []
  result = (None, None)
  for step in steps:
    step_dir = os.path.join(ckdir, str(step))
    # A step-0 checkpoint without the iterator (a converted release,
    # tokenizers_jax.convert) starts the data at its beginning, which is
    # exactly where a step-0 iterator stands.
    fresh_data = (step == 0 and data_iter is not None
                  and not os.path.isdir(os.path.join(step_dir, 'data')))
    problem = inspect_step(step_dir, ('state',) if fresh_data else items)
    if problem is None:
      diff = state_differences(_state_metadata(step_dir), state_like)
      if diff:
        changes = config_differences(workdir, config)
        lines = [f'{workdir} holds a checkpoint (step {step}, {step_dir}) '
                 'that does not fit the state this config builds:']
        lines += ['  ' + l for l in diff]
        if changes:
          lines.append('  config keys that differ (workdir/config.json -> '
                       f'now) ({len(changes)}):')
          lines += ['    ' + l for l in _listed(changes)]
        lines.append('Resume with the config the workdir was trained with, or '
                     'start the changed config in a new --workdir.')
        raise IncompatibleCheckpointError('\n'.join(lines))
      try:
        result = ckpt_lib.restore(mgr, state_like,
                                  None if fresh_data else data_iter, step=step)
        break
      except Exception as e:  # pylint: disable=broad-except
        problem = f'{step_dir}: restoring failed ({_first_line(e)})'
    logging.warning('Checkpoint %d is unusable, trying the previous one: %s',
                    step, problem)
    problems.append(problem)
    unusable.append((step_dir, 'corrupt'))
  if steps and result[0] is None:
    raise NoUsableCheckpointError(
        f'none of the checkpoints in {ckdir} can be restored:\n  '
        + '\n  '.join(problems)
        + '\nMove them aside (or use a new --workdir) to start from scratch.')
  _set_aside(unusable)
  if unusable:
    mgr.reload()
  if result[0] is not None:
    changes = config_differences(workdir, config)
    if changes:
      logging.warning('Resuming with config changes (workdir/config.json -> '
                      'now): %s', '; '.join(_listed(changes)))
  return result
