"""Metric writer: JSON lines (every scalar) plus TensorBoard event files.

TensorBoard files are written with tensorboardX (no TensorFlow needed); only
process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard, images to PNG."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        self._tb = None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'time': time.time()}
    for k, v in scalars.items():
      row[k] = float(np.asarray(v))
    self._jsonl.write(json.dumps(row) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k not in ('step', 'time'):
          self._tb.add_scalar(k, v, int(step))

  def write_images(self, step: int, name: str, grid: np.ndarray) -> str | None:
    """grid: uint8 [H, W, 3]; written as PNG and to TensorBoard."""
    if not self.enabled:
      return None
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.workdir, 'images', f'{name}_{int(step):08d}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    Image.fromarray(grid).save(tmp, format='PNG')
    os.replace(tmp, path)
    if self._tb is not None:
      self._tb.add_image(name, grid, int(step), dataformats='HWC')
    return path

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def image_grid(originals: np.ndarray, recons: np.ndarray) -> np.ndarray:
  """Two rows (originals above reconstructions), [-1, 1] floats -> uint8."""
  to8 = lambda a: np.clip((np.asarray(a, np.float32) + 1) * 127.5, 0, 255).round().astype(np.uint8)
  top = np.concatenate(list(to8(originals)), axis=1)
  bottom = np.concatenate(list(to8(recons)), axis=1)
  return np.concatenate([top, bottom], axis=0)
