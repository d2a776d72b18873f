r"""Reconstruction quality against the number of 1D tokens k.

Trains the tiny FlexTok (configs/flextok.py:tiny: 32 registers, FSQ with
64 000 codes, rectified-flow decoder, nested dropout over powers of two) and
the tiny One-D-Piece (configs/one_d_piece.py:tiny: 32 tokens, VQ with 4096
codes, tail drop) on the embedded photos, then encodes every held-out crop
once and decodes it from its first k tokens, k in {1, 2, 4, ..., K}, and
reports PSNR and SSIM (and FID against the held-out crops when
--inception_path names local FID Inception weights) with the bits per image
k * log2(codebook size).

Baselines: the tiny 2D VQ-GAN (configs/vqgan.py:tiny, 8x8 tokens of 8 bits,
trained here with the same number of steps unless --vqgan_workdir names a
finished run of that config), and, for every k, bicubic down/up-sampling
that stores at least the same bits per image
(`evaluators.image.bicubic_at_bits`).

Writes results.json, a markdown table and the plot (also copied to
experiments/figures/quality_vs_tokens.png).

  python experiments/quality_vs_tokens.py --workdir=/tmp/qvt
  python experiments/quality_vs_tokens.py --workdir=/tmp/qvt --steps=300 \
      --vqgan_workdir=/tmp/vqgan
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {'flextok': 'configs/flextok.py:tiny',
          'one_d_piece': 'configs/one_d_piece.py:tiny'}


def train(spec: str, workdir: str, steps: int) -> float:
  """Trains (or resumes) a config in `workdir`; returns the seconds spent."""
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config_file(os.path.join(REPO, spec))
  c.total_steps = steps
  c.eval_every = steps
  c.checkpoint_every = steps
  t0 = time.time()
  train_lib.train_and_evaluate(c, workdir)
  return time.time() - t0


def _splits(config, num_train_images: int):
  """(name, batches): the held-out split, and a fixed set of training crops
  (the photos the tokenizer was trained on) to separate memorisation from
  generalisation."""
  import itertools  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  held_out = data_lib.make_eval_dataset(
      config.data.source, image_size=config.data.image_size,
      global_batch_size=32, data_dir=config.data.data_dir)
  train = data_lib.make_image_dataset(
      config.data.source, train=True, image_size=config.data.image_size,
      global_batch_size=32, seed=1234, random_flip=False,
      data_dir=config.data.data_dir)
  return [('held_out', held_out),
          ('train', itertools.islice(iter(train), num_train_images // 32))]


def eval_prefixes(workdir: str, inception=None,
                  num_train_images: int = 160) -> dict:
  """PSNR/SSIM (and FID) of decoding the first k tokens, per k, on the
  held-out split and on training crops. A 2D tokenizer gives one row (all
  its tokens)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.evaluators import image as im  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_workdir(workdir)
  model = tok.model
  one_d = getattr(model, 'one_dimensional', False)
  # Flow decoders: also the one-step decode x1 - v(x1, 1) from pure noise,
  # the model's estimate of E[x0 | tokens] (the PSNR-optimal output).
  one_step = None
  if hasattr(model, 'num_sample_steps'):
    one_step = nnx.jit(lambda m, i: jnp.clip(m.decode(i, num_steps=1), -1, 1))
  if one_d:
    big_k = model.num_tokens
    ks = [2 ** i for i in range(big_k.bit_length()) if 2 ** i < big_k]
    ks.append(big_k)
  else:
    ks = [None]
  bits_per_token = math.log2(model.codebook_size)
  out = dict(codebook_size=model.codebook_size, step=tok.step)
  prefix_ok = True
  for split, batches in _splits(tok.config, num_train_images):
    sums = {k: np.zeros(5) for k in ks}
    feats = {k: [] for k in ks}
    feats_real = []
    n = 0.0
    tokens = 0
    for batch in batches:
      x = jnp.asarray(batch['image'])
      m = np.asarray(batch.get('mask', np.ones(x.shape[0])), np.float64)
      ids = tok.encode(x)
      tokens = int(np.prod(ids.shape[1:]))
      for k in ks:
        if one_d and k == ks[0]:
          # A prefix code: encoding with k tokens gives the first k ids.
          prefix_ok &= bool(jnp.all(tok.encode(x, num_tokens=k)
                                    == ids[:, :k]))
        x_hat = tok.decode(ids[:, :k] if one_d else ids)
        x_bic = im.bicubic_at_bits(x, (k or tokens) * bits_per_token)
        vals = [im.psnr(x, x_hat), im.ssim(x, x_hat), im.psnr(x, x_bic),
                im.ssim(x, x_bic)]
        if one_step is not None:
          vals.append(im.psnr(x, one_step(model, ids[:, :k])))
        else:
          vals.append(jnp.zeros(x.shape[0]))
        sums[k] += np.array([np.sum(np.asarray(v, np.float64) * m)
                             for v in vals])
        if inception is not None:
          feats[k].append(np.asarray(inception.features(x_hat))[m > 0])
      if inception is not None:
        feats_real.append(np.asarray(inception.features(x))[m > 0])
      n += float(m.sum())
    rows = []
    for k in ks:
      s = sums[k] / n
      kk = k or tokens
      row = dict(k=kk, bits=kk * bits_per_token, psnr=s[0], ssim=s[1],
                 bicubic_bits_psnr=s[2], bicubic_bits_ssim=s[3])
      if one_step is not None:
        row['one_step_psnr'] = s[4]
      if inception is not None:
        from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
        row['fid'] = fid_lib.fid_from_features(np.concatenate(feats_real),
                                               np.concatenate(feats[k]))
      rows.append(row)
    out[split] = rows
    out[f'{split}_images'] = n
  out['prefix_code'] = prefix_ok
  return out


ALL = tuple(MODELS) + ('vqgan',)


def markdown(results: dict) -> str:
  lines = ['| model | k tokens | bits/image | held-out PSNR (dB) | SSIM | FID '
           '| bicubic ≥ same bits: PSNR | SSIM | train-crop PSNR (dB) '
           '| 1-step decode PSNR: held-out / train |', '|' + '---|' * 10]
  for name in ALL:
    if name not in results:
      continue
    res = results[name]
    for r, t in zip(res['held_out'], res['train']):
      fid = f"{r['fid']:.1f}" if 'fid' in r else '—'
      label = name if name != 'vqgan' else 'vqgan (2D, 8x8)'
      one = (f"{r['one_step_psnr']:.2f} / {t['one_step_psnr']:.2f}"
             if 'one_step_psnr' in r else '—')
      lines.append(
          f"| {label} | {r['k']} | {r['bits']:.0f} | {r['psnr']:.2f} | "
          f"{r['ssim']:.3f} | {fid} | {r['bicubic_bits_psnr']:.2f} | "
          f"{r['bicubic_bits_ssim']:.3f} | {t['psnr']:.2f} | {one} |")
  return '\n'.join(lines)


def plot(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  colors = {'flextok': 'C0', 'one_d_piece': 'C1', 'vqgan': 'k'}
  for ax, split in zip(axes, ('held_out', 'train')):
    for name in ALL:
      if name not in results:
        continue
      rows = results[name][split]
      bits = [r['bits'] for r in rows]
      style = 's' if name == 'vqgan' else 'o-'
      ax.plot(bits, [r['psnr'] for r in rows], style, color=colors[name],
              label=name if name != 'vqgan' else '2D VQ-GAN (64 tokens)')
      if 'one_step_psnr' in rows[0]:
        ax.plot(bits, [r['one_step_psnr'] for r in rows], '^--',
                color=colors[name], label=f'{name}, 1-step decode E[x0|k]')
      if name != 'vqgan':
        for r in rows:
          ax.annotate(str(r['k']), (r['bits'], r['psnr']), fontsize=6,
                      xytext=(2, 2), textcoords='offset points')
    ref = sorted({(r['bits'], r['bicubic_bits_psnr']) for n in ALL
                  if n in results for r in results[n][split]})
    ax.plot([b for b, _ in ref], [p for _, p in ref], ':', color='gray',
            label='bicubic, ≥ same bits')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('bits per image (k tokens x log2 codebook; k annotated)')
    ax.set_title('held-out photos' if split == 'held_out'
                 else 'training photos (fixed crops)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel('PSNR (dB)')
  fig.suptitle('1D tokenizers: reconstruction vs number of tokens (32² '
               'photos)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--only', default=','.join(MODELS))
  parser.add_argument('--vqgan_workdir', default=None,
                      help='a finished configs/vqgan.py:tiny run to use '
                      'instead of training one')
  parser.add_argument('--inception_path', default=None,
                      help='local FID Inception weights (FID is skipped '
                      'without them)')
  parser.add_argument('--figure', default=os.path.join(
      REPO, 'experiments', 'figures', 'quality_vs_tokens.png'))
  parser.add_argument('--eval_only', action='store_true',
                      help='evaluate the runs already in --workdir')
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  inception = None
  if args.inception_path:
    from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
    inception = fid_lib.InceptionV3.from_file(args.inception_path)
  out_json = os.path.join(args.workdir, 'results.json')
  results = json.load(open(out_json)) if os.path.exists(out_json) else {}
  for name in args.only.split(','):
    if name not in MODELS:
      raise ValueError(f'unknown model {name!r}; known: {list(MODELS)}')
    wd = os.path.join(args.workdir, name)
    secs = (results.get(name, {}).get('train_seconds') if args.eval_only
            else train(MODELS[name], wd, args.steps))
    results[name] = eval_prefixes(wd, inception)
    results[name]['train_seconds'] = secs
    print(name, json.dumps(results[name], indent=1), flush=True)
    json.dump(results, open(out_json, 'w'), indent=1)
  vq_wd = args.vqgan_workdir or os.path.join(args.workdir, 'vqgan')
  if not args.vqgan_workdir and not args.eval_only:
    results['vqgan_train_seconds'] = train('configs/vqgan.py:tiny', vq_wd,
                                           args.steps)
  results['vqgan'] = eval_prefixes(vq_wd, inception)
  results['vqgan']['workdir'] = vq_wd
  json.dump(results, open(out_json, 'w'), indent=1)
  table = markdown(results)
  open(os.path.join(args.workdir, 'table.md'), 'w').write(table + '\n')
  print(table)
  fig = os.path.join(args.workdir, 'quality_vs_tokens.png')
  plot(results, fig)
  if args.figure:
    os.makedirs(os.path.dirname(args.figure), exist_ok=True)
    shutil.copy(fig, args.figure)


if __name__ == '__main__':
  main()
