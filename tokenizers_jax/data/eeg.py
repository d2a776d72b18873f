"""EEG data: synthetic recordings, EDF/BDF reading, a TFDS dataset, grain.

  from tokenizers_jax.data import eeg

  # Embedded default: deterministic synthetic recordings written to EDF, read
  # back through MNE and built once into the TFDS dataset
  # 'eeg_recordings/<config>' under default_data_dir() (no network, no TF).
  name, data_dir = eeg.build_dataset(eeg.make_config(channels=('Fp1', 'O1')))
  it = iter(eeg.make_eeg_dataset('synthetic', channels=('Fp1', 'O1'),
                                 num_patches=4, global_batch_size=8))
  batch = next(it)   # {'eeg': float32 [b, C, N*P], 'mask': bool [b, N]}

  # A folder of recordings (TUH EEG, PhysioNet EEGMMI, ...): 'folder:/path'.
  eeg.make_eeg_dataset('folder:/data/eegmmidb', channels=eeg.CHANNELS_1020)

Reading (`read_recording`): MNE reads the EDF/BDF file; channels are chosen by
name (case-insensitive, 'EEG '/'-REF'/'-LE' decorations and trailing dots
removed, old names T3/T4/T5/T6 mapped to T7/T8/P7/P8); then the common
montage (average reference by default), band-pass (0.1-75 Hz), notch (50 Hz
and harmonics below Nyquist), resampling to 200 Hz, and scaling to units of
100 uV (as LaBraM and NeuroRVQ). Errors name the file and the problem: a
missing file, a truncated file (header size check), missing channels, a
sampling rate too low for the band-pass, NaN samples.

Synthetic recordings (`synthesize_recording`, in `eeg_synthetic.py`; channel
names in `eeg_montage.py`): 1/f^beta background with
spatially correlated sources, an occipital alpha rhythm (8-12 Hz) that waxes
and wanes, a central beta rhythm (18-25 Hz), transient focal gamma bursts
(30-45 Hz), frontal eye blinks and 50 Hz line noise, at 250 Hz (so reading
exercises resampling), seeded by (seed, recording index).

TFDS examples are segments of S patches ('eeg' float32 [C, S*P],
'valid_patches', 'recording', 'start_patch'); a recording's last segment is
zero-padded and `valid_patches` says how much of it is real. Splits are by
recording (hash of the relative file name; at least one recording in each).
Training windows are N random consecutive valid patches of a segment;
evaluation windows tile every segment (S/N per segment), padded and masked.

Dimension legend:
  C: channels; T: samples; P: patch size (200 = 1 s at 200 Hz)
  A: patches of a recording; S: patches per stored segment
  N: patches per window; B: global batch; b = B / process count
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Sequence

from absl import logging
import grain
import numpy as np
import tensorflow_datasets as tfds

from tokenizers_jax.data import images as images_lib
from tokenizers_jax.data import skimage_photos
# Montage and synthetic recordings live in their own modules; their names are
# part of this module's API too.
from tokenizers_jax.data.eeg_montage import CHANNELS_1020, ELECTRODES, canonical_name, electrode_index  # pylint: disable=unused-import,line-too-long
from tokenizers_jax.data.eeg_synthetic import SYNTHETIC_SFREQ, SYNTHETIC_VERSION, synthesize_recording, write_edf  # pylint: disable=unused-import,line-too-long

DATASET_NAME = 'eeg_recordings'
VERSION = '1.0.0'
SFREQ = 200.0
PATCH_SIZE = 200
RECORDING_EXTENSIONS = ('.edf', '.bdf')


# --------------------------------------------------------------------------
# Reading and preprocessing.
# --------------------------------------------------------------------------
def _check_file_size(path: pathlib.Path) -> None:
  """Raises when an EDF/BDF file is shorter than its header promises."""
  size = path.stat().st_size
  with open(path, 'rb') as f:
    head = f.read(256)
    if len(head) < 256:
      raise ValueError(f'{path}: not an EDF/BDF file (only {size} bytes)')
    try:
      header_bytes = int(head[184:192].decode('ascii').strip())
      n_records = int(head[236:244].decode('ascii').strip())
      n_signals = int(head[252:256].decode('ascii').strip())
    except ValueError as e:
      raise ValueError(f'{path}: unreadable EDF/BDF header ({e})') from e
    f.seek(256 + n_signals * 216)
    field = f.read(n_signals * 8)
  try:
    samples = [int(field[i * 8:(i + 1) * 8].decode('ascii').strip())
               for i in range(n_signals)]
  except ValueError as e:
    raise ValueError(f'{path}: truncated or corrupt EDF/BDF header') from e
  width = 3 if path.suffix.lower() == '.bdf' else 2
  expected = header_bytes + max(n_records, 0) * sum(samples) * width
  if n_records > 0 and size < expected:
    raise ValueError(
        f'{path}: truncated file: the header promises {n_records} data '
        f'records ({expected} bytes) but the file has {size} bytes')


def read_raw(path: str | os.PathLike) -> tuple[np.ndarray, float, list[str]]:
  """(data float64 [C, T] volts, sfreq, channel labels) of an EDF/BDF file."""
  import mne  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'EEG recording {str(path)!r} not found')
  suffix = path.suffix.lower()
  if suffix not in RECORDING_EXTENSIONS:
    raise ValueError(f'{path}: expected an {"/".join(RECORDING_EXTENSIONS)} '
                     'file')
  _check_file_size(path)
  reader = mne.io.read_raw_bdf if suffix == '.bdf' else mne.io.read_raw_edf
  try:
    raw = reader(path, preload=True, verbose='error')
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path}: cannot read the recording: {e}') from e
  return raw.get_data(), float(raw.info['sfreq']), list(raw.ch_names)


def preprocess(data: np.ndarray, sfreq: float, labels: Sequence[str],
               channels: Sequence[str] = CHANNELS_1020, *,
               target_sfreq: float = SFREQ, l_freq: float | None = 0.1,
               h_freq: float | None = 75.0, notch: float | None = 50.0,
               reference: str | None = 'average', scale: float = 1e4,
               source: str = 'recording') -> np.ndarray:
  """Selects, re-references, filters, resamples and scales; float32 [C, T'].

  Args:
    data: float [C_file, T] in volts.
    sfreq: its sampling rate (Hz).
    labels: its channel labels (matched to `channels` by canonical name).
    channels: wanted channels, in output order.
    target_sfreq: output rate (Hz).
    l_freq, h_freq: band-pass edges (Hz); None disables an edge.
    notch: line frequency (Hz; harmonics below Nyquist too) or None.
    reference: 'average' (common average over `channels`) or None.
    scale: multiplier after filtering (1e4: volts -> units of 100 uV).
    source: names the recording in errors.
  """
  import mne  # pylint: disable=g-import-not-at-top
  data = np.asarray(data, np.float64)
  if data.ndim != 2 or data.shape[0] != len(labels):
    raise ValueError(f'{source}: data of shape {data.shape} do not match '
                     f'{len(labels)} channel labels')
  lookup = {canonical_name(l).lower(): i for i, l in enumerate(labels)}
  missing = [c for c in channels if canonical_name(c).lower() not in lookup]
  if missing:
    raise ValueError(f'{source}: missing channels {missing}; the recording '
                     f'has {list(labels)}')
  x = data[[lookup[canonical_name(c).lower()] for c in channels]]
  bad = ~np.isfinite(x)
  if bad.any():
    ch, t = np.argwhere(bad)[0]
    raise ValueError(f'{source}: NaN or Inf samples ({int(bad.sum())} of '
                     f'them), first in channel {channels[ch]!r} at sample '
                     f'{t} ({t / sfreq:.3f} s)')
  nyquist = sfreq / 2
  if h_freq is not None and h_freq >= nyquist:
    raise ValueError(f'{source}: sampling rate {sfreq:g} Hz is too low for '
                     f'the {h_freq:g} Hz low-pass edge (Nyquist {nyquist:g} '
                     'Hz); use a lower h_freq or a recording sampled faster')
  if x.shape[1] < 2 * sfreq:
    secs = x.shape[1] / sfreq
    raise ValueError(f'{source}: only {x.shape[1]} samples ({secs:.2f} s); '
                     'need at least 2 s')
  if reference == 'average':
    x = x - x.mean(0, keepdims=True)
  elif reference is not None:
    raise ValueError(f"reference must be 'average' or None; got {reference!r}")
  if l_freq is not None or h_freq is not None:
    x = mne.filter.filter_data(x, sfreq, l_freq, h_freq, verbose='error')
  if notch:
    freqs = np.arange(notch, nyquist, notch)
    if h_freq is not None:
      freqs = freqs[freqs <= h_freq + notch / 2]
    if freqs.size:
      x = mne.filter.notch_filter(x, sfreq, freqs, verbose='error')
  if sfreq != target_sfreq:
    x = mne.filter.resample(x, up=target_sfreq, down=sfreq, verbose='error')
  return (x * scale).astype(np.float32)


def read_recording(path: str | os.PathLike,
                   channels: Sequence[str] = CHANNELS_1020, *,
                   expected_sfreq: float | None = None,
                   **kwargs) -> np.ndarray:
  """Reads and preprocesses one EDF/BDF recording; float32 [C, T] at 200 Hz.

  Args:
    path: .edf or .bdf file.
    channels: wanted channels, in output order.
    expected_sfreq: when set, a recording sampled at another rate is an
      error (corpora with one known rate).
    **kwargs: `preprocess` options.
  """
  data, sfreq, labels = read_raw(path)
  if expected_sfreq is not None and abs(sfreq - expected_sfreq) > 1e-6:
    raise ValueError(f'{path}: sampling rate {sfreq:g} Hz, expected '
                     f'{expected_sfreq:g} Hz')
  return preprocess(data, sfreq, labels, channels, source=str(path), **kwargs)


def to_patches(x: np.ndarray, patch_size: int = PATCH_SIZE
               ) -> tuple[np.ndarray, int]:
  """[C, T] -> ([C, A, P] with A = T // P, number of trailing samples cut)."""
  c, t = x.shape
  a = t // patch_size
  return x[:, :a * patch_size].reshape(c, a, patch_size), t - a * patch_size


# --------------------------------------------------------------------------
# TFDS dataset.
# --------------------------------------------------------------------------
@dataclasses.dataclass(eq=False, kw_only=True)
class EegConfig(tfds.core.BuilderConfig):
  """One build of `eeg_recordings`: a folder (or the synthetic set) + options.

  `folder=''` means the embedded synthetic recordings (`num_recordings` of
  `seconds`, `seed`), written as EDF under data_dir first. A recording that
  cannot be used (missing channels, too low a sampling rate, NaN, truncated)
  stops the build with its error, or is skipped with a logged warning naming
  it when `skip_bad_recordings` (large corpora).
  """
  folder: str = ''
  channels: tuple[str, ...] = CHANNELS_1020
  segment_patches: int = 16
  patch_size: int = PATCH_SIZE
  l_freq: float = 0.1
  h_freq: float = 75.0
  notch: float = 50.0
  reference: str = 'average'
  val_fraction: float = 0.2
  num_recordings: int = 16
  seconds: int = 60
  seed: int = 0
  skip_bad_recordings: bool = False


def make_config(folder: str = '', channels: Sequence[str] = CHANNELS_1020,
                **kwargs) -> EegConfig:
  """An `EegConfig` named by a hash of its settings ('synthetic_<h>'...)."""
  cfg = EegConfig(name='tmp', folder=os.path.abspath(folder) if folder else '',
                  channels=tuple(channels), **kwargs)
  for c in cfg.channels:
    electrode_index(c)
  if cfg.segment_patches < 1 or cfg.patch_size < 8:
    raise ValueError('segment_patches must be >= 1 and patch_size >= 8')
  fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EegConfig)
            if f.name in EegConfig.__annotations__}
  if not folder:
    fields['synthetic_version'] = SYNTHETIC_VERSION
  digest = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()
  prefix = 'folder' if folder else 'synthetic'
  return dataclasses.replace(cfg, name=f'{prefix}_{digest[:10]}',
                             description=repr(fields))


def recording_split(relative_name: str, val_fraction: float) -> str:
  digest = hashlib.sha256(relative_name.encode('utf-8')).digest()
  u = int.from_bytes(digest[:8], 'big') / 2**64
  return 'validation' if u < val_fraction else 'train'


def split_recordings(names: Sequence[str], val_fraction: float
                     ) -> dict[str, list[str]]:
  """Hash split by recording; with >= 2 recordings neither split is empty."""
  out = {'train': [], 'validation': []}
  for n in sorted(names):
    out[recording_split(n, val_fraction)].append(n)
  if len(names) >= 2:
    for a, b in (('train', 'validation'), ('validation', 'train')):
      if not out[a]:  # Move the recording with the smallest hash.
        key = lambda n: hashlib.sha256(n.encode()).hexdigest()
        out[a].append(min(out[b], key=key))
        out[b].remove(out[a][-1])
  return out


def synthetic_folder(data_dir: str, cfg: EegConfig) -> pathlib.Path:
  """Writes the synthetic recordings as EDF (once) and returns their folder."""
  folder = (pathlib.Path(data_dir) / 'eeg_synthetic_edf' /
            f'v{SYNTHETIC_VERSION}_n{cfg.num_recordings}_s{cfg.seconds}'
            f'_seed{cfg.seed}')
  done = folder / 'DONE'
  if not done.exists():
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(cfg.num_recordings):
      x = synthesize_recording(cfg.seconds, seed=cfg.seed, index=i)
      tmp = folder / f'.rec_{i:03d}.edf.tmp'
      write_edf(tmp, x, CHANNELS_1020, SYNTHETIC_SFREQ)
      os.replace(tmp, folder / f'rec_{i:03d}.edf')
    done.touch()
  return folder


def list_recordings(folder: str | os.PathLike) -> list[str]:
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise FileNotFoundError(f'EEG folder {str(root)!r} does not exist')
  files = sorted(p.relative_to(root).as_posix() for p in root.rglob('*')
                 if p.suffix.lower() in RECORDING_EXTENSIONS and p.is_file())
  if not files:
    raise ValueError(f'EEG folder {str(root)!r} holds no .edf/.bdf files')
  return files


class EegRecordings(tfds.core.GeneratorBasedBuilder):
  """Preprocessed EEG segments from a folder of EDF/BDF recordings."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'Initial release.'}
  BUILDER_CONFIGS = []

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    shape = (len(cfg.channels), cfg.segment_patches * cfg.patch_size)
    return tfds.core.DatasetInfo(
        builder=self, description='EEG segments at 200 Hz, units of 100 uV.',
        features=tfds.features.FeaturesDict({
            'eeg': tfds.features.Tensor(shape=shape, dtype=np.float32),
            'valid_patches': tfds.features.Scalar(dtype=np.int32),
            'start_patch': tfds.features.Scalar(dtype=np.int32),
            'recording': tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    folder = cfg.folder  # build_dataset writes the synthetic EDFs first.
    splits = split_recordings(list_recordings(folder), cfg.val_fraction)
    return {s: self._generate_examples(folder, names)
            for s, names in splits.items()}

  def _generate_examples(self, folder, names):
    cfg = self.builder_config
    s, p = cfg.segment_patches, cfg.patch_size
    for name in names:
      try:
        x = read_recording(
            pathlib.Path(folder) / name, cfg.channels, l_freq=cfg.l_freq,
            h_freq=cfg.h_freq, notch=cfg.notch,
            reference=cfg.reference or None)
      except ValueError as e:
        if not cfg.skip_bad_recordings:
          raise
        logging.warning('Skipping recording %s: %s', name, e)
        continue
      patches, cut = to_patches(x, p)
      if cut:
        logging.info('%s: last %d samples (< 1 patch) not stored', name, cut)
      a = patches.shape[1]
      for k, start in enumerate(range(0, a, s)):
        seg = np.zeros((x.shape[0], s, p), np.float32)
        valid = min(s, a - start)
        seg[:, :valid] = patches[:, start:start + valid]
        yield f'{name}#{k}', {'eeg': seg.reshape(x.shape[0], s * p),
                              'valid_patches': valid, 'start_patch': start,
                              'recording': name}


def build_dataset(cfg: EegConfig, data_dir: str | None = None
                  ) -> tuple[str, str]:
  """Builds `eeg_recordings/<cfg.name>` once; returns (tfds name, data_dir)."""
  data_dir = skimage_photos.default_data_dir(data_dir)
  name = f'{DATASET_NAME}/{cfg.name}'
  final = pathlib.Path(data_dir) / DATASET_NAME / cfg.name / VERSION

  def make_builder(tmp):
    c = cfg
    if not c.folder:  # Synthetic EDFs live in data_dir, not the tmp dir.
      c = dataclasses.replace(c, folder=str(synthetic_folder(data_dir, c)))
    return EegRecordings(config=c, data_dir=str(tmp),
                         file_format='array_record')

  skimage_photos.build_once(
      data_dir, cfg.name, final, make_builder,
      lambda tmp: tmp / DATASET_NAME / cfg.name / VERSION)
  return name, data_dir


def get_source(source: str, split: str, cfg_kwargs: dict[str, Any],
               data_dir: str | None = None):
  """'synthetic' or 'folder:/path' -> a random-access TFDS data source."""
  if source == 'synthetic':
    cfg = make_config('', **cfg_kwargs)
  elif source.startswith('folder:'):
    cfg = make_config(source[len('folder:'):], **cfg_kwargs)
    list_recordings(cfg.folder)
  else:
    raise ValueError(f"EEG source must be 'synthetic' or 'folder:/path'; got "
                     f'{source!r}')
  _, data_dir = build_dataset(cfg, data_dir)
  builder = tfds.builder_from_directory(
      pathlib.Path(data_dir) / DATASET_NAME / cfg.name / VERSION)
  splits = builder.info.splits
  if split not in splits or not splits[split].num_examples:
    raise ValueError(f'{source}: split {split!r} is empty (too few '
                     'recordings for a train/validation split?)')
  return builder.as_data_source(split=split), cfg


# --------------------------------------------------------------------------
# grain pipelines.
# --------------------------------------------------------------------------
class _TrainWindow(grain.transforms.RandomMap):
  """Segment -> N random consecutive valid patches + patch mask."""

  def __init__(self, num_patches: int, patch_size: int):
    self._n, self._p = num_patches, patch_size

  def random_map(self, element, rng: np.random.Generator):
    x, valid = np.asarray(element['eeg']), int(element['valid_patches'])
    start = int(rng.integers(max(valid - self._n, 0) + 1))
    win = x[:, start * self._p:(start + self._n) * self._p]
    return {'eeg': np.ascontiguousarray(win, np.float32),
            'mask': np.arange(start, start + self._n) < valid}


class TilingWindows:
  """Random access over the windows that tile a split: window j of segment
  i is index i * (S / N) + j, {'eeg': float32 [C, N*P], 'mask': bool [N]}
  (False past the segment's valid patches)."""

  def __init__(self, src, num_patches: int, patch_size: int,
               segment_patches: int):
    self._src, self._n, self._p = src, num_patches, patch_size
    self._k = segment_patches // num_patches

  def __len__(self) -> int:
    return len(self._src) * self._k

  def __getitem__(self, index: int) -> dict:
    i, j = divmod(int(index), self._k)
    rec = self._src[i]
    start = j * self._n
    win = np.asarray(rec['eeg'])[:, start * self._p:(start + self._n) * self._p]
    return {'eeg': np.ascontiguousarray(win, np.float32),
            'mask': (np.arange(start, start + self._n)
                     < int(rec['valid_patches']))}


class _Blank(grain.transforms.Map):

  def __init__(self, shape, num_patches):
    self._shape, self._n = shape, num_patches

  def map(self, element):
    del element
    return {'eeg': np.zeros(self._shape, np.float32),
            'mask': np.zeros((self._n,), bool)}


def make_eeg_dataset(source: str = 'synthetic', *, train: bool = True,
                     channels: Sequence[str] = CHANNELS_1020,
                     num_patches: int = 4, global_batch_size: int = 16,
                     seed: int = 0, data_dir: str | None = None,
                     dataset: dict[str, Any] | None = None,
                     process_index: int | None = None,
                     process_count: int | None = None) -> grain.IterDataset:
  """Batches of EEG windows: {'eeg': float32 [b, C, N*P], 'mask': bool [b, N]}.

  Args:
    source: 'synthetic' (the embedded set) or 'folder:/path'.
    train: random windows, shuffled and repeated; else one ordered pass of
      tiling windows, the last global batch padded with all-masked windows.
    channels: channel names, in order.
    num_patches: N; must divide the stored segment length S.
    global_batch_size: B.
    seed: shuffle/window seed.
    data_dir: TFDS data dir (default `default_data_dir()`).
    dataset: other `EegConfig` fields (segment_patches, num_recordings, ...).
    process_index, process_count: default jax's.
  """
  layout = images_lib._process_layout  # pylint: disable=protected-access
  pi, pc, per = layout(global_batch_size, process_index, process_count)
  src, cfg = get_source(source, 'train' if train else 'validation',
                        dict(dataset or {}, channels=tuple(channels)), data_dir)
  if num_patches < 1 or cfg.segment_patches % num_patches:
    raise ValueError(f'num_patches={num_patches} must divide the stored '
                     f'segment length {cfg.segment_patches}')
  if train:
    s1, s2 = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    ds = grain.MapDataset.source(src).shuffle(seed=s1).repeat(None)
    ds = ds.random_map(_TrainWindow(num_patches, cfg.patch_size), seed=s2)
  else:
    windows = TilingWindows(src, num_patches, cfg.patch_size,
                            cfg.segment_patches)
    n = len(windows)
    ds = grain.MapDataset.source(windows)
    pad = -n % global_batch_size
    if pad:
      shape = (len(channels), num_patches * cfg.patch_size)
      ds = grain.MapDataset.concatenate(
          [ds, grain.MapDataset.range(pad).map(_Blank(shape, num_patches))])
  ds = ds.batch(per, drop_remainder=True)
  if pc > 1:
    ds = ds.slice(slice(pi, None, pc))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                              prefetch_buffer_size=2))
