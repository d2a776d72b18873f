"""Reliability of the one training loop for every task: sharding, multiple
processes, kill -9 and resume, non-finite steps.

Each mechanism is tested on the `test` variant of a config of each task:

  flextok   configs/flextok.py      image task, 1D tokenizer (FSQ, flow
                                    decoder, nested dropout), PatchGAN
  audio     configs/audio_codec.py  audio task, VQ codec, MPD + MRD
  eeg       configs/neurorvq.py     EEG task, NeuroRVQ, no discriminator

The image VQ-GAN (configs/vqgan.py) has the same five tests in
train_test.py (8 devices vs 1 on a data x fsdp mesh, SIGKILL and resume, 2
processes vs 1, the skipped non-finite batch, the stop after consecutive
non-finite steps); they are not repeated here.

  1. 8 simulated devices (mesh data=8) give the parameters of 1 device;
  2. a run killed with SIGKILL after its first checkpoint and resumed ends in
     the state of an uninterrupted run, bitwise;
  3. 2 processes (jax.distributed over 127.0.0.1, gloo) give the result of
     1 process;
  4. a non-finite batch leaves the state unchanged but for the step and the
     counters, which count it;
  5. the run stops with a clear error after config.max_consecutive_nonfinite
     consecutive non-finite steps.

Cost (CI budget): every run is 4 steps with checkpoints at 2 and 4 and the
GAN on from step 1; eval runs once, on one batch. Per task, one
uninterrupted in-process run is the reference of tests 2 and 3, and tests 1,
4 and 5 use the program that run compiled (the same jit, shardings and
donation as `train.py`), found again in the persistent compilation cache
(conftest.py) by the subprocesses and the in-process steps. Only the
single-device program of test 1 and the 2-process programs of test 3 are
compiled separately: those tests are `slow`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.training import tasks
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STEPS = 4
FIRST_CHECKPOINT = 2


@dataclasses.dataclass(frozen=True)
class Case:
  """One task's config and what the tests need to know about it."""
  name: str
  config_file: str
  task_module: str      # Holds the Task as `TASK` (patched in test 5).
  batch_key: str        # The batch entry that test 4 and 5 poison.
  overrides: tuple      # (dotted key, value), on top of COMMON.
  # More overrides for test 1 (8 devices vs 1), which compiles its own steps.
  eight_vs_one: tuple = ()
  # Regexes of parameter paths whose gradient is zero in exact arithmetic
  # (see ZERO_GRAD).
  zero_grad: tuple = ()

  @property
  def spec(self) -> str:
    return os.path.join(REPO, 'configs', self.config_file) + ':test'


# The same overrides in-process and on the command line, so that every run of
# a task compiles the same train step.
COMMON = (('total_steps', STEPS), ('checkpoint_every', FIRST_CHECKPOINT),
          ('log_every', 1), ('eval_every', 1000), ('num_eval_batches', 1))
GAN = (('loss.disc_start', 1),)  # Steps 1-3 train the discriminator(s).

CASES = {c.name: c for c in (
    Case('flextok', 'flextok.py', 'tokenizers_jax.training.image_task',
         'image', GAN),
    Case('audio', 'audio_codec.py', 'tokenizers_jax.training.audio_task',
         'audio', GAN + (('eval.pesq', False), ('eval.stoi', False))),
    # At initialisation the encoder's outputs are tiny next to the unit
    # (cosine) codes, so the residuals after RVQ level 0 are close to minus
    # its codes, in groups of near-duplicates: level 1's k-means init and
    # nearest codes then hinge on rounding (17 of 128 level-1 codes differ
    # between 1 and 8 devices after one step; level 0 and the encoder agree
    # to 1e-9). Test 1 starts from the random codebooks instead.
    # Zero gradients: the conv biases of the temporal branches (each conv is
    # followed by a GroupNorm with one channel per group, which removes
    # them) and the LayerNorm bias of the attention keys (it adds q.b to
    # every logit of a query: the softmax ignores it).
    Case('eeg', 'neurorvq.py', 'tokenizers_jax.training.eeg_task', 'eeg', (),
         eight_vs_one=(('quantizer.kmeans_init', False),),
         zero_grad=(r"\['branches'\]\[\d+\]\['convs'\]\[\d+\]\['bias'\]",
                    r"\['k_norm'\]\['bias'\]")),
)}


def overrides(case: Case) -> tuple:
  return COMMON + case.overrides


def get_config(case: Case, extra=()):
  config = config_lib.load_config_file(case.spec)
  for key, value in overrides(case) + tuple(extra):
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def train_command(case: Case, workdir, *extra) -> list[str]:
  flags = [f'--config.{k}={v}' for k, v in overrides(case)]
  return [sys.executable, '-m', 'tokenizers_jax.train',
          f'--config={case.spec}', f'--workdir={workdir}', *flags, *extra]


def start_train(case: Case, workdir, *extra, log=None, devices=None):
  """A training subprocess writing its console to `log` (a path)."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  if devices is not None:
    env['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                        f' --xla_force_host_platform_device_count={devices}')
  log = open(log or f'{workdir}.log', 'w')
  proc = subprocess.Popen(train_command(case, workdir, *extra), cwd=REPO,
                          env=env, stdout=log, stderr=subprocess.STDOUT,
                          text=True)
  log.close()
  return proc


def finish(proc, log, timeout=600) -> str:
  proc.wait(timeout=timeout)
  with open(log) as f:
    out = f.read()
  assert proc.returncode == 0, out[-4000:]
  return out


def saved_state(workdir, like: dict, step=STEPS) -> dict[str, np.ndarray]:
  """Every array of the train state saved at `step` (the structure of the
  host state `like`), keyed by its path."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), like)
  ckptr = ocp.StandardCheckpointer()
  state = ckptr.restore(path, target)
  ckptr.close()
  return flat(state)


def flat(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def logged_losses(workdir) -> dict[int, float]:
  """step -> train/loss; the last row of a step (a resumed run logs again)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


def assert_states_equal(a: dict, b: dict, skip=()):
  """Same arrays, bitwise (but for the paths in `skip`)."""
  assert sorted(a) == sorted(b)
  for k in a:
    if k not in skip:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# Runs that sum in another order (tests 1 and 3) are compared leaf by leaf
# against how far training moved each leaf from the initial state: float32
# rounding of the sums over the batch and the devices (~1e-7 relative) gives
# differences below 3e-4 of the movement here (the worst seen: 2.5e-4, audio
# with 2 processes), while a wrong mean over devices (a missing all-reduce, a
# per-shard BatchNorm or codebook count) changes the gradients, and so the
# movement, by a large fraction.
MOVE_RTOL = 1e-2
# The exception: a parameter whose gradient is zero in exact arithmetic (the
# case's `zero_grad`) gets a gradient of pure rounding noise, which Adam's
# g / (sqrt(v) + eps) turns into lr-sized steps of either sign, so its value
# is noise in both runs. Such a leaf is only checked to have an Adam first
# moment below ZERO_GRAD of the largest one of its model, in both runs.
ZERO_GRAD = 1e-5


def _owner(path: str) -> tuple[str, str] | None:
  """(model, parameter path) of a state leaf: model 'gen' or 'disc', the
  path under state[model]['params'] (optax's state repeats it after '.mu'
  and '.nu', the EMA after ['ema']); None for the other leaves."""
  for prefix, model in (("['gen']['params']", 'gen'), ("['ema']", 'gen'),
                        ("['disc']['params']", 'disc')):
    if path.startswith(prefix):
      return model, path[len(prefix):]
  for sep in ('.mu', '.nu'):
    if sep in path:
      return ('gen' if path.startswith("['gen_opt']") else 'disc',
              path.split(sep, 1)[1])
  return None


def _check_zero_grad(state: dict, patterns) -> set[tuple[str, str]]:
  """The parameters matching `patterns`, each checked to have a negligible
  Adam first moment."""
  moments = {_owner(k): float(np.max(np.abs(v)))
             for k, v in state.items() if '.mu' in k and v.size}
  scale = {}
  for (model, _), m in moments.items():
    scale[model] = max(scale.get(model, 0.0), m)
  zero = {k for k in moments if any(re.search(p, k[1]) for p in patterns)}
  for k in sorted(zero):
    assert moments[k] <= ZERO_GRAD * scale[k[0]], (
        f'{k}: listed as zero-gradient, has gradient moment {moments[k]:.3g}'
        f' (largest {scale[k[0]]:.3g})')
  assert not patterns or zero, f'{patterns} match no parameter'
  return zero


def assert_same_training(got: dict, ref: dict, init: dict, zero_grad=()):
  """`got` and `ref` (flat states after the same steps from `init`) differ
  by no more than rounding: see MOVE_RTOL and ZERO_GRAD above."""
  assert sorted(got) == sorted(ref) == sorted(init)
  zero = _check_zero_grad(ref, zero_grad)
  assert _check_zero_grad(got, zero_grad) == zero
  for k, a in ref.items():
    b = got[k]
    if not np.issubdtype(a.dtype, np.floating):
      np.testing.assert_array_equal(b, a, err_msg=k)
    elif _owner(k) not in zero and a.size:
      moved = float(np.max(np.abs(a - init[k])))
      np.testing.assert_allclose(b, a, rtol=0, atol=MOVE_RTOL * moved + 1e-7,
                                 err_msg=f'{k} (moved {moved:.3g})')


# -----------------------------------------------------------------------------
# Fixtures: one case at a time, its reference run and its compiled step.
# -----------------------------------------------------------------------------


@pytest.fixture(scope='module', params=sorted(CASES))
def case(request) -> Case:
  return CASES[request.param]


@pytest.fixture(scope='module')
def reference(case, tmp_path_factory) -> str:
  """An uninterrupted in-process run of the case (1 process, 8 devices)."""
  workdir = str(tmp_path_factory.mktemp(f'reference_{case.name}') / 'run')
  final = train_lib.train_and_evaluate(get_config(case), workdir)
  assert final['step'] == STEPS
  return workdir


def build_step(config, mesh):
  """(task, trainer, initial state, its shardings, batch sharding, the train
  step of train.py: the same program, state donated) for `config` on
  `mesh`."""
  task = tasks.get_task(config)
  task.validate_config(config)
  with jax.set_mesh(mesh):
    trainer, state, shardings = task.create(config, mesh)
    data_sh = train_lib.batch_sharding(mesh, config)
    step = jax.jit(lambda s, b: task.train_step(trainer, s, b),
                   in_shardings=(shardings, data_sh),
                   out_shardings=(shardings, None), donate_argnums=0)
  return task, trainer, state, shardings, data_sh, step


@dataclasses.dataclass
class Compiled:
  config: object
  mesh: object
  task: tasks.Task
  state: dict           # The initial state, on the host.
  shardings: dict
  data_sharding: object
  step: object          # The train step of train.py (state donated).
  batches: list         # The first train batches (process-local numpy).

  def put(self, host_state):
    return jax.device_put(host_state, self.shardings)

  def batch(self, local):
    return train_lib.to_global(local, self.data_sharding,
                               self.config.data.global_batch_size)


@pytest.fixture(scope='module')
def compiled(case, reference) -> Compiled:
  """The reference run's train step on the default mesh (data=8)."""
  del reference  # Compiles the step first (persistent cache).
  config = get_config(case)
  mesh = train_lib.make_mesh(config)
  task, trainer, state, shardings, data_sh, step = build_step(config, mesh)
  it = task.train_iterator(config)
  batches = [next(it) for _ in range(3)]
  del trainer
  return Compiled(config, mesh, task, jax.device_get(state), shardings,
                  data_sh, step, batches)


def run_steps(c: Compiled, host_state, batches):
  """(host state, host metrics per step) after the steps on `batches`."""
  metrics = []
  with jax.set_mesh(c.mesh):
    state = c.put(host_state)
    for local in batches:
      state, m = c.step(state, c.batch(local))
      metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def poison(case: Case, local: dict) -> dict:
  """The batch with one NaN in its first example."""
  x = np.array(local[case.batch_key])
  x.reshape(x.shape[0], -1)[0, 0] = np.nan
  return dict(local, **{case.batch_key: x})


# -----------------------------------------------------------------------------
# 1. 8 devices = 1 device.
# -----------------------------------------------------------------------------


@pytest.mark.slow  # Compiles a single-device train step per task.
def test_eight_devices_match_one_device(case, compiled):
  """2 steps (the second with the GAN) on mesh data=8 and on one device."""
  config = get_config(case, case.eight_vs_one)
  runs = []
  for devices in (jax.devices(), jax.devices()[:1]):
    config.mesh.shape = (len(devices), 1, 1)
    mesh = sharding_lib.make_mesh(config.mesh.shape, devices=devices)
    _, _, state, _, data_sh, step = build_step(config, mesh)
    init, metrics = flat(state), []
    with jax.set_mesh(mesh):
      for local in compiled.batches[:2]:
        state, m = step(state, train_lib.to_global(
            local, data_sh, config.data.global_batch_size))
        metrics.append(jax.device_get(m))
    runs.append((init, flat(state), metrics))
  (init8, state8, metrics8), (init1, state1, metrics1) = runs
  # The same initial state: the mesh plays no part in initialisation.
  assert_states_equal(init8, init1)
  for m1, m8 in zip(metrics1, metrics8):
    assert int(m1['train/skipped']) == int(m8['train/skipped']) == 0
    np.testing.assert_allclose(m8['train/loss'], m1['train/loss'], rtol=1e-5,
                               err_msg='train/loss')
  assert_same_training(state8, state1, init1, case.zero_grad)


# -----------------------------------------------------------------------------
# 2. kill -9, resume: bitwise the uninterrupted run.
# -----------------------------------------------------------------------------


# A subprocess per task (30-50 s each); train_test.py's kill -9 test of the
# image task runs by default.
@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_exact(case, reference, compiled,
                                             tmp_path):
  workdir = tmp_path / 'killed'
  log = str(tmp_path / 'killed.log')
  proc = start_train(case, workdir, log=log)
  first = workdir / 'checkpoints' / str(FIRST_CHECKPOINT)
  deadline = time.time() + 500
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  alive = proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with open(log) as f:
    assert alive and first.exists(), (
        'the run ended before its first checkpoint could be seen:\n'
        + f.read()[-4000:])
  assert not (workdir / 'checkpoints' / str(STEPS)).exists(), (
      'the run finished before the kill')
  out = finish(start_train(case, workdir, log=log), log)
  assert 'Resumed from step' in out, out[-4000:]
  resumed_from = int(out.split('Resumed from step')[1].split()[0])
  assert FIRST_CHECKPOINT <= resumed_from < STEPS
  assert_states_equal(saved_state(str(workdir), compiled.state),
                      saved_state(reference, compiled.state))
  assert logged_losses(str(workdir)) == logged_losses(reference)


# -----------------------------------------------------------------------------
# 3. 2 processes = 1 process.
# -----------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow  # Two processes compile their own programs.
def test_two_processes_match_one_process(case, reference, compiled, tmp_path):
  """Each process holds 4 of the 8 devices of the reference run's mesh."""
  workdir = tmp_path / 'two'
  port = _free_port()
  logs = [str(tmp_path / f'process{i}.log') for i in range(2)]
  procs = [start_train(case, workdir, f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={i}', log=logs[i],
                       devices=4) for i in range(2)]
  outs = [finish(p, l) for p, l in zip(procs, logs)]
  assert 'on 8 devices (2 processes)' in outs[0]
  ref, two = logged_losses(reference), logged_losses(str(workdir))
  assert sorted(ref) == sorted(two) == list(range(1, STEPS + 1))
  for s in ref:
    np.testing.assert_allclose(two[s], ref[s], rtol=1e-4, err_msg=f'step {s}')
  assert_same_training(saved_state(str(workdir), compiled.state),
                       saved_state(reference, compiled.state),
                       flat(compiled.state), case.zero_grad)


# -----------------------------------------------------------------------------
# 4. A non-finite batch is skipped and counted.
# -----------------------------------------------------------------------------


_COUNTERS = ("['step']", "['nonfinite_consecutive']", "['nonfinite_total']")


def test_nonfinite_batch_is_skipped_and_counted(case, compiled):
  """good, NaN, good: the NaN step (with the GAN on) changes nothing but the
  step and the counters; the next good step resets the consecutive count."""
  c = compiled
  good, bad, good2 = c.batches[0], poison(case, c.batches[1]), c.batches[2]
  before, _ = run_steps(c, c.state, [good])
  skipped, (m_bad,) = run_steps(c, before, [bad])
  after, (m_good,) = run_steps(c, skipped, [good2])
  assert int(m_bad['train/skipped']) == 1
  assert int(m_bad['train/nonfinite_consecutive']) == 1
  assert int(skipped['step']) == int(before['step']) + 1 == 2
  assert int(skipped['nonfinite_consecutive']) == 1
  assert int(skipped['nonfinite_total']) == 1
  a = flat(before)
  assert_states_equal(flat(skipped), a, skip=_COUNTERS)
  assert int(m_good['train/skipped']) == 0
  assert int(after['nonfinite_consecutive']) == 0
  assert int(after['nonfinite_total']) == 1 and int(after['step']) == 3
  changed = [k for k in a if k.startswith("['gen']['params']")
             and not np.array_equal(flat(after)[k], a[k])]
  assert changed, 'the good step after the skipped one changed no parameter'


# -----------------------------------------------------------------------------
# 5. The run stops after max_consecutive_nonfinite non-finite steps.
# -----------------------------------------------------------------------------


class _Poisoned:
  """The task's train iterator; every batch after the first holds a NaN."""

  def __init__(self, case: Case, it):
    self._case, self._it, self.served = case, it, 0

  def __next__(self):
    local = next(self._it)
    self.served += 1
    return local if self.served == 1 else poison(self._case, local)

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    self._it.set_state(state)


def test_run_stops_after_consecutive_nonfinite_steps(case, reference,
                                                     tmp_path, monkeypatch):
  """max 2, batches good, NaN, NaN, NaN: the check after step 3 sees the two
  consecutive skips of steps 1 and 2 and stops before anything is saved."""
  module = importlib.import_module(case.task_module)
  task = module.TASK
  served = []

  def poisoned(config):
    it = _Poisoned(case, task.train_iterator(config))
    served.append(it)
    return it

  monkeypatch.setattr(module, 'TASK', dataclasses.replace(
      task, train_iterator=poisoned))
  config = get_config(case)
  config.max_consecutive_nonfinite = 2
  config.checkpoint_every = 1000  # Not a train-step input: same program.
  with pytest.raises(train_lib.NonFiniteError,
                     match=r'^2 consecutive steps had a non-finite batch, '
                     r'loss or gradient \(up to step 2\)'):
    train_lib.train_and_evaluate(config, str(tmp_path))
  del reference  # Compiled the train step (persistent cache).
  assert served[0].served == STEPS
  saved = os.listdir(tmp_path / 'checkpoints')
  assert not [d for d in saved if d[:1].isdigit()], saved
