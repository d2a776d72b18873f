"""Where the VQ-GAN train step's time goes, by op class.

Traces `--steps` executions of the real compiled train step (the
`bench_train_step.py --vs_taming` configuration of `--case`) with
`jax.profiler`, reads the trace back (`jax.profiler.ProfileData`), and sums
the time of every executed XLA instruction into a class:

  convolutions   `convolution` instructions (forward and both backward convs)
  GroupNorm      ops inside a GroupNorm call (statistics, normalisation)
  BatchNorm      the discriminator's BatchNorm
  attention      the attention blocks' own ops (scores, softmax, weighted sum;
                 their 1x1 convs count as convolutions, their norm as GroupNorm)
  quantizer      the codebook search, straight-through and its losses
  optimizer      Adam updates, the guarded commit, EMA (ops outside the
                 forward and backward passes)
  copies         layout copies / transposes XLA inserts
  other          the rest (activations, residual adds, losses)

Module names reach the HLO through `jax.named_scope`, added here for the trace
only by wrapping the `__call__` of the modules involved (the step computes
exactly what training computes). Times are summed over all threads, so they
are CPU time per step, and the shares are shares of that.

  python experiments/profile_train_step.py --case small --steps 5
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CLASSES = ('convolutions', 'GroupNorm', 'BatchNorm', 'attention', 'quantizer',
           'optimizer', 'copies', 'other')


@contextlib.contextmanager
def named_modules(classes):
  """Wraps each class's `__call__` in `jax.named_scope(class name)`."""
  import jax  # pylint: disable=g-import-not-at-top
  saved = {}
  for cls in classes:
    saved[cls] = cls.__call__

    def wrapped(self, *args, __orig=cls.__call__, __name=cls.__name__, **kw):
      with jax.named_scope(__name):
        return __orig(self, *args, **kw)

    cls.__call__ = functools.wraps(saved[cls])(wrapped)
  try:
    yield
  finally:
    for cls, fn in saved.items():
      cls.__call__ = fn


def scoped_classes():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.frontends import image  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.quantizers import base  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import quantizers  # pylint: disable=g-import-not-at-top
  del quantizers
  attn = [c for n, c in vars(image).items()
          if isinstance(c, type) and 'attn' in n.lower()
          and issubclass(c, nnx.Module)]
  quant = [c for c in _subclasses(base.Quantizer)]
  return [nnx.GroupNorm, nnx.BatchNorm, *attn, *quant]


def _subclasses(cls):
  out = []
  for sub in cls.__subclasses__():
    out.append(sub)
    out.extend(_subclasses(sub))
  return out


_LAYOUT_OPS = {'parameter', 'copy', 'transpose', 'bitcast', 'reshape',
               'reverse', 'constant'}


def instruction_scopes(hlo_text: str) -> dict[str, tuple[set, str]]:
  """instruction name -> (the opcodes it executes, op_name metadata) for
  every instruction of a compiled module; a fusion's opcodes are those of
  its fused computation (recursively), its op_name the first one found."""
  comps: dict[str, list[tuple[str, str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    head = re.match(r'^(?:ENTRY )?%([\w.\-]+) \(.*\{$', line)
    if head:
      current = comps.setdefault(head.group(1), [])
      continue
    m = re.match(r'^\s*(?:ROOT )?%([\w.\-]+) = (.*)$', line)
    if not m or current is None:
      continue
    name, rest = m.groups()
    op = re.search(r'\b([a-z][\w\-]*)\(', rest)
    meta = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r'calls=%([\w.\-]+)', rest)
    current.append((name, op.group(1) if op else '',
                    meta.group(1) if meta else '',
                    calls.group(1) if calls else ''))

  def contents(comp, seen=()):
    ops, names = set(), []
    for _, opcode, op_name, calls in comps.get(comp, ()):
      ops.add(opcode)
      if op_name:
        names.append(op_name)
      if calls and calls not in seen:
        o, n = contents(calls, seen + (calls,))
        ops |= o
        names += n
    return ops, names

  out = {}
  for instrs in comps.values():
    for name, opcode, op_name, calls in instrs:
      ops, names = {opcode}, [op_name] if op_name else []
      if calls:
        o, n = contents(calls)
        ops |= o
        names += n
      out[name] = (ops, names[0] if names else '')
  return out


def classify(ops: set, op_name: str, attn_names, quant_names) -> str:
  if 'convolution' in ops:
    return 'convolutions'
  if ops <= _LAYOUT_OPS | {'fusion'}:
    return 'copies'
  scopes = op_name.split('/')
  if any('GroupNorm' in s for s in scopes):
    return 'GroupNorm'
  if any('BatchNorm' in s for s in scopes):
    return 'BatchNorm'
  if any(n in s for s in scopes for n in attn_names):
    return 'attention'
  if any(n in s for s in scopes for n in quant_names):
    return 'quantizer'
  if op_name and 'jvp(' not in op_name and 'transpose(' not in op_name:
    return 'optimizer'
  return 'other'


def profile(case: str, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  import bench_train_step as bench  # pylint: disable=g-import-not-at-top
  config, images, mesh = bench.case_inputs(case)
  batch, size = config.data.global_batch_size, config.data.image_size
  classes = scoped_classes()
  attn_names = {c.__name__ for c in classes[2:] if 'attn' in
                c.__name__.lower()}
  quant_names = {c.__name__ for c in classes} - attn_names - {
      'GroupNorm', 'BatchNorm'}
  with jax.set_mesh(mesh), named_modules(classes):
    state, x, lowered = bench.lower_train_step(config, images, mesh)
    compiled = lowered.compile()
    scopes = instruction_scopes(compiled.as_text())
    state, m = compiled(state, x)
    jax.block_until_ready(m)
    tmp = tempfile.mkdtemp(prefix='profile_step_')
    t0 = time.perf_counter()
    jax.profiler.start_trace(tmp)
    for _ in range(steps):
      state, m = compiled(state, x)
      jax.block_until_ready(m)
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / steps
  path = sorted(glob.glob(os.path.join(tmp, '**', '*.xplane.pb'),
                          recursive=True))[-1]
  totals = collections.Counter()
  per_op = collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      for ev in line.events:
        if ev.name not in scopes:
          continue
        ops, op_name = scopes[ev.name]
        cls = classify(ops, op_name, attn_names, quant_names)
        totals[cls] += ev.duration_ns
        per_op[(cls, ev.name)] += ev.duration_ns
  return dict(case=case, batch=batch, image_size=size, wall_s=wall,
              totals={k: v / steps / 1e6 for k, v in totals.items()},
              top=[(c, n, v / steps / 1e6) for (c, n), v in
                   per_op.most_common(12)])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--case', default='small', help='small or f16')
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args(argv)
  r = profile(args.case, args.steps)
  total = sum(r['totals'].values())
  print(f"# {args.case}: {r['image_size']}² batch {r['batch']}, "
        f"{r['wall_s'] * 1e3:.0f} ms/step wall while traced, "
        f"{total:.0f} ms/step of instruction CPU time")
  print('| op class | CPU ms/step | share |')
  print('|---|---|---|')
  for cls in CLASSES:
    v = r['totals'].get(cls, 0.0)
    print(f'| {cls} | {v:.1f} | {100 * v / total:.1f} % |')
  print('\nlargest instructions:')
  for cls, name, v in r['top']:
    print(f'  {v:8.1f} ms  {cls:12s} {name}')


if __name__ == '__main__':
  main()
