"""The training system: sharding equivalence, multi-process equivalence, exact
resume after SIGKILL, non-finite steps, config errors and evaluation metrics.

All runs use the `test` variant of configs/vqgan.py (a micro VQ-GAN on 16²
crops of the embedded photos) and share compiled programs through the
persistent compilation cache set in conftest.py.
"""

import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import core
from tokenizers_jax.training import image_task
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, 'configs', 'vqgan.py')


def get_config(arg='test'):
  spec = importlib.util.spec_from_file_location('vqgan_config', CONFIG_FILE)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def run_train(workdir, *extra, env_extra=None, wait=True):
  env = dict(os.environ)
  env.update(env_extra or {})
  cmd = [sys.executable, '-m', 'tokenizers_jax.train',
         f'--config={CONFIG_FILE}:test', f'--workdir={workdir}', *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-4000:]
  return out


def load_final_state(workdir, step=None):
  config = train_lib.load_config(workdir)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, state, _ = steps_lib.create(config, mesh)
    state, step = ckpt_lib.restore_state_only(workdir, state, step)
  return jax.device_get(state), step


def losses(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


@pytest.fixture(scope='module')
def single_device_trainer():
  config = get_config()
  config.mesh.shape = (1, 1, 1)
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    trainer, state, shardings = steps_lib.create(config, mesh)
    step = jax.jit(lambda s, b: steps_lib.train_step(trainer, s, b))
    it = image_task.train_iterator(config)
    batch = {k: jnp.asarray(v) for k, v in next(it).items()}
  return config, mesh, trainer, state, step, batch


def test_eight_devices_match_one_device(single_device_trainer):
  config, mesh1, _, state1, step1, batch = single_device_trainer
  with jax.set_mesh(mesh1):
    s1, m1 = step1(state1, batch)
    s1, m1b = step1(s1, batch)
  config8 = get_config()
  config8.mesh.shape = (4, 2, 1)  # data x fsdp: params sharded over fsdp.
  mesh8 = sharding_lib.make_mesh((4, 2, 1))
  with jax.set_mesh(mesh8):
    trainer8, state8, sh8 = steps_lib.create(config8, mesh8)
    step8 = jax.jit(lambda s, b: steps_lib.train_step(trainer8, s, b),
                    in_shardings=(sh8, train_lib.batch_sharding(mesh8)),
                    out_shardings=(sh8, None))
    gb = jax.device_put(batch, train_lib.batch_sharding(mesh8))
    s8, m8 = step8(state8, gb)
    s8, m8b = step8(s8, gb)
  sharded = [x for x in jax.tree.leaves(sh8) if len(x.device_set) > 1 and not x.is_fully_replicated]
  assert sharded, 'expected some parameters sharded over the fsdp axis'
  for a, b in ((m1, m8), (m1b, m8b)):
    for k in ('train/loss', 'train/recon', 'train/d_loss', 'quant/usage'):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(jax.device_get(s1)), jax.tree.leaves(jax.device_get(s8))):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def _ynn_convolutions(compiled) -> int:
  """YNNPACK fusions of the compiled program that hold a convolution (1x1
  convolutions that XLA rewrites to dots do not count)."""
  text = compiled.as_text()
  bodies = dict(re.findall(r'\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', text,
                           flags=re.S))
  called = re.findall(r'%?ynn_fusion[\w.\-]* = [^\n]*calls=%?([\w.\-]+)', text)
  return sum(' convolution(' in bodies.get(c, '') for c in called)


def test_xla_fast_cpu_moves_convolutions_off_ynnpack():
  """config.xla_fast_cpu compiles the train step with YNNPACK for dots and
  reductions only: no convolution is left in a YNNPACK fusion, and two steps
  give the default step's state and metrics up to rounding. (Width 16: XLA
  leaves the test config's 8-channel convolutions off YNNPACK anyway.)"""
  configs = {}
  for name in ('default', 'fast'):
    c = get_config()
    c.mesh.shape = (1, 1, 1)
    c.model.frontend.ch = 16
    c.xla_fast_cpu = name == 'fast'
    configs[name] = c
  assert core.train_compiler_options(configs['default']) is None
  assert core.train_compiler_options(configs['fast']) == core.FAST_CPU_OPTIONS
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  results = {}
  with jax.set_mesh(mesh):
    trainer, state, sh = steps_lib.create(configs['default'], mesh)
    data_sh = train_lib.batch_sharding(mesh)
    batch = jax.device_put(
        dict(next(image_task.train_iterator(configs['default']))), data_sh)
    for name, c in configs.items():
      fn = core.jit_train_step(
          c, lambda s_, b_: steps_lib.train_step(trainer, s_, b_), sh, data_sh)
      compiled = fn.lower(state, batch).compile()
      s = jax.tree.map(lambda a: a.copy(), state)
      s, m1 = compiled(s, batch)
      s, m2 = compiled(s, batch)
      results[name] = (_ynn_convolutions(compiled), jax.device_get((s, m1, m2)))
  if results['default'][0] == 0:
    pytest.skip('this XLA runs no convolution through YNNPACK by default')
  assert results['fast'][0] == 0
  (s_d, *m_d), (s_f, *m_f) = results['default'][1], results['fast'][1]
  for a, b in zip(m_d, m_f):
    for k in ('train/loss', 'train/recon', 'train/d_loss', 'quant/usage'):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(s_d), jax.tree.leaves(s_f)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_adaptive_weight_and_gradient_match_taming(single_device_trainer):
  """After disc_start: g_weight = 0.8·‖∇_W nll‖/(‖∇_W g‖+1e-4) at the decoder's
  last layer W, and the generator gradient is ∇main + g_weight·∇g, both
  recomputed here with two independent jax.grad calls."""
  config, mesh, trainer, state, step, batch = single_device_trainer
  state = dict(state, step=jnp.asarray(config.loss.disc_start + 1, jnp.int32))
  x = batch['image']

  def losses_of(params):
    gen = trainer.merge_gen(params, state['gen']['rest'])
    out = gen(x, train=True)
    x_hat = out.reconstruction
    nll = jnp.mean(jnp.abs(x - x_hat))
    disc = trainer.merge_disc(state['disc']['params'], state['disc']['rest'])
    g = -jnp.mean(disc(x_hat, train=True))
    return nll, out.terms['quantizer'], g

  with jax.set_mesh(mesh):
    _, metrics = step(state, batch)
    g_nll = jax.jit(jax.grad(lambda p: losses_of(p)[0]))(state['gen']['params'])
    g_main = jax.jit(jax.grad(lambda p: sum(losses_of(p)[:2])))(state['gen']['params'])
    g_adv = jax.jit(jax.grad(lambda p: losses_of(p)[2]))(state['gen']['params'])
  last = lambda t: np.asarray(core.get_path(t, trainer.last_layer_path))
  weight = (config.loss.disc_weight * np.linalg.norm(last(g_nll))
            / (np.linalg.norm(last(g_adv)) + 1e-4))
  np.testing.assert_allclose(metrics['train/g_weight'], weight, rtol=1e-4)
  total = jax.tree.map(lambda a, b: np.asarray(a) + weight * np.asarray(b),
                       g_main, g_adv)
  norm = np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(total)))
  np.testing.assert_allclose(metrics['train/grad_norm'], norm, rtol=1e-4)


def test_nonfinite_batch_is_skipped(single_device_trainer):
  _, mesh, _, state, step, batch = single_device_trainer
  bad = dict(batch, image=batch['image'].at[0, 0, 0, 0].set(jnp.nan))
  with jax.set_mesh(mesh):
    new, metrics = step(state, bad)
  assert int(metrics['train/skipped']) == 1
  assert int(new['nonfinite_consecutive']) == 1 and int(new['nonfinite_total']) == 1
  assert int(new['step']) == int(state['step']) + 1
  for a, b in zip(jax.tree.leaves(new['gen']), jax.tree.leaves(state['gen'])):
    np.testing.assert_array_equal(a, b)
  with jax.set_mesh(mesh):
    good, metrics = step(new, batch)
  assert int(metrics['train/skipped']) == 0 and int(good['nonfinite_consecutive']) == 0


def test_run_stops_after_consecutive_nonfinite_steps(tmp_path, monkeypatch):
  config = get_config()
  config.max_consecutive_nonfinite = 2
  real = image_task.train_iterator

  def poisoned(cfg):
    it = real(cfg)

    class NaNs:
      def __next__(self):
        b = next(it)
        return dict(b, image=np.full_like(b['image'], np.nan))
      get_state, set_state = it.get_state, it.set_state
    return NaNs()

  monkeypatch.setattr(image_task, 'TASK', dataclasses.replace(
      image_task.TASK, train_iterator=poisoned))
  with pytest.raises(train_lib.NonFiniteError, match='consecutive steps had a non-finite'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  # Nothing non-finite reached a checkpoint: none was written before the stop.
  assert not os.path.exists(tmp_path / 'checkpoints' / '4')


def test_config_errors_are_clear(tmp_path):
  bad = get_config()
  bad.data.image_size = 17
  with pytest.raises(ValueError, match=r'config.data.image_size: 17 is not divisible'):
    steps_lib.validate_config(bad)
  bad = get_config()
  bad.quantizer.name = 'vqx'
  with pytest.raises(ValueError, match=r'config.quantizer.name: unknown quantizer'):
    steps_lib.validate_config(bad)
  bad = get_config()
  bad.quantizer.dim = 3
  with pytest.raises(ValueError, match=r'config.quantizer.dim: 3 does not match model.embed_dim'):
    steps_lib.validate_config(bad)
  bad = get_config()
  bad.data.global_batch_size = 6
  bad.mesh.shape = (4, 1, 1)
  with pytest.raises(ValueError, match=r'global_batch_size: 6 is not divisible'):
    steps_lib.validate_config(bad)
  out = subprocess.run(
      [sys.executable, '-m', 'tokenizers_jax.train', f'--config={CONFIG_FILE}:test',
       f'--workdir={tmp_path}', '--config.data.imagesize=3'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and 'imagesize' in out.stderr


def test_sigkill_and_resume_is_bitwise_exact(tmp_path):
  ref = tmp_path / 'ref'
  run_train(str(ref))
  killed = tmp_path / 'killed'
  proc = run_train(str(killed), wait=False)
  target = killed / 'checkpoints' / '8'
  deadline = time.time() + 500
  while not target.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, 'training finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'checkpoints' / '12').exists()
  out = run_train(str(killed))
  assert 'Resumed from step' in out
  a, step_a = load_final_state(str(ref))
  b, step_b = load_final_state(str(killed))
  assert step_a == step_b == 12
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  la, lb = losses(str(ref)), losses(str(killed))
  assert la[12] == lb[12]


def _devices(n):
  """The test flags (conftest.py) with n simulated devices (last one wins)."""
  return {'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') +
                       f' --xla_force_host_platform_device_count={n}'}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  one = tmp_path / 'one'
  run_train(str(one), '--stop_after=4',
            env_extra=_devices(2))
  two = tmp_path / 'two'
  port = _free_port()
  procs = [run_train(str(two), '--stop_after=4',
                     f'--coordinator_address=127.0.0.1:{port}',
                     '--num_processes=2', f'--process_id={i}',
                     env_extra=_devices(1),
                     wait=False) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert 'on 2 devices (2 processes)' in outs[0]
  la, lb = losses(str(one)), losses(str(two))
  assert sorted(la) == sorted(lb) == [2, 4]
  for s in la:
    np.testing.assert_allclose(la[s], lb[s], rtol=1e-5)


def test_evaluation_metrics_match_independent_computation(tmp_path):
  from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models import Tokenizer  # pylint: disable=g-import-not-at-top
  wd = tmp_path / 'run'
  run_train(str(wd), '--stop_after=4')
  results = train_lib.evaluate_workdir(str(wd), num_batches=-1)
  tok = Tokenizer.from_workdir(str(wd))
  assert tok.step == 4
  config = tok.config
  from tokenizers_jax.evaluators import bicubic_baseline  # pylint: disable=g-import-not-at-top
  psnrs, ssims, codes, bic = [], [], [], []
  for batch in data_lib.make_eval_dataset(config.data.source,
                                          image_size=config.data.image_size,
                                          global_batch_size=16):
    keep = np.asarray(batch['mask'])
    x = np.asarray(batch['image'])[keep]
    ids = tok.encode(x)
    recon = np.asarray(tok.decode(ids), np.float64)
    codes.append(np.asarray(ids).reshape(-1))
    factor = x.shape[1] // ids.shape[1]
    for a, b in zip(x.astype(np.float64),
                    np.asarray(bicubic_baseline(x, factor), np.float64)):
      bic.append(peak_signal_noise_ratio(a, b, data_range=2.0))
    for a, b in zip(x.astype(np.float64), recon):
      psnrs.append(peak_signal_noise_ratio(a, b, data_range=2.0))
      ssims.append(structural_similarity(a, b, data_range=2.0, channel_axis=-1,
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False))
  codes = np.concatenate(codes)
  counts = np.bincount(codes, minlength=config.quantizer.codebook_size)
  p = counts / counts.sum()
  assert results['eval/num_images'] == len(psnrs)
  np.testing.assert_allclose(results['eval/psnr'], np.mean(psnrs), rtol=1e-4)
  np.testing.assert_allclose(results['eval/ssim'], np.mean(ssims), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(results['eval/bicubic_psnr'], np.mean(bic), rtol=1e-4)
  np.testing.assert_allclose(results['eval/codebook_usage'], np.mean(counts > 0), rtol=1e-6)
  np.testing.assert_allclose(results['eval/perplexity'],
                             np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rtol=1e-4)
  assert os.path.exists(results['image_grid'])
  assert any(f.startswith('events') for f in os.listdir(wd / 'tensorboard'))
