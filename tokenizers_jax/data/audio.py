"""Audio pipelines on grain: random crops for training, full utterances
(padded and masked) for evaluation.

  ds = make_audio_dataset('espeak_speech', sample_rate=16000,
                          crop_length=8000, global_batch_size=16)
  batch = next(iter(ds))        # {'audio': float32 [b, 8000] in [-1, 1]}

  for batch in make_audio_dataset('espeak_speech', train=False,
                                  sample_rate=16000, global_batch_size=16,
                                  pad_multiple=160):
    ...   # {'audio': float32 [b, L], 'length': int32 [b], 'mask': bool [b]}

Sources (records {'audio': [N] or [N, C] samples, 'sample_rate': Hz, 'id'}):
  'espeak_speech'   the embedded corpus (`speech.py`), built on first use at
                    the requested sample rate (`espeak_kwargs`: num_sentences,
                    seed).
  'fake' / 'fake:N' N (default 64) procedural one-second clips: sums of
                    sinusoids and chirps with amplitude modulation and noise.
  'folder:/path'    WAV/FLAC/OGG files under /path (recursive), read with
                    soundfile; split by a hash of the relative name.
  any other name    a prepared TFDS dataset (e.g. 'librispeech'; `audio_key`
                    names its audio feature, 'speech' for librispeech), read
                    with `tfds.data_source`; nothing is downloaded. (TFDS
                    datasets whose audio is a `tfds.features.Audio`, as
                    librispeech's, need TensorFlow installed: tfds 4.9
                    builds that feature with TF dtypes. The embedded corpus
                    stores a plain int16 Tensor and needs no TF.)

Every record is checked (`load_waveform`): mono (multi-channel files are an
error unless `channels='mean'`), finite, not silent, not empty, and at a
sample rate at least the target's (upsampling an 8 kHz file to 16 kHz would
train on band-limited audio; `allow_upsample=True` accepts it). Rates that
differ are converted with soxr (the resampler librosa uses, already
installed with it): arbitrary ratios such as 44 100 -> 16 000 with a steep
anti-aliasing filter, much faster than scipy's resample_poly with filters of
equal quality.

Training: source -> shuffle(seed) -> repeat -> load, random crop of
`crop_length` samples (shorter utterances are zero-padded at the end) ->
batch. Evaluation: one ordered pass; each utterance is zero-padded to
`eval_length` (default: the split's longest, rounded up to `pad_multiple`)
with its `length`; the split is padded to whole global batches with
`mask=False` examples. Multi-host layout as in `images.py`.

Dimension legend:
  B: global batch; b = B / P per process; N: samples; C: channels
  L: crop length (training) or eval_length (evaluation)
"""

from __future__ import annotations

import os
from typing import Any

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from tokenizers_jax.data import images as images_lib
from tokenizers_jax.data import sources as image_sources
from tokenizers_jax.data import speech

AUDIO_EXTENSIONS = ('.wav', '.flac', '.ogg')
SILENCE_PEAK = 1e-4
Record = dict[str, Any]


# --------------------------------------------------------------------------
# Checking and converting waveforms.
# --------------------------------------------------------------------------
def load_waveform(record: Record, sample_rate: int, *,
                  channels: str = 'error', allow_upsample: bool = False,
                  resample: bool = True) -> np.ndarray:
  """A record's audio as float32 [N] in [-1, 1] at `sample_rate`.

  Args:
    record: {'audio': int16/int32/float [N] or [N, C], 'sample_rate': Hz,
      'id': str}.
    sample_rate: target rate (Hz).
    channels: 'error' (multi-channel audio is an error) or 'mean' (downmix).
    allow_upsample: accept audio stored below the target rate.
    resample: convert other rates with soxr (else a rate mismatch is an
      error).

  Raises:
    ValueError: wrong rank, multi-channel, empty, non-finite, silent, or a
      sample rate that cannot be used.
  """
  rid = record.get('id', 'audio')
  x = np.asarray(record['audio'])
  rate = int(record['sample_rate'])
  if x.ndim == 2 and x.shape[1] == 1:
    x = x[:, 0]
  if x.ndim == 2:
    if channels != 'mean':
      raise ValueError(f'{rid}: audio has {x.shape[1]} channels; the codec is '
                       "mono (pass channels='mean' to downmix)")
    x = x.astype(np.float64).mean(axis=1)
  if x.ndim != 1:
    raise ValueError(f'{rid}: expected audio [N] or [N, C]; got shape '
                     f'{x.shape}')
  if x.size == 0:
    raise ValueError(f'{rid}: audio is empty (0 samples)')
  if np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
  elif not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'{rid}: audio has unsupported dtype {x.dtype}')
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{rid}: audio contains NaN or Inf')
  peak = float(np.max(np.abs(x)))
  if peak <= SILENCE_PEAK:
    raise ValueError(f'{rid}: audio is silent (peak |x| = {peak:.2g})')
  if rate != sample_rate:
    if not resample:
      raise ValueError(f'{rid}: sample rate {rate} Hz != the required '
                       f'{sample_rate} Hz (resampling is off)')
    if rate < sample_rate and not allow_upsample:
      raise ValueError(
          f'{rid}: sample rate {rate} Hz is below the required {sample_rate} '
          'Hz; upsampling would give band-limited audio (resample it '
          'yourself or pass allow_upsample=True)')
    x = speech.resample(x, rate, sample_rate)
  return np.clip(x, -1.0, 1.0)


# --------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------
class FakeAudioSource:
  """N procedural clips: sinusoids + a chirp, amplitude-modulated, + noise."""

  def __init__(self, num: int, sample_rate: int, *, seconds: float = 1.0,
               split: str = 'train', seed: int = 0):
    if num < 1:
      raise ValueError(f'fake audio source needs >= 1 clip; got {num}')
    self._n, self._sr, self._len = num, sample_rate, int(seconds * sample_rate)
    self._split_id = 0 if split == 'train' else 1
    self._seed = seed

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f'fake audio index {index} out of range {self._n}')
    rng = np.random.default_rng([self._seed, self._split_id, index])
    t = np.arange(self._len) / self._sr
    nyq = self._sr / 2
    x = np.zeros_like(t)
    for _ in range(3):
      f = rng.uniform(80, 0.4 * nyq)
      x += rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * f * t
                                          + rng.uniform(0, 2 * np.pi))
    f0, f1 = rng.uniform(100, 0.3 * nyq, 2)
    x += 0.2 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / 2))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 6) * t)
    x += rng.normal(0, 0.01, t.shape)
    return {'audio': (0.8 * x / np.abs(x).max()).astype(np.float32),
            'sample_rate': self._sr, 'id': f'fake[{index}]'}


class AudioFolderSource(image_sources.FolderFiles):
  """Audio files under a folder (soundfile), one split by file-name hash."""

  kind = 'audio'
  extensions = AUDIO_EXTENSIONS

  def __getitem__(self, index: int) -> Record:
    import soundfile  # pylint: disable=g-import-not-at-top
    path = self.path(index)
    try:
      x, rate = soundfile.read(str(path), dtype='float32', always_2d=True)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'cannot read audio file {str(path)!r} (truncated or '
                       f'not audio?): {type(e).__name__}: {e}') from e
    return {'audio': x, 'sample_rate': rate, 'id': str(path)}


class TfdsAudioSource:
  """A prepared TFDS audio dataset read with `tfds.data_source`."""

  def __init__(self, name: str, split: str, *,
               data_dir: str | os.PathLike | None = None,
               audio_key: str = 'audio', sample_rate: int | None = None):
    data_dir = None if data_dir is None else os.fspath(data_dir)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
      raise ValueError(
          f'unknown audio source {name!r}: not "espeak_speech", "fake[:N]" or '
          f'"folder:/path", and no TFDS dataset of that name (data_dir='
          f'{data_dir})') from None
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS dataset {name!r} is not prepared in {builder.data_dir}; '
          'prepare it in ArrayRecord format first (this pipeline never '
          'downloads)')
    features = builder.info.features
    if audio_key not in features:
      raise ValueError(f'TFDS dataset {name!r} has no feature {audio_key!r}; '
                       f'its features are {list(features)} (set audio_key)')
    rate = sample_rate or getattr(features[audio_key], 'sample_rate', None)
    if rate is None and 'sample_rate' not in features:
      raise ValueError(f'TFDS dataset {name!r}: its sample rate is unknown; '
                       'pass sample_rate')
    try:
      self._ds = builder.as_data_source(split=split)
    except NotImplementedError as e:
      raise ValueError(f'TFDS dataset {name!r} is not stored as ArrayRecord; '
                       're-prepare it with file_format="array_record"') from e
    except (KeyError, ValueError) as e:
      raise ValueError(f'TFDS dataset {name!r} has no split {split!r} (has '
                       f'{list(builder.info.splits)}): {e}') from e
    self._name, self._split = name, split
    self._key, self._rate = audio_key, rate

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    rec = self._ds[index]
    rate = self._rate or int(rec['sample_rate'])
    return {'audio': np.asarray(rec[self._key]), 'sample_rate': rate,
            'id': f'{self._name}[{self._split}][{index}]'}


def get_audio_source(name: str, split: str = 'train', *,
                     sample_rate: int = 16000,
                     data_dir: str | os.PathLike | None = None,
                     audio_key: str = 'audio', val_fraction: float = 0.1,
                     seed: int = 0,
                     espeak_kwargs: dict[str, Any] | None = None):
  """The random-access source for `name` and `split` (see module doc)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'audio source name must be a non-empty string: '
                     f'{name!r}')
  if name.startswith('folder:'):
    return AudioFolderSource(name[len('folder:'):], split,
                             val_fraction=val_fraction)
  if name == 'fake' or name.startswith('fake:'):
    count = name[len('fake:'):] if ':' in name else '64'
    if not count.isdigit():
      raise ValueError(f'fake source must be "fake" or "fake:N"; got {name!r}')
    return FakeAudioSource(int(count), sample_rate, split=split, seed=seed)
  if name == speech.DATASET_NAME:
    kwargs = dict(espeak_kwargs or {})
    data_dir = speech.build_espeak_speech(data_dir, sample_rate, **kwargs)
    config = speech.make_config(sample_rate, **kwargs)
    if split not in ('train', 'validation'):
      raise ValueError(f'espeak_speech splits are train and validation; got '
                       f'{split!r}')
    return TfdsAudioSource(f'{name}/{config.name}', split, data_dir=data_dir,
                           sample_rate=sample_rate)
  return TfdsAudioSource(name, split, data_dir=data_dir, audio_key=audio_key)


# --------------------------------------------------------------------------
# grain transforms.
# --------------------------------------------------------------------------
class _TrainCrop(grain.transforms.RandomMap):
  """Record -> {'audio': float32 [L]}: a random crop (zero-padded if short)."""

  def __init__(self, sample_rate: int, length: int, load_kwargs: dict):
    self._sr, self._len, self._kw = sample_rate, length, load_kwargs

  def random_map(self, element, rng: np.random.Generator):
    x = load_waveform(element, self._sr, **self._kw)
    if len(x) >= self._len:
      start = int(rng.integers(len(x) - self._len + 1))
      x = x[start:start + self._len]
    else:
      x = np.pad(x, (0, self._len - len(x)))
    return {'audio': np.ascontiguousarray(x, np.float32)}


class _EvalPad(grain.transforms.Map):
  """Record -> {'audio': [L] zero-padded, 'length', 'mask': True}."""

  def __init__(self, sample_rate: int, length: int, load_kwargs: dict):
    self._sr, self._len, self._kw = sample_rate, length, load_kwargs

  def map(self, element):
    x = load_waveform(element, self._sr, **self._kw)
    if len(x) > self._len:
      raise ValueError(
          f'{element.get("id", "audio")}: {len(x)} samples is longer than '
          f'eval_length={self._len}; raise eval_length (evaluation uses whole '
          'utterances)')
    return {'audio': np.pad(x, (0, self._len - len(x))).astype(np.float32),
            'length': np.int32(len(x)), 'mask': np.bool_(True)}


class _Blank(grain.transforms.Map):

  def __init__(self, length: int):
    self._len = length

  def map(self, element):
    del element
    return {'audio': np.zeros((self._len,), np.float32),
            'length': np.int32(0), 'mask': np.bool_(False)}


def longest(src, sample_rate: int, load_kwargs: dict | None = None) -> int:
  """Samples of the longest utterance of a source at `sample_rate`."""
  kw = load_kwargs or {}
  return max(len(load_waveform(src[i], sample_rate, **kw))
             for i in range(len(src)))


def make_audio_dataset(
    source: str | Any = 'espeak_speech',
    *,
    train: bool = True,
    split: str | None = None,
    sample_rate: int = 16000,
    crop_length: int = 8000,
    global_batch_size: int = 16,
    seed: int = 0,
    num_epochs: int | None = None,
    eval_length: int | None = None,
    pad_multiple: int = 1,
    data_dir: str | os.PathLike | None = None,
    audio_key: str = 'audio',
    val_fraction: float = 0.1,
    espeak_kwargs: dict[str, Any] | None = None,
    channels: str = 'error',
    allow_upsample: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 4,
    prefetch_buffer_size: int = 4,
    num_workers: int = 0,
) -> grain.IterDataset:
  """A grain dataset of audio batches for training or evaluation.

  Args:
    source: a name (see module doc) or a random-access source of records.
    train: random crops, shuffled and repeated; else one ordered pass of
      whole utterances, padded, with 'length' and 'mask'.
    split: default 'train' when training, else 'validation'.
    sample_rate: Hz; every record is converted to it.
    crop_length: L in training (samples).
    global_batch_size: B over all processes.
    seed: shuffle and crop seed.
    num_epochs: None repeats forever.
    eval_length: padded utterance length in evaluation; None: the split's
      longest utterance rounded up to `pad_multiple`.
    pad_multiple: eval_length is rounded up to a multiple of it (the hop).
    data_dir: TFDS data dir.
    audio_key: audio feature of a TFDS dataset.
    val_fraction: share of a folder's files in 'validation'.
    espeak_kwargs: `build_espeak_speech` arguments (num_sentences, seed).
    channels: 'error' or 'mean' for multi-channel audio.
    allow_upsample: accept audio below `sample_rate`.
    process_index, process_count: multi-host layout (default jax's).
    num_threads, prefetch_buffer_size, num_workers: grain reading options.
  """
  process_index, process_count, per_process = images_lib._process_layout(  # pylint: disable=protected-access
      global_batch_size, process_index, process_count)
  if split is None:
    split = 'train' if train else 'validation'
  if isinstance(source, str):
    src = get_audio_source(source, split, sample_rate=sample_rate,
                           data_dir=data_dir, audio_key=audio_key,
                           val_fraction=val_fraction, seed=seed,
                           espeak_kwargs=espeak_kwargs)
  else:
    src = source
  n = len(src)
  if n == 0:
    raise ValueError(f'audio source {source!r} split {split!r} is empty')
  load_kw = dict(channels=channels, allow_upsample=allow_upsample)
  ds = grain.MapDataset.source(src)
  if train:
    if crop_length < 1:
      raise ValueError(f'crop_length must be >= 1; got {crop_length}')
    shuffle_seed, crop_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    ds = ds.shuffle(seed=shuffle_seed).repeat(num_epochs)
    ds = ds.random_map(_TrainCrop(sample_rate, crop_length, load_kw),
                       seed=crop_seed)
  else:
    if eval_length is None:
      eval_length = longest(src, sample_rate, load_kw)
    eval_length = -(-eval_length // pad_multiple) * pad_multiple
    ds = ds.map(_EvalPad(sample_rate, eval_length, load_kw))
    padding = -n % global_batch_size
    if padding:
      pad = grain.MapDataset.range(padding).map(_Blank(eval_length))
      ds = grain.MapDataset.concatenate([ds, pad])
  ds = ds.batch(per_process, drop_remainder=True)
  if process_count > 1:
    ds = ds.slice(slice(process_index, None, process_count))
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds
