"""EEG tokens: pretokenizing an EEG tokenizer's windows (tokens, signal
statistics, patch masks) against the EEG task's own evaluation pipeline,
then a generator trained and sampled on them."""

import os

import numpy as np
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import pretokenize
from tokenizers_jax import sample as sample_lib
from tokenizers_jax.data import eeg
from tokenizers_jax.data import tokens as tokens_lib
from tokenizers_jax.models.tokenizer import Tokenizer
from tokenizers_jax.training import eeg_task
from tokenizers_jax.training import train as train_lib

from tests.generation import conftest

QUIET = lambda _: None


@pytest.fixture(scope='module')
def eeg_tokens(tmp_path_factory):
  """configs/neurorvq.py:test (2 channels, windows of 2 patches, 2 branches
  of 2 RVQ levels) with random weights, and both splits pretokenized;
  recordings of 5 patches are stored as segments of 4 and of 1 patch (+ 3
  of padding), so one window is partly padding and one wholly (that one is
  not an example)."""
  c = config_lib.load_config_file(
      os.path.join(conftest.REPO, 'configs', 'neurorvq.py') + ':test')
  c.model.branches = c.model.branches[:2]
  c.data.dataset.update(seconds=5)
  root = tmp_path_factory.mktemp('eeg_tokens')
  c.data.data_dir = str(root / 'tfds')
  wd = pretokenize.write_random_tokenizer(c, str(root / 'tokenizer'))
  out = str(root / 'tokens')
  for split in ('train', 'validation'):
    stats = pretokenize.run(wd, out, split=split, batch_size=4, shard_size=5,
                            log=QUIET)
  tok = Tokenizer.from_workdir(wd)
  return c, tok, out, stats['manifest'], root


def test_records_equal_the_eval_pipeline(eeg_tokens):
  """Every window of the EEG task's evaluation pass that holds signal is
  one record, in order: its tokens and statistics are the tokenizer's, its
  patch mask the pipeline's; decoding with the stored statistics equals
  decoding with fresh ones."""
  config, tok, out, manifest, _ = eeg_tokens
  ref_ids, ref_stats, ref_mask, ref_x = [], [], [], []
  for batch in eeg_task.dataset(config, train=False, batch_size=4):
    keep = batch['mask'].any(-1)
    ids, stats = tok.encode_with_stats(batch['eeg'], batch['mask'])
    ref_ids.append(np.asarray(ids)[keep])
    ref_stats.append(np.asarray(stats)[keep])
    ref_mask.append(batch['mask'][keep])
    ref_x.append(batch['eeg'][keep])
  ref_ids, ref_stats = np.concatenate(ref_ids), np.concatenate(ref_stats)
  ref_mask = np.concatenate(ref_mask)
  records = list(tokens_lib.iterate_split(out, 'validation'))
  assert len(records) == len(ref_ids) == manifest['splits']['validation'][
      'count']
  assert 0 < int((~ref_mask).sum())  # Some windows end in padding.
  got = np.stack([r['tokens'] for r in records])
  np.testing.assert_array_equal(got, ref_ids)
  np.testing.assert_array_equal(np.stack([r['stats'] for r in records]),
                                ref_stats)  # float32 through JSON: exact.
  np.testing.assert_array_equal(
      np.stack([r['patch_valid'] for r in records]), ref_mask)
  np.testing.assert_array_equal(
      np.asarray(tok.decode(got[:3], np.stack([r['stats'] for r in
                                                records[:3]]))),
      np.asarray(tok.decode(ref_ids[:3], ref_stats[:3])))
  # Layout: [C, A, G, Q] = channels, patches, branches, RVQ levels.
  c, a = len(config.data.channels), config.data.num_patches
  assert manifest['token_shape'] == [c, a, 2, 2]
  assert (manifest['num_levels'], manifest['level_kind']) == (2, 'residual')
  assert manifest['tokens_per_second'] == c * 2 * eeg.SFREQ / 200
  assert manifest['window_seconds'] == a * 200 / eeg.SFREQ
  # The dataset's position mask is the patch mask over [C, A, G].
  ds = tokens_lib.make_token_dataset(out, train=False, global_batch_size=4,
                                     process_index=0, process_count=1)
  batch = next(iter(ds))
  n = min(4, len(records))
  want = np.zeros((4, c, a, 2), bool)
  want[:n] = ref_mask[:n, None, :, None]
  np.testing.assert_array_equal(batch['valid'], want.reshape(4, -1))
  np.testing.assert_array_equal(batch['mask'], np.arange(4) < n)


def test_generator_on_eeg_tokens(eeg_tokens):
  """The AR transformer (depth head over the RVQ levels) trains on the
  windows, reports bits per second of signal and samples windows."""
  _, _, out, manifest, root = eeg_tokens
  config = config_lib.load_config_file(
      os.path.join(conftest.REPO, 'configs', 'ar.py') + f':test,dir={out}')
  final = train_lib.train_and_evaluate(config, str(root / 'ar'))
  np.testing.assert_allclose(
      final['eval/bits_per_second'],
      final['eval/bits_per_token'] * 2 * manifest['tokens_per_second'],
      rtol=1e-9)
  assert np.isfinite(final['eval/bits_per_example'])
  written = sample_lib.run(str(root / 'ar'), str(root / 's'), num=2,
                           batch_size=2)
  windows = np.load(written['samples'])
  assert windows.shape == (2, 2, 2 * 200) and np.all(np.isfinite(windows))
  assert np.load(written['tokens']).shape == (2, 2, 2, 2, 2)
