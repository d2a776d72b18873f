"""Nearest-code search over a 2^18-code codebook in bounded memory.

65,536 tokens against 262,144 codes would need a 64 GiB N×K fp32 score matrix
if computed densely. `functional.nearest_code(chunk_size='auto')` scans the
codebook in chunks inside one compiled `lax.scan`, keeping only a running
(min score, index) pair per token, so the memory stays bounded by one chunk of
scores. This script prints the wall time, the process's peak RSS
(`resource.getrusage`), XLA's temp buffer size for the compiled search, the
size the dense matrix would have had, and checks the indices of a random
subset of tokens against a float64 numpy argmin.

Usage:
  python experiments/large_codebook_search.py
  python experiments/large_codebook_search.py --dim 16 --chunk-size 4096
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.quantizers import functional as F
from tokenizers_jax.quantizers import search


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux: ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gib(num_bytes: float) -> str:
  return f'{num_bytes / 2 ** 30:.3f} GiB'


def float64_nearest(z: np.ndarray, codebook: np.ndarray,
                    block: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Exact nearest codes in float64, a few tokens at a time.

  Returns:
    (indices [n], sorted squared distances [n, 2] of the two nearest codes).
  """
  cb = codebook.astype(np.float64)
  cb_sq = np.sum(cb * cb, axis=1)
  idx, top2 = [], []
  for start in range(0, z.shape[0], block):
    zz = z[start:start + block].astype(np.float64)
    d2 = (np.sum(zz * zz, axis=1)[:, None] - 2.0 * zz @ cb.T + cb_sq[None, :])
    idx.append(np.argmin(d2, axis=1))
    top2.append(np.sort(np.partition(d2, 1, axis=1)[:, :2], axis=1))
  return np.concatenate(idx), np.concatenate(top2)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--log2-codes', type=int, default=18)
  parser.add_argument('--tokens', type=int, default=65536)
  parser.add_argument('--dim', type=int, default=8)
  parser.add_argument('--chunk-size', default='auto',
                      help="'auto' (default) or a number of codes per chunk")
  parser.add_argument('--check', type=int, default=256,
                      help='tokens verified against float64 numpy')
  parser.add_argument('--runs', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  chunk = args.chunk_size if args.chunk_size == 'auto' else int(args.chunk_size)
  n, k, d = args.tokens, 2 ** args.log2_codes, args.dim

  rss_start = peak_rss_bytes()
  kz, kc = jax.random.split(jax.random.key(args.seed))
  z = jax.random.normal(kz, (n, d), jnp.float32)
  codebook = jax.random.normal(kc, (k, d), jnp.float32)
  jax.block_until_ready((z, codebook))

  search = jax.jit(lambda z, c: F.nearest_code(z, c, chunk_size=chunk))
  t0 = time.perf_counter()
  compiled = search.lower(z, codebook).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  dense_bytes = n * k * 4
  if chunk == 'auto':
    used_chunk = search._auto_chunk_size(n, k)  # pylint: disable=protected-access
  else:
    used_chunk = chunk
  print(f'devices: {jax.devices()}')
  print(f'search: N={n:,} tokens x K={k:,} codes (2^{args.log2_codes}), '
        f'd={d}, chunk_size={args.chunk_size!r} '
        f'(-> {used_chunk if used_chunk is not None else "dense"} codes/chunk)')
  print(f'dense N x K fp32 score matrix would need: {gib(dense_bytes)}')
  print(f'XLA temp buffer: {mem.temp_size_in_bytes / 2 ** 20:.1f} MiB; '
        f'arguments {mem.argument_size_in_bytes / 2 ** 20:.1f} MiB, '
        f'outputs {mem.output_size_in_bytes / 2 ** 20:.1f} MiB '
        f'({dense_bytes / max(mem.temp_size_in_bytes, 1):.0f}x less than dense)')
  print(f'compile: {compile_s:.2f} s')

  times = []
  for _ in range(args.runs):
    t0 = time.perf_counter()
    idx, best = jax.block_until_ready(compiled(z, codebook))
    times.append(time.perf_counter() - t0)
  flops = 2 * n * k * d
  print(f'wall time: {", ".join(f"{t:.2f}" for t in times)} s '
        f'({flops / min(times) / 1e9:.1f} GFLOP/s of score products)')
  print(f'peak RSS: {gib(peak_rss_bytes())} (at start: {gib(rss_start)})')

  # Verification against float64 on a random subset.
  rng = np.random.default_rng(args.seed)
  subset = np.sort(rng.choice(n, size=min(args.check, n), replace=False))
  z_np, cb_np = np.asarray(z), np.asarray(codebook)
  ref_idx, top2 = float64_nearest(z_np[subset], cb_np)
  ours = np.asarray(idx)[subset]
  match = ours == ref_idx
  print(f'check vs float64 numpy argmin on {subset.size} random tokens: '
        f'{int(match.sum())}/{subset.size} identical indices')
  if not match.all():
    # A mismatch is acceptable only when the float64 distances of the two
    # candidates tie to within fp32 rounding of the scores.
    zz = z_np[subset[~match]].astype(np.float64)
    d_ours = np.sum((zz - cb_np[ours[~match]].astype(np.float64)) ** 2, -1)
    d_ref = top2[~match, 0]
    scale = np.sum(zz * zz, -1) + np.max(np.sum(cb_np.astype(np.float64) ** 2,
                                                -1))
    gap = (d_ours - d_ref) / scale
    print(f'  mismatches: relative distance gap max {gap.max():.2e} '
          '(fp32 score rounding is ~1e-7 of ||z||²+||c||²)')
    if gap.max() > 1e-5:
      raise SystemExit('nearest_code disagrees with the float64 reference')
  # The min scores also agree: score = ||c||² - 2<z, c> = d² - ||z||².
  ours_d2 = np.asarray(best)[subset] + np.sum(z_np[subset].astype(np.float64)
                                              ** 2, -1)
  print(f'max |d²(ours) - d²(float64)| on the subset: '
        f'{np.max(np.abs(ours_d2 - top2[:, 0])):.2e}')


if __name__ == '__main__':
  main()
