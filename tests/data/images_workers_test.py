"""The image pipeline with grain worker processes: the same batches as
without workers (uint8 crosses the processes, the [-1, 1] float conversion
and the flips run after), and exact resume."""

import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from tokenizers_jax.data import images


def _folder(root: str) -> str:
  rng = np.random.default_rng(0)
  for i in range(12):
    # Larger than S and of varying size: the random crop and flip both run.
    image = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(root, f'{i:02d}.png'))
  return f'folder:{root}'


class WorkersTest(absltest.TestCase):

  def test_same_batches_and_exact_resume(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    source = _folder(root)
    kw = dict(train=True, image_size=32, global_batch_size=4, seed=1,
              val_fraction=0.0, process_index=0, process_count=1)
    ref = [b['image'] for _, b in
           zip(range(6), iter(images.make_image_dataset(source, **kw)))]
    it = iter(images.make_image_dataset(source, num_workers=1, **kw))
    got = [next(it) for _ in range(3)]
    state = it.get_state()
    got += [next(it) for _ in range(3)]
    self.assertEqual(sorted(got[0]), ['image'])
    self.assertEqual(got[0]['image'].dtype, np.float32)
    for a, b in zip(ref, got):
      np.testing.assert_array_equal(a, b['image'])
    resumed = iter(images.make_image_dataset(source, num_workers=1, **kw))
    resumed.set_state(state)
    for a in ref[3:]:
      np.testing.assert_array_equal(a, next(resumed)['image'])


if __name__ == '__main__':
  absltest.main()
