"""Multi-process initialisation: a no-op for one process.

On TPU pods, Slurm and Open MPI `jax.distributed.initialize()` detects
everything; elsewhere pass the coordinator address, process count and id. On
CPU the collectives go through gloo.
"""

from __future__ import annotations

import jax


def maybe_initialize(coordinator_address: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None,
                     auto: bool = False) -> None:
  """Call before any JAX computation."""
  if not (auto or coordinator_address):
    return
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except Exception:  # pylint: disable=broad-except
    pass
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
