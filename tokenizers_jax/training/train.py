"""The one training loop every tokenizer uses.

  python -m tokenizers_jax.train --config=configs/vqgan.py:tiny --workdir=DIR

What is specific to a modality (model, data, loss, evaluation) comes from
its Task (`training/tasks.py`, chosen by `config.task`).

Sections: setup (mesh, data, state, checkpoint resume) -> loop (jit step,
logging, eval, checkpoints) -> final save. The same code runs on one CPU, a
mesh of simulated devices, a GPU, or several processes after
`distributed.maybe_initialize`.
"""

from __future__ import annotations

import os
import time

from absl import logging
import jax
import ml_collections

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import core
from tokenizers_jax.training import metrics as metrics_lib
from tokenizers_jax.training import preemption
from tokenizers_jax.training import resume as resume_lib
from tokenizers_jax.training import tasks
from tokenizers_jax.training import workdir_lock


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite batch, loss or gradient."""


# ============================================================================
# Setup helpers.
# ============================================================================


def make_mesh(config) -> jax.sharding.Mesh:
  return sharding_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes))


batch_sharding = core.batch_sharding
to_global = core.to_global
load_config = config_lib.load_workdir_config


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'config.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)


def _log_line(done: int, end: int, host: dict, headline, rate: float) -> str:
  parts = [f'step {done}/{end}', f'loss {host["train/loss"]:.4f}']
  for key in headline:
    if key in host:
      parts.append(f'{key.split("/", 1)[-1]} {host[key]:.4f}')
  eta = (end - done) / max(rate, 1e-9)
  parts.append(f'{rate:.2f} steps/s  ETA {eta:.0f}s')
  return '  '.join(parts)


# ============================================================================
# Training.
# ============================================================================


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, stop_after: int | None = None) -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns the
  final metrics. `stop_after` ends the run early at that step (tests)."""
  task = tasks.get_task(config)
  task.validate_config(config)
  mesh = make_mesh(config)
  # One run per workdir; a SIGTERM saves the current step and stops.
  with (workdir_lock.hold(workdir), preemption.Watcher() as preempt,
        jax.set_mesh(mesh)):
    trainer, state, state_sh = task.create(config, mesh)
    data_sh = batch_sharding(mesh, config)
    it = task.train_iterator(config)
    mgr = ckpt_lib.manager(workdir, config.keep_checkpoints)
    # The newest whole checkpoint that fits this config (see resume.py).
    restored, start = resume_lib.restore_latest_good(
        mgr, state, it, workdir=workdir, config=config)
    if restored is not None:
      state = restored
      logging.info('Resumed from step %d', start)
    write_config(config, workdir)
    writer = metrics_lib.MetricWriter(workdir)
    start = int(jax.device_get(state['step']))

    train_step = core.jit_train_step(
        config, lambda s, b: task.train_step(trainer, s, b), state_sh, data_sh)
    logging.info('Training %s from step %d to %d on %d devices (%d processes).',
                 config.model_name, start, config.total_steps,
                 jax.device_count(), jax.process_count())
    end = config.total_steps if stop_after is None else min(stop_after,
                                                            config.total_steps)
    t0, t_last, last_step = time.time(), time.time(), start
    history: list[dict] = []
    final: dict = {}
    prev_metrics = None
    for step in range(start, end):
      batch = to_global(next(it), data_sh, config.data.global_batch_size)
      state, metrics = train_step(state, batch)
      # Check the previous step's counter (no stall on the current step).
      if prev_metrics is not None:
        bad = int(prev_metrics['train/nonfinite_consecutive'])
        if bad >= config.max_consecutive_nonfinite:
          raise NonFiniteError(
              f'{bad} consecutive steps had a non-finite batch, loss or '
              f'gradient (up to step {step - 1}); none reached the parameters. '
              'Check the data and lower the learning rate.')
      prev_metrics = metrics
      done = step + 1
      if done % config.log_every == 0 or done == end:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.time()
        rate = (done - last_step) / max(now - t_last, 1e-9)
        host['train/steps_per_sec'] = rate
        writer.write_scalars(done, host)
        history.append(dict(host, step=done))
        logging.info('%s', _log_line(done, end, host, task.headline, rate))
        t_last, last_step = now, done
      if done % config.eval_every == 0 or done == end:
        final, picture = task.evaluate(trainer, state, config, mesh,
                                       num_batches=config.num_eval_batches)
        writer.write_scalars(done, final)
        if picture is not None:
          writer.write_images(done, 'reconstructions', picture)
        logging.info('eval at %d: %s', done,
                     ', '.join(f'{k}={v:.4f}' for k, v in final.items()))
        if task.eval_note(config):
          logging.info('%s', task.eval_note(config))
      preempted = preempt.reached(done)  # Every step, on every process.
      if preempted or done % config.checkpoint_every == 0 or done == end:
        ckpt_lib.save(mgr, done, state, it, force=True)
      if preempted:
        logging.warning('Preempted at step %d: saved a checkpoint there; '
                        'rerun the same command to resume.', done)
        final = dict(final, preempted=True)
        break
    mgr.wait_until_finished()
    mgr.close()
  writer.close()
  final['train_time_sec'] = time.time() - t0
  final['step'] = int(jax.device_get(state['step']))
  return final


def evaluate_workdir(workdir: str, *, use_ema: bool = True,
                     num_batches: int | None = -1) -> dict:
  """Evaluates the latest checkpoint of `workdir` on the validation split."""
  config = load_config(workdir)
  task = tasks.get_task(config)
  task.validate_config(config)
  with config.unlocked():
    config.init_from = None  # The checkpoint holds every weight.
  mesh = make_mesh(config)
  with jax.set_mesh(mesh):
    trainer, state, _ = task.create(config, mesh)
    state, step = ckpt_lib.restore_state_only(workdir, state)
    results, picture = task.evaluate(trainer, state, config, mesh,
                                     use_ema=use_ema, num_batches=num_batches)
  results['step'] = step
  note = task.eval_note(config)
  if note:
    results['note'] = note
  writer = metrics_lib.MetricWriter(workdir)
  if picture is not None:
    results['image_grid'] = writer.write_images(step, 'eval_reconstructions',
                                                picture)
  writer.close()
  return results
