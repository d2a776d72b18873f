"""Device meshes and logical-axis sharding for NNX modules.

Parameters carry logical axis names in their metadata (`out_sharding`, set
with `eager_sharding=False` so modules build without a mesh). Rules map
logical names to mesh axes, e.g. `(('batch', ('data', 'fsdp')), ('embed',
'fsdp'), ('codebook', 'model'))`; names without a rule are replicated.
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ('data', 'fsdp', 'model')
Rules = Sequence[tuple[str, Any]]


def make_mesh(shape: Sequence[int] | None = None,
              axis_names: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh with Auto axis types; shape -1 on one axis takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape) if shape is not None else [-1] + [1] * (len(axis_names) - 1)
  if len(shape) != len(axis_names):
    raise ValueError(f'mesh shape {shape} must have one entry per axis {tuple(axis_names)}')
  if shape.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1; got {shape}')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not divide into mesh {shape}')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f'mesh {dict(zip(axis_names, shape))} needs {int(np.prod(shape))}'
                     f' devices; {len(devices)} available')
  dev = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(dev, tuple(axis_names),
                           axis_types=(AxisType.Auto,) * len(axis_names))


def logical_to_mesh(names: Sequence[str | None] | None, rules: Rules,
                    mesh: jax.sharding.Mesh | None = None) -> P:
  """Map logical axis names to a mesh PartitionSpec with `rules`.

  A mesh axis is used at most once per spec; mesh axes not in `mesh` are
  dropped (so the same rules serve meshes without, say, a 'model' axis).
  """
  if not names:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in names:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and
                 (mesh is None or a in mesh.axis_names))
    used.update(axes)
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return P(*out)


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh,
                    rules: Rules) -> Any:
  """NamedShardings for every array of an NNX state, from its logical names.

  An axis whose size the mesh axes do not divide is replicated instead.
  """
  def one(var):
    value = var.get_value() if isinstance(var, nnx.Variable) else var
    names = var.get_metadata().get('out_sharding') if isinstance(var, nnx.Variable) else None
    spec = logical_to_mesh(names, rules, mesh)
    shape = getattr(value, 'shape', ())
    fixed = []
    for i, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
      size = int(np.prod([mesh.shape[a] for a in
                          ((axes,) if isinstance(axes, str) else (axes or ()))]))
      fixed.append(axes if axes is not None and shape[i] % size == 0 else None)
    sharding = NamedSharding(mesh, P(*fixed))
    return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules):
  """device_put an NNX state according to its logical names and `rules`."""
  return jax.device_put(state, state_shardings(state, mesh, rules))
