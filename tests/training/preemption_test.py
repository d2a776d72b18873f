"""A run that is ready for a pod: SIGTERM saves and exits cleanly, damaged
checkpoints are skipped, a changed config is refused, one run per workdir,
and a quiet console.

The subprocess runs use the `test` variant of configs/vqgan.py (12 steps,
checkpoints at 4, 8 and 12) and share one uninterrupted reference run; the
final train state of each resumed run is compared with it array by array,
bitwise.
"""

import glob
import importlib.util
import json
import logging as py_logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tokenizers_jax.training import preemption
from tokenizers_jax.training import resume
from tokenizers_jax.training import train as train_lib
from tokenizers_jax.training import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CONFIG_FILE = os.path.join(REPO, 'configs', 'vqgan.py')


def get_config(arg='test'):
  spec = importlib.util.spec_from_file_location('vqgan_config', CONFIG_FILE)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def start_train(workdir, *extra, env_extra=None):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.update(env_extra or {})
  cmd = [sys.executable, '-m', 'tokenizers_jax.train',
         f'--config={CONFIG_FILE}:test', f'--workdir={workdir}', *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def run_train(workdir, *extra, expect_ok=True):
  proc = start_train(workdir, *extra)
  out, _ = proc.communicate(timeout=600)
  if expect_ok:
    assert proc.returncode == 0, out[-4000:]
  return proc.returncode, out


def wait_for_line(proc, pattern, timeout=500):
  """Reads `proc`'s output until a line matches; returns what was read."""
  seen = []
  deadline = time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    seen.append(line)
    if re.search(pattern, line):
      return ''.join(seen)
  raise AssertionError(f'{pattern!r} never appeared:\n' + ''.join(seen)[-4000:])


def saved_state(workdir, step):
  """Every array of a saved train state, as numpy, keyed by path."""
  step_dir = os.path.join(workdir, 'checkpoints', str(step))
  meta = resume._state_metadata(step_dir)  # pylint: disable=protected-access
  ckptr = ocp.StandardCheckpointer()
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
  state = ckptr.restore(os.path.join(step_dir, 'state'), target)
  ckptr.close()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def assert_same_state(workdir_a, workdir_b, step=12):
  a, b = saved_state(workdir_a, step), saved_state(workdir_b, step)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def last_loss(workdir, step=12):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r['train/loss'] for r in rows
          if r.get('step') == step and 'train/loss' in r][-1]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted 12-step run: (workdir, console output)."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  _, out = run_train(workdir)
  return workdir, out


def test_console_shows_steps_and_evaluations_only(reference):
  workdir, out = reference
  lines = out.splitlines()
  assert 'step 12/12' in out and 'eval at 12:' in out
  # INFO lines of orbax / TFDS are hidden (their warnings are kept).
  noisy = [l for l in lines if l.startswith('I') and re.search(
      r'checkpoint_manager|atomicity|async_checkpointer|'
      r'composite_checkpoint_handler|dataset_info', l)]
  assert not noisy, noisy[:5]
  # 6 step lines, the banner, the eval line and note, a data warning and the
  # final results (16 lines); orbax alone printed about 65 lines before.
  assert len(lines) < 40, out
  # The workdir lock was released at exit.
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))


def test_library_info_returns_with_verbosity(monkeypatch):
  from tokenizers_jax import train as cli  # pylint: disable=g-import-not-at-top
  quiet = cli._QuietLibraries(cli._CHATTY)  # pylint: disable=protected-access
  orbax_file = os.path.join(os.path.dirname(ocp.__file__),
                            'checkpoint_manager.py')

  def record(level, path):
    return py_logging.LogRecord('absl', level, path, 1, 'x', (), None)

  assert not quiet.filter(record(py_logging.INFO, orbax_file))
  assert quiet.filter(record(py_logging.WARNING, orbax_file))
  assert quiet.filter(record(py_logging.INFO, train_lib.__file__))


def test_sigterm_saves_the_current_step_and_resume_is_bitwise_exact(
    reference, tmp_path, caplog):
  ref, _ = reference
  workdir = str(tmp_path / 'run')
  proc = start_train(workdir)
  out = wait_for_line(proc, r'step 2/12')
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=600)
  out += rest
  assert proc.returncode == 0, out[-4000:]
  found = re.search(r'Preempted at step (\d+)', out)
  assert found, out[-4000:]
  step = int(found.group(1))
  assert 2 <= step < 12, out[-4000:]
  ck = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(ck) if d.isdigit())
  assert steps[-1] == step
  assert json.loads(out[out.rindex('\n{\n') + 1:])['preempted'] is True
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))

  # Resumed in this process (no second start-up); the same programs.
  caplog.set_level(py_logging.INFO)
  train_lib.train_and_evaluate(get_config(), workdir)
  assert f'Resumed from step {step}' in caplog.text
  assert_same_state(ref, workdir)
  assert last_loss(ref) == last_loss(workdir)


def test_damaged_checkpoints_are_skipped_and_kept(reference, tmp_path, caplog):
  ref, _ = reference
  workdir = str(tmp_path / 'run')
  shutil.copytree(ref, workdir)
  ck = os.path.join(workdir, 'checkpoints')
  # 12: truncated metadata JSON; 8: its array files are gone; and a
  # temporary directory a killed save left behind.
  meta = os.path.join(ck, '12', 'state', '_METADATA')
  text = open(meta).read()
  with open(meta, 'w') as f:
    f.write(text[:len(text) // 2])
  shutil.rmtree(os.path.join(ck, '8', 'state', 'd'))
  tmp = os.path.join(ck, '16.orbax-checkpoint-tmp')
  shutil.copytree(os.path.join(ck, '4'), tmp)

  caplog.set_level(py_logging.INFO)
  train_lib.train_and_evaluate(get_config(), workdir)
  out = caplog.text
  assert 'Resumed from step 4' in out
  assert re.search(r'Checkpoint 12 is unusable.*checkpoints/12/state/'
                   r'_METADATA: unreadable metadata \(JSONDecodeError', out)
  assert re.search(r'Checkpoint 8 is unusable.*checkpoints/8/state', out)
  assert f'partial checkpoint {tmp}' in out
  # Nothing was deleted: the damaged directories were renamed.
  for pattern in ('12.corrupt-*', '8.corrupt-*', '16.partial-*'):
    kept = glob.glob(os.path.join(ck, pattern))
    assert len(kept) == 1 and os.listdir(kept[0]), pattern
  kept_meta = glob.glob(os.path.join(ck, '12.corrupt-*', 'state', '_METADATA'))
  assert len(open(kept_meta[0]).read()) == len(text) // 2
  assert_same_state(ref, workdir)


def test_no_usable_checkpoint_is_an_error(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference[0], workdir)
  for step in ('4', '8', '12'):
    with open(os.path.join(workdir, 'checkpoints', step, 'data',
                           'process_0-of-1.json'), 'w') as f:
      f.write('{"next_in')
  with pytest.raises(resume.NoUsableCheckpointError,
                     match=r'none of the checkpoints .* can be restored'):
    train_lib.train_and_evaluate(get_config(), workdir)
  kept = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  assert kept == ['12', '4', '8']


def test_changed_config_is_refused(reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference[0], workdir)
  before = open(os.path.join(workdir, 'config.json')).read()
  config = get_config()
  config.quantizer.codebook_size = 64
  with pytest.raises(resume.IncompatibleCheckpointError) as e:
    train_lib.train_and_evaluate(config, workdir)
  msg = str(e.value)
  assert 'checkpoints/12' in msg
  assert ('gen/params/quantizer/codebook: float32[32,4] in the checkpoint, '
          'float32[64,4] now') in msg
  assert 'quantizer.codebook_size: 32 -> 64' in msg
  assert open(os.path.join(workdir, 'config.json')).read() == before
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))

  config = get_config()
  config.model.frontend.ch = 16
  with pytest.raises(resume.IncompatibleCheckpointError,
                     match=r'(?s)arrays whose shape/dtype differ \(\d+\):.*'
                     r'and \d+ more.*model.frontend.ch: 8 -> 16'):
    train_lib.train_and_evaluate(config, workdir)


def test_config_differences_and_state_differences():
  meta = {'a': np.zeros((2, 3), np.float32), 'b': np.zeros((), np.int32)}
  now = {'a': np.zeros((2, 4), np.float32), 'c': np.zeros((1,), np.float32)}
  lines = resume.state_differences(meta, now)
  assert lines == ['arrays whose shape/dtype differ (1):',
                   '  a: float32[2,3] in the checkpoint, float32[2,4] now',
                   'extra: in the checkpoint only (1):', '  b: int32[]',
                   'missing: in the new state only (1):', '  c: float32[1]']
  assert not resume.state_differences(meta, meta)


def _holder(workdir):
  """A child process on this host that holds `workdir`'s lock."""
  code = ('import sys, time; from tokenizers_jax.training import workdir_lock;'
          'l = workdir_lock.WorkdirLock(sys.argv[1]); l.acquire();'
          'print("held", flush=True); time.sleep(600)')
  proc = subprocess.Popen([sys.executable, '-c', code, workdir], cwd=REPO,
                          stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.stdout.readline().strip() == 'held'
  return proc


def test_second_run_on_a_workdir_is_refused(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  lock_path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  holder = _holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf'pid {holder.pid} on host '
                       rf"'{re.escape(socket.gethostname())}'"):
      train_lib.train_and_evaluate(get_config(), workdir)
    assert not os.path.exists(os.path.join(workdir, 'config.json'))
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing: its lock is taken over.
  caplog.set_level(py_logging.WARNING)
  lock = workdir_lock.WorkdirLock(workdir)
  lock.acquire()
  assert f'pid {holder.pid}' in caplog.text
  assert 'no longer running' in caplog.text
  assert json.load(open(lock_path))['pid'] == os.getpid()
  # Held by this process: a second acquire (another run here) is refused.
  with pytest.raises(workdir_lock.WorkdirLockedError, match='in use'):
    workdir_lock.WorkdirLock(workdir).acquire()
  lock.release()
  assert not os.path.exists(lock_path)
  assert not [f for f in os.listdir(workdir) if f.startswith('train.lock')]


def test_stale_locks_from_reused_pids_and_silent_hosts(tmp_path, caplog):
  workdir = str(tmp_path)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  caplog.set_level(py_logging.WARNING)

  def write(holder, age=0.0):
    with open(path, 'w') as f:
      json.dump(holder, f)
    os.utime(path, (time.time() - age, time.time() - age))

  # This pid, but not a lock this process holds (a restarted container).
  write({'pid': os.getpid(), 'host': socket.gethostname(), 'token': 'old'})
  lock = workdir_lock.WorkdirLock(workdir)
  lock.acquire()
  assert 'pid reused' in caplog.text
  lock.release()
  # Another host with a recent heartbeat: refused; a silent one: taken over.
  write({'pid': 1, 'host': 'elsewhere', 'started': 'then'})
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=r"pid 1 on host 'elsewhere'"):
    workdir_lock.WorkdirLock(workdir).acquire()
  write({'pid': 1, 'host': 'elsewhere'}, age=2 * workdir_lock.STALE_AFTER_SECS)
  lock = workdir_lock.WorkdirLock(workdir)
  lock.acquire()
  assert 'no heartbeat' in caplog.text
  lock.release()
  # Unreadable: refused with how to clear it.
  with open(path, 'w') as f:
    f.write('{"pi')
  with pytest.raises(workdir_lock.WorkdirLockedError, match='cannot be read'):
    workdir_lock.WorkdirLock(workdir).acquire()


def test_watcher_turns_sigterm_into_a_stop_request():
  with preemption.Watcher() as watcher:
    assert not watcher.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.reached(2) and watcher.reached(3)
    # The first notice restored the previous handler (a second one kills).
    assert signal.getsignal(signal.SIGTERM) != watcher._on_sigterm  # pylint: disable=protected-access
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_the_same_step_on_sigterm(tmp_path):
  """JAX's preemption service: a SIGTERM to process 1 only; both processes
  agree on the step, save it and exit cleanly."""
  workdir = str(tmp_path / 'run')
  port = _free_port()
  env = {'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=1'}
  procs = [start_train(workdir, f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={i}',
                       '--config.total_steps=40', env_extra=env)
           for i in range(2)]
  out0 = wait_for_line(procs[0], r'step 2/40')
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  outs[0] = out0 + outs[0]
  steps = []
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
    steps.append(int(re.search(r'Preempted at step (\d+)', out).group(1)))
  assert steps[0] == steps[1] < 40
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps[0])))
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
