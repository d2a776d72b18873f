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


def abstract_module(build):
  """`build()`'s module with ShapeDtypeStruct values, no initialiser run.

  Like `nnx.eval_shape`, but the logical axis names stay metadata: under a
  caller's `jax.set_mesh`, `nnx.eval_shape` turns them into mesh axes and
  fails (logical names are not mesh axes). Fill the variables afterwards,
  e.g. with `var.set_value(array)`.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  box = {}

  def structure():
    graph, state = nnx.split(build())
    box['graph'] = graph
    return state

  state = jax.eval_shape(structure)
  return nnx.merge(box['graph'], state)
