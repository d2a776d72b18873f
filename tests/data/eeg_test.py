"""EEG data: the synthetic spectrum, EDF write/read round trip, preprocessing
(notch, resampling, channel selection), malformed recordings, the TFDS build
with its split by recording, and the grain pipelines (windows, masks,
resume)."""

import pathlib

import numpy as np
import pytest
from scipy import signal

from tokenizers_jax.data import eeg

FS = eeg.SYNTHETIC_SFREQ


def _band(f, p, lo, hi):
  return p[(f >= lo) & (f < hi)].sum()


def test_synthetic_spectrum_and_topography():
  chans = ('Fp1', 'Cz', 'C3', 'O1')
  x = eeg.synthesize_recording(40, seed=3, index=1, channels=chans)
  np.testing.assert_array_equal(
      x, eeg.synthesize_recording(40, seed=3, index=1, channels=chans))
  assert not np.allclose(x, eeg.synthesize_recording(40, seed=3, index=2,
                                                     channels=chans))
  f, p = signal.welch(x, fs=FS, nperseg=512)
  fp1, cz, c3, o1 = p
  # Alpha is occipital: O1 has an alpha peak over its 4-8 Hz neighbour band
  # and far more alpha than Fp1.
  assert _band(f, o1, 8, 13) / 5 > 3 * _band(f, o1, 14, 18) / 4
  assert _band(f, o1, 8, 13) > 5 * _band(f, fp1, 8, 13)
  # Beta is central: C3 beats O1 at 18-25 Hz relative to its 1/f floor.
  assert _band(f, c3, 17, 26) / _band(f, c3, 30, 39) > 2.0
  # 1/f background: power falls with frequency (Cz, away from the rhythms).
  slope = np.polyfit(np.log(f[(f > 2) & (f < 7)]),
                     np.log(cz[(f > 2) & (f < 7)]), 1)[0]
  assert -2.5 < slope < -0.5
  # Blinks: large slow frontal transients (Fp1 vs O1 below 3 Hz).
  assert np.abs(x[0]).max() > 60e-6
  assert _band(f, fp1, 0.5, 3) > 3 * _band(f, o1, 0.5, 3)
  # 50 Hz line noise for the notch filter to remove.
  assert _band(f, cz, 49, 51) > 3 * _band(f, cz, 46, 48)


@pytest.fixture(scope='module')
def edf_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('eeg') / 'rec.edf'
  x = eeg.synthesize_recording(12, seed=0, index=0)
  eeg.write_edf(path, x, eeg.CHANNELS_1020, FS)
  return path, x


def test_edf_round_trip(edf_file):
  path, x = edf_file
  data, sfreq, labels = eeg.read_raw(path)
  assert sfreq == FS
  assert labels == [f'EEG {c.upper()}-REF' for c in eeg.CHANNELS_1020]
  assert [eeg.canonical_name(l).lower() for l in labels] == [
      c.lower() for c in eeg.CHANNELS_1020]
  # 16-bit EDF: error at most one quantisation step (2 * peak / 65535).
  step = 2 * (np.ceil(np.abs(x * 1e6).max(1) + 1)) / 65535 * 1e-6
  err = np.abs(data - x).max(1)
  assert np.all(err <= step), (err, step)


def test_preprocessing(edf_file):
  path, x = edf_file
  chans = ('O1', 'Fp1', 'Cz')
  y = eeg.read_recording(path, chans, reference=None)
  assert y.dtype == np.float32 and y.shape == (3, 12 * 200)
  # Same channels, order as requested, in units of 100 uV, 50 Hz removed.
  f, p_in = signal.welch(x[[17, 0, 9]] * 1e4, fs=FS, nperseg=500)
  g, p_out = signal.welch(y, fs=200.0, nperseg=400)
  for i in range(3):
    ratio = _band(g, p_out[i], 8, 13) / _band(f, p_in[i], 8, 13)
    assert 0.8 < ratio < 1.2, ratio
    assert (_band(g, p_out[i], 49, 51) / _band(f, p_in[i], 49, 51)) < 0.1
    near = p_out[i][(g > 44) & (g < 56) & (np.abs(g - 50) > 2)]
    assert p_out[i][g == 50][0] < 2 * np.median(near)  # No line peak left.
  # Average reference: the channels sum to zero at every sample.
  z = eeg.read_recording(path, eeg.CHANNELS_1020)
  np.testing.assert_allclose(z.sum(0), 0, atol=1e-4)
  patches, cut = eeg.to_patches(y[:, :1030])
  assert patches.shape == (3, 5, 200) and cut == 30
  np.testing.assert_array_equal(patches[1, 2], y[1, 400:600])


def test_malformed_recordings(edf_file, tmp_path):
  path, x = edf_file
  with pytest.raises(FileNotFoundError, match='not found'):
    eeg.read_recording(tmp_path / 'none.edf')
  with pytest.raises(ValueError, match=r"missing channels \['Oz'\]"):
    eeg.read_recording(path, ('O1', 'Oz'))
  with pytest.raises(ValueError, match='sampling rate 250 Hz, expected 256'):
    eeg.read_recording(path, ('O1',), expected_sfreq=256)
  with pytest.raises(ValueError, match='too low for the 75 Hz low-pass'):
    eeg.preprocess(x[:2, ::2], FS / 2, ['Fp1', 'Fp2'], ('Fp1',))
  truncated = tmp_path / 'cut.edf'
  truncated.write_bytes(pathlib.Path(path).read_bytes()[:-5000])
  with pytest.raises(ValueError, match='truncated file'):
    eeg.read_recording(truncated)
  header_only = tmp_path / 'head.edf'
  header_only.write_bytes(pathlib.Path(path).read_bytes()[:100])
  with pytest.raises(ValueError, match='not an EDF/BDF file'):
    eeg.read_recording(header_only)
  bad = x[:3].copy()
  bad[1, 700] = np.nan
  with pytest.raises(ValueError, match=r"NaN or Inf samples \(1 of them\), "
                     r"first in channel 'Fp2' at sample 700"):
    eeg.preprocess(bad, FS, ['Fp1', 'Fp2', 'F7'], ('Fp1', 'Fp2'))
  with pytest.raises(ValueError, match='unknown electrode'):
    eeg.make_config(channels=('Fp1', 'XYZ'))


def test_split_by_recording():
  names = [f'sub{i:02d}/run{j}.edf' for i in range(5) for j in range(2)]
  split = eeg.split_recordings(names, 0.3)
  assert sorted(split['train'] + split['validation']) == sorted(names)
  assert not set(split['train']) & set(split['validation'])
  assert split['validation'] and split['train']
  one = eeg.split_recordings(names[:2], 0.0)  # Never leaves a split empty.
  assert len(one['train']) == len(one['validation']) == 1


DATASET = dict(num_recordings=4, seconds=10, segment_patches=4)
CHANNELS = ('Fp1', 'O1')


@pytest.fixture(scope='module')
def built():
  cfg = eeg.make_config(channels=CHANNELS, **DATASET)
  name, data_dir = eeg.build_dataset(cfg)
  return cfg, name, data_dir


def test_tfds_build_and_pipelines(built):
  cfg, _, data_dir = built
  kw = dict(channels=CHANNELS, num_patches=2, dataset=DATASET,
            data_dir=data_dir, process_index=0, process_count=1)
  srcs = {s: eeg.get_source('synthetic', s, dict(DATASET, channels=CHANNELS),
                            data_dir)[0] for s in ('train', 'validation')}
  recs = {s: {srcs[s][i]['recording'].decode() for i in range(len(srcs[s]))}
          for s in srcs}
  assert recs['train'] and recs['validation']
  assert not recs['train'] & recs['validation']
  # 10 s per recording = 3 segments of 4 patches (the last one half valid);
  # the stored data equal the preprocessed EDF.
  for s in srcs:
    assert len(srcs[s]) == 3 * len(recs[s])
  rec = srcs['validation'][0]
  folder = eeg.synthetic_folder(data_dir, cfg)
  want = eeg.read_recording(folder / rec['recording'].decode(), CHANNELS)
  start = int(rec['start_patch']) * 200
  valid = int(rec['valid_patches'])
  np.testing.assert_allclose(np.asarray(rec['eeg'])[:, :valid * 200],
                             want[:, start:start + valid * 200], atol=1e-6)
  # Evaluation: every valid validation patch exactly once, padding masked.
  batches = list(eeg.make_eeg_dataset('synthetic', train=False,
                                      global_batch_size=4, **kw))
  total_valid = sum(int(srcs['validation'][i]['valid_patches'])
                    for i in range(len(srcs['validation'])))
  assert sum(int(b['mask'].sum()) for b in batches) == total_valid == 10 * len(
      recs['validation'])
  assert batches[0]['eeg'].shape == (4, 2, 400)
  # Training: random windows; the iterator resumes exactly.
  it = iter(eeg.make_eeg_dataset('synthetic', global_batch_size=4, seed=1,
                                 **kw))
  first = next(it)
  assert first['eeg'].shape == (4, 2, 400) and first['mask'].all()
  state = it.get_state()
  want_next = next(it)
  it2 = iter(eeg.make_eeg_dataset('synthetic', global_batch_size=4, seed=1,
                                  **kw))
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)['eeg'], want_next['eeg'])
  with pytest.raises(ValueError, match='must divide'):
    eeg.make_eeg_dataset('synthetic', global_batch_size=4,
                         **dict(kw, num_patches=3))
  with pytest.raises(ValueError, match="'synthetic' or 'folder"):
    eeg.make_eeg_dataset('tuh', global_batch_size=4, **kw)


def test_folder_source_and_bad_recordings(tmp_path):
  """A folder in the layout of public corpora (subject folders of EDF
  files), with old channel names and one truncated file."""
  folder = tmp_path / 'corpus'
  chans = ('Fp1', 'T3', 'O1')  # T3 is the old name of T7.
  for i in range(3):
    (folder / f'S{i:03d}').mkdir(parents=True)
    x = eeg.synthesize_recording(6, seed=5, index=i, channels=(
        'Fp1', 'T7', 'O1'))
    eeg.write_edf(folder / f'S{i:03d}' / f'S{i:03d}R01.edf', x, chans, FS,
                  labels='{}.')
  bad = folder / 'S002' / 'S002R01.edf'
  bad.write_bytes(bad.read_bytes()[:-3000])
  kw = dict(channels=('Fp1', 'T7', 'O1'), num_patches=2,
            data_dir=str(tmp_path / 'tfds'), process_index=0,
            process_count=1, global_batch_size=2)
  with pytest.raises(ValueError, match='S002R01.edf: truncated file'):
    eeg.make_eeg_dataset(f'folder:{folder}', dataset=dict(
        segment_patches=2, val_fraction=0.5), **kw)
  ds = dict(segment_patches=2, val_fraction=0.5, skip_bad_recordings=True)
  srcs = [eeg.get_source(f'folder:{folder}', s, dict(ds, channels=(
      'Fp1', 'T7', 'O1')), str(tmp_path / 'tfds'))[0]
          for s in ('train', 'validation')]
  names = sorted(r['recording'].decode() for src in srcs
                 for r in (src[i] for i in range(len(src))))
  assert names == ['S000/S000R01.edf'] * 3 + ['S001/S001R01.edf'] * 3
  batch = next(iter(eeg.make_eeg_dataset(f'folder:{folder}', dataset=ds,
                                         **kw)))
  assert batch['eeg'].shape == (2, 3, 400)
