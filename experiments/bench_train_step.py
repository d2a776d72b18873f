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

With `--vs_taming`, the same step is timed against taming-transformers'
own modules (the `taming-transformers` 0.0.1 wheel of the test extra, pure
torch) in the same process, at an identical architecture and batch: L1
reconstruction + codebook loss + the adaptive-weight hinge GAN (generator
and discriminator updates, Adam), no perceptual loss, no EMA, no gradient
clipping, a plain (non-cosine, no k-means, no restarts) codebook. The two
steps run in alternating blocks and the ratio taming ms / ours ms is printed
(> 1: ours is faster). Ours runs once per `--modes` entry (`MODES`):
'default' (XLA's default options), 'fast' (`config.xla_fast_cpu`:
convolutions off YNNPACK, training/core.py) and 'fastest' ('fast' plus the
exact reformulations XLA:CPU runs faster: the decoder's upsampling as
sub-pixel convs, `model.frontend.upsample='subpixel'`, GroupNorm statistics
per channel first, `model.frontend.group_norm='channel_sums'` (nn/norm.py),
and the
discriminator's stride-2 convs on the space-to-depth input,
`disc.strided_conv='space_to_depth'`; nn/conv.py), each its own compiled
step in the same alternation. `--fast_cpu` sets `config.xla_fast_cpu` for
the config bench. Cases
(`--cases`):
  small   32², ch 64, ch_mult (1, 2, 2), 1 res block, attention at 8², 256
          codes of 32 dims, discriminator ndf 64 / 3 layers, batch 16
  f16     the paper's f16 model (configs/vqgan.py:imagenet_f16), 256², batch 2

Usage:
  python experiments/bench_train_step.py                     # tiny (batch 16), imagenet_f16 (batch 1)
  python experiments/bench_train_step.py --vs_taming --cases small,f16
  python experiments/bench_train_step.py --configs tiny --batch 32 --steps 20
  python experiments/bench_train_step.py --configs tiny --bf16
  python experiments/bench_train_step.py --vs_taming --modes fast --cases f16
  python experiments/bench_train_step.py --options_ab --cases small \
      --options 'xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT'

With `--options_ab`, our step of each `--cases` case is compiled once with
XLA's defaults and once per `--options` entry (';'-separated sets of
comma-separated XLA compiler options, name=value, as `XLA_FLAGS` takes them
without the leading dashes), the variants run in alternating blocks from the
same initial state, and the medians print with the largest parameter
difference from the default after the timed steps (0: bitwise the same
program results).
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


def bench_config(variant: str, batch: int, steps: int, bf16: bool,
                 fast_cpu: bool = False) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
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
  config.xla_fast_cpu = fast_cpu
  mesh = train_lib.make_mesh(config)
  size = config.data.image_size
  with jax.set_mesh(mesh):
    state, batch_arr, fn = jit_train_step(
        config, synthetic_images(batch, size), mesh, random_lpips=use_lpips)
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
  return {
      'config': variant + (',bf16' if bf16 else '')
                + (' (xla_fast_cpu)' if fast_cpu else ''),
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


# -----------------------------------------------------------------------------
# Against taming-transformers at an identical architecture.
# -----------------------------------------------------------------------------

VS_TAMING = {
    # name: (config variant, frontend overrides, batch, codebook, disc)
    'small': ('tiny', dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1,
                           attn_resolutions=(8,), z_channels=32,
                           num_groups=32), 16, (256, 32), (64, 3)),
    'f16': ('imagenet_f16', {}, 2, (1024, 256), (64, 3)),
}


# --vs_taming modes: the config entries each sets (the others at defaults).
MODES = {
    'default': {},
    'fast': {'xla_fast_cpu': True},
    'fastest': {'xla_fast_cpu': True, 'model.frontend.upsample': 'subpixel',
                'model.frontend.group_norm': 'channel_sums',
                'disc.strided_conv': 'space_to_depth'},
}
_MODE_DEFAULTS = {'xla_fast_cpu': False, 'model.frontend.upsample': 'repeat',
                  'model.frontend.group_norm': 'flax',
                  'disc.strided_conv': 'direct'}


def apply_mode(config, mode: str) -> None:
  """Sets the `MODES[mode]` entries of `config` (in place), the rest of
  `_MODE_DEFAULTS` to their defaults."""
  for key, default in _MODE_DEFAULTS.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = MODES[mode].get(key, default)


def matched_config(case: str):
  """Our config for a `VS_TAMING` case: the computation taming does."""
  from tokenizers_jax import config_lib  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  variant, frontend, batch, (k, dim), (ndf, n_layers) = VS_TAMING[case]
  config_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                             'configs', 'vqgan.py')
  c = config_lib.load_config_file(f'{config_path}:{variant}')
  with c.unlocked():
    c.data.global_batch_size = batch
    if frontend:
      c.model.frontend = ml_collections.ConfigDict(frontend)
      c.model.embed_dim = dim
    c.quantizer = ml_collections.ConfigDict(
        dict(name='vq', codebook_size=k, commitment_weight=0.25),
        type_safe=False)
    c.loss.recon = 'l1'
    c.loss.perceptual_weight = 0.0
    c.loss.disc_start = 0
    c.loss.disc_weight = 0.8
    c.loss.adaptive_weight = True
    c.disc.ndf, c.disc.n_layers, c.disc.norm = ndf, n_layers, 'batch'
    for o in (c.optim, c.disc_optim):
      o.grad_clip = 0.0
      o.warmup_steps = 0
      o.schedule = 'constant'
      o.lr, o.b1, o.b2 = 1e-4, 0.5, 0.9
    c.ema_decay = 0.0
    c.mixed_precision = False
  return c


def synthetic_images(batch: int, size: int) -> np.ndarray:
  """[batch, size, size, 3] uniform in [-1, 1], seed 0."""
  return np.random.default_rng(0).uniform(
      -1, 1, (batch, size, size, 3)).astype(np.float32)


def case_inputs(case: str):
  """A `VS_TAMING` case's config, its synthetic images [B, H, W, 3] and mesh."""
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  config = matched_config(case)
  images = synthetic_images(config.data.global_batch_size,
                            config.data.image_size)
  return config, images, train_lib.make_mesh(config)


def jit_train_step(config, images: np.ndarray, mesh, *,
                   random_lpips: bool = False):
  """Inside `jax.set_mesh(mesh)`: the initial state, the batch and our train
  step jitted as `train.py` jits it (state shardings, donated state, the XLA
  options of `config.xla_fast_cpu`). With `random_lpips`, the step includes
  LPIPS (weight 1) with random weights (no weights ship; same FLOPs)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.losses.perceptual import LPIPS  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import core  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  trainer, state, state_sh = steps_lib.create(config, mesh)
  if random_lpips:
    trainer = dataclasses.replace(
        trainer, extras=dict(trainer.extras, lpips=LPIPS()))
    config.loss.perceptual_weight = 1.0
  data_sh = train_lib.batch_sharding(mesh)
  batch_arr = {'image': jax.device_put(images, data_sh)}
  fn = core.jit_train_step(
      config, lambda s, b: steps_lib.train_step(trainer, s, b), state_sh,
      data_sh)
  return state, batch_arr, fn


def lower_train_step(config, images: np.ndarray, mesh):
  """`jit_train_step`'s state, batch and the step lowered for them."""
  state, batch_arr, fn = jit_train_step(config, images, mesh)
  return state, batch_arr, fn.lower(state, batch_arr)


def taming_step(config, images: np.ndarray):
  """A closure running one taming-transformers train step (generator then
  discriminator update) on `images` [B, H, W, 3], and its parameter count."""
  import torch  # pylint: disable=g-import-not-at-top
  from taming.modules.diffusionmodules import model as tm  # pylint: disable=g-import-not-at-top
  from taming.modules.discriminator import model as td  # pylint: disable=g-import-not-at-top
  from taming.modules.vqvae import quantize as tq  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.convert import taming as convert_taming  # pylint: disable=g-import-not-at-top
  params = convert_taming.taming_config(config)['model']['params']
  dd = params['ddconfig']
  torch.manual_seed(0)
  enc, dec = tm.Encoder(**dd), tm.Decoder(**dd)
  quant = tq.VectorQuantizer(params['n_embed'], params['embed_dim'], 0.25)
  quant_conv = torch.nn.Conv2d(dd['z_channels'], params['embed_dim'], 1)
  post_conv = torch.nn.Conv2d(params['embed_dim'], dd['z_channels'], 1)
  disc = td.NLayerDiscriminator(3, config.disc.ndf, config.disc.n_layers)
  disc.apply(td.weights_init)
  gen = torch.nn.ModuleList([enc, dec, quant, quant_conv, post_conv])
  opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4, betas=(0.5, 0.9))
  opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  last = dec.conv_out.weight
  disc_weight = float(config.loss.disc_weight)

  def step():
    # Generator: taming's VQModel forward and VQLPIPSWithDiscriminator's
    # generator loss (perceptual weight 0) with the adaptive weight
    # ||grad nll|| / ||grad g_loss|| at the last decoder layer.
    z_q, q_loss, _ = quant(quant_conv(enc(x)))
    x_rec = dec(post_conv(z_q))
    nll = torch.mean(torch.abs(x - x_rec))
    g_loss = -torch.mean(disc(x_rec))
    g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    d_w = torch.clamp(torch.norm(g_nll) / (torch.norm(g_adv) + 1e-4), 0, 1e4)
    loss = nll + d_w.detach() * disc_weight * g_loss + q_loss.mean()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    # Discriminator: hinge loss on real and (detached) reconstructions.
    logits_real, logits_fake = disc(x), disc(x_rec.detach())
    d_loss = 0.5 * (torch.mean(torch.relu(1. - logits_real))
                    + torch.mean(torch.relu(1. + logits_fake)))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return float(loss.detach())

  return step, sum(p.numel() for p in gen.parameters())


def vs_taming(case: str, blocks: int, steps_per_block: int,
              modes: tuple[str, ...] = ('default', 'fast')) -> dict:
  """Our step of `case` under each of `MODES` and taming's, in alternating
  blocks; medians."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  config, images, mesh = case_inputs(case)
  batch, size = config.data.global_batch_size, config.data.image_size
  runners, compile_s = {}, {}
  with jax.set_mesh(mesh):
    for mode in modes:
      apply_mode(config, mode)
      state, batch_arr, lowered = lower_train_step(config, images, mesh)
      t0 = time.perf_counter()
      compiled = lowered.compile()
      compile_s[mode] = time.perf_counter() - t0
      holder = {'state': state}

      def ours(holder=holder, compiled=compiled, batch_arr=batch_arr):
        holder['state'], metrics = compiled(holder['state'], batch_arr)
        jax.block_until_ready(metrics)

      runners[mode] = ours
    ours_params = sum(int(np.prod(x.shape)) for x in
                      jax.tree.leaves(state['gen']['params']))
    peer, peer_params = taming_step(config, images)
    runners['taming'] = peer
    for fn_ in runners.values():  # Warm-up of each.
      fn_()
    times = {name: [] for name in runners}
    for _ in range(blocks):
      for name, fn_ in runners.items():
        for _ in range(steps_per_block):
          t = time.perf_counter()
          fn_()
          times[name].append(time.perf_counter() - t)
  med = {name: float(np.median(t)) for name, t in times.items()}
  return dict(case=case, image_size=size, batch=batch,
              ours_s={m: med[m] for m in modes}, taming_s=med['taming'],
              ratio={m: med['taming'] / med[m] for m in modes},
              compile_s=compile_s, ours_params_m=ours_params / 1e6,
              taming_params_m=peer_params / 1e6,
              torch_threads=torch.get_num_threads())


def parse_options(text: str) -> dict:
  """'a=true,b=2,c=X' -> {'a': True, 'b': 2, 'c': 'X'} (XLA compiler
  options; XLA wants booleans and integers typed)."""
  out = {}
  items = []
  for item in filter(None, (t.strip() for t in text.split(','))):
    if '=' not in item and items:  # 'a=X,Y': one option, a list value.
      items[-1] += ',' + item
    else:
      items.append(item)
  for item in items:
    name, sep, value = item.partition('=')
    if not sep or not name:
      raise SystemExit(f'--options: {item!r} is not name=value')
    if value.lower() in ('true', 'false'):
      value = value.lower() == 'true'
    elif value.lstrip('-').isdigit():
      value = int(value)
    out[name.lstrip('-')] = value
  return out


def options_ab(case: str, option_sets: list[dict], blocks: int,
               steps_per_block: int) -> list[dict]:
  """Our `case` step under each XLA option set, alternating blocks."""
  import jax  # pylint: disable=g-import-not-at-top
  config, images, mesh = case_inputs(case)
  variants = [{}] + option_sets
  with jax.set_mesh(mesh):
    state, batch_arr, lowered = lower_train_step(config, images, mesh)
    runs = []
    for opts in variants:
      t0 = time.perf_counter()
      compiled = lowered.compile(compiler_options=opts or None)
      runs.append(dict(options=opts, compiled=compiled, times=[],
                       compile_s=time.perf_counter() - t0,
                       state=jax.tree.map(lambda a: a.copy(), state)))
    for r in runs:  # Warm-up.
      r['state'], m = r['compiled'](r['state'], batch_arr)
      jax.block_until_ready(m)
    for _ in range(blocks):
      for r in runs:
        for _ in range(steps_per_block):
          t = time.perf_counter()
          r['state'], m = r['compiled'](r['state'], batch_arr)
          jax.block_until_ready(m)
          r['times'].append(time.perf_counter() - t)
    base = jax.tree.leaves(runs[0]['state']['gen']['params'])
    out = []
    for r in runs:
      leaves = jax.tree.leaves(r['state']['gen']['params'])
      diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(base, leaves))
      out.append(dict(case=case, options=r['options'],
                      step_s=float(np.median(r['times'])),
                      compile_s=r['compile_s'], max_param_diff=diff))
  return out


def main_options_ab(args):
  import jax  # pylint: disable=g-import-not-at-top
  from bench_quantizers import cpu_model  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  option_sets = [parse_options(t) for t in args.options.split(';')]
  print(f'# {cpu_model() if dev.platform == "cpu" else dev.device_kind}, '
        f'jax {jax.__version__}; medians over {args.blocks} alternating '
        f'blocks of {args.steps} steps; parameter difference after '
        f'{1 + args.blocks * args.steps} steps')
  print('| case | XLA options | ms/step | vs default | max abs param diff '
        '| compile s |')
  print('|' + '---|' * 6)
  for case in args.cases.split(','):
    if case not in VS_TAMING:
      raise SystemExit(f'unknown case {case!r}; known: {sorted(VS_TAMING)}')
    rows = options_ab(case, option_sets, args.blocks, args.steps)
    for r in rows:
      opts = ', '.join(f'{k}={v}' for k, v in r['options'].items())
      print(f"| {case} | {opts or 'default'} | {r['step_s'] * 1e3:.0f} "
            f"| {rows[0]['step_s'] / r['step_s']:.2f}x "
            f"| {r['max_param_diff']:.1e} | {r['compile_s']:.0f} |",
            flush=True)


def main_vs_taming(args):
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from bench_quantizers import cpu_model  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  modes = tuple(m for m in args.modes.split(',') if m)
  if not modes or set(modes) - set(MODES):
    raise SystemExit(f'--modes: some of {sorted(MODES)}, not {args.modes!r}')
  print(f'# {cpu_model() if dev.platform == "cpu" else dev.device_kind}, '
        f'jax {jax.__version__} ({jax.device_count()} {dev.platform} '
        f'device(s)), torch {torch.__version__} '
        f'({torch.get_num_threads()} threads); XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}; medians over {args.blocks} '
        f'alternating blocks of {args.steps} steps; modes: '
        + '; '.join(f'{m} = {MODES[m] or "defaults"}' for m in modes))
  rows = []
  for case in args.cases.split(','):
    if case not in VS_TAMING:
      raise SystemExit(f'unknown case {case!r}; known: {sorted(VS_TAMING)}')
    r = vs_taming(case, args.blocks, args.steps, modes)
    rows.append(r)
    ours = ', '.join(f"{m} {r['ours_s'][m] * 1e3:.0f} ms (ratio "
                     f"{r['ratio'][m]:.2f})" for m in modes)
    print(f"#   {case}: ours {ours}; taming {r['taming_s'] * 1e3:.0f} ms; "
          f"G params {r['ours_params_m']:.2f} M / {r['taming_params_m']:.2f} M",
          flush=True)
  print()
  print('| case | image | batch | G params (M) | '
        + ' | '.join(f'ours ms/step ({m})' for m in modes)
        + ' | taming ms/step | '
        + ' | '.join(f'taming / ours ({m})' for m in modes) + ' | compile s |')
  print('|' + '---|' * (6 + 2 * len(modes)))
  for r in rows:
    print(f"| {r['case']} | {r['image_size']}² | {r['batch']} "
          f"| {r['ours_params_m']:.2f} | "
          + ' | '.join(f"{r['ours_s'][m] * 1e3:.0f}" for m in modes)
          + f" | {r['taming_s'] * 1e3:.0f} | "
          + ' | '.join(f"{r['ratio'][m]:.2f}" for m in modes)
          + f" | {max(r['compile_s'].values()):.0f} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny,imagenet_f16')
  parser.add_argument('--batch', type=int, default=0,
                      help='global batch (0: 16 for tiny, 1 for imagenet_f16)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--bf16', action='store_true')
  parser.add_argument('--vs_taming', action='store_true',
                      help='time against taming-transformers (see above)')
  parser.add_argument('--cases', default='small,f16',
                      help='--vs_taming cases: small, f16')
  parser.add_argument('--blocks', type=int, default=3,
                      help='--vs_taming: alternating blocks')
  parser.add_argument('--modes', default='default,fast',
                      help='--vs_taming: our step under these of MODES '
                           "('default,fast,fastest')")
  parser.add_argument('--fast_cpu', action='store_true',
                      help='config bench: config.xla_fast_cpu=True')
  parser.add_argument('--options_ab', action='store_true',
                      help='time XLA compiler option sets (see above)')
  parser.add_argument('--options', default=(
      'xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT;'
      'xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,'
      'LIBRARY_FUSION_TYPE_REDUCE'),
                      help="--options_ab: ';'-separated option sets")
  args = parser.parse_args(argv)
  if args.options_ab:
    return main_options_ab(args)
  if args.vs_taming:
    return main_vs_taming(args)

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
    r = bench_config(variant, batch, args.steps, args.bf16,
                     args.fast_cpu)
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
