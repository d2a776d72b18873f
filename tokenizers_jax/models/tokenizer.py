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

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Input rank and description per modality (config.task).
_INPUTS = {
    'image': (4, 'images [B, H, W, 3] in [-1, 1]'),
    'audio': (2, 'waveforms [B, N] in [-1, 1]'),
    'eeg': (3, 'EEG [B, C, N] (channels x samples at the model rate)'),
}


class Tokenizer:
  """A trained tokenizer with jit-compiled `encode` and `decode`.

  Attributes:
    model: the NNX model (EMA weights when the run kept an EMA).
    config: the run's config.
    step: the checkpoint step.
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
          lambda s, x: nnx.merge(graph, s).encode_with_stats(x))

  @classmethod
  def from_workdir(cls, workdir: str, *, use_ema: bool = True,
                   step: int | None = None) -> 'Tokenizer':
    """Builds the model from `workdir/config.json` and loads its checkpoint."""
    from tokenizers_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    from tokenizers_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
    from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
    config = train_lib.load_config(workdir)
    mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
      trainer, state, _ = tasks.get_task(config).create(config, mesh)
      state, step = ckpt_lib.restore_state_only(workdir, state, step)
    params = state['ema'] if (use_ema and config.ema_decay > 0) else state['gen']['params']
    model = trainer.merge_gen(jax.device_get(params),
                              jax.device_get(state['gen']['rest']), copy=True)
    return cls(model, config, step)

  def _check_input(self, x) -> Array:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
      raise TypeError(f'encode expects floating-point input; got {x.dtype}')
    ndim, what = _INPUTS[self.modality]
    ok = x.ndim == ndim and (self.modality != 'image' or x.shape[-1] == 3)
    if not ok:
      raise ValueError(f'encode expects {what}; got shape {x.shape}')
    if not np.all(np.isfinite(x)):
      raise ValueError('encode: the input contains NaN or infinite values')
    return jnp.asarray(x, jnp.float32)

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

  def encode_with_stats(self, x) -> tuple[Array, Array]:
    """EEG: (ids, stats [B, 2]); the two floats per window that an exact
    reconstruction needs besides the tokens (NeuroRVQ)."""
    if self.modality != 'eeg':
      raise ValueError(f'encode_with_stats is for EEG tokenizers; this one '
                       f'is {self.modality!r}')
    return self._encode_stats(self._state, self._check_input(x))

  def decode(self, indices, stats=None) -> Array:
    """Token ids -> images / waveforms in [-1, 1], or EEG (with `stats` from
    `encode_with_stats`; without them, the running averages of training)."""
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
      raise TypeError(f'decode expects integer token ids; got {indices.dtype}')
    if stats is not None and self.modality != 'eeg':
      raise ValueError('stats are for EEG tokenizers only')
    if self.modality == 'eeg':
      args = () if stats is None else (jnp.asarray(stats, jnp.float32),)
      return self._decode(self._state, indices, *args)
    return jnp.clip(self._decode(self._state, indices), -1.0, 1.0)

  @staticmethod
  def to_uint8(images) -> np.ndarray:
    return np.clip((np.asarray(images) + 1) * 127.5, 0, 255).round().astype(np.uint8)
