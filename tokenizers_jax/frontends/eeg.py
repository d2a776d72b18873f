"""EEG front end (NeuroRVQ): multi-scale temporal convolutions, transformers,
and a Fourier decoder (log-amplitude and phase heads, signal by inverse FFT).

Encoder. Every 1-second patch of every channel goes through G inception-style
branches (NeuroRVQ's four: kernels 21/15/9/5, then 9/7/5/3; each layer conv
-> GroupNorm(4) -> GELU -> average pool 2, then 4), flattened time-major to a
(P/8)*K vector per branch. A class token, a learned spatial embedding
(electrode index, `data.eeg.ELECTRODES`) and a learned temporal embedding
(patch position) are added, one transformer (shared weights, qk-norm) runs on
each branch's tokens separately, and a per-branch LayerNorm-Linear head and
Linear-Tanh-Linear projection give the code vectors.

Decoder. Per branch, a 1x1 embedding of the (quantized) code, the same
embeddings, a shared transformer and a per-branch LayerNorm-Linear head; the
branches are concatenated and three heads predict, per patch, the
standardised log-amplitude of the FFT (Linear-GELU-Linear) and the sine and
cosine of its phase (Linear-Tanh-Linear-Tanh). `rebuild_signal` inverts:
x = Re(iFFT(expm1(A*sigma + mu) * (cos + i sin))). (`output='time'` instead
has one Linear-GELU-Linear head for the standardised signal itself.)

Release options (default off; `convert/neurorvq.py` sets them to load
NeuroRVQ's own checkpoints): the spatial table size (`num_electrodes`),
right-aligned temporal embeddings (`temporal_align='right'`), the LayerNorm
and GroupNorm epsilons (torch's 1e-5) and GroupNorm statistics over a whole
example (`group_norm_scope='example'`: all channels and patches, as the
release's GroupNorm over its [B, K, C*A, T] image; padded patches left out).

Dimension legend:
  B: batch; C: channels; A: patches per window; T = A*P samples
  P: patch size (200 = 1 s at 200 Hz); F = P FFT bins (full FFT)
  G: branches (4); K: conv channels per branch; D: transformer width
  E: code dimension; L = 1 + C*A tokens (class token first)
"""

from __future__ import annotations

from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.nn import attention
from tokenizers_jax.nn.partitioning import logical

Array = jax.Array
Dtype = Any

BRANCH_KERNELS = ((21, 9), (15, 7), (9, 5), (5, 3))
POOLS = (2, 4)
NUM_ELECTRODES = 94  # len(data.eeg.ELECTRODES); index 0 = class token.
LN_EPS = 1e-6
GN_EPS = 1e-6  # flax's GroupNorm default (torch's is 1e-5).
GN_SCOPES = ('patch', 'example')
TEMPORAL_ALIGNS = ('left', 'right')


# --------------------------------------------------------------------------
# Fourier decomposition (the targets) and its inverse.
# --------------------------------------------------------------------------
def std_norm(v: Array, mask: Array | None = None, ddof: int = 1):
  """Per-example z-score over all axes but the first, with the unbiased
  variance (as torch.var) clamped at 1e-8. mask: broadcastable to v.

  Returns (z, mean, std), mean/std shaped [B, 1, ..., 1].
  """
  axes = tuple(range(1, v.ndim))
  w = jnp.ones_like(v) if mask is None else jnp.broadcast_to(mask, v.shape
                                                             ).astype(v.dtype)
  n = jnp.sum(w, axes, keepdims=True)
  mean = jnp.sum(v * w, axes, keepdims=True) / jnp.maximum(n, 1)
  var = jnp.sum(w * (v - mean) ** 2, axes, keepdims=True) / jnp.maximum(
      n - ddof, 1)
  std = jnp.sqrt(jnp.maximum(var, 1e-8))
  return (v - mean) / std, mean, std


def fft_features(x: Array, mask: Array | None = None) -> dict[str, Array]:
  """Targets of a patched signal x [B, C, A, P] (float32).

  Returns dict(amplitude = standardised log1p|FFT| [B, C, A, P], sin, cos of
  the phase, amp_mean, amp_std [B, 1, 1, 1]); mask [B, A] excludes padded
  patches from the statistics.
  """
  spec = jnp.fft.fft(x.astype(jnp.float32), axis=-1)
  log_amp = jnp.log1p(jnp.abs(spec))
  m = None if mask is None else mask[:, None, :, None]
  amp, mean, std = std_norm(log_amp, m)
  phase = jnp.angle(spec)
  return dict(amplitude=amp, sin=jnp.sin(phase), cos=jnp.cos(phase),
              amp_mean=mean, amp_std=std)


def rebuild_signal(amplitude: Array, sin: Array, cos: Array, amp_mean: Array,
                   amp_std: Array) -> Array:
  """Re(iFFT(expm1(amplitude * std + mean) * (cos + i sin))), [..., P]."""
  mag = jnp.expm1(amplitude.astype(jnp.float32) * amp_std + amp_mean)
  spec = mag * cos.astype(jnp.float32) + 1j * (mag * sin.astype(jnp.float32))
  return jnp.real(jnp.fft.ifft(spec, axis=-1))


# --------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------
def _linear(din: int, dout: int, names=('embed', 'mlp'), *, dtype: Dtype,
            rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, dtype=dtype, rngs=rngs,
                    kernel_init=nnx.initializers.truncated_normal(0.02),
                    kernel_metadata=logical(*names),
                    bias_metadata=logical(names[1]))


def _norm(width: int, *, dtype: Dtype, rngs: nnx.Rngs,
          eps: float = LN_EPS) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=eps, dtype=dtype, rngs=rngs,
                       scale_metadata=logical('embed'),
                       bias_metadata=logical('embed'))


class TemporalBranch(nnx.Module):
  """conv(k1) -> GN -> GELU -> pool 2 -> conv(k2) -> GN -> GELU -> pool 4.

  `group_norm_scope`: 'patch' normalises each patch on its own; 'example'
  takes the GroupNorm statistics over all patches of all channels of an
  example, as NeuroRVQ's GroupNorm over its [B, K, C*A, T] image does.
  """

  def __init__(self, kernels: Sequence[int], channels: int, *,
               group_norm_eps: float = GN_EPS,
               group_norm_scope: str = 'patch',
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if group_norm_scope not in GN_SCOPES:
      raise ValueError(f'group_norm_scope must be one of {GN_SCOPES}; got '
                       f'{group_norm_scope!r}')
    self.group_norm_scope = group_norm_scope
    self.convs = nnx.List()
    self.norms = nnx.List()
    cin = 1
    for k in kernels:
      self.convs.append(nnx.Conv(
          cin, channels, (k,), padding='SAME', dtype=dtype, rngs=rngs,
          kernel_init=nnx.initializers.truncated_normal(0.02),
          kernel_metadata=logical(None, None, 'mlp'),
          bias_metadata=logical('mlp')))
      self.norms.append(nnx.GroupNorm(channels, num_groups=min(4, channels),
                                      epsilon=group_norm_eps, dtype=dtype,
                                      rngs=rngs))
      cin = channels

  def _example_norm(self, norm: nnx.GroupNorm, h: Array, rows: int,
                    weights: Array | None) -> Array:
    """GroupNorm with statistics over each example's `rows` patches."""
    m, t, k = h.shape
    g = norm.num_groups
    hf = h.astype(jnp.float32).reshape(m // rows, rows, t, g, k // g)
    w = (jnp.ones((m // rows, rows), jnp.float32) if weights is None else
         weights.astype(jnp.float32).reshape(m // rows, rows))
    w = w[:, :, None, None, None]
    axes = (1, 2, 4)
    n = jnp.maximum(jnp.sum(w, axes, keepdims=True) * t * (k // g), 1.0)
    mean = jnp.sum(hf * w, axes, keepdims=True) / n
    var = jnp.sum(w * (hf - mean) ** 2, axes, keepdims=True) / n
    y = ((hf - mean) * jax.lax.rsqrt(var + norm.epsilon)).reshape(m, t, k)
    y = y * norm.scale[...] + norm.bias[...]
    return y.astype(h.dtype)

  def __call__(self, x: Array, rows: int | None = None,
               weights: Array | None = None) -> Array:
    """[M, P] -> [M, (P/8)*K], time-major (t0k0, t0k1, ..., t1k0, ...).

    rows: patches per example (consecutive rows), for the 'example' scope;
    weights: [M] (False/0 on padded patches, left out of its statistics).
    """
    h = x[..., None]
    example = self.group_norm_scope == 'example'
    if example and (rows is None or x.shape[0] % rows):
      raise ValueError(f"group_norm_scope='example' needs rows (patches per "
                       f'example) dividing {x.shape[0]}; got {rows}')
    for conv, norm, pool in zip(self.convs, self.norms, POOLS):
      h = conv(h)
      h = (self._example_norm(norm, h, rows, weights) if example
           else norm(h))
      h = nnx.gelu(h, approximate=False)
      h = h.reshape(h.shape[0], h.shape[1] // pool, pool, h.shape[2]).mean(2)
    return h.reshape(h.shape[0], -1)


class Block(attention.Attention):
  """Pre-LN transformer block with qk-norm and a key padding mask.

  The block is its own attention (`nn.attention.Attention` with a fused
  `qkv`, LayerNorm `q_norm`/`k_norm` per head, `proj`), so those weights sit
  at the block's top level.
  """

  def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, *,
               norm_eps: float = LN_EPS, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = _norm(width, eps=norm_eps, **kw)
    super().__init__(width, num_heads, qk_norm='layer', norm_epsilon=LN_EPS,
                     kernel_init=nnx.initializers.truncated_normal(0.02),
                     **kw)  # qkv, q_norm, k_norm, proj.
    self.norm2 = _norm(width, eps=norm_eps, **kw)
    self.fc1 = _linear(width, int(width * mlp_ratio), ('embed', 'mlp'), **kw)
    self.fc2 = _linear(int(width * mlp_ratio), width, ('mlp', 'embed'), **kw)

  def __call__(self, x: Array, key_mask: Array | None = None) -> Array:
    """x [B, L, D], key_mask bool [B, L] (False: padding) -> [B, L, D]."""
    mask = None if key_mask is None else key_mask[:, None, :]
    x = x + super().__call__(self.norm1(x), mask)
    return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=False))


class Transformer(nnx.Module):
  """Class token + spatial/temporal embeddings + `depth` shared blocks.

  temporal_align: 'left' gives patch a the temporal embedding a; 'right'
  gives the A patches of a window the last A embeddings (max_patches - A + a),
  as NeuroRVQ's inference code does.
  """

  def __init__(self, width: int, depth: int, num_heads: int, max_patches: int,
               mlp_ratio: float = 4.0, final_norm: bool = True, *,
               num_electrodes: int = NUM_ELECTRODES,
               temporal_align: str = 'left', norm_eps: float = LN_EPS,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if temporal_align not in TEMPORAL_ALIGNS:
      raise ValueError(f'temporal_align must be one of {TEMPORAL_ALIGNS}; got '
                       f'{temporal_align!r}')
    self.temporal_align = temporal_align
    init = lambda n: nnx.Param(
        0.02 * jax.random.truncated_normal(rngs.params(), -2, 2, (n, width)),
        **logical(None, 'embed'))
    self.cls = init(1)
    self.spatial = init(num_electrodes + 1)
    self.temporal = init(max_patches)
    self.blocks = nnx.List([Block(width, num_heads, mlp_ratio,
                                  norm_eps=norm_eps, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = (_norm(width, eps=norm_eps, dtype=dtype, rngs=rngs)
                 if final_norm else None)

  def __call__(self, tokens: Array, channel_ids: Array,
               mask: Array | None) -> Array:
    """tokens [B, C, A, D], channel_ids int [C], mask [B, A] -> [B, C, A, D]."""
    b, c, a, d = tokens.shape
    if a > self.temporal.shape[0]:
      raise ValueError(f'{a} patches exceed the {self.temporal.shape[0]} '
                       'temporal embeddings (max_patches)')
    n = self.temporal.shape[0]
    temporal = (self.temporal[...][n - a:] if self.temporal_align == 'right'
                else self.temporal[...][:a])
    x = (tokens + self.spatial[...][channel_ids][None, :, None]
         + temporal[None, None])
    cls = jnp.broadcast_to(self.cls[...] + self.spatial[...][0], (b, 1, d))
    x = jnp.concatenate([cls.astype(x.dtype), x.reshape(b, c * a, d)], 1)
    key_mask = None
    if mask is not None:
      tok = jnp.broadcast_to(mask[:, None, :], (b, c, a)).reshape(b, c * a)
      key_mask = jnp.concatenate([jnp.ones((b, 1), bool), tok], 1)
    for block in self.blocks:
      x = block(x, key_mask)
    if self.norm is not None:
      x = self.norm(x)
    return x[:, 1:].reshape(b, c, a, d)


# --------------------------------------------------------------------------
# Encoder, decoder, front end.
# --------------------------------------------------------------------------
class EEGFrontEnd(nnx.Module):
  """NeuroRVQ's encoder and decoder (quantization happens in the model).

  Args:
    patch_size: P (divisible by 8).
    max_patches: size of the temporal embedding (longest window).
    branches: kernel pairs, one per branch (G = len(branches)).
    conv_channels: K.
    embed_dim: D; a linear map follows the convs when (P/8)*K != D.
    depth, num_heads, decoder_depth, mlp_ratio: transformers.
    code_dim: E.
    output: 'fourier' (NeuroRVQ's log-amplitude, sin and cos heads) or
      'time' (one head predicting the per-example standardised signal; the
      plain-MSE baseline).
    num_electrodes: rows of the spatial embedding (+1 for the class token).
    temporal_align: 'left' or 'right' (`Transformer`).
    norm_eps: epsilon of the transformer and head LayerNorms (qk-norm keeps
      1e-6).
    group_norm_eps, group_norm_scope: the conv branches' GroupNorm
      (`TemporalBranch`).
    The defaults are this codebase's; NeuroRVQ's release has 103 electrodes,
    'right', 1e-5, 1e-5 and 'example' (convert/neurorvq.py).
  """

  modality = 'eeg'

  def __init__(self, *, patch_size: int = 200, max_patches: int = 256,
               branches: Sequence[Sequence[int]] = BRANCH_KERNELS,
               conv_channels: int = 8, embed_dim: int = 200, depth: int = 12,
               num_heads: int = 10, decoder_depth: int = 3,
               mlp_ratio: float = 4.0, code_dim: int = 128,
               output: str = 'fourier', num_electrodes: int = NUM_ELECTRODES,
               temporal_align: str = 'left', norm_eps: float = LN_EPS,
               group_norm_eps: float = GN_EPS,
               group_norm_scope: str = 'patch', dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    if output not in ('fourier', 'time'):
      raise ValueError(f"output must be 'fourier' or 'time'; got {output!r}")
    self.output = output
    if patch_size % 8:
      raise ValueError(f'patch_size {patch_size} must be divisible by 8 '
                       '(the branches pool by 2 then 4)')
    if not branches:
      raise ValueError('need at least one branch')
    self.patch_size = patch_size
    self.num_branches = len(branches)
    self.code_dim = code_dim
    kw = dict(dtype=dtype, rngs=rngs)
    d = embed_dim
    conv_out = (patch_size // 8) * conv_channels
    self.branches = nnx.List([TemporalBranch(
        k, conv_channels, group_norm_eps=group_norm_eps,
        group_norm_scope=group_norm_scope, **kw) for k in branches])
    tkw = dict(num_electrodes=num_electrodes, temporal_align=temporal_align,
               norm_eps=norm_eps, **kw)
    self.conv_proj = (None if conv_out == d else
                      _linear(conv_out, d, ('mlp', 'embed'), **kw))
    self.encoder = Transformer(d, depth, num_heads, max_patches, mlp_ratio,
                               final_norm=False, **tkw)
    g = self.num_branches
    self.enc_norms = nnx.List([_norm(d, eps=norm_eps, **kw)
                               for _ in range(g)])
    self.enc_heads = nnx.List([_linear(d, d, ('embed', 'embed'), **kw)
                               for _ in range(g)])
    self.to_code = nnx.List([
        nnx.List([_linear(d, d, ('embed', 'mlp'), **kw),
                  _linear(d, code_dim, ('mlp', 'code_dim'), **kw)])
        for _ in range(g)])
    self.dec_in = nnx.List([_linear(code_dim, d, ('code_dim', 'embed'), **kw)
                            for _ in range(g)])
    self.decoder = Transformer(d, decoder_depth, num_heads, max_patches,
                               mlp_ratio, final_norm=False, **tkw)
    self.dec_norms = nnx.List([_norm(d, eps=norm_eps, **kw)
                               for _ in range(g)])
    self.dec_heads = nnx.List([_linear(d, d, ('embed', 'embed'), **kw)
                               for _ in range(g)])
    # The head's hidden width is d: 'embed', so FSDP shards both layers.
    head = lambda: nnx.List([_linear(g * d, d, ('mlp', 'embed'), **kw),
                             _linear(d, patch_size, ('embed', None), **kw)])
    if output == 'fourier':
      self.amp_head, self.sin_head, self.cos_head = head(), head(), head()
    else:
      self.signal_head = head()

  def patchify(self, x: Array) -> Array:
    """[B, C, T] -> [B, C, A, P] (T must be a multiple of P)."""
    if x.ndim != 3:
      raise ValueError(f'EEG input must be [B, C, T]; got shape {x.shape}')
    b, c, t = x.shape
    if t % self.patch_size:
      raise ValueError(f'{t} samples is not a whole number of '
                       f'{self.patch_size}-sample patches')
    return x.reshape(b, c, t // self.patch_size, self.patch_size)

  def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
    """[B, C, T] -> [B, G, C, A, E]."""
    b, c, t = input_shape
    return (b, self.num_branches, c, t // self.patch_size, self.code_dim)

  def encode(self, x: Array, channel_ids: Array, mask: Array | None = None,
             train: bool = False) -> Array:
    """x [B, C, T] -> code vectors [B, G, C, A, E] (before quantization)."""
    del train
    xp = self.patchify(x)
    b, c, a, p = xp.shape
    flat = xp.reshape(b * c * a, p)
    weights = (None if mask is None else
               jnp.broadcast_to(mask[:, None, :], (b, c, a)).reshape(-1))
    outs = []
    for g, branch in enumerate(self.branches):
      h = branch(flat, rows=c * a, weights=weights)
      if self.conv_proj is not None:
        h = self.conv_proj(h)
      outs.append(h.reshape(b, c, a, -1))
    # One transformer call for all branches: branches stacked on the batch.
    h = self.encoder(jnp.concatenate(outs, 0), channel_ids,
                     None if mask is None else jnp.tile(mask, (len(outs), 1)))
    h = h.reshape((len(outs), b) + h.shape[1:])
    codes = []
    for g in range(self.num_branches):
      y = self.enc_heads[g](self.enc_norms[g](h[g]))
      lin1, lin2 = self.to_code[g]
      codes.append(lin2(jnp.tanh(lin1(y))))
    return jnp.stack(codes, 1)

  def decode(self, z: Array, channel_ids: Array, mask: Array | None = None,
             train: bool = False) -> dict[str, Array]:
    """z [B, G, C, A, E] -> dict(amplitude, sin, cos) ('fourier' output) or
    dict(signal) ('time': the standardised signal), each [B, C, A, P]."""
    del train
    g = self.num_branches
    if z.ndim != 5 or z.shape[1] != g or z.shape[-1] != self.code_dim:
      raise ValueError(f'latents must be [B, {g}, C, A, {self.code_dim}]; got '
                       f'{z.shape}')
    b = z.shape[0]
    h = jnp.concatenate([self.dec_in[i](z[:, i]) for i in range(g)], 0)
    h = self.decoder(h, channel_ids,
                     None if mask is None else jnp.tile(mask, (g, 1)))
    h = h.reshape((g, b) + h.shape[1:])
    feats = jnp.concatenate([self.dec_heads[i](self.dec_norms[i](h[i]))
                             for i in range(g)], -1)
    gelu = lambda v: nnx.gelu(v, approximate=False)
    if self.output == 'time':
      return dict(signal=self.signal_head[1](gelu(self.signal_head[0](feats))))
    amp = self.amp_head[1](gelu(self.amp_head[0](feats)))
    sin = jnp.tanh(self.sin_head[1](jnp.tanh(self.sin_head[0](feats))))
    cos = jnp.tanh(self.cos_head[1](jnp.tanh(self.cos_head[0](feats))))
    return dict(amplitude=amp, sin=sin, cos=cos)
