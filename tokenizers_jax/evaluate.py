r"""Evaluate the latest checkpoint of a training workdir.

  python -m tokenizers_jax.evaluate --workdir=/tmp/vqgan
"""

import json

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir.')
_NO_EMA = flags.DEFINE_bool('no_ema', False, 'Use raw instead of EMA weights.')
_NUM = flags.DEFINE_integer('num_batches', -1, 'Eval batches (-1: whole split).')


def main(argv):
  del argv
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top
  results = train.evaluate_workdir(_WORKDIR.value, use_ema=not _NO_EMA.value,
                                   num_batches=_NUM.value)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
