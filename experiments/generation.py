r"""Generators on tokenizer tokens: held-out bits per image and samples.

For each tokenizer (a trained workdir, or trained here with its tiny config
on the embedded photographs): pretokenize its training split (with
horizontal flips) and its validation split, train MaskGIT and the
autoregressive transformer (configs/maskgit.py:tiny, configs/ar.py:tiny)
for `--steps` steps, report the held-out negative log-likelihood in bits
per image (the autoregressive model's is exact, MaskGIT's the any-order
upper bound; both with the null label) and save 16-sample grids (the AR
model with and without classifier-free guidance).

Tokenizers (`--tokenizers`):
  vqgan     configs/vqgan.py:tiny (8x8 tokens of 256 codes)
  perturb   the same with latent perturbation in training (alpha 1, beta
            0.1, delta 8, annealed to 0 between 40 % and 90 % of the steps):
            does it give a generator with lower NLL?
  fsq       configs/vqgan.py:tiny with FSQ levels (8, 5, 5, 5) (1000 codes)
  flextok   configs/flextok.py:tiny (32 1D tokens of 64000 FSQ codes; the
            generators' 64000-way output makes a step about 10x slower
            here: run it with fewer --steps and --notrain_split)

  python experiments/generation.py --workdir=/tmp/generation \
      --tokenizer_workdir=/tmp/vqgan --steps=2000
  python experiments/generation.py --workdir=/tmp/generation \
      --tokenizers=vqgan,perturb --generators=ar --tokenizer_steps=2000

Each stage is skipped when its output exists, so a rerun continues.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from tokenizers_jax import config_lib
from tokenizers_jax import pretokenize
from tokenizers_jax import sample as sample_lib
from tokenizers_jax.data import tokens as tokens_lib
from tokenizers_jax.training import train as train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', '/tmp/generation', 'Where runs are kept.')
flags.DEFINE_string('tokenizer_workdir', None,
                    'A trained tokenizer for the "vqgan" entry (default: '
                    'train configs/vqgan.py:tiny here).')
flags.DEFINE_list('tokenizers', ['vqgan'], 'vqgan, perturb, fsq, flextok.')
flags.DEFINE_list('generators', ['maskgit', 'ar'], 'maskgit, ar.')
flags.DEFINE_integer('steps', 2000, 'Generator training steps.')
flags.DEFINE_integer('tokenizer_steps', 2000,
                     'Steps of a tokenizer trained here.')
flags.DEFINE_integer('num_samples', 16, 'Samples per grid.')
flags.DEFINE_list('guidance', ['1', '3'], 'CFG weights of the AR grids.')
flags.DEFINE_bool('train_split', True,
                  'Also evaluate over the whole training split (15,360 '
                  'records; memorisation). With FlexTok\'s 64000 codes that '
                  'takes hours on 2 CPU cores: --notrain_split skips it.')

TOKENIZERS = {
    'vqgan': ('configs/vqgan.py:tiny', {}),
    'perturb': ('configs/vqgan.py:tiny', {'model.perturb.alpha': 1.0,
                                          'model.perturb.beta': 0.1,
                                          'model.perturb.delta': 8}),
    'fsq': ('configs/vqgan.py:tiny,fsq', {}),
    'flextok': ('configs/flextok.py:tiny', {}),
}
GENERATORS = {'maskgit': 'configs/maskgit.py:tiny', 'ar': 'configs/ar.py:tiny'}


def _set(config, key, value):
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  with config.unlocked():
    node[leaf] = value


def tokenizer(name: str) -> str:
  """A trained tokenizer workdir for `name` (trained here when missing)."""
  if name == 'vqgan' and FLAGS.tokenizer_workdir:
    return FLAGS.tokenizer_workdir
  workdir = os.path.join(FLAGS.workdir, f'tokenizer_{name}')
  spec, overrides = TOKENIZERS[name]
  config = config_lib.load_config_file(spec)
  config.total_steps = FLAGS.tokenizer_steps
  config.eval_every = config.checkpoint_every = FLAGS.tokenizer_steps
  if name == 'perturb':
    overrides = dict(overrides, **{
        'model.perturb.anneal_start': int(0.4 * FLAGS.tokenizer_steps),
        'model.perturb.anneal_end': int(0.9 * FLAGS.tokenizer_steps)})
  for key, value in overrides.items():
    _set(config, key, value)
  done = os.path.join(workdir, 'tokenizer_eval.json')
  if not os.path.exists(done):
    t0 = time.time()
    final = train_lib.train_and_evaluate(config, workdir)
    final['minutes'] = (time.time() - t0) / 60
    with open(done, 'w') as f:
      json.dump(final, f, indent=2)
  return workdir


def tokens(name: str, tok_dir: str) -> str:
  out = os.path.join(FLAGS.workdir, f'tokens_{name}')
  try:
    splits = tokens_lib.read_manifest(out)['splits']
  except FileNotFoundError:
    splits = {}
  if 'train' not in splits:
    pretokenize.run(tok_dir, out, split='train', flip=True, batch_size=128,
                    log=logging.info)
  if 'validation' not in splits:
    pretokenize.run(tok_dir, out, split='validation', batch_size=160,
                    log=logging.info)
  return out


def evaluate_split(workdir: str, split: str) -> dict:
  """The latest checkpoint's evaluation over a whole pretokenized split."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import tasks  # pylint: disable=g-import-not-at-top
  config = train_lib.load_config(workdir)
  with config.unlocked():
    config.eval.split = split
  task = tasks.get_task(config)
  task.validate_config(config)
  mesh = train_lib.make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, state, _ = task.create(config, mesh)
    state, _ = ckpt_lib.restore_state_only(workdir, state)
    results, _ = task.evaluate(trainer, state, config, mesh, num_batches=-1)
  return results


def generator(gen: str, name: str, tok_data: str) -> dict:
  workdir = os.path.join(FLAGS.workdir, f'{gen}_{name}')
  done = os.path.join(workdir, 'result.json')
  if os.path.exists(done):
    with open(done) as f:
      result = json.load(f)
    if FLAGS.train_split and 'train_split/bits_per_image' not in result:
      result.update(_train_split(workdir))
      with open(done, 'w') as f:
        json.dump(result, f, indent=2)
    return result
  config = config_lib.load_config_file(f'{GENERATORS[gen]},dir={tok_data}')
  config.total_steps = FLAGS.steps
  config.eval_every = config.checkpoint_every = FLAGS.steps
  t0 = time.time()
  final = train_lib.train_and_evaluate(config, workdir)
  minutes = (time.time() - t0) / 60
  if 'eval/bits_per_image' not in final:  # Trained before; evaluate it.
    final = evaluate_split(workdir, config.eval.get('split', None)
                           or 'validation')
    minutes = None  # Not timed here.
  grids = {}
  scales = [float(g) for g in FLAGS.guidance] if gen == 'ar' else [1.0]
  for w in scales:
    out = os.path.join(workdir, f'samples_cfg{w:g}')
    grids[f'{w:g}'] = sample_lib.run(workdir, out, num=FLAGS.num_samples,
                                     guidance_scale=w)['grid']
  manifest = tokens_lib.read_manifest(tok_data)
  result = {'tokenizer': name, 'generator': gen, 'steps': FLAGS.steps,
            'token_shape': manifest['token_shape'],
            'codebook_size': manifest['codebook_size'],
            'train_records': manifest['splits']['train']['count'],
            'minutes': minutes, 'grids': grids,
            **{k: v for k, v in final.items() if k.startswith('eval/')},
            **(_train_split(workdir) if FLAGS.train_split else {})}
  with open(done, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def _train_split(workdir: str) -> dict:
  """Bits per image over the whole training split (memorisation)."""
  r = evaluate_split(workdir, 'train')
  return {'train_split/bits_per_image': r['eval/bits_per_image'],
          'train_split/bits_per_token': r['eval/bits_per_token']}


def table(results) -> str:
  lines = ['| tokenizer | tokens | raw bits / image | generator | steps | '
           'held-out bits / image | bits / token | training-split bits / '
           'image | minutes |',
           '|' + '---|' * 9]
  for r in results:
    shape = 'x'.join(str(s) for s in r['token_shape'])
    train_bits = (f'{r["train_split/bits_per_image"]:.1f}'
                  if 'train_split/bits_per_image' in r else '—')
    minutes = '—' if r['minutes'] is None else f'{r["minutes"]:.1f}'
    lines.append(
        f'| {r["tokenizer"]} | {shape} of {r["codebook_size"]} | '
        f'{r["eval/uniform_bits_per_image"]:.0f} | {r["generator"]} | '
        f'{r["steps"]} | {r["eval/bits_per_image"]:.1f} | '
        f'{r["eval/bits_per_token"]:.3f} | '
        f'{train_bits} | {minutes} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = []
  for name in FLAGS.tokenizers:
    tok_dir = tokenizer(name)
    data = tokens(name, tok_dir)
    for gen in FLAGS.generators:
      results.append(generator(gen, name, data))
      logging.info('%s on %s: %.1f bits per image', gen, name,
                   results[-1]['eval/bits_per_image'])
  text = table(results)
  print(text)
  with open(os.path.join(FLAGS.workdir, 'results.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(FLAGS.workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
