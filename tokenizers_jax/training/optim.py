"""Optimizers of the training core and the shardings of their states.

  tx = optim.make_optimizer(config.optim, config.total_steps)
  opt_shardings = optim.opt_state_shardings(jax.eval_shape(tx.init, params),
                                            params, param_shardings, mesh)
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from tokenizers_jax import config_lib


def opt(cfg, key, default=None):
  """cfg[key] when present (ConfigDict or dict), else default."""
  return cfg[key] if cfg is not None and key in cfg else default


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup + cosine/constant schedule, optional clipping and
  `frozen` parameter prefixes (zero updates)."""
  lr = opt_cfg.lr
  warm = opt_cfg.warmup_steps
  if opt_cfg.schedule == 'cosine':
    sched = optax.warmup_cosine_decay_schedule(
        0.0 if warm else lr, lr, max(warm, 1) if warm else 1,
        max(total_steps, warm + 1), lr * opt_cfg.end_lr_factor)
  elif opt_cfg.schedule == 'constant':
    sched = (optax.linear_schedule(0.0, lr, warm) if warm else
             optax.constant_schedule(lr))
    if warm:
      sched = optax.join_schedules([sched, optax.constant_schedule(lr)], [warm])
  else:
    raise config_lib.ConfigError(
        f'config.optim.schedule: unknown {opt_cfg.schedule!r}')
  parts = []
  if opt_cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
  parts.append(optax.adamw(sched, b1=opt_cfg.b1, b2=opt_cfg.b2,
                           weight_decay=opt_cfg.weight_decay))
  tx = optax.chain(*parts)
  frozen = tuple(opt(opt_cfg, 'frozen', ()) or ())
  if not frozen:
    return tx
  # `optim.frozen`: parameters under these path prefixes get zero updates (no
  # weight decay, no optimizer state); clipping sees the trainable ones only.
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               lambda params: _frozen_labels(params, frozen))


def path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def under_prefix(path: str, prefixes) -> bool:
  """Whether `path` equals or lies below one of the "/"-joined `prefixes`."""
  return any(path == p or path.startswith(p.rstrip('/') + '/')
             for p in prefixes)


def _frozen_labels(params, frozen: tuple[str, ...]):
  """'frozen' / 'train' per leaf; every prefix must name some parameter."""
  paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  unused = [f for f in frozen if not any(under_prefix(p, (f,)) for p in paths)]
  if unused:
    tops = sorted({p.split('/')[0] for p in paths})
    raise config_lib.ConfigError(
        f'config.optim.frozen: {unused} match no parameter path (prefixes '
        f'such as {tops}, nested with "/")')
  return jax.tree_util.tree_map_with_path(
      lambda p, _: 'frozen' if under_prefix(path_str(p), frozen) else 'train',
      params)


def _path_key(k) -> Any:
  for attr in ('key', 'idx', 'name'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def opt_state_shardings(opt_state, params, param_shardings, mesh) -> Any:
  """Shardings for an optimizer state: each leaf gets the sharding of the
  parameter it belongs to, replicated otherwise (step counts, scalars).

  A leaf belongs to a parameter when the end of its tree path is that
  parameter's path and the shapes agree; this covers optax's mu/nu trees
  under `chain`, `masked` and `multi_transform` without knowing their
  layout. `opt_state` and `params` may hold arrays or ShapeDtypeStructs.
  """
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree.leaves(param_shardings)):
    by_path[tuple(_path_key(k) for k in path)] = (tuple(p.shape), s)
  lengths = sorted({len(k) for k in by_path}, reverse=True)
  replicated = NamedSharding(mesh, P())

  def one(path, leaf):
    keys = tuple(_path_key(k) for k in path)
    for n in lengths:
      hit = by_path.get(keys[-n:]) if n <= len(keys) else None
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)
