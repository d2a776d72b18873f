"""`skimage_photos`: an offline TFDS image dataset cut from scikit-image photos.

scikit-image ships a handful of natural photographs inside its wheel. This
module turns them into a real TFDS dataset in ArrayRecord format, built on
first use with no network and no TensorFlow, so every test, notebook and smoke
run has a small natural-image dataset without a download:

  data_dir = build_skimage_photos(image_size=64)
  ds = tfds.data_source('skimage_photos/64', data_dir=data_dir)
  ds['train'][0]   # {'image': uint8 [64, 64, 3], 'source': b'astronaut'}

Content. Each photo (greyscale ones repeated to RGB) is resized so its short
side is one of `NUM_SCALES` sizes evenly spaced in [S, 2S], then cropped to
S x S at a random place; the scale and the place come from a generator seeded
with (config seed, crc32(photo name)), so a build is deterministic. Splits are
by source photo: the photos in `VALIDATION_PHOTOS` only appear in
`validation`, all others only in `train`.

No TensorFlow. `tfds.features.Image.encode_example` only calls TF to encode
numpy arrays; given PNG bytes it stores them as they are. So the builder
encodes each crop with PIL and hands TFDS the bytes; the ArrayRecord writer,
shuffler and `dataset_info.json` writer are TF-free in tfds 4.9.10, and
reading (`tfds.data_source`) decodes PNG with PIL. Two more tfds 4.9.10
details: `_info` builds `DatasetInfo` directly (`dataset_info_from_configs`
wants metadata files beside the module), and `code_path` is overridden
because TFDS's own lookup imports the optional `importlib_resources`.

Atomic, concurrent-safe builds. A build runs in a private temporary data dir
under `data_dir/.tmp_tokenizers_jax/` and its finished version folder is
renamed into place in one `os.rename`; a second builder that loses the race
discards its copy. An advisory `fcntl` lock makes concurrent callers on one
machine wait for the first build instead of repeating it.

Dimension legend:
  S: crop side (`image_size`), one of `IMAGE_SIZES` for named configs
  H, W: photo height and width
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Iterator
import zlib

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

DATASET_NAME = 'skimage_photos'
VERSION = '1.1.0'  # 1.1.0: 512 train crops per photo (was 64)
IMAGE_SIZES = (32, 64, 128, 256)
NUM_SCALES = 4
DEFAULT_TRAIN_CROPS = 512
DEFAULT_VAL_CROPS = 32
DATA_DIR_ENV = 'TOKENIZERS_JAX_DATA_DIR'
DEFAULT_DATA_DIR = '~/.cache/tokenizers_jax/tfds'
_DESCRIPTION = (
    'Random multi-scale square crops of the natural photographs shipped with'
    ' scikit-image; train/validation split by source photo.')


def _stereo(i: int) -> Callable[[], np.ndarray]:
  def load():
    from skimage import data  # pylint: disable=g-import-not-at-top
    return data.stereo_motorcycle()[i]
  return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
  def load():
    from skimage import data  # pylint: disable=g-import-not-at-top
    return getattr(data, name)()
  return load


# Every natural photograph (RGB or greyscale) that scikit-image 0.2x ships in
# its wheel; `cat` is the same array as `chelsea` and is left out. Synthetic
# images (logo, colorwheel, checkerboard, phantom, blobs, horse) are excluded,
# as are those that need `pooch` and a download (brain, eagle, lily, ...).
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    # RGB.
    'astronaut': _skimage('astronaut'),
    'chelsea': _skimage('chelsea'),
    'coffee': _skimage('coffee'),
    'hubble_deep_field': _skimage('hubble_deep_field'),
    'immunohistochemistry': _skimage('immunohistochemistry'),
    'motorcycle_left': _stereo(0),
    'motorcycle_right': _stereo(1),
    'retina': _skimage('retina'),
    'rocket': _skimage('rocket'),
    # Greyscale.
    'brick': _skimage('brick'),
    'camera': _skimage('camera'),
    'cell': _skimage('cell'),
    'clock': _skimage('clock'),
    'coins': _skimage('coins'),
    'grass': _skimage('grass'),
    'gravel': _skimage('gravel'),
    'microaneurysms': _skimage('microaneurysms'),
    'moon': _skimage('moon'),
    'page': _skimage('page'),
    'text': _skimage('text'),
}

# Held-out photos: two RGB, three greyscale. The two stereo motorcycle views
# show one scene, so both stay in train.
VALIDATION_PHOTOS = ('coffee', 'rocket', 'camera', 'coins', 'gravel')
TRAIN_PHOTOS = tuple(n for n in PHOTOS if n not in VALIDATION_PHOTOS)


def load_photo(name: str) -> np.ndarray:
  """Loads one photo from scikit-image as uint8 [H, W, 3].

  Args:
    name: a key of `PHOTOS`.

  Returns:
    The photo, greyscale repeated to three channels.

  Raises:
    ImportError: scikit-image is missing.
    ValueError: unknown name, or the photo is not a uint8 grey/RGB image.
  """
  if name not in PHOTOS:
    raise ValueError(f'Unknown skimage photo {name!r}; known: {list(PHOTOS)}')
  try:
    photo = np.asarray(PHOTOS[name]())
  except ImportError as e:
    raise ImportError(
        f'{DATASET_NAME} needs scikit-image (pip install scikit-image) to load '
        f'the photo {name!r}: {e}') from e
  if photo.dtype != np.uint8:
    raise ValueError(f'skimage photo {name!r} has dtype {photo.dtype}')
  if photo.ndim == 2:
    photo = np.repeat(photo[..., None], 3, axis=-1)
  if photo.ndim != 3 or photo.shape[-1] != 3:
    raise ValueError(f'skimage photo {name!r} has shape {photo.shape}')
  return photo


def _resize_short_side(photo: np.ndarray, short: int) -> np.ndarray:
  h, w = photo.shape[:2]
  scale = short / min(h, w)
  size = (max(short, round(w * scale)), max(short, round(h * scale)))
  return np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC))


def photo_crops(photo: np.ndarray, name: str, *, image_size: int,
                num_crops: int, seed: int) -> Iterator[np.ndarray]:
  """Yields `num_crops` deterministic random S x S crops of one photo.

  Args:
    photo: uint8 [H, W, 3].
    name: photo name, hashed into the seed so photos get different crops.
    image_size: S.
    num_crops: how many crops to cut.
    seed: build seed.

  Yields:
    uint8 [S, S, 3] crops, each at a random scale (short side in [S, 2S]).
  """
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  shorts = np.linspace(image_size, 2 * image_size, NUM_SCALES).round()
  resized = {}
  for _ in range(num_crops):
    level = int(rng.integers(NUM_SCALES))
    if level not in resized:
      resized[level] = _resize_short_side(photo, int(shorts[level]))
    img = resized[level]
    top = int(rng.integers(img.shape[0] - image_size + 1))
    left = int(rng.integers(img.shape[1] - image_size + 1))
    yield img[top:top + image_size, left:left + image_size]


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


@dataclasses.dataclass(eq=False, kw_only=True)
class SkimagePhotosConfig(tfds.core.BuilderConfig):
  """Crop size and counts of one `skimage_photos` build.

  Attributes:
    image_size: S, the crop side.
    train_crops: crops per train photo.
    val_crops: crops per validation photo.
    seed: crop seed.
  """
  image_size: int = 64
  train_crops: int = DEFAULT_TRAIN_CROPS
  val_crops: int = DEFAULT_VAL_CROPS
  seed: int = 0


def config_name(image_size: int, train_crops: int = DEFAULT_TRAIN_CROPS,
                val_crops: int = DEFAULT_VAL_CROPS, seed: int = 0) -> str:
  """Config name: `'64'` for defaults, else `'64_t8_v4_s0'`."""
  if (train_crops, val_crops, seed) == (
      DEFAULT_TRAIN_CROPS, DEFAULT_VAL_CROPS, 0):
    return str(image_size)
  return f'{image_size}_t{train_crops}_v{val_crops}_s{seed}'


def make_config(image_size: int = 64, train_crops: int = DEFAULT_TRAIN_CROPS,
                val_crops: int = DEFAULT_VAL_CROPS,
                seed: int = 0) -> SkimagePhotosConfig:
  """Returns the (named or custom) config for these build settings."""
  if image_size < 8:
    raise ValueError(f'image_size must be >= 8, got {image_size}')
  if train_crops < 1 or val_crops < 1:
    raise ValueError(f'crop counts must be >= 1, got train_crops={train_crops}'
                     f', val_crops={val_crops}')
  name = config_name(image_size, train_crops, val_crops, seed)
  for config in SkimagePhotos.BUILDER_CONFIGS:
    if config.name == name:
      return config
  return SkimagePhotosConfig(
      name=name, image_size=image_size, train_crops=train_crops,
      val_crops=val_crops, seed=seed,
      description=f'{image_size}px crops, {train_crops}/{val_crops} per '
                  f'train/validation photo, seed {seed}.')


class SkimagePhotos(tfds.core.GeneratorBasedBuilder):
  """Random multi-scale crops of the photographs shipped with scikit-image."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'Initial release.'}
  BUILDER_CONFIGS = [
      SkimagePhotosConfig(
          name=str(s), image_size=s,
          description=f'{s}px crops, {DEFAULT_TRAIN_CROPS}/{DEFAULT_VAL_CROPS}'
                      ' per train/validation photo.')
      for s in IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '64'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup asks `importlib_resources` (an optional package, not
    # installed here) about any builder defined in a package; skip it.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` would look for metadata files next to this
    # module; build the DatasetInfo directly instead.
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), dtype=np.uint8,
                                         encoding_format='png'),
            'source': tfds.features.Text(),
        }),
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {
        'train': self._generate_examples(TRAIN_PHOTOS, cfg.train_crops),
        'validation': self._generate_examples(VALIDATION_PHOTOS,
                                              cfg.val_crops),
    }

  def _generate_examples(self, photos, num_crops):
    cfg = self.builder_config
    for name in photos:
      crops = photo_crops(load_photo(name), name, image_size=cfg.image_size,
                          num_crops=num_crops, seed=cfg.seed)
      for k, crop in enumerate(crops):
        # PNG bytes, not an array: TFDS would need TF to encode an array.
        yield f'{name}_{k:05d}', {'image': _png(crop), 'source': name}


def default_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """`data_dir`, else `$TOKENIZERS_JAX_DATA_DIR`, else the user cache."""
  if data_dir is None:
    data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def dataset_dir(data_dir: str, config: SkimagePhotosConfig) -> pathlib.Path:
  """The TFDS version folder `data_dir/skimage_photos/<config>/1.0.0`."""
  return pathlib.Path(data_dir) / DATASET_NAME / config.name / VERSION


def is_built(data_dir: str, config: SkimagePhotosConfig) -> bool:
  return (dataset_dir(data_dir, config) / 'dataset_info.json').exists()


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # Not POSIX: rely on the atomic rename alone.
    yield
    return
  with open(path, 'a+') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build_once(data_dir: str, lock_name: str, final: pathlib.Path,
               make_builder, built_dir, is_built=None) -> None:
  """Builds a TFDS dataset into `final` once, atomically and race-free.

  Under a file lock, `make_builder(tmp)` gives a TFDS builder writing into a
  fresh temporary directory under `data_dir`; its output `built_dir(tmp)` is
  then renamed to `final` (the dataset version directory; it is built when it
  holds `dataset_info.json`). Processes that wait for the lock find the
  dataset built; an interrupted build leaves only the temporary directory.
  `is_built()` defaults to checking `final`.
  """
  if is_built is None:
    is_built = lambda: (final / 'dataset_info.json').exists()

  if is_built():
    return
  tmp_parent = pathlib.Path(data_dir) / '.tmp_tokenizers_jax'
  tmp_parent.mkdir(parents=True, exist_ok=True)
  with _file_lock(tmp_parent / f'{lock_name}.lock'):
    if is_built():  # Built while we waited for the lock.
      return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix='build_', dir=tmp_parent))
    try:
      builder = make_builder(tmp)
      builder.download_and_prepare(
          download_dir=str(tmp / 'downloads'),
          download_config=tfds.download.DownloadConfig(
              try_download_gcs=False))
      final.parent.mkdir(parents=True, exist_ok=True)
      try:
        os.rename(built_dir(tmp), final)
      except OSError:
        if not is_built():  # Lost no race: a real error.
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


def build_skimage_photos(
    data_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    *,
    train_crops: int = DEFAULT_TRAIN_CROPS,
    val_crops: int = DEFAULT_VAL_CROPS,
    seed: int = 0,
) -> str:
  """Builds `skimage_photos/<config>` once in `data_dir` and returns data_dir.

  A no-op when the dataset is already there. Needs scikit-image, no network
  and no TensorFlow.

  Args:
    data_dir: TFDS data dir; default `$TOKENIZERS_JAX_DATA_DIR`, else
      `~/.cache/tokenizers_jax/tfds`.
    image_size: S, the crop side.
    train_crops: crops per train photo.
    val_crops: crops per validation photo.
    seed: crop seed.

  Returns:
    The absolute data dir, ready for
    `tfds.data_source(f'skimage_photos/{config_name(...)}', data_dir=...)`.
  """
  data_dir = default_data_dir(data_dir)
  config = make_config(image_size, train_crops, val_crops, seed)
  build_once(
      data_dir, f'{DATASET_NAME}_{config.name}', dataset_dir(data_dir, config),
      lambda tmp: SkimagePhotos(config=config, data_dir=str(tmp),
                                file_format='array_record'),
      lambda tmp: dataset_dir(str(tmp), config),
      lambda: is_built(data_dir, config))
  return data_dir
