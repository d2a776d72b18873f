r"""Paper-scale train steps compiled ahead of time on 64 simulated devices.

For each paper config and each data x fsdp mesh, builds the train state
shape-only (`training/abstract.py`: no parameter memory on the 64 devices),
lowers and compiles the real train step (`task.train_step`, jitted as the
training loop jits it: state in/out shardings, donated state) for abstract
batches, and reports per device:

  * argument and temp bytes (`compiled.memory_analysis()`), and their sum
    minus the donated (aliased) output, the step's footprint;
  * the fraction (bytes) of the parameters and of the optimizer state whose
    sharding splits some dimension over 'fsdp';
  * the collectives in the compiled HLO (`compiled.as_text()`): a static
    count of all-reduce, all-gather, reduce-scatter, all-to-all and
    collective-permute instructions (ops inside loops count once);
  * the largest per-device batch fitting 16 GiB and 80 GiB, by LINEAR
    EXTRAPOLATION of the footprint measured at two per-device batch sizes.

Two forms of the step (`--steps`):
  asis      the step as the training loop compiles it;
  gathered  the same step with every parameter constrained to be replicated
            at its start (`abstract.gather_params`: one all-gather of the
            parameters, gradients reduced back to the parameter shardings).

Optimizer states are sharded like their parameters in both, as
`core.build_state` shards them (until commit efa86df it replicated them:
the 'opt/device replicated' column is what each device then held).

The memory figures are XLA:CPU's buffer assignment for the SPMD program; a
GPU or TPU compile schedules and fuses differently. Compiles use
`--xla_backend_optimization_level=0` (LLVM only: the same buffer sizes, up
to 3x faster compiles on this 2-core machine; `--full_opt` turns it off).

Usage:
  python experiments/scale_check.py                      # everything (hours)
  python experiments/scale_check.py --configs vqgan,titok --meshes 8x8 \
      --steps gathered --batches 1,2
  python experiments/scale_check.py --out /tmp/scale.jsonl   # resumable
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

CONFIGS = {
    'vqgan': 'configs/vqgan.py:imagenet_f16',
    'lfq': 'configs/lfq.py:imagenet_256',
    'titok': 'configs/titok.py:s128',
    'flextok': 'configs/flextok.py:d12_d12',
    'audio': 'configs/audio_codec.py:paper',
    'neurorvq': 'configs/neurorvq.py:paper',
}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute')
GIB = 2 ** 30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count_collectives(hlo: str) -> dict[str, int]:
  """Instructions of each collective kind in HLO text (async '-start' ops
  count once, their '-done' not at all)."""
  return {op: len(re.findall(r'\s' + op + r'(?:-start)?\(', hlo))
          for op in COLLECTIVES}


def max_batch(points: list[tuple[int, float]], cap: float) -> int | None:
  """Largest per-device batch b with fixed + slope * b <= cap, the line
  through the two (batch, bytes) points; None when they give no slope."""
  (b1, m1), (b2, m2) = points[:2]
  slope = (m2 - m1) / (b2 - b1)
  if slope <= 0:
    return None
  return max(int(math.floor((cap - (m1 - slope * b1)) / slope)), 0)


def measure(name: str, data: int, fsdp: int, batches: list[int],
            steps: list[str], done: set, emit) -> None:
  """Compiles config `name` on a data x fsdp mesh; emits one row per
  (step form, per-device batch) not already in `done`."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import abstract  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train  # pylint: disable=g-import-not-at-top

  todo = [(s, b) for s in steps for b in batches
          if (name, f'{data}x{fsdp}', s, b) not in done]
  if not todo:
    return
  n = data * fsdp
  config = config_lib.load_config_file(os.path.join(ROOT, CONFIGS[name]))
  config.mesh.shape = (data, fsdp, 1)
  # The task validates batches against the mesh: the largest one here.
  config.data.global_batch_size = max(batches) * n
  if 'eval_batch_size' in config.data:
    config.data.eval_batch_size = n
  mesh = train.make_mesh(config)
  t0 = time.time()
  trainer, state, shardings = abstract.abstract_create(config, mesh)
  create_s = time.time() - t0
  owners = [k for k in state if isinstance(state[k], dict)
            and 'params' in state[k]]
  params = {k: state[k]['params'] for k in owners}
  opts = {k + '_opt': state[k + '_opt'] for k in owners
          if k + '_opt' in state}
  p_frac, p_bytes = abstract.sharded_fraction(params)
  o_frac, o_bytes = abstract.sharded_fraction(opts)
  common = dict(
      config=name, spec=CONFIGS[name], mesh=f'{data}x{fsdp}',
      devices=n, params_m=sum(math.prod(x.shape) for x in
                              jax.tree.leaves(params)) / 1e6,
      params_bytes=p_bytes, params_sharded=p_frac,
      opt_bytes=o_bytes, opt_sharded=o_frac,
      state_per_device=abstract.per_device_bytes(state),
      opt_per_device=abstract.per_device_bytes(opts),
      create_s=create_s)
  for step, b in todo:
    batch = abstract.abstract_batch(config, mesh, b * n)
    t0 = time.time()
    with jax.set_mesh(mesh):
      lowered = abstract.lower_train_step(config, trainer, state, shardings,
                                          batch, gather=step == 'gathered')
      compiled = lowered.compile()
    compile_s = time.time() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row = dict(common, step=step, batch_per_device=b,
               arg=mem.argument_size_in_bytes, temp=mem.temp_size_in_bytes,
               out=mem.output_size_in_bytes, alias=mem.alias_size_in_bytes,
               flops_per_device=float(cost.get('flops', float('nan'))),
               collectives=count_collectives(compiled.as_text()),
               compile_s=compile_s)
    row['footprint'] = row['arg'] + row['temp'] + row['out'] - row['alias']
    emit(row)
    del compiled, lowered


def _pct(fraction: float, fsdp: int) -> str:
  # With fsdp = 1 nothing is split over it.
  return f'{100 * fraction:.1f} %' if fsdp > 1 else '— (fsdp 1)'


def _gib(rows: list[dict], key: str) -> str:
  return ' / '.join(f'{r[key] / GIB:.2f}' for r in rows)


def table(rows: list[dict]) -> str:
  """The markdown table: one row per config, mesh and step form, with the
  footprints at the two smallest per-device batches and the batch limits
  extrapolated from them (collectives and compile time: smallest batch)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r['config'], r['mesh'], r['step']), []).append(r)
  lines = [
      '| config | params (M) | mesh data×fsdp | step | batch/dev b1, b2 '
      '| arg GiB | temp GiB b1 / b2 | footprint GiB b1 / b2 '
      '| params sharded | opt sharded | opt/device replicated GiB '
      '| AR | AG | RS | A2A | CP | max batch/dev 16 GiB | 80 GiB '
      '| compile s |',
      '|' + '---|' * 19]
  order = list(CONFIGS)
  for key in sorted(groups, key=lambda k: (order.index(k[0]),
                                           -int(k[1].split('x')[0]), k[2])):
    rs = sorted(groups[key], key=lambda r: r['batch_per_device'])[:2]
    r = rs[0]
    fsdp = int(key[1].split('x')[1])
    limits = ['—', '—']
    if len(rs) == 2:
      pts = [(x['batch_per_device'], x['footprint']) for x in rs]
      limits = [str(max_batch(pts, c * GIB)) for c in (16, 80)]
    c = r['collectives']
    lines.append(
        f"| {r['config']} | {r['params_m']:.1f} | {r['mesh']} | {r['step']} "
        f"| {', '.join(str(x['batch_per_device']) for x in rs)} "
        f"| {r['arg'] / GIB:.2f} | {_gib(rs, 'temp')} "
        f"| {_gib(rs, 'footprint')} "
        f"| {_pct(r['params_sharded'], fsdp)} "
        f"| {_pct(r['opt_sharded'], fsdp)} "
        f"| {r['opt_bytes'] / GIB:.2f} "
        f"| {c['all-reduce']} | {c['all-gather']} | {c['reduce-scatter']} "
        f"| {c['all-to-all']} | {c['collective-permute']} "
        f"| {limits[0]} | {limits[1]} | {r['compile_s']:.0f} |")
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(CONFIGS),
                      help=f'comma-separated subset of {list(CONFIGS)}')
  parser.add_argument('--meshes', default='64x1,8x8,1x64',
                      help='data x fsdp meshes, e.g. 64x1,8x8,1x64')
  parser.add_argument('--batches', default='1,2',
                      help='per-device batch sizes (two for extrapolation)')
  parser.add_argument('--steps', default='asis,gathered',
                      help='step forms: asis, gathered')
  parser.add_argument('--devices', type=int, default=64)
  parser.add_argument('--out', default='',
                      help='JSON-lines file: rows are appended, rows already '
                      'there are skipped (resume)')
  parser.add_argument('--full_opt', action='store_true',
                      help='compile with XLA:CPU backend optimisations on')
  parser.add_argument('--table_only', action='store_true',
                      help='print the table of --out and exit')
  args = parser.parse_args(argv)

  rows = []
  if args.out and os.path.exists(args.out):
    with open(args.out) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  if args.table_only:
    print(table(rows))
    return
  names = args.configs.split(',')
  unknown = [c for c in names if c not in CONFIGS]
  if unknown:
    parser.error(f'unknown configs {unknown}; known: {list(CONFIGS)}')
  meshes = [tuple(int(v) for v in m.split('x')) for m in args.meshes.split(',')]
  for d, f in meshes:
    if d * f != args.devices:
      parser.error(f'mesh {d}x{f} does not use {args.devices} devices')
  batches = [int(b) for b in args.batches.split(',')]
  steps = args.steps.split(',')
  if set(steps) - {'asis', 'gathered'}:
    parser.error('--steps takes asis and/or gathered')

  # Before jax is imported: the simulated devices and compile options.
  flags = [f'--xla_force_host_platform_device_count={args.devices}']
  if not args.full_opt:
    flags += ['--xla_backend_optimization_level=0',
              '--xla_llvm_disable_expensive_passes=true']
  os.environ['XLA_FLAGS'] = ' '.join(
      [os.environ.get('XLA_FLAGS', '')] + flags).strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.path.insert(0, ROOT)

  done = {(r['config'], r['mesh'], r['step'], r['batch_per_device'])
          for r in rows}

  def emit(row):
    rows.append(row)
    if args.out:
      with open(args.out, 'a') as f:
        f.write(json.dumps(row) + '\n')
    c = row['collectives']
    print(f"# {row['config']} {row['mesh']} {row['step']} "
          f"b={row['batch_per_device']}: "
          f"arg {row['arg'] / GIB:.2f} temp {row['temp'] / GIB:.2f} GiB, "
          f"params {100 * row['params_sharded']:.1f} % / opt "
          f"{100 * row['opt_sharded']:.1f} % sharded, {c}, compile "
          f"{row['compile_s']:.0f} s", flush=True)

  for name in names:
    for d, f in meshes:
      measure(name, d, f, batches, steps, done, emit)
  print()
  print(table(rows))


if __name__ == '__main__':
  main()
