"""Logical-axis metadata for NNX variables.

Every parameter and frozen weight of the package names its axes with logical
names (`batch`, `embed`, `mlp`, `heads`, `codebook`, `code_dim`, ...). The
names ride on the variable as `out_sharding` metadata with
`eager_sharding=False`: modules build without a mesh, and the training system
maps the names to mesh axes later with its rules (`tokenizers_jax.sharding`).

Example:
  nnx.Linear(d, m, rngs=rngs, kernel_metadata=logical('embed', 'mlp'),
             bias_metadata=logical('mlp'))
  nnx.Param(init, **logical(None, 'embed'))

Dimension legend: none (metadata only).
"""

from __future__ import annotations

from typing import Any


def logical(*names: str | None) -> dict[str, Any]:
  """Variable metadata naming each axis, never eagerly sharded.

  Args:
    *names: one logical axis name (or None: replicated) per variable axis.

  Returns:
    `{'out_sharding': names, 'eager_sharding': False}`, to pass as a
    Variable's keyword metadata or as a layer's `*_metadata` argument.
  """
  return {'out_sharding': tuple(names), 'eager_sharding': False}
