"""Tests for tokenizers_jax.data: the skimage_photos build, sources, pipelines.

The embedded TFDS dataset is built once per module (32 px, 3 train and 2
validation crops per photo); everything else uses the in-memory fake source
or tiny folders written by the tests.

Dimension legend:
  B: global batch size; P: process count; b = B / P; S: image side
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tokenizers_jax import data
from tokenizers_jax.data import images
from tokenizers_jax.data import skimage_photos
from tokenizers_jax.data import sources

_SIZE = 32
_KW = dict(train_crops=3, val_crops=2)
_DATA_DIR = None  # Set in setUpModule.


def setUpModule():
  global _DATA_DIR
  _DATA_DIR = _tempdir('skimage_photos_test_')
  skimage_photos.build_skimage_photos(_DATA_DIR, _SIZE, **_KW)


_TEMPDIRS = []


def _tempdir(prefix='images_test_'):
  path = tempfile.mkdtemp(prefix=prefix)
  _TEMPDIRS.append(path)
  return path


def tearDownModule():
  for path in _TEMPDIRS:
    shutil.rmtree(path, ignore_errors=True)


def _name():
  return f'skimage_photos/{skimage_photos.config_name(_SIZE, **_KW)}'


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _fake_kw(**kw):
  return dict(dict(image_size=_SIZE, global_batch_size=8, process_index=0,
                   process_count=1, num_threads=2), **kw)


class SkimagePhotosBuildTest(parameterized.TestCase):

  def test_read_back_through_tfds_data_source(self):
    ds = tfds.data_source(_name(), data_dir=_DATA_DIR, download=False)
    self.assertEqual(set(ds), {'train', 'validation'})
    seen = {}
    for split, photos, crops in (
        ('train', skimage_photos.TRAIN_PHOTOS, _KW['train_crops']),
        ('validation', skimage_photos.VALIDATION_PHOTOS, _KW['val_crops'])):
      self.assertLen(ds[split], len(photos) * crops)
      names = []
      for i in range(len(ds[split])):
        ex = ds[split][i]
        self.assertEqual(ex['image'].shape, (_SIZE, _SIZE, 3))
        self.assertEqual(ex['image'].dtype, np.uint8)
        names.append(ex['source'])
      names = [n.decode() if isinstance(n, bytes) else n for n in names]
      self.assertEqual(set(names), set(photos))
      seen[split] = set(names)
    self.assertEmpty(seen['train'] & seen['validation'])
    self.assertLen(seen['train'] | seen['validation'],
                   len(skimage_photos.PHOTOS))

  def test_files_alone_read_without_tensorflow(self):
    # A fresh interpreter that never imports tokenizers_jax (the builder class
    # is not registered) reads the files, and TensorFlow stays unimported.
    code = (
        'import sys, tensorflow_datasets as tfds\n'
        f'ds = tfds.data_source({_name()!r}, split="validation", '
        f'data_dir={_DATA_DIR!r}, download=False)\n'
        'x = ds[0]["image"]\n'
        'assert x.shape == (32, 32, 3), x.shape\n'
        'assert "tensorflow" not in sys.modules\n'
        'print("OK", len(ds))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=120, check=False)
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    self.assertIn('OK 10', out.stdout)

  def test_build_is_deterministic_and_reused(self):
    other = _tempdir()
    skimage_photos.build_skimage_photos(other, _SIZE, **_KW)
    config = skimage_photos.make_config(_SIZE, **_KW)
    a = skimage_photos.dataset_dir(_DATA_DIR, config)
    b = skimage_photos.dataset_dir(other, config)
    files = sorted(a.glob('*.array_record-*'))
    self.assertLen(files, 2)
    for f in files:
      self.assertEqual(f.read_bytes(), (b / f.name).read_bytes(), f.name)
    # A second call reuses the build: nothing is rewritten.
    mtime = (a / 'dataset_info.json').stat().st_mtime_ns
    skimage_photos.build_skimage_photos(_DATA_DIR, _SIZE, **_KW)
    self.assertEqual((a / 'dataset_info.json').stat().st_mtime_ns, mtime)

  def test_concurrent_builders(self):
    # Two builders at once: the file lock serialises them, one builds.
    root = _tempdir()
    kw = dict(train_crops=1, val_crops=1)
    errors = []

    def build():
      try:
        skimage_photos.build_skimage_photos(root, 16, **kw)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    self.assertEmpty(errors)
    config = skimage_photos.make_config(16, **kw)
    self.assertTrue(skimage_photos.is_built(root, config))
    tmp = pathlib.Path(root) / '.tmp_tokenizers_jax'
    self.assertEmpty([p for p in tmp.iterdir() if p.is_dir()])

  def test_builder_losing_the_rename_race_keeps_the_winner(self):
    # Pretend the dataset is missing until after our private build: the final
    # rename then finds the winner's folder, which must survive untouched.
    config = skimage_photos.make_config(_SIZE, **_KW)
    final = skimage_photos.dataset_dir(_DATA_DIR, config)
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    real = skimage_photos.is_built
    calls = []

    def fake_is_built(data_dir, cfg):
      calls.append(1)
      return len(calls) > 2 and real(data_dir, cfg)

    with mock.patch.object(skimage_photos, 'is_built', fake_is_built):
      skimage_photos.build_skimage_photos(_DATA_DIR, _SIZE, **_KW)
    self.assertLen(calls, 3)
    self.assertEqual({p.name: p.read_bytes() for p in final.iterdir()}, before)
    tmp = pathlib.Path(_DATA_DIR) / '.tmp_tokenizers_jax'
    self.assertEmpty([p for p in tmp.iterdir() if p.is_dir()])

  def test_env_var_sets_default_data_dir(self):
    with mock.patch.dict(os.environ, {skimage_photos.DATA_DIR_ENV: '/x/y'}):
      self.assertEqual(skimage_photos.default_data_dir(), '/x/y')
      self.assertEqual(skimage_photos.default_data_dir('/a'), '/a')
    with mock.patch.dict(os.environ, {skimage_photos.DATA_DIR_ENV: ''}):
      self.assertEqual(skimage_photos.default_data_dir(),
                       os.path.expanduser('~/.cache/tokenizers_jax/tfds'))

  def test_pipeline_on_skimage_photos(self):
    kw = dict(data_dir=_DATA_DIR, image_size=_SIZE, skimage_kwargs=_KW,
              process_index=0, process_count=1, num_threads=2)
    batch = _take(data.make_image_dataset('skimage_photos',
                                          global_batch_size=8, **kw), 2)[-1]
    self.assertEqual(batch['image'].shape, (8, _SIZE, _SIZE, 3))
    self.assertEqual(batch['image'].dtype, np.float32)
    batches = list(data.make_eval_dataset('skimage_photos',
                                          global_batch_size=4, **kw))
    self.assertLen(batches, 3)  # 10 validation crops.
    self.assertEqual(sum(b['mask'].sum() for b in batches), 10)

  def test_other_tfds_dataset_by_name_is_resized(self):
    # The built dataset read as a generic TFDS dataset, centre-cropped to 16.
    batches = list(data.make_eval_dataset(
        _name(), data_dir=_DATA_DIR, image_size=16, global_batch_size=5,
        process_index=0, process_count=1))
    self.assertLen(batches, 2)
    self.assertEqual(batches[0]['image'].shape, (5, 16, 16, 3))
    self.assertTrue(batches[1]['mask'].all())

  def test_tfds_errors(self):
    with self.assertRaisesRegex(ValueError, 'Unknown image source'):
      sources.get_source('no_such_dataset_xyz', data_dir=_DATA_DIR)
    with self.assertRaisesRegex(ValueError, "no feature 'img'"):
      sources.get_source(_name(), data_dir=_DATA_DIR, image_key='img')
    with self.assertRaisesRegex(FileNotFoundError, 'not prepared'):
      sources.get_source('mnist', data_dir=_tempdir())


class PipelineTest(parameterized.TestCase):

  def test_train_batches(self):
    batch = _take(data.make_image_dataset('fake:40', **_fake_kw()), 1)[0]
    self.assertEqual(set(batch), {'image'})
    self.assertEqual(batch['image'].shape, (8, _SIZE, _SIZE, 3))
    self.assertEqual(batch['image'].dtype, np.float32)
    self.assertBetween(batch['image'].min(), -1.0, 1.0)
    self.assertBetween(batch['image'].max(), -1.0, 1.0)

  @parameterized.parameters(0, 2)
  def test_resume_gives_bitwise_same_batches(self, num_threads):
    make = lambda: data.make_image_dataset(
        'fake:30', **dict(_fake_kw(), num_threads=num_threads))
    it = iter(make())
    for _ in range(5):
      next(it)
    state = it.get_state()
    expected = [next(it)['image'] for _ in range(6)]  # Crosses an epoch.
    resumed = iter(make())
    resumed.set_state(state)
    for want in expected:
      np.testing.assert_array_equal(next(resumed)['image'], want)

  def test_seed_controls_the_stream(self):
    a = _take(data.make_image_dataset('fake:40', **_fake_kw(seed=1)), 2)
    b = _take(data.make_image_dataset('fake:40', **_fake_kw(seed=1)), 2)
    c = _take(data.make_image_dataset('fake:40', **_fake_kw(seed=2)), 2)
    np.testing.assert_array_equal(a[1]['image'], b[1]['image'])
    self.assertFalse(np.array_equal(a[1]['image'], c[1]['image']))

  def test_each_epoch_is_a_new_permutation(self):
    kw = _fake_kw(random_flip=False)  # Fake images are S x S: no crop.
    kw['global_batch_size'] = 16
    e0, e1 = _take(data.make_image_dataset('fake:16', **kw), 2)
    key = lambda im: sorted(x.tobytes() for x in im)
    self.assertEqual(key(e0['image']), key(e1['image']))
    self.assertFalse(np.array_equal(e0['image'], e1['image']))

  def test_finite_epochs_keep_whole_global_batches(self):
    ds = data.make_image_dataset('fake:10', **_fake_kw(num_epochs=2))
    self.assertLen(list(ds), 2)  # 20 examples // 8.

  @parameterized.parameters(2, 4)
  def test_processes_split_each_global_batch(self, process_count):
    # Bigger-than-S images so the random crop and the flip are exercised.
    src = sources.FakeSource(50, (40, 48, 3))
    kw = dict(image_size=_SIZE, global_batch_size=8, num_threads=0)
    single = _take(data.make_image_dataset(
        src, process_index=0, process_count=1, **kw), 8)
    per_process = [
        _take(data.make_image_dataset(src, process_index=p,
                                      process_count=process_count, **kw), 8)
        for p in range(process_count)]
    for step, want in enumerate(single):
      parts = [per_process[p][step]['image'] for p in range(process_count)]
      self.assertEqual(parts[0].shape[0], 8 // process_count)
      np.testing.assert_array_equal(np.concatenate(parts), want['image'])
    # Within an epoch (48 of 50 examples) the processes' examples differ.
    hashes = [{im.tobytes() for b in batches[:6] for im in b['image']}
              for batches in per_process]
    self.assertEqual(sum(len(h) for h in hashes), 48)
    self.assertLen(set().union(*hashes), 48)

  @parameterized.parameters(1, 2)
  def test_eval_covers_split_exactly_once(self, process_count):
    src = sources.FakeSource(10, (_SIZE, _SIZE, 3), split='validation')
    ref = np.stack([images.normalize(src[i]['image']) for i in range(10)])
    got = []
    counts = []
    for p in range(process_count):
      batches = list(data.make_eval_dataset(
          src, image_size=_SIZE, global_batch_size=4, process_index=p,
          process_count=process_count, num_threads=2))
      counts.append(len(batches))
      for b in batches:
        self.assertEqual(b['image'].shape, (4 // process_count, _SIZE,
                                            _SIZE, 3))
        got.extend(im for im, m in zip(b['image'], b['mask']) if m)
        self.assertTrue((b['image'][~b['mask']] == -1).all())  # Padding.
    self.assertEqual(counts, [data.num_eval_batches(10, 4)] * process_count)
    self.assertLen(got, 10)
    key = lambda xs: sorted(x.tobytes() for x in xs)
    self.assertEqual(key(got), key(ref))
    if process_count == 1:  # One process reads in source order.
      np.testing.assert_array_equal(np.stack(got), ref)

  def test_eval_mask_of_last_batch(self):
    batches = list(data.make_eval_dataset('fake:10', **_fake_kw(
        split='validation', global_batch_size=4)))
    self.assertEqual([b['mask'].tolist() for b in batches][-1],
                     [True, True, False, False])

  def test_argument_errors(self):
    with self.assertRaisesRegex(ValueError, 'multiple of process_count'):
      data.make_image_dataset('fake', **dict(_fake_kw(), process_count=3))
    with self.assertRaisesRegex(ValueError, 'process_index'):
      data.make_image_dataset('fake', **dict(_fake_kw(), process_index=1))
    with self.assertRaisesRegex(ValueError, 'crop must be'):
      data.make_image_dataset('fake', **_fake_kw(crop='middle'))
    with self.assertRaisesRegex(ValueError, 'fake:N'):
      data.make_image_dataset('fake:many', **_fake_kw())
    with self.assertRaisesRegex(ValueError, 'no full global batch'):
      data.make_image_dataset('fake:5', **_fake_kw(num_epochs=1))

  def test_size_mismatch_with_crop_none(self):
    src = sources.FakeSource(8, (40, 40, 3))
    ds = data.make_image_dataset(src, **dict(_fake_kw(crop='none'),
                                             num_threads=0))
    with self.assertRaisesRegex(ValueError, r'40x40 but image_size=32'):
      next(iter(ds))


class FolderSourceTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = pathlib.Path(_tempdir())
    rng = np.random.default_rng(0)
    (self.root / 'sub').mkdir()
    for i in range(24):
      h, w = 20 + i, 50 - i
      arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      if i % 3 == 0:
        Image.fromarray(arr[..., 0]).save(self.root / f'g{i:02d}.png')
      elif i % 3 == 1:
        Image.fromarray(arr).save(self.root / 'sub' / f'c{i:02d}.jpg')
      else:
        rgba = np.concatenate([arr, arr[..., :1]], -1)
        Image.fromarray(rgba).save(self.root / f'a{i:02d}.PNG')
    (self.root / 'notes.txt').write_text('not an image')

  def test_split_is_deterministic_and_disjoint(self):
    train = sources.FolderSource(self.root, 'train', val_fraction=0.3)
    val = sources.FolderSource(self.root, 'validation', val_fraction=0.3)
    self.assertEmpty(set(train.files) & set(val.files))
    self.assertLen(set(train.files) | set(val.files), 24)
    self.assertEqual(
        sources.FolderSource(self.root, 'train', val_fraction=0.3).files,
        train.files)
    self.assertNotEmpty(val.files)

  def test_pipeline_reads_and_resizes(self):
    name = f'folder:{self.root}'
    batch = _take(data.make_image_dataset(
        name, **_fake_kw(val_fraction=0.3)), 1)[0]
    self.assertEqual(batch['image'].shape, (8, _SIZE, _SIZE, 3))
    n_val = len(sources.FolderSource(self.root, 'validation',
                                     val_fraction=0.3))
    batches = list(data.make_eval_dataset(
        name, **_fake_kw(val_fraction=0.3)))
    self.assertEqual(sum(b['mask'].sum() for b in batches), n_val)

  def test_bad_folders(self):
    with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
      sources.get_source(f'folder:{self.root}/missing')
    empty = _tempdir()
    with self.assertRaisesRegex(ValueError, 'holds no image files'):
      sources.get_source(f'folder:{empty}')
    with self.assertRaisesRegex(ValueError, 'split must be'):
      sources.get_source(f'folder:{self.root}', 'test')

  def test_undecodable_file_is_named(self):
    src = sources.FolderSource(self.root, 'train', val_fraction=0.0)
    bad = self.root / src.files[0]
    bad.write_bytes(b'garbage')
    with self.assertRaisesRegex(ValueError, f'Failed to decode.*{bad.name}'):
      src[0]
    ds = data.make_eval_dataset(src, **dict(_fake_kw(), num_threads=0))
    with self.assertRaisesRegex(ValueError, bad.name):
      list(ds)


class OpsTest(parameterized.TestCase):

  @parameterized.parameters((10, 12), (10, 12, 1), (10, 12, 3), (10, 12, 4))
  def test_to_rgb_uint8(self, *shape):
    out = images.to_rgb_uint8(np.zeros(shape, np.uint8))
    self.assertEqual(out.shape, (10, 12, 3))

  def test_to_rgb_rejects_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'uint8'):
      images.to_rgb_uint8(np.zeros((4, 4, 3), np.float32))
    with self.assertRaisesRegex(ValueError, 'shape'):
      images.to_rgb_uint8(np.zeros((4, 4, 2), np.uint8))

  @parameterized.parameters('center', 'random')
  def test_fit_image(self, crop):
    image = np.random.default_rng(0).integers(0, 256, (30, 70, 3), np.uint8)
    out = images.fit_image(image, 16, crop, np.random.default_rng(0))
    self.assertEqual(out.shape, (16, 16, 3))
    self.assertIs(images.fit_image(out, 16, 'none'), out)

  def test_normalize(self):
    out = images.normalize(np.array([0, 255], np.uint8))
    np.testing.assert_array_equal(out, np.array([-1, 1], np.float32))


if __name__ == '__main__':
  absltest.main()
