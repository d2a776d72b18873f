"""Image pipelines on grain: resumable training batches and exact evaluation.

  ds = make_image_dataset('skimage_photos', image_size=64,
                          global_batch_size=32)
  it = iter(ds)
  batch = next(it)        # {'image': float32 [b, S, S, 3] in [-1, 1]}
  state = it.get_state()  # e.g. grain.checkpoint.CheckpointSave(it) in orbax
  it.set_state(state)     # a fresh iterator continues with the same batch

  for batch in make_eval_dataset('skimage_photos', image_size=64,
                                 global_batch_size=32):
    ...                   # + 'mask': bool [b], False on padding

Training: source -> shuffle(seed) -> repeat -> per-example decode, resize,
crop, random horizontal flip (seeded by the global example position) ->
batch -> float32 in [-1, 1]. Evaluation: one pass in source order, centre
crop, the split padded up to a whole number of global batches with
`mask=False` examples, so every example is seen exactly once.

Multi-host. The pipeline is defined over the global stream: global batch t is
examples [t*B, (t+1)*B) of it, and process p reads the rows
[p*b, (p+1)*b) of every global batch. So processes read disjoint examples,
their union is exactly what a single process reads with the same B, and the
training data do not depend on the process count. Every process yields the
same number of batches (also in evaluation).

Every step runs in numpy/PIL under grain; no TensorFlow.

Dimension legend:
  B: global batch size; P: process count; b = B / P: per-process batch
  S: image side (`image_size`); H, W, C: stored image size and channels
"""

from __future__ import annotations

import math
import os
from typing import Any

from absl import flags
import grain
import numpy as np
from PIL import Image

from tokenizers_jax.data import sources

CROP_MODES = ('auto', 'random', 'center', 'none')


# --------------------------------------------------------------------------
# Numpy/PIL ops.
# --------------------------------------------------------------------------
def to_rgb_uint8(image: Any, record_id: str = 'image') -> np.ndarray:
  """Returns uint8 [H, W, 3] from grey [H, W], [H, W, 1], RGB or RGBA.

  Args:
    image: uint8 (or bool) array.
    record_id: names the record in errors.

  Raises:
    ValueError: other dtypes or channel counts.
  """
  image = np.asarray(image)
  if image.dtype == np.bool_:
    image = image.astype(np.uint8) * 255
  if image.dtype != np.uint8:
    raise ValueError(f'{record_id}: expected a uint8 image, got {image.dtype}')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'{record_id}: expected an [H, W] or [H, W, 1|3|4] '
                     f'image, got shape {image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic (antialiased) resize of uint8 [H, W, 3] to short side `size`."""
  h, w = image.shape[:2]
  if min(h, w) == size:
    return image
  scale = size / min(h, w)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  return np.asarray(Image.fromarray(image).resize((new_w, new_h),
                                                  Image.BICUBIC))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


def random_crop(image: np.ndarray, size: int,
                rng: np.random.Generator) -> np.ndarray:
  h, w = image.shape[:2]
  top = int(rng.integers(h - size + 1))
  left = int(rng.integers(w - size + 1))
  return image[top:top + size, left:left + size]


def fit_image(image: np.ndarray, size: int, crop: str,
              rng: np.random.Generator | None = None,
              record_id: str = 'image') -> np.ndarray:
  """Brings uint8 [H, W, 3] to [S, S, 3].

  Args:
    image: uint8 [H, W, 3].
    size: S.
    crop: 'random' or 'center' (resize the short side to S, then crop), or
      'none' (the image must already be S x S).
    rng: generator for 'random'.
    record_id: names the record in errors.

  Returns:
    uint8 [S, S, 3]; the input itself when it is already S x S.

  Raises:
    ValueError: size mismatch under crop='none', or an unknown mode.
  """
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  if crop == 'none':
    raise ValueError(
        f'{record_id}: image is {h}x{w} but image_size={size} and '
        "crop='none'; use crop='center' or 'random' to resize and crop.")
  image = resize_short_side(image, size)
  if crop == 'center':
    return center_crop(image, size)
  if crop == 'random':
    return random_crop(image, size, rng)
  raise ValueError(f'crop must be one of {CROP_MODES}, got {crop!r}')


def normalize(images: np.ndarray, flip: np.ndarray | None = None
              ) -> np.ndarray:
  """uint8 [..., H, W, C] -> float32 in [-1, 1].

  With `flip` (bool [b] for images [b, H, W, C]), the flagged images are
  also mirrored left-right. The flip is read through a reversed view inside
  the one conversion pass: a separate copy of each flipped image cost more
  than the conversion itself (numpy copies 3-byte pixels one at a time).
  """
  scale = np.float32(1 / 127.5)
  out = np.empty(np.shape(images), np.float32)
  if flip is None:
    np.multiply(images, scale, out=out, dtype=np.float32)
  else:
    for i, f in enumerate(flip):
      np.multiply(images[i, :, ::-1] if f else images[i], scale, out=out[i],
                  dtype=np.float32)
  out -= np.float32(1)
  return out


# --------------------------------------------------------------------------
# grain transforms (module-level classes so pipelines pickle for workers).
# --------------------------------------------------------------------------
class _TrainTransform(grain.transforms.RandomMap):
  """Record -> {'image': uint8 [S, S, 3], 'flip': bool}: random crop, and
  whether to flip (done by `_Normalize` on the batch, without a copy)."""

  def __init__(self, image_size: int, crop: str, random_flip: bool):
    self._size, self._crop, self._flip = image_size, crop, random_flip

  def random_map(self, element, rng: np.random.Generator):
    record_id = element.get('id', 'image')
    image = to_rgb_uint8(element['image'], record_id)
    image = fit_image(image, self._size, self._crop, rng, record_id)
    # The same draw as before, so the augmentations do not change. The
    # image may be a view of the decoded one: batching copies it.
    flip = bool(self._flip and rng.random() < 0.5)
    return {'image': image, 'flip': np.bool_(flip)}


class _EvalTransform(grain.transforms.Map):
  """Record -> {'image': uint8 [S, S, 3], 'mask': True}."""

  def __init__(self, image_size: int, crop: str):
    self._size, self._crop = image_size, crop

  def map(self, element):
    record_id = element.get('id', 'image')
    image = to_rgb_uint8(element['image'], record_id)
    rng = np.random.default_rng(0)  # Only used by crop='random'.
    image = fit_image(image, self._size, self._crop, rng, record_id)
    return {'image': np.ascontiguousarray(image), 'mask': np.bool_(True)}


class _Padding(grain.transforms.Map):
  """Any -> a blank {'image', 'mask': False} example."""

  def __init__(self, image_size: int):
    self._size = image_size

  def map(self, element):
    del element
    return {'image': np.zeros((self._size, self._size, 3), np.uint8),
            'mask': np.bool_(False)}


class _Normalize(grain.transforms.Map):
  """Batch: 'image' uint8 -> float32 in [-1, 1], flipped where 'flip' says
  (that field is dropped); other fields unchanged."""

  def map(self, element):
    element = dict(element)
    flip = element.pop('flip', None)
    return dict(element, image=normalize(element['image'], flip))


# --------------------------------------------------------------------------
# Pipelines.
# --------------------------------------------------------------------------
def _process_layout(global_batch_size: int, process_index: int | None,
                    process_count: int | None) -> tuple[int, int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Need 0 <= process_index < process_count, got '
                     f'{process_index} and {process_count}.')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a '
                     f'positive multiple of process_count={process_count}.')
  return process_index, process_count, global_batch_size // process_count


def _host_batches(ds: grain.MapDataset, per_process: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
  """Global stream -> this process's rows of each global batch (uint8)."""
  ds = ds.batch(per_process, drop_remainder=True)
  if process_count > 1:
    ds = ds.slice(slice(process_index, None, process_count))
  return ds


def make_image_dataset(
    source: str | Any = 'skimage_photos',
    *,
    train: bool = True,
    split: str | None = None,
    image_size: int = 64,
    global_batch_size: int = 32,
    seed: int = 0,
    num_epochs: int | None = None,
    crop: str = 'auto',
    random_flip: bool = True,
    data_dir: str | os.PathLike | None = None,
    image_key: str = 'image',
    val_fraction: float = 0.1,
    skimage_kwargs: dict[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 4,
    prefetch_buffer_size: int = 4,
    num_workers: int = 0,
) -> grain.IterDataset:
  """Returns a grain dataset of image batches for training or evaluation.

  Args:
    source: a name understood by `sources.get_source` ('skimage_photos',
      'fake:N', 'folder:/path', a TFDS name), or a random-access source whose
      records are dicts with 'image' (and optionally 'id').
    train: training (shuffle, repeat, random crop and flip, drop the last
      partial batch) or evaluation (one ordered pass, centre crop, padding
      with `mask`).
    split: default 'train' when training, else 'validation'.
    image_size: S.
    global_batch_size: B, summed over processes.
    seed: shuffle and augmentation seed (training).
    num_epochs: training passes; None repeats forever. Only whole global
      batches are kept.
    crop: 'auto' ('random' when training, else 'center'), 'random', 'center'
      or 'none' (images must already be S x S).
    random_flip: random horizontal flips when training.
    data_dir: TFDS data dir (see `sources.get_source`).
    image_key: image feature of a TFDS dataset.
    val_fraction: share of a folder's files in 'validation'.
    skimage_kwargs: `build_skimage_photos` arguments (train_crops, ...).
    process_index: this process; default `jax.process_index()`.
    process_count: P; default `jax.process_count()`.
    num_threads: grain read threads per process.
    prefetch_buffer_size: batches prefetched per process.
    num_workers: >0 adds grain multiprocessing prefetch with that many
      workers.

  Returns:
    A `grain.IterDataset`; `iter()` gives a checkpointable `DatasetIterator`
    of {'image': float32 [b, S, S, 3]} (training) or
    {'image': float32 [b, S, S, 3], 'mask': bool [b]} (evaluation).
  """
  if crop not in CROP_MODES:
    raise ValueError(f'crop must be one of {CROP_MODES}, got {crop!r}')
  if crop == 'auto':
    crop = 'random' if train else 'center'
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f'num_epochs must be None or >= 1, got {num_epochs}')
  process_index, process_count, per_process = _process_layout(
      global_batch_size, process_index, process_count)
  if split is None:
    split = 'train' if train else 'validation'
  if isinstance(source, str):
    src = sources.get_source(
        source, split, image_size=image_size, data_dir=data_dir,
        image_key=image_key, val_fraction=val_fraction, seed=seed,
        skimage_kwargs=skimage_kwargs)
  else:
    src = source
  n = len(src)
  if n == 0:
    raise ValueError(f'Image source {source!r} split {split!r} is empty.')
  ds = grain.MapDataset.source(src)

  if train:
    shuffle_seed, aug_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    ds = ds.shuffle(seed=shuffle_seed).repeat(num_epochs)
    if num_epochs is not None:
      num_batches = len(ds) // global_batch_size
      if num_batches == 0:
        raise ValueError(
            f'{num_epochs} epoch(s) of {n} examples give no full global '
            f'batch of {global_batch_size}.')
      ds = ds.slice(slice(0, num_batches * global_batch_size))
    ds = ds.random_map(_TrainTransform(image_size, crop, random_flip),
                       seed=aug_seed)
  else:
    ds = ds.map(_EvalTransform(image_size, crop))
    padding = -n % global_batch_size
    if padding:
      pad = grain.MapDataset.range(padding).map(_Padding(image_size))
      ds = grain.MapDataset.concatenate([ds, pad])

  ds = _host_batches(ds, per_process, process_index, process_count)
  if num_workers == 0:
    ds = ds.map(_Normalize())
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  if num_workers > 0:
    # grain's workers read absl flags; outside absl.app nobody parsed them.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    # Batches cross from the workers as uint8 (4x fewer bytes through shared
    # memory than float32: 2 workers gave 1.2-1.3x the images/s at 0.8x the
    # CPU per image, experiments/bench_input.py) and are converted here, in
    # a background thread (numpy releases the GIL), off the training loop's.
    ds = grain.experimental.ThreadPrefetchIterDataset(
        ds.map(_Normalize()), prefetch_buffer_size=prefetch_buffer_size)
  return ds


def make_eval_dataset(source: str | Any = 'skimage_photos',
                      **kwargs) -> grain.IterDataset:
  """`make_image_dataset(source, train=False, **kwargs)`.

  One pass over the split (default 'validation') in source order; the last
  global batch is padded with blank examples whose `mask` is False. Every
  process yields ceil(N / B) batches.
  """
  return make_image_dataset(source, train=False, **kwargs)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches per process in one evaluation pass: ceil(N / B)."""
  return math.ceil(num_examples / global_batch_size)
