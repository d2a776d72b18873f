r"""Encode a tokenizer run's dataset into ArrayRecord shards of token ids.

  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok \
      --split=validation
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok \
      --flip --batch_size=128

Reads the examples of the tokenizer's own `data.source` (images centre-
cropped to its image size, labels where the source has them; whole audio
utterances), encodes them with `Tokenizer.from_workdir(--workdir)` (EMA
weights) and writes `DIR/{split}-p{i}of{n}-{k}.array_record` shards, a
progress file per process and `DIR/manifest.json` (layout and resumption:
`tokenizers_jax/data/tokens.py`). Rerunning the same command after a crash
resumes with the first unwritten shard. With several processes (the same
flags as `tokenizers_jax.train`) process i encodes examples i::n; the
manifest is written by process 0 once all have finished.
"""

import json
import os

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Tokenizer training workdir.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output directory.')
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'validation'],
                           'Split of the tokenizer run\'s dataset.')
_FLIP = flags.DEFINE_bool('flip', False,
                          'Images: also encode each horizontal mirror.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Examples per encode call.')
_SHARD = flags.DEFINE_integer('shard_size', 1024,
                              'Examples per shard (the unit of resumption).')
_NO_EMA = flags.DEFINE_bool('no_ema', False, 'Raw instead of EMA weights.')
_COORD = flags.DEFINE_string('coordinator_address', None,
                             'host:port of process 0.')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PID = flags.DEFINE_integer('process_id', None, 'This process id.')
_AUTO = flags.DEFINE_bool('distributed_auto', False,
                          'jax.distributed auto-detect.')


def run(workdir: str, output: str, *, split: str = 'train', flip: bool = False,
        batch_size: int = 64, shard_size: int = 1024, use_ema: bool = True,
        log=print) -> dict:
  """The command's work (callable from notebooks and scripts): returns this
  process's statistics and, on process 0, the manifest."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.data import tokens as tokens_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_workdir(workdir, use_ema=use_ema)
  tok.workdir = os.path.abspath(workdir)
  stats = tokens_lib.pretokenize(
      tok, output, split=split, flip=flip, batch_size=batch_size,
      shard_size=shard_size, log=log)
  log(f'{split}: {stats["records"]} records from {stats["examples"]} '
      f'examples in {stats["seconds"]:.1f} s: '
      f'{stats["examples_per_sec"]:.1f} examples/s, '
      f'{stats["records_per_sec"]:.1f} records/s (process '
      f'{jax.process_index()} of {jax.process_count()})')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'pretokenize {split}')
  if jax.process_index() == 0:
    stats['manifest'] = tokens_lib.write_manifest(
        output, tok, split, flip=flip, num_classes=stats['num_classes'])
  return stats


def main(argv):
  del argv
  from tokenizers_jax.training import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(_COORD.value, _NPROC.value, _PID.value,
                               auto=_AUTO.value)
  stats = run(_WORKDIR.value, _OUTPUT.value, split=_SPLIT.value,
              flip=_FLIP.value, batch_size=_BATCH.value,
              shard_size=_SHARD.value, use_ema=not _NO_EMA.value)
  manifest = stats.pop('manifest', None)
  print(json.dumps(stats, indent=2))
  if manifest is not None:
    print(f'manifest: {os.path.join(_OUTPUT.value, "manifest.json")} '
          f'({manifest["splits"][_SPLIT.value]["count"]} {_SPLIT.value} '
          f'records, token shape {manifest["token_shape"]}, codebook '
          f'{manifest["codebook_size"]})')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'output'])
  app.run(main)
