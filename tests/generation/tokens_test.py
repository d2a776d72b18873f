"""Pretokenized data: records, the round trip against `tok.encode`, resume
after kill -9, the multi-process layout and the grain datasets."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tokenizers_jax.data import tokens as tokens_lib
from tokenizers_jax.models.tokenizer import Tokenizer

from tests.generation import conftest

QUIET = lambda _: None


@pytest.fixture(scope='module')
def tok(tokenizer_dir):
  t = Tokenizer.from_workdir(tokenizer_dir)
  t.workdir = tokenizer_dir
  return t


def _ids(directory, split='train'):
  return [(int(r['index']), bool(r['flip']))
          for r in tokens_lib.iterate_split(directory, split)]


def test_record_round_trip():
  t = np.arange(24, dtype=np.int64).reshape(4, 3, 2) - 3
  rec = tokens_lib.decode_record(tokens_lib.encode_record(t, index=7,
                                                          flip=True, label=2))
  np.testing.assert_array_equal(rec['tokens'], t)
  assert rec['tokens'].dtype == np.int32
  assert (int(rec['index']), bool(rec['flip']), int(rec['label'])) == (7, True,
                                                                      2)
  with pytest.raises(ValueError, match='not a token record'):
    tokens_lib.decode_record(b'garbage!')


def test_round_trip_equals_encode(tokens_dir, tok):
  src = tokens_lib.TokenSource(tokens_dir, 'train')
  examples = tokens_lib.tokenizer_examples(tok.config, 'train')
  assert len(src) == 2 * len(examples)  # --flip: image, then its mirror.
  x = np.stack([examples[i]['input'] for i in range(len(examples))])
  want = np.asarray(tok.encode(x))
  want_flip = np.asarray(tok.encode(x[:, :, ::-1]))
  for j in range(len(src)):
    rec = src[j]
    i = int(rec['index'])
    ref = want_flip[i] if rec['flip'] else want[i]
    np.testing.assert_array_equal(rec['tokens'], ref)
  assert sorted(_ids(tokens_dir)) == sorted(
      (i, f) for i in range(len(examples)) for f in (False, True))
  manifest = tokens_lib.read_manifest(tokens_dir)
  assert manifest['token_shape'] == [8, 8]
  assert manifest['codebook_size'] == 32 and manifest['num_levels'] == 1
  assert manifest['tokenizer_workdir'] == tok.workdir
  assert manifest['splits']['train']['count'] == len(src)
  assert sum(manifest['splits']['train']['shards'].values()) == len(src)
  assert manifest['splits']['validation']['count'] == 24


def test_another_source_than_the_tokenizers(tok, tmp_path):
  """--source: a folder of PNGs (16² like the tokenizer's images, so that
  no resize is involved) is encoded exactly as `tok.encode` encodes the
  files' pixels; the manifest names the source per split."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  pixels = {}
  n = 40  # About 4 hash into 'validation' (val_fraction 0.1).
  for k in range(n):
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / f'img_{k:02d}.png')
    pixels[k] = img
  source = f'folder:{tmp_path}'
  want = np.asarray(tok.encode(
      np.stack([pixels[k] for k in range(n)]) / 127.5 - 1.0))
  out = str(tmp_path / 'tokens')
  seen = []
  for split in ('train', 'validation'):
    tokens_lib.pretokenize(tok, out, split=split, batch_size=8, source=source,
                           log=QUIET)
    manifest = tokens_lib.write_manifest(out, tok, split, flip=False,
                                         num_classes=0)
    assert manifest['splits'][split]['source'] == source
    for rec in tokens_lib.iterate_split(out, split):
      match = [k for k in range(n)
               if np.array_equal(rec['tokens'], want[k])]
      assert len(match) == 1, 'a record that no file (or two) encodes to'
      seen.extend(match)
  assert sorted(seen) == list(range(n))  # Every file once, over the splits.
  with pytest.raises(ValueError, match='other settings'):
    tokens_lib.pretokenize(tok, out, split='train', batch_size=8, log=QUIET)


def test_multi_process_layout(tok, tokens_dir, tmp_path):
  out = str(tmp_path / 'two')
  for p in range(2):
    stats = tokens_lib.pretokenize(tok, out, split='train', flip=True,
                                   batch_size=8, shard_size=5,
                                   process_index=p, process_count=2, log=QUIET)
    assert stats['complete'] and stats['examples'] == 12
  names = sorted(os.listdir(out))
  assert any('-p000of002-' in n for n in names)
  assert any('-p001of002-' in n for n in names)
  tokens_lib.write_manifest(out, tok, 'train', flip=True, num_classes=0)
  got = _ids(out)
  assert len(got) == len(set(got)) and sorted(got) == sorted(_ids(tokens_dir))
  # Process p holds the examples p::2.
  p1 = tokens_lib.shard_paths(out, 'train')[-1]
  assert '-p001of002-' in p1


def test_resume_refuses_other_settings(tok, tmp_path):
  out = str(tmp_path / 'settings')
  tokens_lib.pretokenize(tok, out, shard_size=8, log=QUIET,
                         stop_after_shards=1)
  with pytest.raises(ValueError, match='other settings'):
    tokens_lib.pretokenize(tok, out, shard_size=4, log=QUIET)
  # What a kill during a shard or progress write leaves behind.
  stale = [tokens_lib.shard_name('train', 1, 0, 1) + '.tmp99999',
           tokens_lib.progress_name('train', 0, 1) + '.tmp99999']
  for name in stale:
    open(os.path.join(out, name), 'w').close()
  stats = tokens_lib.pretokenize(tok, out, shard_size=8, log=QUIET)
  assert stats['complete'] and stats['examples'] == 16  # 24 - the first 8.
  assert not [n for n in os.listdir(out) if '.tmp' in n]


def test_kill_9_then_resume_loses_and_repeats_nothing(tokenizer_dir,
                                                      tokens_dir, tmp_path):
  out = str(tmp_path / 'killed')
  cmd = [sys.executable, '-m', 'tokenizers_jax.pretokenize',
         f'--workdir={tokenizer_dir}', f'--output={out}', '--flip',
         '--shard_size=1', '--batch_size=8']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(cmd, env=env, cwd=conftest.REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  first = os.path.join(out, tokens_lib.shard_name('train', 0, 0, 1))
  deadline = time.time() + 240
  while not os.path.exists(first):
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline, 'no shard written in time'
    time.sleep(0.01)
  time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = len(tokens_lib.shard_paths(out, 'train'))
  assert 1 <= done < 24, f'the kill came too late ({done} of 24 shards)'
  rerun = subprocess.run(cmd, env=env, cwd=conftest.REPO, capture_output=True,
                         text=True, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  stats = json.loads(rerun.stdout[rerun.stdout.index('{'):
                                  rerun.stdout.rindex('}') + 1])
  assert stats['examples'] == 24 - done
  got = _ids(out)
  assert len(got) == len(set(got)) == 48
  assert sorted(got) == sorted(_ids(tokens_dir))
  assert not [n for n in os.listdir(out) if '.tmp' in n]
  # The same tokens as the uninterrupted run, example by example.
  ref = {(int(r['index']), bool(r['flip'])): r['tokens']
         for r in tokens_lib.iterate_split(tokens_dir, 'train')}
  for r in tokens_lib.iterate_split(out, 'train'):
    np.testing.assert_array_equal(r['tokens'],
                                  ref[(int(r['index']), bool(r['flip']))])


def test_datasets(tokens_dir):
  ds = tokens_lib.make_token_dataset(tokens_dir, train=True,
                                     global_batch_size=8, seed=0)
  it = iter(ds)
  batch = next(it)
  assert batch["tokens"].shape == (8, 8, 8)
  assert batch["tokens"].dtype == np.int32
  assert batch['label'].shape == (8,) and batch['mask'].all()
  state = it.get_state()
  nxt = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)['tokens'], nxt['tokens'])
  seen, masked = [], 0
  for b in tokens_lib.make_token_dataset(tokens_dir, train=False,
                                         global_batch_size=10):
    seen.append(b['tokens'][b['mask']])
    masked += int((~b['mask']).sum())
  assert sum(len(s) for s in seen) == 24 and masked == 6
  src = tokens_lib.TokenSource(tokens_dir, 'validation')
  np.testing.assert_array_equal(np.concatenate(seen),
                                np.stack([src[i]['tokens']
                                          for i in range(len(src))]))


def test_crop_for_variable_length_tokens(tmp_path):
  rec = {'tokens': np.arange(10, dtype=np.int32)[:, None] * [1, 100],
         'label': np.int32(-1)}
  crop = tokens_lib._Crop(4, train=True)  # pylint: disable=protected-access
  out = crop.random_map(dict(rec), np.random.default_rng(0))
  start = int(out['tokens'][0, 0])
  np.testing.assert_array_equal(out['tokens'][:, 0], np.arange(start,
                                                               start + 4))
  assert out['valid'].all()
  short = tokens_lib._Crop(16, train=False).random_map(  # pylint: disable=protected-access
      dict(rec), np.random.default_rng(0))
  assert short['valid'].sum() == 10 and (short['tokens'][10:] == 0).all()
  del tmp_path
