"""Forward+backward speed and memory of our quantizers vs vector-quantize-pytorch.

Both libraries run in one process on the same CPU, in training mode, on the
same inputs, with the same kind of codebook (EMA codebooks with decay 0.8 and
the straight-through estimator, `rotation_trick=False`, in both). The timed
step is the quantizer's own loss plus a dummy downstream loss
`sum(quantized * w)`, differentiated with respect to the input:

  * ours: one `jax.jit`-compiled function of the module state (`nnx.split`,
    passed as its flat list of arrays), returning the loss, the input
    gradient and the updated state (EMA statistics), threaded from one step
    to the next;
  * VQP: `loss.backward()` on the same loss, `torch.set_num_threads(2)`.

Timings are medians over `--runs` steps after a warm-up (compilation), taken
in 5 alternating blocks (ours, VQP, ours, ...) so both see the same machine
load; within a block each library's steps run back to back.

Memory:
  * XLA: `compile().memory_analysis()`, temp + argument + output bytes of the
    compiled step (what XLA allocates for one step, inputs included).
  * peak RSS delta, the same method for both libraries: a fresh subprocess per
    case and library runs one warm-up step, resets the kernel's high-water mark
    (`/proc/self/clear_refs`), runs one more step and reports VmHWM minus the
    RSS before the step. glibc's mmap threshold is pinned to 64 KiB in that
    subprocess (MALLOC_MMAP_THRESHOLD_) so freed large buffers go back to the
    kernel and the warm step cannot hide in memory cached by the first one.

Roofline: the machine's measured fp32 matmul rate (a 4096² jnp matmul) and
copy bandwidth (a 256 MiB in-place jnp elementwise op, read + write bytes) give, per
case, the time of the unavoidable work (see `roofline()` for each formula).

Usage:
  python experiments/bench_quantizers.py              # all cases, 10 runs
  python experiments/bench_quantizers.py --runs 5 --cases vq16k,fsq
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable

import numpy as np

BATCH = 16
RUN_BLOCKS = 5  # timing alternates between the libraries in this many blocks
FSQ_LEVELS = (8, 8, 8, 5, 5, 5)


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark case.

  Attributes:
    name: short key for --cases.
    title: the table's case label.
    kind: 'vq', 'rvq', 'lfq' or 'fsq'.
    tokens: tokens per example (the batch is BATCH examples).
    dim: input dimension.
    codebook_size: K (per level for RVQ; prod(levels) for FSQ).
    levels: RVQ levels (1 otherwise).
  """
  name: str
  title: str
  kind: str
  tokens: int
  dim: int
  codebook_size: int
  levels: int = 1

  @property
  def num_tokens(self) -> int:
    return BATCH * self.tokens


CASES = [
    Case('vq16k', 'VQ K=16384 d=8, 256 tok', 'vq', 256, 8, 16384),
    Case('vq8k', 'VQ K=8192 d=256, 256 tok', 'vq', 256, 256, 8192),
    Case('rvq', 'RVQ 8x1024 d=128, 75 tok', 'rvq', 75, 128, 1024, levels=8),
    Case('lfq', 'LFQ 2^14 (entropy on), 256 tok', 'lfq', 256, 14, 2 ** 14),
    Case('fsq', 'FSQ [8,8,8,5,5,5], 256 tok', 'fsq', 256, 6,
         int(np.prod(FSQ_LEVELS))),
]


# -----------------------------------------------------------------------------
# Builders: the same inputs and codebooks for both libraries.
# -----------------------------------------------------------------------------


def make_inputs(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """x [B, T, D] ~ N(0, 1) and the downstream weights w of the same shape."""
  rng = np.random.default_rng(seed)
  shape = (BATCH, case.tokens, case.dim)
  x = rng.standard_normal(shape, dtype=np.float32)
  w = rng.standard_normal(shape, dtype=np.float32)
  return x, w


def build_vqp(case: Case):
  """The vector-quantize-pytorch module, in training mode."""
  import vector_quantize_pytorch as vqp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if case.kind == 'vq':
    mod = vqp.VectorQuantize(dim=case.dim, codebook_size=case.codebook_size,
                             decay=0.8, commitment_weight=0.25,
                             rotation_trick=False)
  elif case.kind == 'rvq':
    mod = vqp.ResidualVQ(dim=case.dim, num_quantizers=case.levels,
                         codebook_size=case.codebook_size, decay=0.8,
                         commitment_weight=0.25, rotation_trick=False)
  elif case.kind == 'lfq':
    mod = vqp.LFQ(dim=case.dim, codebook_size=case.codebook_size,
                  entropy_loss_weight=0.1, commitment_loss_weight=0.25,
                  diversity_gamma=1.0)
  elif case.kind == 'fsq':
    mod = vqp.FSQ(levels=list(FSQ_LEVELS))
  else:
    raise ValueError(case.kind)
  return mod.train()


def vqp_codebooks(mod, case: Case) -> list[np.ndarray]:
  """The peer's initial codebooks (one per level), to start ours from."""
  if case.kind == 'vq':
    layers = [mod]
  elif case.kind == 'rvq':
    layers = list(mod.layers)
  else:
    return []
  return [l._codebook.embed[0].detach().numpy().copy() for l in layers]  # pylint: disable=protected-access


def build_ours(case: Case, codebooks: list[np.ndarray]):
  """Our module, with the peer's initial codebooks where there is one."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import quantizers as Q  # pylint: disable=g-import-not-at-top
  rngs = nnx.Rngs(0)
  if case.kind == 'vq':
    mod = Q.VectorQuantizer(case.codebook_size, case.dim, ema_update=True,
                            decay=0.8, commitment_weight=0.25, rngs=rngs)
    levels = [mod]
  elif case.kind == 'rvq':
    mod = Q.ResidualVQ(case.levels, case.codebook_size, case.dim,
                       ema_update=True, decay=0.8, commitment_weight=0.25,
                       rngs=rngs)
    levels = list(mod.levels)
  elif case.kind == 'lfq':
    mod = Q.LFQ(case.codebook_size, entropy_loss_weight=0.1,
                commitment_loss_weight=0.25, diversity_gamma=1.0,
                entropy_temperature=0.01)
    levels = []
  elif case.kind == 'fsq':
    mod = Q.FSQ(FSQ_LEVELS)
    levels = []
  else:
    raise ValueError(case.kind)
  for lvl, cb in zip(levels, codebooks):
    lvl.codebook[...] = jnp.asarray(cb)
    lvl.embed_avg[...] = jnp.asarray(cb)
  return mod


# -----------------------------------------------------------------------------
# Steps.
# -----------------------------------------------------------------------------


def ours_step_fn(module):
  """(jitted step, initial state leaves); step(leaves, x, w) -> (loss, dx, new leaves)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(module)
  # The state crosses the jit boundary as a flat list of arrays: flattening an
  # nnx.State (a Python pytree node) on every call costs 0.3 ms of dispatch.
  leaves, treedef = jax.tree.flatten(state)

  def step(leaves, x, w):
    def loss_fn(x):
      # copy=True: the quantizer writes its statistics while being traced.
      m = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), copy=True)
      out = m(x, train=True)
      loss = out.loss + jnp.sum(out.quantized * w)
      return loss, jax.tree.leaves(nnx.state(m))
    (loss, new_leaves), dx = jax.value_and_grad(loss_fn, has_aux=True)(x)
    return loss, dx, new_leaves

  return jax.jit(step), leaves


def vqp_step_fn(module, case: Case, x_np: np.ndarray, w_np: np.ndarray):
  """A closure running one VQP training step; returns the loss as a float."""
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(x_np.copy()).requires_grad_(True)
  w = torch.from_numpy(w_np.copy())

  def step():
    x.grad = None
    if case.kind == 'fsq':
      quantized, _ = module(x)
      aux = torch.zeros(())
    else:
      quantized, _, aux = module(x)
    loss = aux.sum() + (quantized * w).sum()
    loss.backward()
    return float(loss.detach())

  return step


# -----------------------------------------------------------------------------
# Machine rates and rooflines.
# -----------------------------------------------------------------------------


def _step_times(fn: Callable[[], object], runs: int) -> list[float]:
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def _median_time(fn: Callable[[], object], runs: int) -> float:
  return float(np.median(_step_times(fn, runs)))


def machine_rates(runs: int = 5) -> dict[str, float]:
  """Measured fp32 matmul GFLOP/s (4096² jnp matmul) and copy GB/s."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 4096
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  t_mm = _median_time(lambda: mm(a, b).block_until_ready(), runs)
  # Elementwise op over 256 MiB, in place (donated): reads and writes every
  # byte once. Without donation every call would write to freshly mapped
  # pages, and this VM's page-fault cost (not DRAM) would set the rate.
  scale = jax.jit(lambda v: v * 1.0001, donate_argnums=0)
  holder = {'big': jnp.ones((1 << 26,), jnp.float32)}

  def bw_step():
    holder['big'] = scale(holder['big'])
    holder['big'].block_until_ready()

  bw_step()
  t_bw = _median_time(bw_step, runs)
  return {
      'matmul_gflops': 2 * n ** 3 / t_mm / 1e9,
      'copy_gbps': 2 * (1 << 26) * 4 / t_bw / 1e9,
  }


def roofline(case: Case, rates: dict[str, float]) -> tuple[float, str]:
  """Lower bound on the step time (seconds) and how it was counted.

  VQ/RVQ: the nearest-code search, 2·N·K·d FLOPs per level, plus one pass over
    the N×K fp32 scores at copy bandwidth. The search is not differentiated
    (argmin has no gradient; the straight-through/commitment backward and the
    EMA update are O(N·d)), so there is no backward factor.
  LFQ: the exact entropy loss needs the batch-average code distribution p̄
    over all K codes. Its least-work form (ours) is the contraction
    p̄ = p_loᵀ·p_hi over N, [√K, N]·[N, √K]: 2·N·K FLOPs forward, and the
    backward needs two more products of the same size (d p_lo and d p_hi),
    hence ×3. No N×K matrix is needed, so the memory term is one pass over
    the inputs. (The dense form that VQP uses, N×K logits from an N×K×d
    product, has a roofline of 2·2·N·K·d FLOPs forward+backward (z only) plus
    a pass over N×K: printed in the notes.)
  FSQ: no product at all; one pass over x, the quantized output, w and dx.
  """
  peak = rates['matmul_gflops'] * 1e9
  bw = rates['copy_gbps'] * 1e9
  n, k, d = case.num_tokens, case.codebook_size, case.dim
  if case.kind in ('vq', 'rvq'):
    flops = case.levels * 2 * n * k * d
    bytes_ = case.levels * 4 * n * k
    return flops / peak + bytes_ / bw, f'{case.levels}x(2NKd)+NK pass'
  if case.kind == 'lfq':
    flops = 3 * 2 * n * k
    bytes_ = 4 * 4 * n * d
    return flops / peak + bytes_ / bw, '3x(2NK) p-bar+in/out pass'
  bytes_ = 4 * 4 * n * d
  return bytes_ / bw, 'x,q,w,dx pass'


def rvq_search_floor_fn(case: Case) -> Callable[[], object]:
  """A step running only the RVQ case's distance products (timed like ours).

  The `levels` sequential [N, d]·[d, K] score products and the row minimum of
  each (the least a nearest-code search does), chained through the residual as
  in RVQ, with XLA's own GEMM: no argmin, gather, loss, gradient or EMA work.
  Any XLA implementation of the step takes longer on this machine.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.quantizers import functional as F  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((case.num_tokens, case.dim), np.float32))
  cbs = jnp.asarray(rng.standard_normal(
      (case.levels, case.codebook_size, case.dim), np.float32))

  @jax.jit
  def products(cbs, z):
    r, total = z, jnp.zeros((case.num_tokens,), jnp.float32)
    for l in range(case.levels):
      m = jnp.min(F.code_scores(r, cbs[l]), axis=-1)
      total = total + m
      r = r + 1e-3 * m[:, None]  # each level depends on the previous one
    return total

  products(cbs, z).block_until_ready()
  return lambda: products(cbs, z).block_until_ready()


def lfq_dense_roofline(case: Case, rates: dict[str, float]) -> float:
  n, k, d = case.num_tokens, case.codebook_size, case.dim
  return (2 * 2 * n * k * d / (rates['matmul_gflops'] * 1e9)
          + 4 * n * k / (rates['copy_gbps'] * 1e9))


# -----------------------------------------------------------------------------
# Peak RSS in a fresh subprocess.
# -----------------------------------------------------------------------------


def _status_kib(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise KeyError(field)


def rss_child(case_name: str, impl: str) -> None:
  """Subprocess entry: one warm step, reset VmHWM, one step; print JSON."""
  case = {c.name: c for c in CASES}[case_name]
  x_np, w_np = make_inputs(case)
  if impl == 'vqp':
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(2)
    step = vqp_step_fn(build_vqp(case), case, x_np, w_np)
  else:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    codebooks = vqp_codebooks(build_vqp(case), case)
    fn, state = ours_step_fn(build_ours(case, codebooks))
    x, w = jnp.asarray(x_np), jnp.asarray(w_np)
    holder = {'state': state}

    def step():
      loss, dx, holder['state'] = fn(holder['state'], x, w)
      jax.block_until_ready((loss, dx, holder['state']))
  step()
  step()
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
  before = _status_kib('VmRSS')
  step()
  peak = _status_kib('VmHWM')
  print(json.dumps({'rss_delta_bytes': (peak - before) * 1024}))


def measure_rss(case: Case, impl: str) -> float | None:
  env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536',
             MALLOC_TRIM_THRESHOLD_='65536')
  proc = subprocess.run(
      [sys.executable, __file__, '--rss-child', case.name, '--impl', impl],
      capture_output=True, text=True, env=env, check=False)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)['rss_delta_bytes']
  print(f'RSS subprocess failed for {case.name}/{impl}:\n{proc.stderr[-2000:]}',
        file=sys.stderr)
  return None


# -----------------------------------------------------------------------------
# Main.
# -----------------------------------------------------------------------------


def _mib(b: float | None) -> str:
  return 'n/a' if b is None else f'{b / 2 ** 20:.1f}'


def cpu_model() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def run_case(case: Case, runs: int, rates: dict[str, float],
             with_rss: bool) -> dict[str, object]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x_np, w_np = make_inputs(case)
  peer = build_vqp(case)
  ours = build_ours(case, vqp_codebooks(peer, case))
  peer_step = vqp_step_fn(peer, case, x_np, w_np)
  fn, state = ours_step_fn(ours)
  x, w = jnp.asarray(x_np), jnp.asarray(w_np)

  compiled = fn.lower(state, x, w).compile()
  mem = compiled.memory_analysis()
  xla_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
               + mem.output_size_in_bytes)
  holder = {'state': state}

  def ours_step():
    loss, dx, holder['state'] = fn(holder['state'], x, w)
    jax.block_until_ready((loss, dx, holder['state']))

  # Warm-up: compilation and first-touch allocations on both sides.
  for _ in range(2):
    ours_step()
    peer_step()
  # Alternating blocks of runs: each library runs back to back within a block
  # (as in training, where one step follows another), and the blocks alternate
  # so that both see the same machine load over time. Single steps interleaved
  # one by one would time each library right after the other's worker threads
  # (torch's OpenMP pool spin-waits after a parallel region), which slowed our
  # step by 20-40 % on 2 cores.
  floor_step = rvq_search_floor_fn(case) if case.kind == 'rvq' else None
  t_ours, t_peer, t_floor = [], [], []
  per_block = max(runs // RUN_BLOCKS, 1)
  for _ in range(RUN_BLOCKS):
    t_ours += _step_times(ours_step, per_block)
    t_peer += _step_times(peer_step, per_block)
    if floor_step is not None:
      t_floor += _step_times(floor_step, per_block)
  roof, basis = roofline(case, rates)
  row = {
      'case': case.title,
      'ours_ms': 1e3 * float(np.median(t_ours)),
      'vqp_ms': 1e3 * float(np.median(t_peer)),
      'ours_spread': 1e3 * (max(t_ours) - min(t_ours)),
      'xla_bytes': xla_bytes,
      'xla_temp_bytes': mem.temp_size_in_bytes,
      'roofline_ms': 1e3 * roof,
      'roofline_basis': basis,
  }
  if t_floor:
    row['floor_ms'] = 1e3 * float(np.median(t_floor))
  if with_rss:
    row['ours_rss'] = measure_rss(case, 'ours')
    row['vqp_rss'] = measure_rss(case, 'vqp')
  return row


def format_table(rows: list[dict[str, object]]) -> str:
  header = ('| case | ours ms | VQP ms | speed-up (VQP/ours) '
            '| ours XLA mem MiB (temp+arg+out) | ours peak RSS Δ MiB '
            '| VQP peak RSS Δ MiB | roofline ms (basis) | ours / roofline |')
  sep = '|' + '---|' * 9
  lines = [header, sep]
  for r in rows:
    lines.append(
        f"| {r['case']} | {r['ours_ms']:.2f} | {r['vqp_ms']:.2f} "
        f"| {r['vqp_ms'] / r['ours_ms']:.1f}x | {_mib(r['xla_bytes'])} "
        f"| {_mib(r.get('ours_rss'))} | {_mib(r.get('vqp_rss'))} "
        f"| {r['roofline_ms']:.2f} ({r['roofline_basis']}) "
        f"| {r['ours_ms'] / r['roofline_ms']:.2f}x |")
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', type=int, default=10)
  parser.add_argument('--cases', default=','.join(c.name for c in CASES),
                      help='comma-separated subset of: '
                      + ', '.join(c.name for c in CASES))
  parser.add_argument('--no-rss', action='store_true',
                      help='skip the peak-RSS subprocesses')
  parser.add_argument('--torch-threads', type=int, default=2)
  parser.add_argument('--rss-child', help=argparse.SUPPRESS)
  parser.add_argument('--impl', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.rss_child:
    rss_child(args.rss_child, args.impl)
    return

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  wanted = args.cases.split(',')
  cases = [c for c in CASES if c.name in wanted]

  print(f'# {datetime.datetime.now().isoformat(timespec="seconds")}  '
        f'{cpu_model()}, {os.cpu_count()} CPUs; jax {jax.__version__} '
        f'({jax.devices()[0].platform}), torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), vector-quantize-pytorch '
        f'{importlib.metadata.version("vector-quantize-pytorch")}; '
        f'batch {BATCH}, median of {args.runs} runs')
  rates = machine_rates()
  print(f"# measured: fp32 matmul {rates['matmul_gflops']:.1f} GFLOP/s "
        f"(4096² jnp.matmul), copy bandwidth {rates['copy_gbps']:.1f} GB/s "
        '(256 MiB in-place elementwise, read+write bytes)')
  rows = []
  for case in cases:
    row = run_case(case, args.runs, rates, with_rss=not args.no_rss)
    rows.append(row)
    print(f"#   {case.title}: ours {row['ours_ms']:.2f} ms "
          f"(spread {row['ours_spread']:.2f}), VQP {row['vqp_ms']:.2f} ms",
          flush=True)
  print()
  print(format_table(rows))
  print()
  for case, row in zip(cases, rows):
    ratio = row['ours_ms'] / row['roofline_ms']
    print(f"- {case.title}: ours is {ratio:.2f}x its roofline "
          f"({row['roofline_ms']:.2f} ms); XLA temp buffer "
          f"{_mib(row['xla_temp_bytes'])} MiB.")
    if 'floor_ms' in row:
      floor = row['floor_ms']
      print(f'  (its {case.levels} chained score products + row minima alone, '
            f'measured: {floor:.2f} ms; {row["vqp_ms"] / floor:.1f}x the peer '
            'is the most any XLA implementation of this step could reach '
            'here.)')
    if case.kind == 'lfq':
      dense = lfq_dense_roofline(case, rates)
      print(f'  (roofline of the dense N×K entropy, as VQP computes it: '
            f'{1e3 * dense:.2f} ms; ours is {1e3 * dense / row["ours_ms"]:.1f}x '
            'below it.)')


if __name__ == '__main__':
  main()
