"""Train-step speed and model FLOPs utilisation (MFU) of the VQ-GAN configs.

For each config, builds the real training state and the real jit-compiled
train step (the one `tokenizers_jax.train` runs: generator forward, the
adaptive-weight VJPs, one full generator backward, discriminator forward and
backward on real and fake, both optimizer updates, EMA), on synthetic images
of the config's size and the requested batch, with the discriminator on (the
step's most expensive phase). Prints, per config:

  * compile time and steps/s (median over `--steps` timed steps),
  * FLOPs per step from XLA's cost analysis of the compiled step,
  * achieved FLOP/s and MFU = achieved / the machine's measured matmul peak
    (a 4096² fp32 `jnp.matmul`; in bf16 mode, a 4096² bf16 matmul),
  * XLA's buffer sizes for the step.

The paper config (`imagenet_f16`) uses LPIPS; no weights ship, so the bench
uses randomly initialised LPIPS weights (the FLOPs and time are the same).

Usage:
  python experiments/bench_train_step.py                     # tiny (batch 16), imagenet_f16 (batch 1)
  python experiments/bench_train_step.py --configs tiny --batch 32 --steps 20
  python experiments/bench_train_step.py --configs tiny --bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def matmul_peak_gflops(dtype, n: int = 4096, runs: int = 5) -> float:
  """Measured n×n×n matmul rate, GFLOP/s."""
  import jax  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda a, b: a @ b)
  mm(a, b).block_until_ready()
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / float(np.median(times)) / 1e9


def bench_config(variant: str, batch: int, steps: int, bf16: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.losses.perceptual import LPIPS  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                             'configs', 'vqgan.py')
  config = config_lib.load_config_file(
      f"{config_path}:{variant}{',bf16' if bf16 else ''}")
  config.data.global_batch_size = batch
  use_lpips = config.loss.perceptual_weight > 0
  config.loss.perceptual_weight = 0.0       # built below with random weights
  config.loss.disc_start = 0                # time the full GAN step
  mesh = train_lib.make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, state, state_sh = steps_lib.create(config, mesh)
    if use_lpips:
      trainer = dataclasses.replace(trainer, lpips=LPIPS())
      config.loss.perceptual_weight = 1.0
    size = config.data.image_size
    images = np.random.default_rng(0).uniform(
        -1, 1, (batch, size, size, 3)).astype(np.float32)
    data_sh = train_lib.batch_sharding(mesh)
    batch_arr = {'image': jax.device_put(images, data_sh)}
    fn = jax.jit(lambda s, b: steps_lib.train_step(trainer, s, b),
                 in_shardings=(state_sh, data_sh),
                 out_shardings=(state_sh, None), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch_arr).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    flops = float(cost.get('flops', float('nan')))
    mem = compiled.memory_analysis()
    # Warm-up, then timed steps.
    state, metrics = compiled(state, batch_arr)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, metrics = compiled(state, batch_arr)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    loss = float(metrics['train/loss'])
  step_s = float(np.median(times))
  num_params = sum(int(np.prod(x.shape)) for x in
                   jax.tree.leaves(state['gen']['params']))
  del jnp
  return {
      'config': variant + (',bf16' if bf16 else ''),
      'batch': batch,
      'image_size': size,
      'gen_params_m': num_params / 1e6,
      'compile_s': compile_s,
      'step_s': step_s,
      'steps_per_s': 1.0 / step_s,
      'flops': flops,
      'temp_mib': mem.temp_size_in_bytes / 2 ** 20,
      'arg_mib': mem.argument_size_in_bytes / 2 ** 20,
      'loss': loss,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny,imagenet_f16')
  parser.add_argument('--batch', type=int, default=0,
                      help='global batch (0: 16 for tiny, 1 for imagenet_f16)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--bf16', action='store_true')
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bench_quantizers import cpu_model  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  peak = matmul_peak_gflops(dtype)
  dev = jax.devices()[0]
  print(f'# {cpu_model() if dev.platform == "cpu" else dev.device_kind}, '
        f'{jax.device_count()} {dev.platform} device(s), jax {jax.__version__}; '
        f'measured {jnp.dtype(dtype).name} matmul peak {peak:.1f} GFLOP/s '
        f'(4096² matmul); median of {args.steps} steps after one warm-up step')
  defaults = {'tiny': 16, 'imagenet_f16': 1, 'test': 8}
  rows = []
  for variant in args.configs.split(','):
    batch = args.batch or defaults.get(variant, 8)
    r = bench_config(variant, batch, args.steps, args.bf16)
    r['gflops_per_s'] = r['flops'] / r['step_s'] / 1e9
    r['mfu'] = r['gflops_per_s'] / peak
    rows.append(r)
    print(f"#   {r['config']}: batch {batch}, {r['step_s'] * 1e3:.1f} ms/step, "
          f"compile {r['compile_s']:.0f} s, loss {r['loss']:.4f}", flush=True)
  print()
  print('| config | image | batch | G params (M) | steps/s | ms/step '
        '| GFLOP/step (XLA) | achieved GFLOP/s | MFU | XLA temp MiB | compile s |')
  print('|' + '---|' * 11)
  for r in rows:
    print(f"| {r['config']} | {r['image_size']}² | {r['batch']} "
          f"| {r['gen_params_m']:.2f} | {r['steps_per_s']:.2f} "
          f"| {r['step_s'] * 1e3:.1f} | {r['flops'] / 1e9:.2f} "
          f"| {r['gflops_per_s']:.1f} | {100 * r['mfu']:.1f}% "
          f"| {r['temp_mib']:.0f} | {r['compile_s']:.0f} |")


if __name__ == '__main__':
  main()
