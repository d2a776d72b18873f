r"""Quantizers at an equal bit budget per token, behind the same encoder/decoder.

Trains the tiny VQ-GAN front end (configs/vqgan.py:tiny: 32² crops of the
embedded photos, f=4, 8x8 tokens) with five quantizers of (about) 14 bits per
token, and evaluates each on the held-out crops:

  vq         VectorQuantizer, K=16384 (14 bits), 8-d cosine codes, k-means
             init, dead-code restart
  fq         FactorizedVQ, 2 factors x K=128 (2 x 7 bits), 8-d cosine codes,
             disentanglement 0.1
  lfq        LFQ, 14 bits, entropy 0.1 (temperature 0.01), commitment 0.25,
             GroupNorm (no affine) before it
  group_lfq  LFQ, 14 bits as 2 groups x 7 bits, entropy per group
  fsq        FSQ, levels (8, 8, 8, 6, 5) = 15360 codes (13.9 bits)

The GAN is off (this compares quantizers, not adversarial training); every
other setting is the tiny config's. Writes results.json, a markdown table and
a bar plot (PSNR, SSIM, usage) to --workdir.

  python experiments/compare_image_quantizers.py --workdir=/tmp/compare
  python experiments/compare_image_quantizers.py --workdir=/tmp/compare \
      --steps=300 --only=vq,lfq
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS_PER_IMAGE = 64  # 8x8 positions of the tiny front end (32², f=4)


def quantizer_variants() -> dict[str, dict]:
  """name -> quantizer config, model overrides, bits per token and codes per
  index position (K, or K per factor / group)."""
  vq_common = dict(codebook_dim=8, use_cosine_sim=True, commitment_weight=0.25)
  return {
      'vq': dict(quantizer=dict(name='vq', codebook_size=2**14, kmeans_init=True,
                                threshold_ema_dead_code=1.0, **vq_common),
                 embed_dim=32, bits=14.0, codes=2**14),
      'fq': dict(quantizer=dict(name='fq', num_factors=2, codebook_size=2**7,
                                disentangle_weight=0.1, kmeans_init=True,
                                threshold_ema_dead_code=1.0, **vq_common),
                 embed_dim=32, bits=14.0, codes=2**7),
      'lfq': dict(quantizer=dict(name='lfq', codebook_size=2**14,
                                 entropy_loss_weight=0.1,
                                 commitment_loss_weight=0.25),
                  embed_dim=14, pre_quant_norm=True, bits=14.0, codes=2**14),
      'group_lfq': dict(quantizer=dict(name='lfq', codebook_size=2**14,
                                       num_groups=2, entropy_loss_weight=0.1,
                                       commitment_loss_weight=0.25),
                        embed_dim=14, pre_quant_norm=True, bits=14.0,
                        codes=2**7),
      'fsq': dict(quantizer=dict(name='fsq', levels=(8, 8, 8, 6, 5)),
                  embed_dim=5, bits=math.log2(8 * 8 * 8 * 6 * 5),
                  codes=8 * 8 * 8 * 6 * 5),
  }


def make_config(name: str, steps: int) -> ml_collections.ConfigDict:
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  spec = quantizer_variants()[name]
  c = config_lib.load_config_file(os.path.join(REPO, 'configs', 'vqgan.py') + ':tiny')
  c.quantizer = ml_collections.ConfigDict(spec['quantizer'], type_safe=False)
  c.model.embed_dim = spec['embed_dim']
  c.model.pre_quant_norm = spec.get('pre_quant_norm', False)
  c.loss.disc_start = 10 * steps  # GAN off: compare the quantizers alone.
  c.total_steps = steps
  c.eval_every = steps
  c.checkpoint_every = steps
  c.log_every = max(steps // 10, 1)
  return c


def write_outputs(results: dict, workdir: str, steps: int) -> str:
  """Markdown table + bar plot; returns the table."""
  # Usage is measured on the held-out tokens: with more codes per index
  # position than tokens, 100 % cannot be reached; `max usage` is that bound.
  lines = [
      '| quantizer | bits/token | codes per index | PSNR (dB) | SSIM | usage '
      '| max usage | perplexity | time (s) |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  variants = quantizer_variants()
  for name, r in results.items():
    codes = variants[name]['codes']
    bound = min(1.0, r['eval/num_images'] * TOKENS_PER_IMAGE / codes)
    lines.append(
        f"| {name} | {r['bits_per_token']:.1f} | {codes} | {r['eval/psnr']:.2f} | "
        f"{r['eval/ssim']:.3f} | {100 * r['eval/codebook_usage']:.1f}% | "
        f"{100 * bound:.1f}% | {r['eval/perplexity']:.0f} | "
        f"{r['train_time_sec']:.0f} |")
  any_r = next(iter(results.values()))
  lines.append(
      f"| bicubic, ≥ same bits/image | — | — | {any_r['eval/bicubic_bits_psnr']:.2f} "
      f"| {any_r['eval/bicubic_bits_ssim']:.3f} | — | — | — | — |")
  table = '\n'.join(lines)
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write(f'{steps} steps each, tiny VQ-GAN front end, held-out crops\n\n'
            + table + '\n')
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return table
  names = list(results)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
  for ax, key, label in zip(axes, ('eval/psnr', 'eval/ssim', 'eval/codebook_usage'),
                            ('PSNR (dB)', 'SSIM', 'codebook usage')):
    ax.bar(names, [results[n][key] for n in names], color='tab:blue')
    ax.set_title(label)
    ax.tick_params(axis='x', rotation=30)
    if key == 'eval/psnr':
      lo = min(results[n][key] for n in names)
      ax.set_ylim(lo - 2, None)
  fig.suptitle(f'~14 bits per token, same encoder/decoder, {steps} steps')
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'compare_image_quantizers.png'), dpi=100)
  plt.close(fig)
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--only', default='', help='comma-separated subset')
  args = parser.parse_args()
  from absl import logging  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  names = [n for n in quantizer_variants()
           if not args.only or n in args.only.split(',')]
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, 'results.json')
  results = json.load(open(path)) if os.path.exists(path) else {}
  for name in names:
    if name in results and results[name].get('step') == args.steps:
      print(f'{name}: done already')
      continue
    config = make_config(name, args.steps)
    t0 = time.time()
    final = train.train_and_evaluate(config, os.path.join(args.workdir, name))
    final['bits_per_token'] = quantizer_variants()[name]['bits']
    results[name] = {k: float(v) for k, v in final.items()}
    print(f'{name}: PSNR {final["eval/psnr"]:.2f} dB, SSIM '
          f'{final["eval/ssim"]:.3f}, usage {final["eval/codebook_usage"]:.3f} '
          f'({time.time() - t0:.0f} s)', flush=True)
    with open(path, 'w') as f:
      json.dump(results, f, indent=2)
  print(write_outputs({n: results[n] for n in names if n in results},
                      args.workdir, args.steps))


if __name__ == '__main__':
  main()
