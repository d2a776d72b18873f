r"""Input-pipeline throughput against what the paper-scale step consumes.

Images per second per host through the project's grain training pipeline
(`data.images.make_image_dataset`: shuffle, decode, random crop and flip,
batch, float32 in [-1, 1]) from
  (a) a folder of 256² JPEGs ('folder:/path'), and
  (b) a TFDS dataset in ArrayRecord format with the same JPEG bytes (built
      here with a TFDS `GeneratorBasedBuilder`, read by `tfds.data_source`),
with 0, 1 and 2 grain worker processes. The images are generated: smooth
random colour fields plus noise (JPEG quality 90, about the byte size of an
ImageNet image at 256²).

The rate a host must feed: FLOPs per example of the VQ-GAN imagenet_f16 train
step (XLA cost analysis of the compiled step at batch 1 on one device, the
GAN and LPIPS included), against an assumed 40 % MFU of dense bf16 peak:
H100 SXM 989 TFLOP/s (8 per host), TPU v5e 197 TFLOP/s (a v5e-64 is 16
hosts of 4 chips).

Usage:
  python experiments/bench_input.py          # both sources, 0/1/2 workers
  python experiments/bench_input.py --workers 0,2 --batches 20
  python experiments/bench_input.py --flops_per_example 1.454e12  # no compile
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

H100_BF16 = 989e12     # dense bf16 FLOP/s, H100 SXM
V5E_BF16 = 197e12      # bf16 FLOP/s per v5e chip
MFU = 0.40
HOSTS = {'8x H100 (1 host, 8 chips)': (8, H100_BF16),
         'v5e-64 (16 hosts, 4 chips each)': (4, V5E_BF16)}
DATASET = 'bench_input_jpegs'


# -----------------------------------------------------------------------------
# Data.
# -----------------------------------------------------------------------------


def random_image(rng: np.random.Generator, size: int) -> np.ndarray:
  """A smooth random colour field plus noise, uint8 [size, size, 3]."""
  t = np.linspace(0, 1, size, dtype=np.float32)
  field = (t[:, None, None] * rng.uniform(-1, 1, 3)
           + t[None, :, None] * rng.uniform(-1, 1, 3)
           + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 6) * t)[:, None, None]
           * np.cos(2 * np.pi * rng.uniform(1, 6) * t)[None, :, None])
  image = 127.5 + 70 * field + rng.normal(0, 12, (size, size, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def write_jpegs(root: str, num: int, size: int, seed: int = 0) -> int:
  """`num` random JPEGs under root/images/; returns their mean byte size."""
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  rng = np.random.default_rng(seed)
  total = 0
  for i in range(num):
    data = jpeg_bytes(random_image(rng, size))
    total += len(data)
    with open(os.path.join(root, 'images', f'{i:06d}.jpg'), 'wb') as f:
      f.write(data)
  return total // num


def build_tfds(root: str, data_dir: str) -> None:
  """The JPEGs of root/images/ as the ArrayRecord TFDS dataset DATASET.

  Run in its own process (`--build_tfds`): a process that defines the
  builder class reads the dataset through it, and grain cannot pickle it
  for its workers; elsewhere TFDS opens the prepared files read-only.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  files = sorted(os.listdir(os.path.join(root, 'images')))

  class BenchInputJpegs(tfds.core.GeneratorBasedBuilder):
    """The benchmark's JPEG files, bytes unchanged."""

    VERSION = tfds.core.Version('1.0.0')

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:  # As in data/skimage_photos.py.
      return epath.Path(__file__)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3),
                                           encoding_format='jpeg')}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for name in files:
        with open(os.path.join(root, 'images', name), 'rb') as f:
          yield name, {'image': f.read()}

  BenchInputJpegs(data_dir=data_dir, file_format='array_record'
                  ).download_and_prepare(
                      download_config=tfds.download.DownloadConfig(
                          try_download_gcs=False))


# -----------------------------------------------------------------------------
# Measurements.
# -----------------------------------------------------------------------------


def tree_cpu_seconds() -> float:
  """CPU seconds (user + system) of this process and all its descendants
  (grain's workers), from /proc; this process alone elsewhere."""
  if not os.path.isdir('/proc/self'):
    return time.process_time()
  tick = os.sysconf('SC_CLK_TCK')
  stats = {}
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    # After the name: state, ppid, ..., utime (12th), stime (13th).
    stats[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
  tree, frontier = {os.getpid()}, [os.getpid()]
  while frontier:
    parent = frontier.pop()
    for pid, (ppid, _) in stats.items():
      if ppid == parent and pid not in tree:
        tree.add(pid)
        frontier.append(pid)
  return sum(stats[p][1] for p in tree if p in stats) / tick


def images_per_second(source: str, *, data_dir: str | None, workers: int,
                      batch: int, batches: int, warmup: int,
                      image_size: int, windows: int) -> dict:
  """Steady-state training-pipeline rate after `warmup` batches: the median
  over `windows` consecutive windows of `batches` batches (and the range)."""
  from tokenizers_jax.data import images  # pylint: disable=g-import-not-at-top
  ds = images.make_image_dataset(
      source, train=True, image_size=image_size, global_batch_size=batch,
      data_dir=data_dir, val_fraction=0.0, num_workers=workers,
      process_index=0, process_count=1)
  it = iter(ds)
  t0 = time.perf_counter()
  for _ in range(warmup):
    b = next(it)
  startup = time.perf_counter() - t0
  rates = []
  c0 = tree_cpu_seconds()
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(batches):
      b = next(it)
    rates.append(batches * batch / (time.perf_counter() - t0))
  cpu_ms = 1e3 * (tree_cpu_seconds() - c0) / (windows * batches * batch)
  shape = (batch, image_size, image_size, 3)
  assert b['image'].shape == shape, b['image'].shape
  del it
  rate = float(np.median(rates))
  return {'images_per_s': rate, 'min': min(rates), 'max': max(rates),
          'cpu_ms_per_image': cpu_ms,
          'ms_per_batch': 1e3 * batch / rate, 'startup_s': startup}


def step_flops_per_example() -> float:
  """XLA's FLOPs of the imagenet_f16 train step at batch 1 (one device)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import abstract  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(
      os.path.join(ROOT, 'configs/vqgan.py:imagenet_f16'))
  config.data.global_batch_size = 1
  config.mesh.shape = (1, 1, 1)
  mesh = train.make_mesh(config)
  trainer, state, shardings = abstract.abstract_create(config, mesh)
  batch = abstract.abstract_batch(config, mesh, 1)
  with jax.set_mesh(mesh):
    compiled = abstract.lower_train_step(config, trainer, state, shardings,
                                         batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=2000)
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--batch', type=int, default=64,
                      help='per-host batch')
  parser.add_argument('--batches', type=int, default=20,
                      help='batches per timed window')
  parser.add_argument('--windows', type=int, default=5,
                      help='timed windows per measurement (median reported)')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--sources', default='folder,tfds')
  parser.add_argument('--flops_per_example', type=float, default=0.0,
                      help='skip the compile and use this')
  parser.add_argument('--workdir', default='',
                      help='where the JPEGs and the TFDS dataset go '
                      '(default: a fresh temporary directory)')
  parser.add_argument('--flops_only', action='store_true',
                      help=argparse.SUPPRESS)
  parser.add_argument('--build_tfds', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.build_tfds:
    build_tfds(*args.build_tfds)
    return

  if args.flops_only:
    print(json.dumps({'flops': step_flops_per_example()}))
    return

  flops = args.flops_per_example
  if not flops:
    # In a child process: its JAX (and the compile's memory) stay out of the
    # pipeline measurements and their worker processes.
    out = subprocess.run([sys.executable, os.path.abspath(__file__),
                          '--flops_only'], check=True, capture_output=True,
                         text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    flops = json.loads(out.stdout.strip().splitlines()[-1])['flops']

  root = args.workdir or tempfile.mkdtemp(prefix='bench_input_')
  t0 = time.time()
  mean_bytes = write_jpegs(root, args.num_images, args.image_size)
  data_dir = os.path.join(root, 'tfds')
  if 'tfds' in args.sources.split(','):
    subprocess.run([sys.executable, os.path.abspath(__file__), '--build_tfds',
                    root, data_dir], check=True, capture_output=True)
  print(f'# {args.num_images} JPEGs of {args.image_size}² (mean '
        f'{mean_bytes / 1024:.1f} KiB) and the TFDS ArrayRecord copy in '
        f'{time.time() - t0:.0f} s under {root}; {os.cpu_count()} CPU(s), '
        f'load average {os.getloadavg()[0]:.1f}', flush=True)

  rows = []
  for source in args.sources.split(','):
    name = (f'folder:{os.path.join(root, "images")}' if source == 'folder'
            else DATASET)
    for w in (int(v) for v in args.workers.split(',')):
      r = images_per_second(name, data_dir=data_dir, workers=w,
                            batch=args.batch, batches=args.batches,
                            warmup=args.warmup, image_size=args.image_size,
                            windows=args.windows)
      r.update(source=source, workers=w)
      rows.append(r)
      print(f"#   {source}, {w} workers: {r['images_per_s']:.0f} images/s "
            f"(windows {r['min']:.0f}-{r['max']:.0f}; "
            f"{r['cpu_ms_per_image']:.2f} CPU ms per image; "
            f"{r['ms_per_batch']:.0f} ms per batch of {args.batch}; "
            f"first {args.warmup} batches {r['startup_s']:.1f} s)", flush=True)

  print()
  print(f'FLOPs per example (XLA, imagenet_f16 train step, batch 1): '
        f'{flops / 1e12:.3f} TFLOP')
  print()
  print('| target | chips per host | images/s per host needed at '
        f'{int(MFU * 100)} % MFU |')
  print('|---|---|---|')
  need = {}
  for target, (chips, peak) in HOSTS.items():
    need[target] = chips * peak * MFU / flops
    print(f'| {target} | {chips} | {need[target]:.0f} |')
  print()
  print('| source | grain workers | images/s (median) | range over windows '
        f'| ms per batch of {args.batch} | '
        + ' | '.join(f'share of {t}' for t in HOSTS) + ' |')
  print('|---|---|---|---|---|' + '---|' * len(HOSTS))
  for r in rows:
    shares = ' | '.join(f"{r['images_per_s'] / need[t]:.2f}×" for t in HOSTS)
    print(f"| {r['source']} | {r['workers']} | {r['images_per_s']:.0f} "
          f"| {r['min']:.0f}-{r['max']:.0f} | {r['ms_per_batch']:.0f} "
          f"| {shares} |")


if __name__ == '__main__':
  main()
