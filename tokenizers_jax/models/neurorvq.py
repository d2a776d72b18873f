"""NeuroRVQ: a multi-scale EEG tokenizer with one residual VQ per branch.

  model = NeuroRVQ(channels=('Fp1', 'C3', 'C4', 'O1'), embed_dim=100, depth=2,
                   num_heads=4, decoder_depth=1, code_dim=16,
                   quantizer=dict(name='rvq', num_quantizers=3,
                                  codebook_size=64, use_cosine_sim=True,
                                  ema_update=True, kmeans_init=True,
                                  commitment_weight=1.0),
                   rngs=nnx.Rngs(0))
  out = model(x, train=True, mask=mask)   # x [B, C, T] -> ModelOutput
  ids = model.encode(x)                  # int32 [B, C, A, G, Q]
  ids, stats = model.encode_with_stats(x)
  x_rec = model.decode(ids, stats)       # [B, C, T]

The encoder's branch g gives code vectors [B, C, A, E]; each branch has its
own quantizer (any registry quantizer via `quantizer`; NeuroRVQ's is an RVQ
of cosine-similarity, EMA, k-means-initialised codebooks, each level
l2-normalising its residual, commitment weight beta = 1). So a patch of one
channel gets G*Q tokens (4 x 8 = 32 in the paper).

Reconstruction needs two floats per example besides the tokens (`stats`): the
input's log-amplitude mean and std, which NeuroRVQ's iFFT rebuild uses (or
the signal's mean and std for the 'mse' baseline); `decode` without them uses
their running average over training (`amp_stats`).

The loss (`losses/eeg.py`): L_code + L_amp + L_phase + L_signal, with
L_code = sum over branches of the quantizer loss divided by its number of
levels (the per-level mean); `loss='mse'` trains the baseline: a decoder
head for the standardised signal, MSE + L_code. Not reproduced: the extra
0.4 * MSE(q_i, sg(r_{i+1})) term of the reference RVQ code (its source was
not available to check which tensors carry gradients there).

Dimension legend:
  B: batch; C: channels; T = A*P samples; A: patches; P: patch size
  G: branches; Q: quantizer levels (1 for single-code quantizers)
  E: code dimension
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.data import eeg as eeg_data
from tokenizers_jax.frontends import eeg as fe
from tokenizers_jax.losses import eeg as eeg_losses
from tokenizers_jax.models import base as model_base
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import registry as qregistry

Array = jax.Array

NEURORVQ_QUANTIZER = dict(name='rvq', num_quantizers=8, codebook_size=8192,
                          quantizer='vq', use_cosine_sim=True, ema_update=True,
                          kmeans_init=True, decay=0.99, commitment_weight=1.0)


# Options a converted release sets (convert/neurorvq.py); the registry passes
# them when config.model has them. Their defaults keep this codebase's model.
RELEASE_OPTIONS = ('electrodes', 'temporal_align', 'norm_eps',
                   'group_norm_eps', 'group_norm_scope')


def release_channel_ids(channels: Sequence[str],
                        electrodes: Sequence[str]) -> tuple[int, ...]:
  """0-based index of each channel in a release's electrode list (NeuroRVQ's
  `ch_names_global`), matched case-insensitively, then by canonical name."""
  table = [str(e).strip().lower() for e in electrodes]
  ids = []
  for c in channels:
    for name in (str(c).strip().lower(),
                 eeg_data.canonical_name(str(c)).lower()):
      if name in table:
        ids.append(table.index(name))
        break
    else:
      raise ValueError(f'channel {c!r} is not in the model\'s electrode list '
                       f'({len(table)} names: {", ".join(table[:8])}, ...)')
  return tuple(ids)


class AmpStats(nnx.BatchStat):
  """Running mean of the per-example reconstruction stats (log-amplitude
  mean and std for 'neurorvq', signal mean and std for 'mse')."""


class NeuroRVQ(nnx.Module):
  """The NeuroRVQ tokenizer (see the module docstring).

  Args:
    channels: channel names (10-20 names) in input order.
    patch_size, max_patches, branches, conv_channels, embed_dim, depth,
      num_heads, decoder_depth, mlp_ratio, code_dim: `EEGFrontEnd`.
    quantizer: registry spec dict (name + kwargs; `dim` is code_dim).
    loss: 'neurorvq' or 'mse'.
    stats_decay: decay of the running `amp_stats`.
    electrodes: a release's own electrode list: channel ids are then 0-based
      indices in it and the spatial embedding has len(electrodes) + 1 rows
      (default: `data.eeg.ELECTRODES`, 1-based ids).
    temporal_align, norm_eps, group_norm_eps, group_norm_scope:
      `EEGFrontEnd` (defaults: this codebase's; a converted NeuroRVQ release
      sets NeuroRVQ's).
  """

  modality = 'eeg'
  one_dimensional = False
  # 'eeg': the reconstruction loss of `losses/eeg.py` (amplitude + phase +
  # time-domain terms, or the MSE baseline); 'quantizer': L_code.
  loss_terms = ('eeg', 'quantizer')

  def __init__(self, *, channels: Sequence[str], patch_size: int = 200,
               max_patches: int = 256,
               branches: Sequence[Sequence[int]] = fe.BRANCH_KERNELS,
               conv_channels: int = 8, embed_dim: int = 200, depth: int = 12,
               num_heads: int = 10, decoder_depth: int = 3,
               mlp_ratio: float = 4.0, code_dim: int = 128,
               quantizer: dict[str, Any] | None = None,
               loss: str = 'neurorvq', stats_decay: float = 0.99,
               electrodes: Sequence[str] | None = None,
               temporal_align: str = 'left', norm_eps: float = fe.LN_EPS,
               group_norm_eps: float = fe.GN_EPS,
               group_norm_scope: str = 'patch',
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if loss not in eeg_losses.LOSSES:
      raise ValueError(f'unknown loss {loss!r}; known: {eeg_losses.LOSSES}')
    self.channels = tuple(channels)
    if electrodes is None:
      self.channel_ids = tuple(eeg_data.electrode_index(c) for c in channels)
      num_electrodes = fe.NUM_ELECTRODES
    else:
      self.channel_ids = release_channel_ids(channels, electrodes)
      num_electrodes = len(electrodes)
    self.loss_kind = loss
    self.stats_decay = stats_decay
    self.frontend = fe.EEGFrontEnd(
        patch_size=patch_size, max_patches=max_patches, branches=branches,
        conv_channels=conv_channels, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, decoder_depth=decoder_depth, mlp_ratio=mlp_ratio,
        code_dim=code_dim, output='fourier' if loss == 'neurorvq' else 'time',
        num_electrodes=num_electrodes, temporal_align=temporal_align,
        norm_eps=norm_eps, group_norm_eps=group_norm_eps,
        group_norm_scope=group_norm_scope, dtype=dtype, rngs=rngs)
    spec = dict(quantizer or NEURORVQ_QUANTIZER)
    name = spec.pop('name')
    spec.pop('dim', None)
    self.quantizers = nnx.List([
        qregistry.make_quantizer(name, dim=code_dim, rngs=rngs, **spec)
        for _ in branches])
    q0 = self.quantizers[0]
    self.num_levels = q0.num_codebooks or 1
    self.codebook_size = q0.codebook_size
    self.num_branches = len(branches)
    self.patch_size = patch_size
    self.amp_stats = AmpStats(jnp.array([0.0, 1.0], jnp.float32))

  # ------------------------------------------------------------------ parts
  def _ids(self, channel_ids, c: int) -> Array:
    ids = jnp.asarray(self.channel_ids if channel_ids is None else channel_ids,
                      jnp.int32)
    if ids.shape != (c,):
      raise ValueError(f'input has {c} channels; the model expects '
                       f'{ids.shape[0]} ({self.channels})')
    return ids

  def _check(self, x: Array, mask: Array | None) -> Array:
    if x.ndim != 3:
      raise ValueError(f'EEG input must be [B, C, T]; got shape {x.shape}')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f'EEG input must be floating point; got {x.dtype}')
    if x.shape[-1] % self.patch_size:
      raise ValueError(f'{x.shape[-1]} samples is not a whole number of '
                       f'{self.patch_size}-sample patches')
    want = (x.shape[0], x.shape[-1] // self.patch_size)
    if mask is not None and mask.shape != want:
      raise ValueError(f'mask must be [B, A] = {want}; got {mask.shape}')
    return x.astype(jnp.float32)

  def _quantize(self, z: Array, mask: Array | None, train: bool):
    """z [B, G, C, A, E] -> (quantized [B, G, C, A, E], [QuantizerOutput])."""
    outs = []
    qmask = None
    if mask is not None:
      qmask = jnp.broadcast_to(mask[:, None, :], z.shape[:1] + z.shape[2:4])
    for g, q in enumerate(self.quantizers):
      outs.append(q(z[:, g], train=train, mask=qmask))
    return jnp.stack([o.quantized for o in outs], 1), outs

  def _stack_ids(self, outs) -> Array:
    ids = [o.indices if o.indices.ndim == 4 else o.indices[..., None]
           for o in outs]
    return jnp.stack(ids, -2)

  # ------------------------------------------------------------------ API
  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None, channel_ids=None):
    """Tokenize and reconstruct.

    Args:
      x: [B, C, T] signal (T a multiple of the patch size).
      train: training mode (quantizer state updates, k-means init).
      mask: [B, A] bool, False on padded patches.
      channel_ids: electrode indices [C] (default: the model's channels).

    Returns:
      ModelOutput: reconstruction [B, C, T]; quantizer = the branches'
      outputs combined (indices [B, C, A, G, Q], quantized [B, G, C, A, E],
      loss = L_code); terms 'eeg' (the reconstruction loss) and 'quantizer'
      (L_code); metrics amplitude, phase, signal, mse, phase_cos and the
      branch-averaged usage / perplexity / dead_codes; aux = dict(z
      [B, G, C, A, E] (encoder output), quantizers (per-branch
      QuantizerOutputs), pred (decoder heads)).
    """
    x = self._check(x, mask)
    ids = self._ids(channel_ids, x.shape[1])
    z = self.frontend.encode(x, ids, mask, train=train)
    zq, outs = self._quantize(z, mask, train)
    pred = self.frontend.decode(zq, ids, mask, train=train)
    xp = self.frontend.patchify(x)
    loss, terms, x_hat = eeg_losses.eeg_loss(xp, pred, mask,
                                             kind=self.loss_kind)
    code = sum(o.loss for o in outs) / self.num_levels
    if train:
      new = jnp.mean(eeg_losses.signal_stats(xp, mask, self.loss_kind), 0)
      d = self.stats_decay
      self.amp_stats[...] = d * self.amp_stats[...] + (
          1 - d) * jax.lax.stop_gradient(new)
    metrics = dict(terms)
    for key in ('usage', 'perplexity', 'dead_codes'):
      if key in outs[0].metrics:
        metrics[key] = sum(o.metrics[key] for o in outs) / len(outs)
    qout = qbase.QuantizerOutput(quantized=zq, indices=self._stack_ids(outs),
                                 loss=code, metrics={})
    return model_base.ModelOutput(
        reconstruction=x_hat.reshape(x.shape), quantizer=qout,
        terms={'eeg': loss, 'quantizer': code}, metrics=metrics,
        aux=dict(z=z, quantizers=outs, pred=pred))

  def encode_with_stats(self, x: Array, mask: Array | None = None,
                        channel_ids=None) -> tuple[Array, Array]:
    """(indices int32 [B, C, A, G, Q], stats [B, 2]): stats are the
    log-amplitude mean and std ('neurorvq') or the signal's ('mse')."""
    x = self._check(x, mask)
    ids = self._ids(channel_ids, x.shape[1])
    z = self.frontend.encode(x, ids, mask)
    _, outs = self._quantize(z, mask, False)
    stats = eeg_losses.signal_stats(self.frontend.patchify(x), mask,
                                    self.loss_kind)
    return self._stack_ids(outs), stats

  def encode(self, x: Array, mask: Array | None = None,
             channel_ids=None) -> Array:
    """Token indices int32 [B, C, A, G, Q]."""
    return self.encode_with_stats(x, mask, channel_ids)[0]

  def decode(self, indices: Array, stats: Array | None = None,
             mask: Array | None = None, channel_ids=None,
             num_levels: int | None = None) -> Array:
    """Indices [B, C, A, G, Q] (+ stats [B, 2]) -> signal [B, C, A*P].

    `num_levels` decodes only the first levels of every branch (RVQ).
    """
    if indices.ndim != 5 or indices.shape[3] != self.num_branches:
      raise ValueError(f'indices must be [B, C, A, {self.num_branches}, '
                       f'{self.num_levels}]; got {indices.shape}')
    b, c, a = indices.shape[:3]
    ids = self._ids(channel_ids, c)
    zs = []
    for g, q in enumerate(self.quantizers):
      idx = indices[:, :, :, g]
      if q.num_codebooks is None:
        zs.append(q.decode(idx[..., 0]))
      elif num_levels is not None:
        zs.append(q.decode(idx, num_levels=num_levels))
      else:
        zs.append(q.decode(idx))
    pred = self.frontend.decode(jnp.stack(zs, 1), ids, mask)
    if stats is None:
      stats = jnp.broadcast_to(self.amp_stats[...], (b, 2))
    x = eeg_losses.rebuild(pred, stats, self.loss_kind)
    return x.reshape(b, c, a * self.patch_size)
