r"""Does NeuroRVQ's multi-scale, phase/amplitude-aware tokenizer keep the EEG
frequency bands better than a single-scale tokenizer trained with MSE?

Trains the `tiny` variants of configs/neurorvq.py on the embedded synthetic
EEG (4 channels, windows of 4 s) and evaluates them (EMA weights) on the whole
validation split (held-out recordings):

  neurorvq      4 conv branches, RVQ 3 x 64 per branch, NeuroRVQ's loss
  baseline      1 branch (kernels 21/9), RVQ 12 x 64 (the same 12 tokens per
                patch), a head predicting the standardised signal, plain MSE
  mse           (ablation) 4 branches, time head and plain MSE
  single_scale  (ablation) 1 branch, NeuroRVQ's loss

and reports NMSE, Pearson, per-band power error (dB) and per-band NMSE
(band edges in evaluators/eeg.py), codebook usage and the training time.

  python experiments/eeg_bands.py --steps=1500 \
      --variants=neurorvq,baseline,mse,single_scale --workdir=/tmp/eeg_bands

(About 22 minutes of a 2-core CPU for the four; results in
experiments/README.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from tokenizers_jax.evaluators import eeg as eeg_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

MODIFIERS = {'neurorvq': '', 'baseline': 'baseline', 'mse': 'mse',
             'single_scale': 'single_scale'}


def run_variant(name: str, steps: int, workdir: str, seed: int) -> dict:
  mod = MODIFIERS[name]
  config = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'neurorvq.py') + ':tiny'
      + (f',{mod}' if mod else ''))
  config.total_steps = steps
  config.eval_every = steps
  config.checkpoint_every = steps
  config.log_every = 100
  config.seed = seed
  start = time.time()
  out = train_lib.train_and_evaluate(config, os.path.join(workdir, name))
  out['wall_sec'] = time.time() - start
  out['tokens_per_patch'] = (len(config.model.branches)
                             * config.quantizer.num_quantizers)
  rows = [json.loads(l) for l in open(os.path.join(workdir, name,
                                                   'metrics.jsonl'))]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  out['train_loss_first'], out['train_loss_last'] = losses[0], losses[-1]
  return out


def table(results: dict) -> str:
  bands = list(eeg_metrics.BANDS)
  head = ('| variant | tokens/patch | NMSE | Pearson | '
          + ' | '.join(f'{b} dB' for b in bands) + ' | '
          + ' | '.join(f'{b} NMSE' for b in bands) + ' | usage | train s |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for name, r in results.items():
    cells = [name, str(r['tokens_per_patch']), f"{r['eval/nmse']:.3f}",
             f"{r['eval/pearson']:.3f}"]
    cells += [f"{r[f'eval/band_power_db/{b}']:.2f}" for b in bands]
    cells += [f"{r[f'eval/band_nmse/{b}']:.3f}" for b in bands]
    cells += [f"{r['eval/codebook_usage']:.2f}", f"{r['train_time_sec']:.0f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--steps', type=int, default=1500)
  p.add_argument('--variants', default='neurorvq,baseline')
  p.add_argument('--workdir', default='/tmp/eeg_bands')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default=None, help='JSON results (default: '
                 'WORKDIR/results.json)')
  args = p.parse_args()
  out_path = args.out or os.path.join(args.workdir, 'results.json')
  results = {}
  if os.path.exists(out_path):
    results = json.load(open(out_path))
  for name in args.variants.split(','):
    if name not in MODIFIERS:
      raise SystemExit(f'unknown variant {name!r}; known: {list(MODIFIERS)}')
    results[name] = run_variant(name, args.steps, args.workdir, args.seed)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, 'w') as f:
      json.dump(results, f, indent=1)
    print(f'{name}: NMSE {results[name]["eval/nmse"]:.4f}', flush=True)
  print(table(results))


if __name__ == '__main__':
  main()
