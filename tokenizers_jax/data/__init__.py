"""Image data: an embedded offline TFDS dataset and grain pipelines.

Usage:

  from tokenizers_jax import data

  # Embedded default: random crops of scikit-image's photos, built once into
  # $TOKENIZERS_JAX_DATA_DIR or ~/.cache/tokenizers_jax/tfds (no network, no
  # TensorFlow), readable with tfds.data_source('skimage_photos/64', ...).
  data_dir = data.build_skimage_photos(image_size=64)

  train = data.make_image_dataset('skimage_photos', image_size=64,
                                  global_batch_size=32, seed=0)
  it = iter(train)                  # checkpointable grain DatasetIterator
  batch = next(it)                  # {'image': float32 [32, 64, 64, 3]}

  for batch in data.make_eval_dataset('skimage_photos', image_size=64,
                                      global_batch_size=32):
    ...                             # + 'mask': bool [32], False on padding

Other sources: 'fake:N' (in memory), 'folder:/path/to/images', or any TFDS
dataset prepared in ArrayRecord format, e.g. make_image_dataset('cifar10',
data_dir=..., image_size=32). On P processes pass process_index/process_count
(default: jax's); each reads its b = B / P rows of every global batch.
"""

from tokenizers_jax.data.images import fit_image
from tokenizers_jax.data.images import make_eval_dataset
from tokenizers_jax.data.images import make_image_dataset
from tokenizers_jax.data.images import normalize
from tokenizers_jax.data.images import num_eval_batches
from tokenizers_jax.data.images import to_rgb_uint8
from tokenizers_jax.data.skimage_photos import build_skimage_photos
from tokenizers_jax.data.skimage_photos import config_name as skimage_photos_config_name  # pylint: disable=line-too-long
from tokenizers_jax.data.skimage_photos import default_data_dir
from tokenizers_jax.data.skimage_photos import SkimagePhotos
from tokenizers_jax.data.sources import FakeSource
from tokenizers_jax.data.sources import FolderSource
from tokenizers_jax.data.sources import get_source
from tokenizers_jax.data.sources import TfdsSource
