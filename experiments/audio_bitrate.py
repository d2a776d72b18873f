r"""Audio codec quality against bitrate: single VQ vs RVQ at equal bits.

Trains the tiny codec (configs/audio_codec.py:tiny: 16 kHz, hop 160 = 100
tokens/s) on the embedded eSpeak NG speech corpus with four quantizers and
reports PESQ (wideband), STOI, mel distance, SI-SNR and codebook usage on
the held-out sentences:

  vq256      one VQ, K = 256            8 bits/token   0.8 kbps
  vq4096     one VQ, K = 4096          12 bits/token   1.2 kbps
  rvq3x16    RVQ 3 levels x 16 codes   12 bits/token   1.2 kbps
  rvq3x256   RVQ 3 levels x 256 codes  24 bits/token   2.4 kbps

Each run trains `--steps` steps: the first `--steps - --gan_steps` with the
reconstruction losses only (no discriminator is compiled: a separate phase,
resumed from its checkpoint, so the CPU does not pay for the GAN before it
starts), then `--gan_steps` steps with MPD + MRD (hinge, feature matching).
Metrics are reported after both phases.

  python experiments/audio_bitrate.py --workdir=/tmp/audio_bitrate
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from tokenizers_jax import config_lib
from tokenizers_jax.training import train as train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', '/tmp/audio_bitrate', 'Where runs are kept.')
flags.DEFINE_integer('steps', 800, 'Training steps per run.')
flags.DEFINE_integer('gan_steps', 200, 'Final steps with the GAN.')
flags.DEFINE_list('runs', ['vq256', 'vq4096', 'rvq3x16', 'rvq3x256'],
                  'Which runs.')

RUNS = {
    'vq256': 'tiny,vq_codes=256',
    'vq4096': 'tiny,vq_codes=4096',
    'rvq3x16': 'tiny,rvq,levels=3,codes=16',
    'rvq3x256': 'tiny,rvq,levels=3,codes=256',
}
KEYS = ('eval/bitrate_bps', 'eval/pesq', 'eval/stoi', 'eval/mel_distance',
        'eval/si_snr', 'eval/codebook_usage', 'eval/pesq_failures')


def run_one(name: str) -> dict:
  workdir = os.path.join(FLAGS.workdir, name)
  config = config_lib.load_config_file(f'configs/audio_codec.py:{RUNS[name]}')
  config.total_steps = FLAGS.steps
  config.eval_every = FLAGS.steps
  config.checkpoint_every = FLAGS.steps
  gan_start = FLAGS.steps - FLAGS.gan_steps
  t0 = time.time()
  # Phase 1: reconstruction only (disc_start >= total_steps: no GAN).
  phase1 = config.copy_and_resolve_references()
  phase1.loss.disc_start = FLAGS.steps
  before = train_lib.train_and_evaluate(phase1, workdir, stop_after=gan_start)
  if 'eval/pesq' not in before:  # Already trained (a re-run): evaluate it.
    before = train_lib.evaluate_workdir(workdir)
  # Phase 2: resumes at gan_start with the discriminators on.
  if FLAGS.gan_steps > 0:
    config.loss.disc_start = gan_start
    after = train_lib.train_and_evaluate(config, workdir)
  else:
    after = before
  return {'name': name, 'before_gan': before, 'final': after,
          'minutes': (time.time() - t0) / 60}


def table(results) -> str:
  head = ('| run | kbps | bits/token | PESQ | STOI | mel dist. | SI-SNR (dB) '
          '| usage | PESQ before GAN | mel before GAN | minutes |')
  lines = [head, '|' + '---|' * 11]
  for r in results:
    f, b = r['final'], r['before_gan']
    lines.append(
        f"| {r['name']} | {f['eval/bitrate_bps'] / 1000:.1f} | "
        f"{f['eval/bits_per_token']:.0f} | {f['eval/pesq']:.2f} | "
        f"{f['eval/stoi']:.3f} | {f['eval/mel_distance']:.3f} | "
        f"{f['eval/si_snr']:.1f} | {f['eval/codebook_usage']:.2f} | "
        f"{b['eval/pesq']:.2f} | {b['eval/mel_distance']:.3f} | "
        f"{r['minutes']:.1f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = []
  for name in FLAGS.runs:
    if name not in RUNS:
      raise ValueError(f'unknown run {name!r}; known: {sorted(RUNS)}')
    results.append(run_one(name))
    with open(os.path.join(FLAGS.workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
    print(table(results), flush=True)


if __name__ == '__main__':
  app.run(main)
