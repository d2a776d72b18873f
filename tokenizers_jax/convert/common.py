"""What every checkpoint converter shares: reading foreign state dicts,
tracking which tensors were used, layout changes, and writing a workdir.

A converter reads a released checkpoint into a `StateDict` (name -> numpy
array), takes every tensor it maps with `StateDict.take`, and at the end
calls `StateDict.check_complete`: a tensor that was never taken, a tensor
that was asked for and is missing, or one with the wrong shape is an error
listing all of them, so a conversion either uses the whole release or says
exactly what it left out.

The converted model is written as a training workdir (`config.json` +
an orbax checkpoint at step 0 of the train state that `training/tasks.py`
creates), which `Tokenizer.from_workdir`, `python -m tokenizers_jax.evaluate`
and `--config.init_from` read like any other.

Layouts: PyTorch convs are OIHW, ours HWIO; PyTorch linears [out, in], ours
[in, out].
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pickle
from typing import Any, Callable, Iterable, Mapping

import numpy as np

# The command that extracts a Lightning checkpoint's weights, to run where
# the reference's own classes can be unpickled.
LIGHTNING_EXTRACT = (
    "python -c \"import torch; sd = torch.load('{path}', map_location='cpu', "
    "weights_only=False)['state_dict']; torch.save(sd, '{out}')\"")


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message says why."""


# -----------------------------------------------------------------------------
# Reading.
# -----------------------------------------------------------------------------


def _to_numpy(value) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  value = value.detach().cpu()
  if value.is_floating_point():
    value = value.to(torch.float32)
  return value.numpy()


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A flat {name: array} from a local `.safetensors`, `.npz` or torch file.

  Torch files are read with `torch.load(..., weights_only=True)` only
  (nothing is unpickled); a Lightning checkpoint's `state_dict` is taken when
  the file loads that way. One that needs unpickling gets an error with the
  one-line extraction to run in the reference's own environment. Floating
  tensors come back as float32, others keep their dtype.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint not found: {path!r}')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'reading {path!r} needs the safetensors package '
                        "(pip install -e '.[weights]')") from e
    return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating)
                else v) for k, v in load_file(path).items()}
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    stem = os.path.splitext(path)[0]
    raise ConversionError(
        f'{path!r} cannot be read without unpickling (torch.load with '
        'weights_only=True refused it: it holds Python objects besides the '
        'tensors, as PyTorch Lightning checkpoints often do). In an '
        'environment where the release\'s own code is installed, extract the '
        'weights once and convert the result:\n  '
        + LIGHTNING_EXTRACT.format(path=path, out=stem + '_state_dict.pt')
    ) from e
  if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
    obj = obj['state_dict']  # A Lightning checkpoint.
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path!r} holds no state dict (got '
                          f'{type(obj).__name__})')
  out = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      out[k] = _to_numpy(v)
    elif v is not None:
      raise ConversionError(
          f'{path!r}: entry {k!r} is a {type(v).__name__}, not a tensor; '
          'is this a state dict?')
  return out


def read_config_file(path: str | os.PathLike) -> dict:
  """A release's config: YAML (PyYAML) or JSON, as nested dicts."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'reference config not found: {path!r}')
  with open(path) as f:
    text = f.read()
  if path.endswith('.json'):
    return json.loads(text)
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path!r} needs PyYAML (pip install pyyaml), '
                      'or give the config as JSON') from e
  data = yaml.safe_load(text)
  if not isinstance(data, dict):
    raise ConversionError(f'{path!r} is not a mapping')
  return data


class StateDict:
  """A foreign state dict that records which tensors a converter used.

  `take(name, shape)` returns a tensor and marks it used; a missing tensor
  or a wrong shape is recorded (and `None` returned) so that one error can
  list every problem. `skip(name)` marks a tensor used on purpose (e.g.
  BatchNorm's `num_batches_tracked`, which has no counterpart).
  """

  def __init__(self, tensors: Mapping[str, np.ndarray], what: str):
    self.tensors = dict(tensors)
    self.what = what
    self.used: set[str] = set()
    self.skipped: set[str] = set()
    self.missing: list[str] = []
    self.bad_shapes: list[str] = []

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.tensors[name].shape)

  def names(self, prefix: str = '') -> list[str]:
    return sorted(k for k in self.tensors if k.startswith(prefix))

  def take(self, name: str, shape: Iterable[int] | None = None
           ) -> np.ndarray | None:
    if name not in self.tensors:
      self.missing.append(name)
      return None
    value = self.tensors[name]
    if shape is not None and tuple(value.shape) != tuple(shape):
      self.bad_shapes.append(
          f'{name}: {tuple(value.shape)} in the checkpoint, '
          f'{tuple(shape)} expected')
      return None
    self.used.add(name)
    return value

  def skip(self, name: str) -> None:
    if name in self.tensors:
      self.used.add(name)
      self.skipped.add(name)

  def skip_prefixes(self, prefixes: Iterable[str]) -> None:
    """Marks every tensor under these name prefixes used on purpose
    (`--ignore`)."""
    for prefix in prefixes:
      for name in self.names(prefix):
        self.skip(name)

  def unused(self) -> list[str]:
    return sorted(set(self.tensors) - self.used)

  def check_complete(self) -> None:
    """Raises ConversionError listing missing, misshapen and unused tensors."""
    problems = []
    if self.missing:
      problems.append(f'{len(self.missing)} tensor(s) missing: '
                      + ', '.join(self.missing))
    if self.bad_shapes:
      problems.append(f'{len(self.bad_shapes)} with the wrong shape: '
                      + '; '.join(self.bad_shapes))
    unused = self.unused()
    if unused:
      problems.append(f'{len(unused)} tensor(s) not converted (unknown to '
                      'this converter): ' + ', '.join(unused))
    if problems:
      raise ConversionError(f'{self.what}: ' + '\n'.join(problems))


# -----------------------------------------------------------------------------
# Layouts.
# -----------------------------------------------------------------------------


def conv_from_torch(w: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def conv_to_torch(w: np.ndarray) -> np.ndarray:
  """HWIO -> OIHW."""
  return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def path_key(path) -> tuple:
  """A jax tree path -> a tuple of plain dict keys / list indices."""
  return tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path)


def flatten(tree) -> dict[tuple, Any]:
  """{path tuple: leaf} of a nested dict (nnx pure dicts)."""
  import jax  # pylint: disable=g-import-not-at-top
  return {path_key(p): v for p, v in
          jax.tree_util.tree_leaves_with_path(tree)}


# -----------------------------------------------------------------------------
# Configs and workdirs.
# -----------------------------------------------------------------------------


def map_tree(tree, fn):
  """`tree` with each leaf replaced by fn(path_key(path), leaf)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: fn(path_key(p), leaf), tree)


def abstract_variables(build: Callable[[], Any]) -> list[tuple[dict, dict]]:
  """[(params, other variables)] as pure dicts of shape-only arrays, one
  pair per module `build()` returns (a module or a tuple of modules), built
  abstractly (`nnx.eval_shape`: nothing is initialised)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  modules = nnx.eval_shape(build)
  if not isinstance(modules, (tuple, list)):
    modules = (modules,)
  out = []
  for module in modules:
    _, params, rest = nnx.split(module, nnx.Param, ...)
    out.append((nnx.to_pure_dict(params), nnx.to_pure_dict(rest)))
  return out


def use_lpips_files(config, directory: str) -> None:
  """Points the config's perceptual loss at a `--from=lpips` directory."""
  from tokenizers_jax.convert import lpips as lpips_convert  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  config.loss.lpips_vgg_path = os.path.join(directory, lpips_convert.VGG_FILE)
  config.loss.lpips_lin_path = os.path.join(directory, lpips_convert.LIN_FILE)


def conversion_report(source: str, checkpoint: str,
                      reference_config: str | None, arch, sd: StateDict,
                      notes: list[str], **extra) -> dict:
  """The report every converter writes to `workdir/conversion.json`: the
  files read, the architecture (a dataclass), tensor counts, what was dropped
  on purpose, the notes, and the source's own `extra` entries (which may
  replace the standard ones)."""
  return {
      'source': source, 'checkpoint': os.path.abspath(checkpoint),
      'reference_config': (os.path.abspath(reference_config)
                           if reference_config else None),
      'architecture': dataclasses.asdict(arch),
      'tensors_in_checkpoint': len(sd.tensors),
      'tensors_converted': len(sd.used) - len(sd.skipped),
      'dropped_on_purpose': sorted(sd.skipped),
      'notes': notes,
      **extra,
  }


def default_base_config(name: str = 'vqgan.py:imagenet_f16') -> str:
  """The repository's `configs/NAME` (converted workdirs start from it)."""
  here = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  return os.path.join(here, 'configs', name)


def load_base_config(spec: str):
  """`configs/vqgan.py:imagenet_f16`-style spec -> ConfigDict."""
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  path = spec.partition(':')[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'base config {path!r} not found (the converters start from the '
        "repository's configs/; pass --base_config=PATH:VARIANT)")
  return config_lib.load_config_file(spec)


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: Iterable[str]):
  """'data.source=fake:64'-style overrides (values as Python literals, else
  strings); an unknown key is an error naming it."""
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  for item in overrides:
    key, sep, text = item.partition('=')
    if not sep:
      raise config_lib.ConfigError(f'override {item!r} is not KEY=VALUE')
    *parents, leaf = key.strip().split('.')
    node = config
    for p in parents:
      if p not in node:
        raise config_lib.ConfigError(f'config.{key}: unknown key {p!r}')
      node = node[p]
    if leaf not in node:
      raise config_lib.ConfigError(f'config.{key}: unknown key {leaf!r}')
    value = _parse_value(text)
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)
    node[leaf] = value
  return config


def write_workdir(workdir: str, config,
                  fill: Callable[[dict], dict], *, overwrite: bool = False,
                  report: dict | None = None) -> str:
  """Writes `config` and a step-0 checkpoint whose arrays `fill` supplies.

  The train state is the one `tasks.get_task(config).create` builds (so
  optimizer states, EMA and counters have their usual structure); `fill`
  gets it as host numpy arrays and returns it with the converted weights in
  place. Shapes and dtypes must not change. `report` goes to
  `workdir/conversion.json`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  ckdir = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckdir) and os.listdir(ckdir) and not overwrite:
    raise ConversionError(f'{workdir} already holds checkpoints; choose a new '
                          'workdir (or pass --overwrite)')
  task = tasks.get_task(config)
  task.validate_config(config)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  # Built outside `jax.set_mesh`: every sharding is explicit, and abstract
  # construction (LPIPS.from_files) under a mesh context would need the
  # logical-axis rules.
  _, state, _ = task.create(config, mesh)
  host = jax.tree.map(np.asarray, jax.device_get(state))
  new = fill(host)
  if jax.tree.structure(new) != jax.tree.structure(host):
    raise ConversionError('internal: the filled state changed structure')

  def put(n, o):
    n = np.asarray(n)
    if n.shape != o.shape:
      raise ConversionError(f'internal: shape {n.shape} != {o.shape}')
    return jax.device_put(n.astype(o.dtype), o.sharding)

  state = jax.tree.map(put, new, state)
  if os.path.isdir(ckdir) and overwrite:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(ckdir)
  mgr = ckpt_lib.manager(workdir, keep=1, async_save=False)
  ckpt_lib.save(mgr, 0, state, force=True)
  mgr.wait_until_finished()
  mgr.close()
  train_lib.write_config(config, workdir)
  if report is not None:
    with open(os.path.join(workdir, 'conversion.json'), 'w') as f:
      json.dump(report, f, indent=2, sort_keys=True)
  return workdir


def read_workdir_state(workdir: str) -> tuple[dict, int]:
  """The latest checkpoint's whole train state as host arrays, read from
  orbax's array metadata (no model is built, nothing is unpickled)."""
  from tokenizers_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.read_state(workdir)


def write_tensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """`.safetensors` (safetensors.numpy) or a torch state dict (`.pt`/`.pth`/
  `.bin`, torch.save of tensors only)."""
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("writing .safetensors needs the safetensors package "
                        "(pip install -e '.[weights]')") from e
    save_file(tensors, path)
  elif path.endswith('.npz'):
    np.savez(path, **tensors)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path)
