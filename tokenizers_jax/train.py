r"""Train a tokenizer.

  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny --workdir=/tmp/vqgan
  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny \
      --workdir=/tmp/vqgan --config.total_steps=200

Resumes automatically when the workdir holds a checkpoint. For several
processes pass --coordinator_address, --num_processes and --process_id (or
--distributed_auto on TPU pods / Slurm).
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_COORD = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PID = flags.DEFINE_integer('process_id', None, 'This process id.')
_AUTO = flags.DEFINE_bool('distributed_auto', False, 'jax.distributed auto-detect.')
_STOP = flags.DEFINE_integer('stop_after', None, 'Stop early at this step.')


def main(argv):
  del argv
  from tokenizers_jax.training import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(_COORD.value, _NPROC.value, _PID.value,
                               auto=_AUTO.value)
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     stop_after=_STOP.value)
  print(json.dumps({k: v for k, v in results.items()}, indent=2))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
