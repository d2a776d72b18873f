"""Random-access image sources, selected by name, for the grain pipeline.

Every source is a grain `RandomAccessDataSource` (`__len__`, `__getitem__`)
whose records are `{'image': uint8 [H, W] or [H, W, C], 'id': str}`; `id`
names the record in error messages. Names understood by `get_source`:

  'skimage_photos'   the embedded dataset (`skimage_photos.py`), built on
                     first use in `data_dir` at the requested image size.
  'fake' / 'fake:N'  N (default 256) deterministic random images in memory,
                     for unit tests.
  'folder:/path'     PNG/JPEG files under /path (recursive), split into
                     train/validation by a hash of the relative file name.
  any other name     a TFDS dataset already prepared in ArrayRecord format in
                     `data_dir` (e.g. 'cifar10', 'imagenet2012'), read with
                     `tfds.data_source`; nothing is ever downloaded.

Dimension legend:
  H, W: stored image height and width; C: stored channels (1, 3 or 4)
  S: requested image side (`image_size`)
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tokenizers_jax.data import skimage_photos

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
FOLDER_SPLITS = ('train', 'validation')
Record = dict[str, Any]


class FakeSource:
  """N deterministic random uint8 images of one shape, made on access.

  Each image is a smooth random colour gradient plus noise, seeded by
  (seed, split, index), so records are unique and reproducible.
  """

  def __init__(self, num_images: int, shape: tuple[int, int, int],
               *, split: str = 'train', seed: int = 0):
    if num_images < 1:
      raise ValueError(f'fake source needs >= 1 image, got {num_images}')
    self._n = num_images
    self._shape = tuple(shape)
    self._split = split
    self._seed = seed

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f'fake source index {index} out of range {self._n}')
    split_id = int.from_bytes(hashlib.md5(self._split.encode()).digest()[:4],
                              'little')
    rng = np.random.default_rng([self._seed, split_id, index])
    h, w, c = self._shape
    ramp = (np.linspace(0, 1, h)[:, None, None] * rng.uniform(-1, 1, c)
            + np.linspace(0, 1, w)[None, :, None] * rng.uniform(-1, 1, c))
    image = 127.5 + 80 * ramp + rng.normal(0, 20, (h, w, c))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return {'image': image, 'id': f'fake[{self._split}][{index}]'}

  def __repr__(self) -> str:
    return f'FakeSource(n={self._n}, shape={self._shape}, split={self._split})'


def folder_split(relative_name: str, val_fraction: float) -> str:
  """'validation' for a deterministic `val_fraction` of names, else 'train'."""
  digest = hashlib.sha256(relative_name.encode('utf-8')).digest()
  u = int.from_bytes(digest[:8], 'big') / 2**64
  return 'validation' if u < val_fraction else 'train'


class FolderFiles:
  """Files of one kind under a folder, one split chosen by file-name hash.

  The shared part of the folder sources: lists the files with the given
  extensions (recursively, sorted relative POSIX names), keeps those that
  `folder_split` puts in `split`, and names the problem when the folder is
  missing, holds no such files, or the split is empty. Subclasses read one
  file in `__getitem__` (`self.path(index)`).
  """

  kind = 'file'
  extensions: tuple[str, ...] = ()

  def __init__(self, root: str | os.PathLike, split: str = 'train', *,
               val_fraction: float = 0.1):
    root = pathlib.Path(root).expanduser()
    kind = self.kind
    if split not in FOLDER_SPLITS:
      raise ValueError(f'folder source split must be one of {FOLDER_SPLITS}, '
                       f'got {split!r}')
    if not 0.0 <= val_fraction <= 1.0:
      raise ValueError(f'val_fraction must be in [0, 1], got {val_fraction}')
    if not root.is_dir():
      raise FileNotFoundError(f'{kind.capitalize()} folder {str(root)!r} does '
                              'not exist or is not a directory.')
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob('*')
                   if p.suffix.lower() in self.extensions and p.is_file())
    if not files:
      raise ValueError(f'{kind.capitalize()} folder {str(root)!r} holds no '
                       f'{kind} files (looked for '
                       f'{", ".join(self.extensions)}).')
    self._root = root
    self._split = split
    self._files = [f for f in files if folder_split(f, val_fraction) == split]
    if not self._files:
      raise ValueError(
          f'Split {split!r} of {kind} folder {str(root)!r} is empty: none of '
          f'its {len(files)} files hash into it (val_fraction={val_fraction}).')

  @property
  def files(self) -> list[str]:
    """File names relative to the root, in index order."""
    return list(self._files)

  def __len__(self) -> int:
    return len(self._files)

  def path(self, index: int) -> pathlib.Path:
    return self._root / self._files[int(index)]

  def __repr__(self) -> str:
    return (f'{type(self).__name__}({str(self._root)!r}, '
            f'split={self._split!r}, n={len(self._files)})')


class FolderSource(FolderFiles):
  """Image files under a folder, one split chosen by file-name hash."""

  kind = 'image'
  extensions = IMAGE_EXTENSIONS

  def __getitem__(self, index: int) -> Record:
    path = self.path(index)
    try:
      with Image.open(path) as img:
        # convert() copies even an RGB image: only convert other modes.
        image = np.asarray(img if img.mode == 'RGB' else img.convert('RGB'))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'Failed to decode image file {str(path)!r}: '
                       f'{type(e).__name__}: {e}') from e
    return {'image': image, 'id': str(path)}


class TfdsSource:
  """A prepared TFDS dataset read through `tfds.data_source` (no TF)."""

  def __init__(self, name: str, split: str, *,
               data_dir: str | os.PathLike | None = None,
               image_key: str = 'image'):
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
      raise ValueError(
          f'Unknown image source {name!r}: it is not "skimage_photos", '
          '"fake[:N]" or "folder:/path", and no TFDS dataset of that name '
          f'exists (data_dir={data_dir}).') from None
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS dataset {name!r} is not prepared in {builder.data_dir}; '
          'prepare it in ArrayRecord format first (for example `tfds build '
          f'{name} --file_format=array_record --data_dir=...`); this pipeline '
          'never downloads.')
    try:
      self._ds = builder.as_data_source(split=split)
    except NotImplementedError as e:
      raise ValueError(
          f'TFDS dataset {name!r} in {builder.data_dir} is stored as '
          f'{builder.info.file_format}; random access needs ArrayRecord. '
          're-prepare it with file_format="array_record".') from e
    except (KeyError, ValueError) as e:
      raise ValueError(f'TFDS dataset {name!r} has no split {split!r} (has '
                       f'{list(builder.info.splits)}): {e}') from e
    features = builder.info.features
    if image_key not in features:
      raise ValueError(f'TFDS dataset {name!r} has no feature {image_key!r}; '
                       f'its features are {list(features)}; set image_key.')
    self._name = name
    self._split = split
    self._image_key = image_key

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    record_id = f'{self._name}[{self._split}][{index}]'
    try:
      image = self._ds[index][self._image_key]
    except IndexError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'Failed to read/decode record {record_id}: '
                       f'{type(e).__name__}: {e}') from e
    return {'image': np.asarray(image), 'id': record_id}

  def __repr__(self) -> str:
    return f'TfdsSource({self._name!r}, split={self._split!r}, n={len(self)})'


def get_source(
    name: str,
    split: str = 'train',
    *,
    image_size: int = 64,
    data_dir: str | os.PathLike | None = None,
    image_key: str = 'image',
    val_fraction: float = 0.1,
    seed: int = 0,
    skimage_kwargs: dict[str, Any] | None = None,
):
  """Returns the random-access source for `name` and `split`.

  Args:
    name: 'skimage_photos', 'fake', 'fake:N', 'folder:/path' or a TFDS name
      (optionally 'name/config' or 'name:version').
    split: split name; 'train' or 'validation' for skimage_photos and folders,
      any TFDS split (slicing such as 'train[:90%]' included) for TFDS.
    image_size: S; the skimage_photos build and fake images use it.
    data_dir: TFDS data dir; for skimage_photos, None means
      `$TOKENIZERS_JAX_DATA_DIR` or `~/.cache/tokenizers_jax/tfds`, for other
      TFDS datasets TFDS's own default.
    image_key: feature holding the image in a TFDS dataset.
    val_fraction: share of a folder's files put in 'validation'.
    seed: seed of the fake images.
    skimage_kwargs: extra `build_skimage_photos` arguments (train_crops,
      val_crops, seed).

  Returns:
    A source whose records are {'image': uint8 array, 'id': str}.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'image source name must be a non-empty string: {name!r}')
  if name.startswith('folder:'):
    return FolderSource(name[len('folder:'):], split,
                        val_fraction=val_fraction)
  if name == 'fake' or name.startswith('fake:'):
    count = name[len('fake:'):] if ':' in name else '256'
    if not count.isdigit():
      raise ValueError(f'fake source must be "fake" or "fake:N", got {name!r}')
    return FakeSource(int(count), (image_size, image_size, 3), split=split,
                      seed=seed)
  if name == skimage_photos.DATASET_NAME:
    kwargs = dict(skimage_kwargs or {})
    data_dir = skimage_photos.build_skimage_photos(data_dir, image_size,
                                                   **kwargs)
    config = skimage_photos.make_config(image_size, **kwargs)
    if split not in FOLDER_SPLITS:
      raise ValueError(f'skimage_photos splits are {FOLDER_SPLITS}, got '
                       f'{split!r}')
    return TfdsSource(f'{name}/{config.name}', split, data_dir=data_dir)
  return TfdsSource(name, split, data_dir=data_dir, image_key=image_key)
