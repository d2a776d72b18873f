"""Frozen (non-trained) weights and reading local weight files.

`Frozen` is the one variable type for weights that are never optimized:
pretrained networks used as losses, evaluators or teachers (LPIPS' VGG16,
the FID InceptionV3, FQGAN/TiTok teachers). It is an `nnx.Variable` but not
an `nnx.Param`, so `nnx.Optimizer(model, tx, wrt=nnx.Param)` and
`nnx.split(model, nnx.Param, ...)` leave it out of the parameters: frozen
weights travel with the non-parameter ('rest') state, and checkpoints keep
them. `frozen_value` reads one gradient-stopped.

`load_state_dict(path)` reads a flat {name: array} state dict from a LOCAL
file (nothing is downloaded), chosen by the extension:
  * `.safetensors`: the `safetensors` package;
  * `.pt`, `.pth`, `.bin`, `.ckpt`: `torch.load(path, map_location='cpu',
    weights_only=True)`; only tensors, containers and primitive values are
    accepted, never arbitrary pickled objects;
  * `.npz`: `np.load(path, allow_pickle=False)`.

Dimension legend: none (weights of any shape).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

from flax import nnx
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any

SAFETENSORS_EXTENSIONS = ('.safetensors',)
TORCH_EXTENSIONS = ('.pt', '.pth', '.bin', '.ckpt')
NUMPY_EXTENSIONS = ('.npz',)


class Frozen(nnx.Variable):
  """A frozen weight: not an `nnx.Param`, so never optimized."""


def frozen(value: Any, *names: str | None,
           dtype: Dtype = jnp.float32) -> Frozen:
  """A `Frozen` variable holding `value` (as `dtype`), its axes named
  `names` (logical axes, see `partitioning.logical`)."""
  return Frozen(jnp.asarray(value, dtype), **logical(*names))


def frozen_value(var: nnx.Variable, dtype: Dtype) -> Array:
  """A frozen weight's value, gradient-stopped, cast to `dtype`."""
  return lax.stop_gradient(var[...]).astype(dtype)


# -----------------------------------------------------------------------------
# Weight files.
# -----------------------------------------------------------------------------


def _read_safetensors(path: str) -> Mapping[str, np.ndarray]:
  try:
    # pylint: disable-next=g-import-not-at-top
    from safetensors.numpy import load_file
  except ImportError as e:
    raise ImportError(
        f'Reading {path!r} needs the `safetensors` package.') from e
  return load_file(path)


def _read_torch(path: str) -> Mapping[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path!r} needs PyTorch; or convert it to .npz or '
        '.safetensors.') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f'{path!r} holds Python objects that would have to be unpickled, '
        'which is refused (torch.load(weights_only=True)); save a plain state '
        'dict of tensors (torch.save(module.state_dict(), path)) or convert '
        f'it to .safetensors / .npz. torch said: {e}') from None
  if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
    obj = obj['state_dict']
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path!r} does not hold a state dict (got {type(obj)}).')
  state = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):  # Other entries (counters, configs) skip.
      v = v.detach().cpu()
      if v.dtype == torch.bfloat16:  # numpy has no bfloat16.
        v = v.to(torch.float32)
      state[k] = v.numpy()
  return state


def _read_npz(path: str) -> Mapping[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except ValueError as e:
    if 'allow_pickle' not in str(e):
      raise
    raise ValueError(
        f'{path!r} holds object arrays, which would have to be unpickled and '
        'are refused (np.load(allow_pickle=False)); save numeric arrays only.'
    ) from None


def load_state_dict(path: str | os.PathLike, what: str = 'weights', *,
                    dtype: Dtype | None = np.float32
                    ) -> dict[str, np.ndarray]:
  """Reads a flat {name: array} state dict from a local weights file.

  The reader is chosen by the extension (see the module docstring). A torch
  file holding `{'state_dict': {...}}` is unwrapped, and its non-tensor
  entries are skipped.

  Args:
    path: the file.
    what: what the weights are, for error messages ('VGG16', ...).
    dtype: every array is cast to it (float32 by default: the weights of
      all current users); None keeps the stored dtypes (bfloat16 torch
      tensors become float32, which numpy can hold).

  Returns:
    {name: numpy array}.

  Raises:
    FileNotFoundError: naming the path, if it does not exist.
    ValueError: for an unknown extension, or a file that would need
      unpickling arbitrary Python objects.
    ImportError: when the reader's package (safetensors, torch) is missing.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what} weights file not found: {path!r}')
  ext = os.path.splitext(path)[1].lower()
  if ext in SAFETENSORS_EXTENSIONS:
    state = _read_safetensors(path)
  elif ext in TORCH_EXTENSIONS:
    state = _read_torch(path)
  elif ext in NUMPY_EXTENSIONS:
    state = _read_npz(path)
  else:
    known = SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS + NUMPY_EXTENSIONS
    raise ValueError(f'{what} weights file {path!r} has an unknown extension '
                     f'{ext!r}; known: {", ".join(known)}.')
  if dtype is None:
    return {k: np.asarray(v) for k, v in state.items()}
  return {k: np.asarray(v, dtype) for k, v in state.items()}
