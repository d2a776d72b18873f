r"""Train a tokenizer.

  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny --workdir=/tmp/vqgan
  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny \
      --workdir=/tmp/vqgan --config.total_steps=200

Resumes automatically when the workdir holds a checkpoint; a SIGTERM saves a
checkpoint at the current step and exits cleanly. For several processes pass
--coordinator_address, --num_processes and --process_id (or
--distributed_auto on TPU pods / Slurm).

The console shows the step lines, evaluations and warnings; the INFO lines of
orbax, grain, TFDS and JAX appear with --verbosity=1 (or -v 1).
"""

import importlib.util
import json
import logging as py_logging
import os

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

# Libraries whose INFO lines are hidden below --verbosity=1.
_CHATTY = ('orbax', 'grain', 'tensorflow_datasets', 'array_record', 'etils',
           'jax', 'jaxlib')


class _QuietLibraries(py_logging.Filter):
  """Drops records below WARNING that come from the given packages."""

  def __init__(self, packages):
    super().__init__()
    dirs = []
    for name in packages:
      try:
        spec = importlib.util.find_spec(name)
      except (ImportError, ValueError):
        spec = None
      if spec is not None and spec.submodule_search_locations:
        dirs += [os.path.join(d, '') for d in spec.submodule_search_locations]
    self._dirs = tuple(dirs)

  def filter(self, record: py_logging.LogRecord) -> bool:
    return (record.levelno >= py_logging.WARNING
            or not record.pathname.startswith(self._dirs))


def _set_up_console() -> None:
  """INFO for this package; libraries' INFO only with --verbosity >= 1."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.INFO)
  if logging.get_verbosity() < logging.DEBUG:
    logging.get_absl_handler().addFilter(_QuietLibraries(_CHATTY))


def main(argv):
  del argv
  _set_up_console()
  from tokenizers_jax.training import distributed  # pylint: disable=g-import-not-at-top
  distributed.maybe_initialize(_COORD.value, _NPROC.value, _PID.value,
                               auto=_AUTO.value)
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     stop_after=_STOP.value)
  print(json.dumps({k: v for k, v in results.items()}, indent=2))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
