"""Load a trained tokenizer from a training workdir, for use in any JAX code.

  tok = Tokenizer.from_workdir('/tmp/vqgan')
  ids = tok.encode(images)        # [B, H, W, 3] in [-1, 1] -> int32 [B, h, w(, G)]
  recon = tok.decode(ids)         # -> [B, H, W, 3] in [-1, 1]
  ids = tok.encode(images, num_tokens=4)   # 1D tokenizers: first 4 ids [B, 4]
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


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
    graph, state = nnx.split(model)
    self._encode = jax.jit(
        lambda s, x, k: (nnx.merge(graph, s).encode(x) if k is None else
                         nnx.merge(graph, s).encode(x, num_tokens=k)),
        static_argnums=2)
    self._decode = jax.jit(lambda s, i: nnx.merge(graph, s).decode(i))
    self._state = state

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

  def encode(self, images, num_tokens: int | None = None) -> Array:
    """`num_tokens=k`: the first k token ids of a 1D tokenizer (TiTok,
    One-D-Piece, FlexTok), [B, k]."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'encode expects images [B, H, W, 3] in [-1, 1]; got {images.shape}')
    if num_tokens is not None and not getattr(self.model, 'one_dimensional',
                                              False):
      raise ValueError(f'num_tokens is for 1D tokenizers; '
                       f'{type(self.model).__name__} has a 2D token grid')
    return self._encode(self._state, images,
                        None if num_tokens is None else int(num_tokens))

  def decode(self, indices) -> Array:
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
      raise TypeError(f'decode expects integer token ids; got {indices.dtype}')
    return jnp.clip(self._decode(self._state, indices), -1.0, 1.0)

  @staticmethod
  def to_uint8(images) -> np.ndarray:
    return np.clip((np.asarray(images) + 1) * 127.5, 0, 255).round().astype(np.uint8)
