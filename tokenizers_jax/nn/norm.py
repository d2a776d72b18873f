"""GroupNorm with its statistics summed per channel first.

`GroupNorm` is `nnx.GroupNorm` (the same variables, names and defaults, so
weights and checkpoints carry over) whose default case, statistics over
every axis but the batch for channels-last inputs, sums x and x² over the
positions for each channel, [B, ..., C] -> [B, C], then over each group's
channels, instead of reducing the [B, ..., G, C/G] view over its
non-adjacent axes at once. Same function up to float rounding (the sums
are reordered); XLA:CPU runs the per-channel form at the speed of
PyTorch's fused kernel (GroupNorm + swish fwd+bwd at 64 ch, 32², batch 16:
4.0 -> 2.3 ms; at 128 ch, 256², batch 2: 91 -> 75 ms). Masks, explicit
reduction axes, cross-device statistics and the two-pass variance take
`nnx.GroupNorm`'s own path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class GroupNorm(nnx.GroupNorm):
  """`nnx.GroupNorm` with per-channel-first statistics (module docstring)."""

  def __call__(self, x: Array, *, mask=None) -> Array:
    if (mask is not None or self.reduction_axes is not None
        or self.axis_name is not None or not self.use_fast_variance
        or x.ndim < 3 or self.feature_axis not in (-1, x.ndim - 1)):
      return super().__call__(x, mask=mask)
    scale = self.scale[...] if self.scale else None
    bias = self.bias[...] if self.bias else None
    x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
    b, c = x.shape[0], x.shape[-1]
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    flat = x.reshape(b, -1, c).astype(stats_dtype)
    count = flat.shape[1] * self.group_size
    groups = (b, self.num_groups, self.group_size)
    mean = jnp.sum(flat, axis=1).reshape(groups).sum(-1) / count
    mean2 = jnp.sum(flat * flat, axis=1).reshape(groups).sum(-1) / count
    var = jnp.maximum(mean2 - mean * mean, 0.0)
    shape = (b,) + (1,) * (x.ndim - 2) + (c,)
    mean = jnp.repeat(mean, self.group_size, axis=1).reshape(shape)
    mul = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), self.group_size,
                     axis=1).reshape(shape)
    if scale is not None:
      mul = mul * scale
    y = (x - mean) * mul
    if bias is not None:
      y = y + bias
    return y.astype(self.dtype or x.dtype)
