"""Shape-only train states on large meshes, for ahead-of-time compilation.

`task.create(config, mesh)` places the whole train state on `mesh`. On a
mesh of many (simulated) devices every replicated array then has one copy
per device, which for a paper-scale model on 64 simulated CPU devices is
more memory than a host has. `abstract_create` gives what the training loop
needs to compile its step for `mesh` without that:

  trainer, state, shardings = abstract.abstract_create(config, mesh)
  batch = abstract.abstract_batch(config, mesh, global_batch=64)
  compiled = abstract.lower_train_step(config, trainer, state, shardings,
                                       batch).compile()
  compiled.memory_analysis()   # per-device argument / temp bytes

`state` is a tree of `jax.ShapeDtypeStruct`s carrying `NamedSharding`s on
`mesh`. It is made by running the task's own `create` once on a one-device
mesh (one copy of the state, freed before returning), so the trainer, the
state's tree, shapes and dtypes are exactly the training loop's. Shardings
for `mesh`:
  * every array: the mesh axes its logical names map to on the one-device
    mesh (where every size divides), dropped on dimensions that the axes'
    sizes on `mesh` do not divide: the rule of `sharding.state_shardings`;
  * optimizer states (`state['X_opt']`): each leaf like the parameter of
    `state['X']['params']` it belongs to (`opt_state_shardings`).
    `core.build_state` shards them the same way (`optim.opt_state_shardings`);
    `opt_shardings='as_created'` keeps whatever `create` gave them.

Configs with a perceptual loss need local LPIPS weight files; when none are
given, random weights are written to a temporary .npz pair (the FLOPs and
memory do not depend on the values).
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.training import core
from tokenizers_jax.training import optim
from tokenizers_jax.training import tasks


# -----------------------------------------------------------------------------
# Shardings.
# -----------------------------------------------------------------------------


def _axes(entry) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def spec_uses(spec, axis: str) -> bool:
  """Whether a PartitionSpec names mesh `axis` for some dimension."""
  return any(axis in _axes(e) for e in spec)


def splits(x, axis: str) -> bool:
  """Whether the sharding of `x` (an array or ShapeDtypeStruct) splits some
  dimension over mesh `axis` of size > 1."""
  sh = x.sharding
  return (spec_uses(getattr(sh, 'spec', ()), axis)
          and dict(sh.mesh.shape).get(axis, 1) > 1)


def refit(spec, shape, mesh) -> P:
  """`spec` with the mesh axes of each dimension dropped where their sizes
  on `mesh` do not divide it (and axes `mesh` lacks dropped)."""
  out = []
  for i, entry in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = tuple(a for a in _axes(entry) if a in mesh.axis_names)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    ok = axes and shape[i] % size == 0
    out.append(None if not ok else (axes[0] if len(axes) == 1 else axes))
  return P(*out)


opt_state_shardings = optim.opt_state_shardings


def sharded_fraction(tree, axis: str = 'fsdp') -> tuple[float, int]:
  """(fraction of the bytes of `tree` whose sharding splits some dimension
  over mesh `axis` (`splits`), total bytes). Leaves: arrays or
  ShapeDtypeStructs."""
  total = sharded = 0
  for x in jax.tree.leaves(tree):
    n = int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
    total += n
    if splits(x, axis):
      sharded += n
  return (sharded / total if total else 1.0), total


def per_device_bytes(tree) -> int:
  """Bytes one device holds of `tree` (each leaf's shard shape)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(tuple(x.shape))
    total += int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
  return total


# -----------------------------------------------------------------------------
# The abstract state.
# -----------------------------------------------------------------------------


_LPIPS_FILES: dict[str, tuple[str, str]] = {}


def random_lpips_files() -> tuple[str, str]:
  """(VGG16, LPIPS heads) .npz files of random weights in a temporary
  directory, in the layout `LPIPS.from_files` reads (cached per process,
  removed at exit)."""
  if 'files' not in _LPIPS_FILES:
    from tokenizers_jax.losses import perceptual  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    d = tempfile.mkdtemp(prefix='random_lpips_')
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    vgg = {}
    for i, cin, cout in perceptual.VGG16_CONVS:
      vgg[f'features.{i}.weight'] = rng.normal(
          0, (2 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
      vgg[f'features.{i}.bias'] = np.zeros((cout,), np.float32)
    lin = {f'lin{k}.model.1.weight': rng.uniform(0, 1, (1, c, 1, 1)).astype(
        np.float32) for k, c in enumerate(perceptual.LPIPS_CHANNELS)}
    paths = os.path.join(d, 'vgg16.npz'), os.path.join(d, 'lpips_lin.npz')
    np.savez(paths[0], **vgg)
    np.savez(paths[1], **lin)
    _LPIPS_FILES['files'] = paths
  return _LPIPS_FILES['files']


def with_local_weights(config):
  """A copy of `config` whose perceptual loss, when on without weight
  files, reads random ones (`random_lpips_files`)."""
  config = copy.deepcopy(config)
  loss = config.get('loss', None)
  if (loss is not None and loss.get('perceptual_weight', 0) > 0
      and not loss.get('lpips_vgg_path')):
    loss.lpips_vgg_path, loss.lpips_lin_path = random_lpips_files()
  return config


def abstract_create(config, mesh, *, opt_shardings: str = 'params'):
  """(trainer, shape-only state, shardings) of `task.create` for `mesh`.

  Args:
    config: the run's config; `config.mesh.shape` should describe `mesh`
      (the task validates the batch against it).
    mesh: the target mesh (e.g. 64 simulated devices).
    opt_shardings: 'params' (optimizer leaves sharded like their
      parameters) or 'as_created' (the shardings `create` gives them).

  Returns:
    The task's trainer, the state as ShapeDtypeStructs with NamedShardings
    on `mesh`, and the tree of those shardings.
  """
  if opt_shardings not in ('params', 'as_created'):
    raise ValueError(f"opt_shardings must be 'params' or 'as_created'; got "
                     f'{opt_shardings!r}')
  config = with_local_weights(config)
  task = tasks.get_task(config)
  one = sharding_lib.make_mesh((1,) * len(mesh.axis_names), mesh.axis_names,
                               devices=[mesh.devices.flat[0]])
  with jax.set_mesh(one):  # As the training loop calls it.
    trainer, state, _ = task.create(config, one)
  sds = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype,
          sharding=NamedSharding(mesh, refit(
              getattr(x.sharding, 'spec', P()), x.shape, mesh))),
      state)
  for x in jax.tree.leaves(state):
    x.delete()
  del state
  if opt_shardings == 'params':
    for key in list(sds):
      owner = key[:-len('_opt')] if key.endswith('_opt') else None
      if owner and isinstance(sds.get(owner), dict) and 'params' in sds[owner]:
        params = sds[owner]['params']
        sh = opt_state_shardings(sds[key], params,
                                 jax.tree.map(lambda x: x.sharding, params),
                                 mesh)
        sds[key] = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            sds[key], sh)
  return trainer, sds, jax.tree.map(lambda x: x.sharding, sds)


# -----------------------------------------------------------------------------
# Batches and the train step.
# -----------------------------------------------------------------------------


def abstract_batch(config, mesh, global_batch: int) -> dict:
  """ShapeDtypeStructs of one global training batch, sharded over the
  data-parallel axes as `train.batch_sharding` shards it.

  Shapes follow each task's train iterator: image {'image': [B, S, S, 3]},
  audio {'audio': [B, crop samples]}, eeg {'eeg': [B, C, N*P],
  'mask': bool [B, N]}.
  """
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top
  sh = train.batch_sharding(mesh)
  name = tasks.task_name(config)
  d = config.data
  if name == 'image':
    shapes = {'image': ((d.image_size, d.image_size, 3), jnp.float32)}
  elif name == 'audio':
    from tokenizers_jax.training import audio_task  # pylint: disable=g-import-not-at-top
    shapes = {'audio': ((audio_task.crop_length(config),), jnp.float32)}
  elif name == 'eeg':
    n, p = d.num_patches, config.model.patch_size
    shapes = {'eeg': ((len(d.channels), n * p), jnp.float32),
              'mask': ((n,), jnp.bool_)}
  else:
    raise ValueError(f'no batch shapes for task {name!r}')
  return {k: jax.ShapeDtypeStruct((global_batch,) + s, t, sharding=sh)
          for k, (s, t) in shapes.items()}


def gather_params(state, mesh):
  """`state` with every `state[X]['params']` constrained to be replicated:
  inside a jitted step, one all-gather of the parameters before the forward
  pass (ZeRO-3 without per-layer prefetch); gradients then reduce-scatter
  back to the parameters' shardings at the update."""
  rep = NamedSharding(mesh, P())
  out = dict(state)
  for key, value in state.items():
    if isinstance(value, dict) and 'params' in value:
      out[key] = dict(value, params=jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(x, rep), value['params']))
  return out


def lower_train_step(config, trainer, state, shardings, batch, *,
                     gather: bool = False):
  """`task.train_step` jitted as the training loop jits it (state in/out
  shardings, donated state), lowered for `state` and `batch` (arrays or
  ShapeDtypeStructs). Call under `jax.set_mesh(mesh)`.

  With `gather`, the step first gathers the parameters (`gather_params`).
  """
  task = tasks.get_task(config)
  batch_sh = jax.tree.map(lambda x: x.sharding, batch)
  mesh = jax.tree.leaves(batch_sh)[0].mesh

  def step(s, b):
    return task.train_step(trainer, gather_params(s, mesh) if gather else s,
                           b)

  return core.jit_train_step(config, step, shardings, batch_sh).lower(
      state, batch)
