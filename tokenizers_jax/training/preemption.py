"""Preemption: a SIGTERM ends training with a checkpoint at the current step.

  with preemption.Watcher() as preempt:
    for step in ...:
      ...
      if preempt.reached(done):   # call on every step, on every process
        save(done); break

One process: a SIGTERM handler records the notice and `reached` is True from
the next step on; a second SIGTERM terminates at once (the default action is
restored after the first). Several processes: JAX's preemption service
(started by `jax.distributed.initialize`) catches SIGTERM on any host and
agrees on one step for all of them, `multihost_utils.
reached_preemption_sync_point`, which orbax's CheckpointManager also uses;
every host then saves that same step. Cluster schedulers (Kubernetes, Slurm,
GCE preemptible VMs) send SIGTERM some seconds before SIGKILL.
"""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax


class Watcher:
  """Watches for a preemption notice (a context manager; see module doc).

  Attributes:
    received: a SIGTERM arrived at this process (single-process mode).
  """

  def __init__(self):
    self.received = False
    self._multi = False
    self._service = True
    self._previous = None

  def __enter__(self) -> 'Watcher':
    self._multi = jax.process_count() > 1
    if not self._multi:
      if threading.current_thread() is threading.main_thread():
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      else:
        logging.warning('Training outside the main thread: a SIGTERM will '
                        'not save a checkpoint before exiting.')
    # With several processes JAX's preemption notifier owns SIGTERM: a
    # Python handler here would replace it.
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del frame
    self.received = True
    # A second SIGTERM ends the process at once.
    signal.signal(signum, self._previous or signal.SIG_DFL)
    self._previous = None

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and stop (call once per step, all hosts)."""
    if not self._multi:
      return self.received
    if not self._service:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError as e:  # jax_enable_preemption_service is off.
      logging.warning('No preemption service (%s): a SIGTERM will end the '
                      'run without a checkpoint.', e)
      self._service = False
      return False
