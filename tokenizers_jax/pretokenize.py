r"""Encode a tokenizer run's dataset into ArrayRecord shards of token ids.

  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok \
      --split=validation
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/tok \
      --flip --batch_size=128
  # Another dataset than the tokenizer's (any source name its task takes):
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/in \
      --source=imagenet2012 --data_dir=/data/tfds
  python -m tokenizers_jax.pretokenize --workdir=/tmp/vqgan --output=/tmp/mine \
      --source=folder:/data/my_images

Reads the examples of the tokenizer's own `data.source`, or of `--source`
(prepared the same way: images centre-
cropped to its image size, labels where the source has them; whole audio
utterances; EEG windows of `data.num_patches` patches, stored with their
two signal statistics and patch mask), encodes them with `Tokenizer.from_workdir(--workdir)` (EMA
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

FLAGS = flags.FLAGS


def _define_flags():
  """The command-line flags (defined only when run as a command, so that
  the module imports next to other commands)."""
  flags.DEFINE_string('workdir', None, 'Tokenizer training workdir.')
  flags.DEFINE_string('output', None, 'Output directory.')
  flags.DEFINE_string('source', None,
                      'Dataset to encode (default: the tokenizer run\'s '
                      'data.source): a TFDS name, folder:/path, ...')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir of --source.')
  flags.DEFINE_enum('split', 'train', ['train', 'validation'],
                    'Split of the tokenizer run\'s dataset.')
  flags.DEFINE_bool('flip', False,
                    'Images: also encode each horizontal mirror.')
  flags.DEFINE_integer('batch_size', 64, 'Examples per encode call.')
  flags.DEFINE_integer('shard_size', 1024,
                       'Examples per shard (the unit of resumption).')
  flags.DEFINE_bool('no_ema', False, 'Raw instead of EMA weights.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Number of processes.')
  flags.DEFINE_integer('process_id', None, 'This process id.')
  flags.DEFINE_bool('distributed_auto', False,
                    'jax.distributed auto-detect.')


def run(workdir: str, output: str, *, split: str = 'train', flip: bool = False,
        batch_size: int = 64, shard_size: int = 1024, use_ema: bool = True,
        source: str | None = None, data_dir: str | None = None,
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
      shard_size=shard_size, source=source, data_dir=data_dir, log=log)
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


def write_random_tokenizer(config, workdir: str, step: int = 0) -> str:
  """A tokenizer workdir with the untrained (random) weights of `config`'s
  model: config.json and a checkpoint holding only the generator, which is
  all `Tokenizer.from_workdir` reads. For tests and notebooks that need a
  tokenizer quickly; its tokens mean nothing."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import core  # pylint: disable=g-import-not-at-top
  _, params, rest = core.split(registry.build_model(config))
  state = jax.tree.map(np.asarray, {'step': np.zeros((), np.int32) + step,
                                    'gen': {'params': params, 'rest': rest}})
  os.makedirs(workdir, exist_ok=True)
  mgr = ckpt_lib.manager(workdir, keep=1, async_save=False)
  ckpt_lib.save(mgr, step, state, force=True)
  mgr.wait_until_finished()
  mgr.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  return workdir


def main(argv):
  del argv
  from tokenizers_jax.training import distributed  # pylint: disable=g-import-not-at-top
  f = FLAGS
  distributed.maybe_initialize(f.coordinator_address, f.num_processes,
                               f.process_id, auto=f.distributed_auto)
  stats = run(FLAGS.workdir, FLAGS.output, split=FLAGS.split,
              flip=FLAGS.flip, batch_size=FLAGS.batch_size,
              shard_size=FLAGS.shard_size, use_ema=not FLAGS.no_ema,
              source=FLAGS.source, data_dir=FLAGS.data_dir)
  manifest = stats.pop('manifest', None)
  print(json.dumps(stats, indent=2))
  if manifest is not None:
    print(f'manifest: {os.path.join(FLAGS.output, "manifest.json")} '
          f'({manifest["splits"][FLAGS.split]["count"]} {FLAGS.split} '
          f'records, token shape {manifest["token_shape"]}, codebook '
          f'{manifest["codebook_size"]})')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['workdir', 'output'])
  app.run(main)
