"""Load a trained tokenizer from a training workdir, for use in any JAX code.

  tok = Tokenizer.from_workdir('/tmp/vqgan')
  ids = tok.encode(images)        # [B, H, W, 3] in [-1, 1] -> int32 [B, h, w(, G)]
  recon = tok.decode(ids)         # -> [B, H, W, 3] in [-1, 1]
  ids = tok.encode(images, num_tokens=4)   # 1D tokenizers: first 4 ids [B, 4]

The same for the other modalities (the run's `config.task`):

  tok = Tokenizer.from_workdir('/tmp/audio')
  ids = tok.encode(waveforms)     # [B, N] in [-1, 1] -> int32 [B, T(, Q)]
  audio = tok.decode(ids)         # -> [B, T * hop]
  tok = Tokenizer.from_workdir('/tmp/neurorvq')
  ids, stats = tok.encode_with_stats(eeg)  # [B, C, N] -> [B, C, A, 4, Q], [B, 2]
  eeg_hat = tok.decode(ids, stats)         # -> [B, C, A * P]
"""

from __future__ import annotations

import contextlib
import contextvars

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax import workdir as workdir_lib
from tokenizers_jax.models import registry

Array = jax.Array

# Input rank, description and value range per modality (config.task). EEG
# windows are in the data pipeline's units (100 uV, `data/eeg.py`); the
# bound only catches signals in the wrong units (e.g. microvolts).
_INPUTS = {
    'image': (4, 'images [B, H, W, 3] in [-1, 1]', 1.0),
    'audio': (2, 'waveforms [B, N] in [-1, 1]', 1.0),
    'eeg': (3, 'EEG [B, C, N] (channels x samples at the model rate, units '
            'of 100 uV)', 1e3),
}
# Tolerance on the [-1, 1] range (resampling and rounding overshoot).
_RANGE_SLACK = 1e-3

# Set while building a model's structure only (no weights read): a TiTok
# whose proxy teacher is a workdir then needs only the teacher's config.
_STRUCTURE_ONLY = contextvars.ContextVar('structure_only', default=False)


@contextlib.contextmanager
def _structure_only():
  token = _STRUCTURE_ONLY.set(True)
  try:
    yield
  finally:
    _STRUCTURE_ONLY.reset(token)


def _flat(tree) -> dict:
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in p): v
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _check_same_structure(workdir: str, want: dict, got: dict, what: str):
  """A clear error when the checkpoint's tree does not fit the model."""
  w, g = _flat(want), _flat(got)
  problems = [f'{k}: missing from the checkpoint' for k in sorted(set(w) - set(g))]
  problems += [f'{k}: in the checkpoint, not in the model'
               for k in sorted(set(g) - set(w))]
  problems += [f'{k}: shape {tuple(g[k].shape)} in the checkpoint, '
               f'{tuple(w[k].shape)} in the model'
               for k in sorted(set(w) & set(g))
               if tuple(w[k].shape) != tuple(g[k].shape)]
  if problems:
    shown = '\n  '.join(problems[:20])
    more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
    raise ValueError(
        f'{workdir}: the checkpoint\'s {what} do not match the model that '
        f'its config.json builds ({len(problems)} differences):\n  {shown}'
        f'{more}\nThe workdir was written by another version or its '
        'config.json was edited. Train a fresh run, or initialise one from '
        'this checkpoint where the shapes still match with '
        '--config.init_from=WORKDIR.')


def _fill(want, got):
  """`want`'s tree with the checkpoint's arrays (orbax stores integer keys
  as strings), cast to the model's dtypes."""
  if isinstance(want, dict):
    return {k: _fill(v, got[k] if k in got else got[str(k)])
            for k, v in want.items()}
  return np.asarray(got).astype(want.dtype)


class Tokenizer:
  """A trained tokenizer with jit-compiled `encode` and `decode`.

  Attributes:
    model: the NNX model (EMA weights when the run kept an EMA).
    config: the run's config.
    step: the checkpoint step.
    modality: 'image', 'audio' or 'eeg'.
  """

  def __init__(self, model: nnx.Module, config=None, step: int | None = None):
    self.model = model
    self.config = config
    self.step = step
    self.modality = (config.get('task', 'image') if config is not None
                     else getattr(model, 'modality', 'image'))
    if self.modality not in _INPUTS:
      raise ValueError(f'unknown modality {self.modality!r}; '
                       f'known: {sorted(_INPUTS)}')
    graph, state = nnx.split(model)
    self._encode = jax.jit(
        lambda s, x, k: (nnx.merge(graph, s).encode(x) if k is None else
                         nnx.merge(graph, s).encode(x, num_tokens=k)),
        static_argnums=2)
    self._decode = jax.jit(lambda s, i, *a: nnx.merge(graph, s).decode(i, *a))
    self._state = state
    if self.modality == 'eeg':
      self._encode_stats = jax.jit(
          lambda s, x, m: nnx.merge(graph, s).encode_with_stats(x, m))

  @classmethod
  def from_workdir(cls, workdir: str, *, use_ema: bool = True,
                   step: int | None = None) -> 'Tokenizer':
    """The tokenizer of a training workdir: the model that its config.json
    builds, with the generator weights (EMA when kept) of its latest (or
    `step`'s) checkpoint. Only those weights are read: no discriminator,
    optimizer or loss network is built."""
    config = workdir_lib.load_config(workdir)
    if _STRUCTURE_ONLY.get():
      # A proxy teacher inside another model being built for its structure:
      # its weights come with that model's checkpoint.
      return cls(registry.build_model(config), config, step)
    box = {}

    def structure():
      graph, p, r = nnx.split(registry.build_model(config), nnx.Param, ...)
      box['graph'] = graph
      return nnx.to_pure_dict(p), nnx.to_pure_dict(r)

    # Shapes and dtypes only: no initialiser runs, nothing is allocated.
    with _structure_only():
      want_params, want_rest = jax.eval_shape(structure)
    graph = box['graph']
    params, rest, step, _ = workdir_lib.read_generator(workdir, step, use_ema)
    _check_same_structure(workdir, want_params, params, 'parameters')
    _check_same_structure(workdir, want_rest, rest, 'other variables')
    model = nnx.merge(graph, _fill(want_params, params),
                      _fill(want_rest, rest))
    return cls(model, config, step)

  # ---------------------------------------------------------------- checks

  def _check_input(self, x) -> Array:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
      raise TypeError(f'encode expects floating-point input; got {x.dtype}')
    ndim, what, bound = _INPUTS[self.modality]
    ok = x.ndim == ndim and (self.modality != 'image' or x.shape[-1] == 3)
    if not ok:
      raise ValueError(f'encode expects {what}; got shape {x.shape}')
    if not np.all(np.isfinite(x)):
      raise ValueError('encode: the input contains NaN or infinite values')
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if max(-lo, hi) > bound * (1 + _RANGE_SLACK):
      hint = ''
      if self.modality == 'image' and lo >= 0 and hi > 1.5:
        hint = ' (8-bit pixels? use x / 127.5 - 1)'
      elif self.modality == 'image' or self.modality == 'audio':
        hint = ' (scale the input to [-1, 1])'
      else:
        hint = ' (the model expects units of 100 uV: volts x 1e4)'
      raise ValueError(f'encode expects {what}; got values in '
                       f'[{lo:.4g}, {hi:.4g}]{hint}')
    return jnp.asarray(x, jnp.float32)

  def _check_ids(self, indices) -> Array:
    ids = np.asarray(indices)
    if not np.issubdtype(ids.dtype, np.integer):
      raise TypeError(f'decode expects integer token ids; got {ids.dtype}')
    if ids.ndim < 2:
      raise ValueError(f'decode expects token ids [B, ...]; got shape '
                       f'{ids.shape}')
    k = int(self.model.codebook_size)
    if ids.size and (ids.min() < 0 or ids.max() >= k):
      raise ValueError(f'decode: token ids must lie in [0, {k}) (codebook '
                       f'size {k}); found min {int(ids.min())}, max '
                       f'{int(ids.max())}')
    return jnp.asarray(ids, jnp.int32)

  # ---------------------------------------------------------------- API

  def encode(self, x, num_tokens: int | None = None) -> Array:
    """Token ids of x (images, waveforms or EEG, by the run's task).

    `num_tokens=k`: the first k token ids of a 1D tokenizer (TiTok,
    One-D-Piece, FlexTok), [B, k].
    """
    x = self._check_input(x)
    if num_tokens is not None and not getattr(self.model, 'one_dimensional',
                                              False):
      raise ValueError(f'num_tokens is for 1D tokenizers; '
                       f'{type(self.model).__name__} has no 1D token sequence')
    return self._encode(self._state, x,
                        None if num_tokens is None else int(num_tokens))

  def encode_with_stats(self, x, mask=None) -> tuple[Array, Array]:
    """EEG: (ids, stats [B, 2]); the two floats per window that an exact
    reconstruction needs besides the tokens (NeuroRVQ). `mask` bool [B, A]
    marks the valid patches (the stats ignore the others)."""
    if self.modality != 'eeg':
      raise ValueError(f'encode_with_stats is for EEG tokenizers; this one '
                       f'is {self.modality!r}')
    x = self._check_input(x)
    if mask is not None:
      mask = np.asarray(mask)
      if mask.dtype != bool:
        raise TypeError(f'mask must be bool [B, A]; got {mask.dtype}')
      mask = jnp.asarray(mask)
    return self._encode_stats(self._state, x, mask)

  def decode(self, indices, stats=None) -> Array:
    """Token ids -> images / waveforms in [-1, 1], or EEG (with `stats` from
    `encode_with_stats`; without them, the running averages of training)."""
    indices = self._check_ids(indices)
    if stats is not None and self.modality != 'eeg':
      raise ValueError('stats are for EEG tokenizers only')
    if self.modality == 'eeg':
      args = () if stats is None else (jnp.asarray(stats, jnp.float32),)
      return self._decode(self._state, indices, *args)
    return jnp.clip(self._decode(self._state, indices), -1.0, 1.0)

  @staticmethod
  def to_uint8(images) -> np.ndarray:
    return np.clip((np.asarray(images) + 1) * 127.5, 0, 255).round().astype(np.uint8)
