"""Pretokenized datasets: token ids of a trained tokenizer in ArrayRecord
shards, written resumably and read back with grain.

  stats = pretokenize(tok, '/data/tokens', split='train', flip=True)
  src = TokenSource('/data/tokens', 'train')   # grain random access
  src[0]   # {'tokens': int32 [*token_shape], 'label', 'index', 'flip'}
  ds = make_token_dataset('/data/tokens', train=True, global_batch_size=64)
  manifest = read_manifest('/data/tokens')

Layout of an output directory:

  manifest.json                       tokenizer workdir and step, codebook
                                      size, token shape, per-split counts
                                      and per-shard counts
  {split}-p{i:03d}of{n:03d}-{k:05d}.array_record
                                      shard k of process i of n
  {split}-p{i:03d}of{n:03d}.progress.json
                                      what process i has finished

Process i of n encodes the examples i::n of the split, in order, in shards
of `shard_size` examples (each example gives one record, or two with
`flip`: the image then its horizontal mirror). A shard is written to a
temporary file and renamed when complete, so a shard file that exists is
whole; the progress file is rewritten (atomically) after every shard. A
rerun of the same command after a crash (kill -9 included) skips the
shards that exist and starts with the first missing one: no example is lost
or written twice. A rerun with other settings (shard size, flip, process
count) than the unfinished run is refused.

Records are self-describing bytes, no pickle: b'TOK1', a uint32 header
length, a JSON header {'index', 'flip', 'label', 'shape'} and the int32
token ids (little endian). EEG records add to the header the window's two
signal statistics ('stats', float32 values that `Tokenizer.decode` takes
for an exact reconstruction) and 'patch_valid' (which of the window's
patches hold signal; a recording's last window can end in padding).

What an example is, by the tokenizer run's task: an image of its data
source (centre-cropped), an audio utterance (whole), or an EEG window of
`data.num_patches` patches (the windows that tile each stored segment, as
its evaluation reads them; windows that lie wholly in a segment's padding
hold no signal and are not examples).

Dimension legend:
  B: global batch; b = B / P per process; P: processes
  T: tokens of an example along its positions (L = prod of the grid)
  Q: token levels per position (RVQ levels, FQGAN heads), absent when 1
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import struct
import time
from typing import Any, Callable, Iterator

import grain
import numpy as np

_MAGIC = b'TOK1'
MANIFEST = 'manifest.json'
SPLITS = ('train', 'validation')
_SHARD_RE = re.compile(r'^(?P<split>[a-z]+)-p(?P<p>\d{3})of(?P<n>\d{3})-'
                       r'(?P<k>\d{5})\.array_record$')


# -----------------------------------------------------------------------------
# Records.
# -----------------------------------------------------------------------------


def encode_record(tokens: np.ndarray, *, index: int, flip: bool = False,
                  label: int = -1, stats: np.ndarray | None = None,
                  patch_valid: np.ndarray | None = None) -> bytes:
  """One example's token ids (any shape) as record bytes (EEG: with the
  window's `stats` [2] and `patch_valid` bool [A])."""
  tokens = np.ascontiguousarray(tokens, dtype='<i4')
  header = {'index': int(index), 'flip': bool(flip), 'label': int(label),
            'shape': list(tokens.shape)}
  if stats is not None:
    stats = np.asarray(stats, np.float32)
    if not np.all(np.isfinite(stats)):
      raise ValueError(f'example {index}: non-finite signal statistics '
                       f'{stats.tolist()}')
    # float32 -> float -> JSON (shortest repr) -> float32 is exact.
    header['stats'] = [float(v) for v in stats.reshape(-1)]
  if patch_valid is not None:
    header['patch_valid'] = [bool(v) for v in np.asarray(patch_valid)]
  header = json.dumps(header).encode()
  return _MAGIC + struct.pack('<I', len(header)) + header + tokens.tobytes()


def decode_record(data: bytes) -> dict[str, Any]:
  """Record bytes -> {'tokens': int32 [*shape], 'label', 'index', 'flip'}
  (+ 'stats' float32 [2], 'patch_valid' bool [A] for EEG)."""
  if data[:4] != _MAGIC:
    raise ValueError('not a token record (bad magic); was this file written '
                     'by tokenizers_jax.pretokenize?')
  (n,) = struct.unpack('<I', data[4:8])
  header = json.loads(data[8:8 + n])
  tokens = np.frombuffer(data[8 + n:], dtype='<i4').reshape(header['shape'])
  out = {'tokens': tokens.astype(np.int32),
         'label': np.int32(header['label']),
         'index': np.int32(header['index']),
         'flip': np.bool_(header['flip'])}
  if 'stats' in header:
    out['stats'] = np.asarray(header['stats'], np.float32)
  if 'patch_valid' in header:
    out['patch_valid'] = np.asarray(header['patch_valid'], bool)
  return out


# -----------------------------------------------------------------------------
# Files.
# -----------------------------------------------------------------------------


def shard_name(split: str, k: int, process_index: int,
               process_count: int) -> str:
  return (f'{split}-p{process_index:03d}of{process_count:03d}-{k:05d}'
          '.array_record')


def progress_name(split: str, process_index: int, process_count: int) -> str:
  return f'{split}-p{process_index:03d}of{process_count:03d}.progress.json'


def _write_json_atomic(path: str, obj) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _write_shard_atomic(path: str, records: list[bytes]) -> None:
  """All records into `path` or nothing: written to a temporary name,
  closed, then renamed."""
  from array_record.python import array_record_module as ar  # pylint: disable=g-import-not-at-top
  tmp = f'{path}.tmp{os.getpid()}'
  writer = ar.ArrayRecordWriter(tmp, 'group_size:1')
  for r in records:
    writer.write(r)
  writer.close()
  fd = os.open(tmp, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
  os.replace(tmp, path)


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: is {directory} the output of `python -m '
        'tokenizers_jax.pretokenize`?')
  with open(path) as f:
    return json.load(f)


def shard_paths(directory: str, split: str) -> list[str]:
  """The split's shard files, ordered by (process, shard)."""
  names = []
  for path in glob.glob(os.path.join(directory, f'{split}-p*.array_record')):
    m = _SHARD_RE.match(os.path.basename(path))
    if m and m['split'] == split:
      names.append((int(m['p']), int(m['k']), path))
  return [p for _, _, p in sorted(names)]


# -----------------------------------------------------------------------------
# What gets tokenized: a tokenizer run's own data, in a fixed order.
# -----------------------------------------------------------------------------


class ImageExamples:
  """A split of an image source as {'input': float32 [S, S, 3] in [-1, 1],
  'label': int}: centre-cropped to the tokenizer's image size, labels from
  the source where it has them (TFDS 'label'; for the embedded photos, the
  photograph's index in `skimage_photos.PHOTOS`), else -1."""

  def __init__(self, data_cfg, split: str):
    from tokenizers_jax.data import skimage_photos  # pylint: disable=g-import-not-at-top
    from tokenizers_jax.data import sources  # pylint: disable=g-import-not-at-top
    self._size = int(data_cfg['image_size'])
    name = data_cfg['source']
    data_dir = data_cfg.get('data_dir')
    self.num_classes = 0
    self._label_key = None
    self._names = None
    if name == skimage_photos.DATASET_NAME:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      data_dir = skimage_photos.build_skimage_photos(data_dir, self._size)
      cfg = skimage_photos.make_config(self._size)
      self._src = tfds.builder(f'{name}/{cfg.name}', data_dir=data_dir
                               ).as_data_source(split=split)
      self._names = list(skimage_photos.PHOTOS)
      self._label_key = 'source'
      self.num_classes = len(self._names)
    else:
      src = sources.get_source(name, split, image_size=self._size,
                               data_dir=data_dir)
      self._src = src
      if isinstance(src, sources.TfdsSource):
        features = src._ds.dataset_info.features  # pylint: disable=protected-access
        if 'label' in features:
          self._src = src._ds  # pylint: disable=protected-access
          self._label_key = 'label'
          self.num_classes = int(features['label'].num_classes)

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i: int) -> dict:
    from tokenizers_jax.data import images  # pylint: disable=g-import-not-at-top
    rec = self._src[int(i)]
    label = -1
    if self._label_key == 'source':
      label = self._names.index(rec['source'].decode())
    elif self._label_key == 'label':
      label = int(rec['label'])
    image = images.to_rgb_uint8(rec['image'], str(rec.get('id', i)))
    image = images.fit_image(image, self._size, 'center', None,
                             str(rec.get('id', i)))
    return {'input': images.normalize(image), 'label': np.int32(label)}


class AudioExamples:
  """A split of an audio source as {'input': float32 [N], 'label': -1} at
  the tokenizer's sample rate (whole utterances)."""

  num_classes = 0

  def __init__(self, data_cfg, split: str):
    from tokenizers_jax.data import audio  # pylint: disable=g-import-not-at-top
    self._rate = int(data_cfg['sample_rate'])
    kwargs = {}
    if 'num_sentences' in data_cfg:
      kwargs['espeak_kwargs'] = dict(num_sentences=data_cfg['num_sentences'])
    self._src = audio.get_audio_source(
        data_cfg['source'], split, sample_rate=self._rate,
        data_dir=data_cfg.get('data_dir'), **kwargs)
    self._load = audio.load_waveform

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i: int) -> dict:
    x = self._load(self._src[int(i)], self._rate)
    return {'input': x.astype(np.float32), 'label': np.int32(-1)}


class EegExamples:
  """A split of an EEG source as windows {'input': float32 [C, A*P],
  'mask': bool [A], 'label': -1}: the windows of `data.num_patches` patches
  that tile every stored segment (the tokenizer's evaluation windows),
  without those that lie wholly in a segment's padding."""

  num_classes = 0

  def __init__(self, data_cfg, split: str):
    from tokenizers_jax.data import eeg  # pylint: disable=g-import-not-at-top
    src, cfg = eeg.get_source(
        data_cfg['source'], split,
        dict(data_cfg.get('dataset') or {},
             channels=tuple(data_cfg['channels'])),
        data_cfg.get('data_dir'))
    n = int(data_cfg['num_patches'])
    if n < 1 or cfg.segment_patches % n:
      raise ValueError(f'data.num_patches={n} must divide the stored '
                       f'segment length {cfg.segment_patches}')
    self._windows = eeg.TilingWindows(src, n, cfg.patch_size,
                                      cfg.segment_patches)
    per = cfg.segment_patches // n
    self._index = [i * per + j for i in range(len(src))
                   for j in range(per)
                   if j * n < int(src[i]['valid_patches'])]

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i: int) -> dict:
    w = self._windows[self._index[int(i)]]
    return {'input': w['eeg'], 'mask': w['mask'], 'label': np.int32(-1)}


def tokenizer_examples(config, split: str, *, source: str | None = None,
                       data_dir: str | None = None):
  """The examples a tokenizer run (its config) was trained and evaluated
  on, or those of another `source` of its modality (the names its task's
  `data.source` takes: a TFDS name, 'folder:/path', ...) prepared as the
  tokenizer's own (image size, sample rate, channels, window)."""
  task = config.get('task', 'image')
  data = config.data.to_dict() if hasattr(config.data, 'to_dict') else dict(
      config.data)
  if source:
    data['source'] = source
  if data_dir:
    data['data_dir'] = data_dir
  if task == 'image':
    return ImageExamples(data, split)
  if task == 'audio':
    return AudioExamples(data, split)
  if task == 'eeg':
    return EegExamples(data, split)
  raise ValueError(f'pretokenize supports image, audio and EEG tokenizers; '
                   f'this one is {task!r}')


def token_layout(tok, ids: np.ndarray) -> dict:
  """Static facts of a tokenizer's ids [B, ...]: grid, levels, order."""
  model = tok.model
  if tok.modality == 'image':
    grid_rank = 1 if getattr(model, 'one_dimensional', False) else 2
  elif tok.modality == 'eeg':
    grid_rank = 3  # [C, A, G]: channels, patches, scale branches.
  else:
    grid_rank = 1
  shape = list(ids.shape[1:])
  grid, rest = shape[:grid_rank], shape[grid_rank:]
  if len(rest) > 1:
    raise ValueError(f'token ids of shape {ids.shape}: expected [B, *grid] '
                     'or [B, *grid, Q]')
  qname = (tok.config.quantizer.get('name') if 'quantizer' in tok.config
           else None)
  return {
      'grid_shape': grid,
      'token_shape': shape,
      'num_levels': int(rest[0]) if rest else 1,
      'level_kind': ('none' if not rest else
                     'residual' if qname == 'rvq' else 'groups'),
      'order': ('raster' if grid_rank == 2 and tok.modality == 'image'
                else 'tokenizer'),
  }


# -----------------------------------------------------------------------------
# Writing.
# -----------------------------------------------------------------------------


def _encode_images(tok, x: np.ndarray, batch_size: int) -> np.ndarray:
  """Encodes a batch padded to `batch_size` (one compiled shape)."""
  n = x.shape[0]
  if n < batch_size:
    x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:],
                                    x.dtype)])
  return np.asarray(tok.encode(x))[:n]


def _encode_audio(tok, x: np.ndarray, bucket_frames: int = 50) -> np.ndarray:
  """One utterance [N] -> ids [T(, Q)], T = ceil(N / hop): padded to whole
  buckets of frames so that few shapes compile."""
  hop = int(tok.model.hop)
  frames = math.ceil(x.shape[0] / hop)
  padded = math.ceil(frames / bucket_frames) * bucket_frames * hop
  xp = np.zeros((1, padded), np.float32)
  xp[0, :x.shape[0]] = x
  return np.asarray(tok.encode(xp))[0, :frames]


def pretokenize(tok, output: str, *, split: str = 'train',
                flip: bool = False, batch_size: int = 64,
                shard_size: int = 1024, process_index: int | None = None,
                process_count: int | None = None,
                source: str | None = None, data_dir: str | None = None,
                examples=None, log: Callable[[str], None] = print,
                stop_after_shards: int | None = None) -> dict:
  """Encodes every example of the tokenizer run's `split` into `output`.

  Args:
    tok: a `models.Tokenizer` (e.g. `Tokenizer.from_workdir(dir)`).
    output: the output directory (created).
    split: 'train' or 'validation'.
    flip: images: also encode each image's horizontal mirror.
    batch_size: examples per encode call (images).
    shard_size: examples per shard (the unit of resumption).
    process_index, process_count: this process's share (examples i::n);
      default jax's.
    source, data_dir: another dataset than the tokenizer's `data.source`
      (see `tokenizer_examples`).
    examples: the examples (default `tokenizer_examples(tok.config, split,
      source=source, data_dir=data_dir)`).
    log: progress lines.
    stop_after_shards: stop after writing that many shards in this call
      (tests).

  Returns:
    {'records', 'examples', 'shards', 'seconds', 'records_per_sec',
     'complete'} for this process and this call.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  if flip and tok.modality != 'image':
    raise ValueError('--flip is for image tokenizers')
  if examples is None:
    examples = tokenizer_examples(tok.config, split, source=source,
                                  data_dir=data_dir)
  if not source and tok.config is not None:
    source = tok.config.data.get('source')
  os.makedirs(output, exist_ok=True)
  n_total = len(examples)
  mine = list(range(process_index, n_total, process_count))
  num_shards = max(1, math.ceil(len(mine) / shard_size))
  settings = {'split': split, 'flip': bool(flip), 'shard_size': shard_size,
              'process_index': process_index, 'process_count': process_count,
              'num_examples': n_total, 'source': source,
              'tokenizer_workdir': tok_workdir(tok),
              'tokenizer_step': tok.step}
  prog_path = os.path.join(output, progress_name(split, process_index,
                                                 process_count))
  counts, prev_layout = {}, None
  if os.path.exists(prog_path):
    with open(prog_path) as f:
      prev = json.load(f)
    differs = {k: (prev['settings'].get(k), v) for k, v in settings.items()
               if prev['settings'].get(k) != v}
    if differs:
      raise ValueError(
          f'{output} holds an unfinished or finished run with other settings '
          f'({differs}, as (before, now)); use another --output or the same '
          'settings')
    counts = dict(prev.get('shard_counts', {}))
    prev_layout = prev.get('layout')
  # Partial shards and progress files of a killed run of this process (once
  # here, not per write: each write would list the whole output folder).
  prefix = glob.escape(
      f'{split}-p{process_index:03d}of{process_count:03d}')
  for tmp in glob.glob(os.path.join(glob.escape(output),
                                    f'{prefix}[-.]*.tmp*')):
    os.remove(tmp)
  done = {os.path.basename(p) for p in shard_paths(output, split)}
  layout = prev_layout
  t0, n_rec, n_ex, n_shards = time.time(), 0, 0, 0
  for k in range(num_shards):
    name = shard_name(split, k, process_index, process_count)
    if name in done:
      if name not in counts:  # Renamed, killed before the progress write.
        counts[name] = _count_records(os.path.join(output, name))
      continue
    if stop_after_shards is not None and n_shards >= stop_after_shards:
      break
    idx = mine[k * shard_size:(k + 1) * shard_size]
    records, new_layout = _encode_shard(tok, examples, idx, flip, batch_size)
    layout = layout or new_layout
    _write_shard_atomic(os.path.join(output, name), records)
    counts[name] = len(records)
    n_rec += len(records)
    n_ex += len(idx)
    n_shards += 1
    complete = len(counts) == num_shards
    _write_json_atomic(prog_path, {
        'settings': settings, 'num_shards': num_shards,
        'shard_counts': counts, 'complete': complete,
        'layout': layout})
    dt = time.time() - t0
    log(f'{split}: shard {k + 1}/{num_shards} ({len(records)} records), '
        f'{n_rec / max(dt, 1e-9):.1f} records/s')
  complete = len(counts) == num_shards
  if n_shards == 0:  # Nothing new (already done): refresh the progress file.
    _write_json_atomic(prog_path, {
        'settings': settings, 'num_shards': num_shards,
        'shard_counts': counts, 'complete': complete,
        'layout': layout})
  dt = time.time() - t0
  return {'records': n_rec, 'examples': n_ex, 'shards': n_shards,
          'seconds': dt, 'records_per_sec': n_rec / max(dt, 1e-9),
          'examples_per_sec': n_ex / max(dt, 1e-9), 'complete': complete,
          'num_classes': int(getattr(examples, 'num_classes', 0))}


def tok_workdir(tok) -> str | None:
  return getattr(tok, 'workdir', None)


def _count_records(path: str) -> int:
  from array_record.python import array_record_module as ar  # pylint: disable=g-import-not-at-top
  r = ar.ArrayRecordReader(path)
  try:
    return int(r.num_records())
  finally:
    r.close()


def _encode_shard(tok, examples, idx: list[int], flip: bool,
                  batch_size: int) -> tuple[list[bytes], dict]:
  """The records of the examples `idx` (in order; with flip, each image
  then its mirror) and the token layout."""
  records, layout = [], None
  if tok.modality == 'image':
    for start in range(0, len(idx), batch_size):
      chunk = idx[start:start + batch_size]
      items = [examples[i] for i in chunk]
      x = np.stack([it['input'] for it in items])
      ids = _encode_images(tok, x, batch_size)
      ids_f = (_encode_images(tok, x[:, :, ::-1], batch_size) if flip
               else None)
      layout = layout or token_layout(tok, ids)
      for j, i in enumerate(chunk):
        label = int(items[j]['label'])
        records.append(encode_record(ids[j], index=i, label=label))
        if flip:
          records.append(encode_record(ids_f[j], index=i, flip=True,
                                       label=label))
  elif tok.modality == 'eeg':
    for start in range(0, len(idx), batch_size):
      chunk = idx[start:start + batch_size]
      items = [examples[i] for i in chunk]
      x = np.stack([it['input'] for it in items])
      mask = np.stack([it['mask'] for it in items])
      n = x.shape[0]
      if n < batch_size:  # One compiled shape: pad with masked blanks.
        x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:],
                                        x.dtype)])
        mask = np.concatenate([mask, np.zeros((batch_size - n,)
                                              + mask.shape[1:], bool)])
      ids, stats = tok.encode_with_stats(x, mask)
      ids, stats = np.asarray(ids)[:n], np.asarray(stats)[:n]
      layout = layout or token_layout(tok, ids)
      for j, i in enumerate(chunk):
        records.append(encode_record(ids[j], index=i, label=-1,
                                     stats=stats[j], patch_valid=mask[j]))
  else:
    for i in idx:
      item = examples[i]
      ids = _encode_audio(tok, item['input'])
      layout = layout or token_layout(tok, ids[None])
      records.append(encode_record(ids, index=i, label=int(item['label'])))
  return records, layout


def write_manifest(output: str, tok, split: str, *, flip: bool,
                   num_classes: int, extra: dict | None = None) -> dict:
  """Merges `split`'s entry (every process's progress) into manifest.json.

  Raises ValueError when a process has not finished the split, or when the
  manifest was written for another tokenizer."""
  progs = sorted(glob.glob(os.path.join(output, f'{split}-p*.progress.json')))
  if not progs:
    raise FileNotFoundError(f'no progress files for {split!r} in {output}')
  shards, layout, sources = {}, None, set()
  for path in progs:
    with open(path) as f:
      prog = json.load(f)
    if not prog['complete']:
      raise ValueError(f'{path}: that process has not finished {split!r}')
    shards.update(prog['shard_counts'])
    layout = layout or prog.get('layout')
    sources.add(prog['settings'].get('source'))
  if len(sources) > 1:
    raise ValueError(f'{output}: the processes of {split!r} encoded other '
                     f'sources ({sorted(map(str, sources))})')
  if layout is None:
    first = shard_paths(output, split)[0]
    from array_record.python import array_record_module as ar  # pylint: disable=g-import-not-at-top
    r = ar.ArrayRecordReader(first)
    rec = decode_record(r.read([0])[0])
    r.close()
    layout = token_layout(tok, rec['tokens'][None])
  model = tok.model
  entry = {
      'tokenizer_workdir': tok_workdir(tok),
      'tokenizer_step': tok.step,
      'modality': tok.modality,
      'codebook_size': int(model.codebook_size),
      'codebook_sizes': [int(model.codebook_size)] * layout['num_levels'],
      **layout,
      'num_classes': int(num_classes),
  }
  if tok.modality == 'image':
    entry['image_size'] = int(tok.config.data.image_size)
  elif tok.modality == 'eeg':
    c, a, g = layout['grid_shape']
    d = tok.config.data
    patch = int(model.patch_size)
    from tokenizers_jax.data import eeg  # pylint: disable=g-import-not-at-top
    sfreq = float(eeg.SFREQ)  # Every recording is resampled to it.
    entry['channels'] = list(d.channels)
    entry['patch_size'] = patch
    entry['sfreq'] = sfreq
    entry['window_seconds'] = a * patch / sfreq
    # Positions per second of signal: C * G per patch of P samples.
    entry['tokens_per_second'] = c * g * sfreq / patch
  else:
    # Utterances: variable length.
    entry['grid_shape'] = [None]
    entry['token_shape'] = [None] + list(entry['token_shape'][1:])
    entry['sample_rate'] = int(model.sample_rate)
    entry['hop'] = int(model.hop)
    entry['tokens_per_second'] = float(model.sample_rate / model.hop)
  path = os.path.join(output, MANIFEST)
  manifest = {}
  if os.path.exists(path):
    with open(path) as f:
      manifest = json.load(f)
    for key in ('tokenizer_workdir', 'tokenizer_step', 'codebook_size',
                'token_shape'):
      if key in manifest and manifest[key] != entry[key]:
        raise ValueError(
            f'{path} was written for another tokenizer ({key}: '
            f'{manifest[key]!r} there, {entry[key]!r} now); use another '
            '--output')
  labels = set()
  for shard in shard_paths(output, split):
    src = grain.sources.ArrayRecordDataSource([shard])
    for i in range(len(src)):
      labels.add(int(decode_record(src[i])['label']))
  splits = dict(manifest.get('splits', {}))
  splits[split] = {'count': int(sum(shards.values())), 'flip': bool(flip),
                   'source': sources.pop(),
                   'labels': sorted(l for l in labels if l >= 0),
                   'shards': dict(sorted(shards.items()))}
  manifest.update(entry, splits=splits, **(extra or {}))
  for tmp in glob.glob(glob.escape(path) + '.tmp*'):
    os.remove(tmp)  # A killed manifest write (process 0 is its one writer).
  _write_json_atomic(path, manifest)
  return manifest


# -----------------------------------------------------------------------------
# Reading.
# -----------------------------------------------------------------------------


class TokenSource:
  """Random access over a split's shards (a grain RandomAccessDataSource):
  records {'tokens': int32 [*token_shape], 'label': int32, 'index': int32,
  'flip': bool}, ordered by (process, shard, position)."""

  def __init__(self, directory: str, split: str = 'train'):
    self.manifest = read_manifest(directory)
    if split not in self.manifest.get('splits', {}):
      raise ValueError(f'{directory} has no pretokenized {split!r} split; '
                       f'it has {sorted(self.manifest.get("splits", {}))}')
    paths = shard_paths(directory, split)
    want = self.manifest['splits'][split]['shards']
    names = [os.path.basename(p) for p in paths]
    if sorted(names) != sorted(want):
      raise ValueError(f'{directory}: the {split!r} shards on disk '
                       f'({len(names)}) are not those of the manifest '
                       f'({len(want)})')
    self._src = grain.sources.ArrayRecordDataSource(paths)
    self._split = split
    if len(self._src) != self.manifest['splits'][split]['count']:
      raise ValueError(f'{directory}: {len(self._src)} records in the '
                       f'{split!r} shards, manifest says '
                       f'{self.manifest["splits"][split]["count"]}')

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i: int) -> dict:
    return decode_record(self._src[int(i)])

  def __repr__(self) -> str:
    return f'TokenSource({self._split!r}, n={len(self)})'


class _Crop(grain.transforms.RandomMap):
  """Variable-length tokens [T(, Q)] -> a window of `length` tokens (random
  when training, the start at evaluation), zero-padded with 'valid' False
  past the end."""

  def __init__(self, length: int, train: bool):
    self._len, self._train = length, train

  def random_map(self, element, rng: np.random.Generator):
    t = element['tokens']
    n = t.shape[0]
    start = int(rng.integers(n - self._len + 1)) if (
        self._train and n > self._len) else 0
    out = np.zeros((self._len,) + t.shape[1:], np.int32)
    piece = t[start:start + self._len]
    out[:piece.shape[0]] = piece
    valid = np.arange(self._len) < piece.shape[0]
    return dict(element, tokens=out, valid=valid)


def position_valid(tokens: np.ndarray, patch_valid: np.ndarray) -> np.ndarray:
  """EEG: bool [L] over the positions of tokens [C, A, G, Q] (row-major
  [C, A, G]) from the window's patch mask [A]."""
  c, a, g = tokens.shape[:3]
  return np.broadcast_to(np.asarray(patch_valid, bool)[None, :, None],
                         (c, a, g)).reshape(-1).copy()


class _Keep(grain.transforms.Map):

  def __init__(self, mask: bool):
    self._mask = mask

  def map(self, element):
    out = {'tokens': element['tokens'], 'label': element['label']}
    if 'valid' in element:
      out['valid'] = element['valid']
    elif 'patch_valid' in element:
      out['valid'] = position_valid(element['tokens'], element['patch_valid'])
    out['mask'] = np.bool_(self._mask)
    return out


def make_token_dataset(directory: str, *, split: str | None = None,
                       train: bool = True, global_batch_size: int = 64,
                       seed: int = 0, crop_tokens: int | None = None,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       num_threads: int = 2) -> grain.IterDataset:
  """Batches of pretokenized examples.

  Training: shuffle(seed), repeat, (crop), batch. Evaluation: one ordered
  pass padded to whole global batches with `mask` False. Batches are
  {'tokens': int32 [b, *token_shape], 'label': int32 [b], 'mask': bool [b]}
  plus 'valid': bool [b, T] with `crop_tokens` (variable-length tokens:
  audio). Process p reads rows [p*b, (p+1)*b) of each global batch.
  """
  from tokenizers_jax.data import images  # pylint: disable=g-import-not-at-top
  split = split or ('train' if train else 'validation')
  src = TokenSource(directory, split)
  pi, pc, per = images._process_layout(  # pylint: disable=protected-access
      global_batch_size, process_index, process_count)
  ds = grain.MapDataset.source(src)
  if train:
    shuffle_seed, crop_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    ds = ds.shuffle(seed=shuffle_seed).repeat(None)
  else:
    crop_seed = 0
  if crop_tokens:
    if src.manifest.get('modality') == 'eeg':
      raise ValueError('crop_tokens is for variable-length (audio) tokens; '
                       'EEG windows have a fixed token shape')
    ds = ds.random_map(_Crop(int(crop_tokens), train), seed=crop_seed)
  ds = ds.map(_Keep(True))
  if not train:
    padding = -len(src) % global_batch_size
    if padding:
      blank = _blank(src[0], crop_tokens)
      pad = grain.MapDataset.range(padding).map(_Blank(blank))
      ds = grain.MapDataset.concatenate([ds, pad])
  ds = images._host_batches(ds, per, pi, pc)  # pylint: disable=protected-access
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=2))


def _blank(example: dict, crop_tokens: int | None) -> dict:
  t = example['tokens']
  shape = ((int(crop_tokens),) + t.shape[1:]) if crop_tokens else t.shape
  out = {'tokens': np.zeros(shape, np.int32), 'label': np.int32(-1)}
  if crop_tokens:
    out['valid'] = np.zeros(shape[:1], bool)
  elif 'patch_valid' in example:
    out['valid'] = np.zeros_like(position_valid(t, example['patch_valid']))
  out['mask'] = np.bool_(False)
  return out


class _Blank(grain.transforms.Map):

  def __init__(self, blank: dict):
    self._blank = blank

  def map(self, element):
    del element
    return {k: np.copy(v) for k, v in self._blank.items()}


def iterate_split(directory: str, split: str) -> Iterator[dict]:
  """Every record of a split, in order (tests, inspection)."""
  src = TokenSource(directory, split)
  for i in range(len(src)):
    yield src[i]
