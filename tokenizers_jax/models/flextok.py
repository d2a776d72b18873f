"""FlexTok: flexible-length 1D image tokens with a rectified-flow decoder.

  encoder: concat(P x P patch tokens + 2D sin-cos pos, R learned registers +
           pos) -> ViT with the register mask -> register outputs -> Linear
           -> FSQ (default levels [8, 8, 8, 5, 5, 5], 64 000 codes)
  nested dropout (training): k per example, uniform on {1..R} or on the
           powers of two {1, 2, 4, .., R}; registers k..R-1 are replaced by a
           learned mask token (with probability `cond_dropout` all R are,
           which trains the unconditional velocity for guidance)
  decoder: rectified-flow transformer over concat(noised patches x_t, the
           projected registers), AdaLN-zero blocks conditioned on the time t;
           it predicts the velocity noise - x0 (see `rectified_flow.py`)
  sampler: Euler from t = 1 to 0 (`num_sample_steps`), classifier-free
           guidance over the registers (`guidance_scale`; 1 = off).

The register mask (`encoder_mask`): patch tokens attend to patch tokens
only; register i attends to every patch and to registers 0..i (causal), or
to all registers when `causal_registers=False` (then patches see registers
too). With the causal mask the first k token ids of an image do not depend on
the later registers, so `encode(x, num_tokens=k)` is a true prefix code.

The VAE stage of FlexTok is skipped: the flow runs on pixels in [-1, 1]
(patchify is FlexTok's fixed 2x2 latent patchification applied to pixels).
With `channels=C` the model's input is any [B, H, W, C] array instead, e.g.
the latents of FlexTok's VAE (what a converted release works on).

The release's layout (`trunk='flextok'`, default off; what
`convert/flextok.py` builds): `FlexBlock`s, i.e. pre-LN blocks with
parameter-free LayerNorms (eps 1e-5), separate bias-free q/k/v projections
fused here into one `qkv`, a parameter-free LayerNorm on each head of q and k,
logits scaled by `attn_scale` (the release's muP 8 / head_dim), and a SwiGLU
MLP (`fc1`, gate `fc3`, `fc2`, hidden int(2 int(D mlp_ratio) / 3)); decoder
blocks get adaLN-zero modulation (gate_msa, gate_mlp, shift_msa, scale_msa,
shift_mlp, scale_mlp) from the time embedding, one set for the patches and
one for the registers when `adaln_groups=2`. The time embedding is
[cos | sin] of `time_embed_scale` t 256^(-i/(F/2)) over `time_freq_dim` F
(the release: F = 256, max period 256, scale 1000 / max_timestep) through
two linears. `register_pos_before_dropout`: the decoder's register positions
are added before the nested-dropout mask token replaces registers >= k (the
release's order; by default they are added after). `null_cond` ('zero' or
'learned'): the unconditional branch (guidance, `cond_dropout`) replaces all
registers by zeros or a learned token (the release's `ZeroNullCond` /
`LearnedNullCond`) instead of masking all of them.

Loss terms (`ModelOutput.terms` in train mode, unweighted; the task weights
them from `config.loss.weights`): `flow` = E||v - (noise - x0)||², and with
`repa` = dict(layer, teacher, proj_dim) the REPA-style alignment
`repa` = 1 - cos(mean_n MLP(h_layer), teacher(x)) between the
decoder's patch hidden states after block `layer` and a frozen teacher's
feature of the clean image (any `teachers.make_teacher` spec; the default is
the offline random conv teacher; DINOv2 in the paper). In training x_hat is
the one-step estimate x_t - t v; in eval mode it is a full Euler sample from
fixed-seed noise with all R registers.

Dimension legend:
  B: batch; H, W: image size; P: patch size; N = (H/P)(W/P) patch tokens
  R: registers (= K tokens); k, L: registers kept / given (1..R)
  D: transformer width; E: quantizer dimension (len(levels) for FSQ)
  T: REPA teacher feature width
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from tokenizers_jax.models import base as model_base
from tokenizers_jax.models import rectified_flow as rf
from tokenizers_jax.models import teachers as teachers_lib
from tokenizers_jax.models import vit
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import registry

Array = jax.Array
Dtype = Any
NESTED_DROPOUT = (None, 'uniform', 'pow2')
TRUNKS = ('vit', 'flextok')
NULL_CONDS = (None, 'zero', 'learned')
FLEX_LN_EPS = 1e-5  # FlexTok's Fp32LayerNorm (torch's default epsilon).


def encoder_mask(num_patches: int, num_registers: int,
                 causal: bool = True) -> np.ndarray:
  """bool [N + R, N + R], True where query i may attend to key j."""
  n, r = num_patches, num_registers
  if not causal:
    return np.ones((n + r, n + r), bool)
  mask = np.zeros((n + r, n + r), bool)
  mask[:, :n] = True
  mask[n:, n:] = np.tril(np.ones((r, r), bool))
  return mask


def kept_choices(num_registers: int, mode: str) -> np.ndarray:
  """The values nested dropout samples k from (uniformly)."""
  if mode == 'uniform':
    return np.arange(1, num_registers + 1)
  if mode == 'pow2':
    powers = [2 ** i for i in range(num_registers.bit_length())
              if 2 ** i < num_registers]
    return np.asarray(powers + [num_registers])
  raise ValueError(f'unknown nested dropout {mode!r}; known: {NESTED_DROPOUT}')


def sample_num_kept(key: Array, batch: int, num_registers: int, mode: str,
                    cond_dropout: float = 0.0) -> Array:
  """int32 [B]: k uniform over `kept_choices`, set to 0 (all registers
  masked) with probability `cond_dropout`."""
  choices = jnp.asarray(kept_choices(num_registers, mode), jnp.int32)
  k_key, d_key = jax.random.split(key)
  k = choices[jax.random.randint(k_key, (batch,), 0, choices.shape[0])]
  if cond_dropout > 0:
    drop = jax.random.bernoulli(d_key, cond_dropout, (batch,))
    k = jnp.where(drop, 0, k)
  return k


def nested_dropout(tokens: Array, num_kept: Array, mask_token: Array) -> Array:
  """tokens [B, R, D]: positions >= num_kept[b] become `mask_token` [D]."""
  pos = jnp.arange(tokens.shape[1])
  keep = pos[None, :, None] < num_kept[:, None, None]
  return jnp.where(keep, tokens, mask_token.astype(tokens.dtype))


# -----------------------------------------------------------------------------
# The release's transformer layout (trunk='flextok').
# -----------------------------------------------------------------------------


def _plain_norm(width: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """A LayerNorm without scale or bias (FlexTok's default norm_layer)."""
  return nnx.LayerNorm(width, epsilon=FLEX_LN_EPS, use_bias=False,
                       use_scale=False, dtype=dtype, rngs=rngs)


class GatedMlp(nnx.Module):
  """SwiGLU: fc2(silu(fc1(x)) * fc3(x))."""

  def __init__(self, width: int, hidden: int, *, use_bias: bool = False,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    def lin(din, dout, names):
      return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, rngs=rngs,
                        kernel_metadata=qbase.logical(*names),
                        bias_metadata=qbase.logical(names[1]))
    self.fc1 = lin(width, hidden, ('embed', 'mlp'))
    self.fc3 = lin(width, hidden, ('embed', 'mlp'))
    self.fc2 = lin(hidden, width, ('mlp', 'embed'))

  def __call__(self, x: Array) -> Array:
    return self.fc2(nnx.silu(self.fc1(x)) * self.fc3(x))


def _group_ids(segments: tuple[int, ...]) -> np.ndarray:
  """[sum(segments)] token -> modulation group (0 for the first segment...)."""
  return np.concatenate([np.full((n,), i, np.int32)
                         for i, n in enumerate(segments)])


class FlexBlock(nnx.Module):
  """FlexTok's block; with `adaln_groups` > 0, adaLN-zero from c [B, D]
  (`groups` sets: token segment g uses set g)."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, *,
               adaln_groups: int = 0, qk_norm: bool = True,
               attn_bias: bool = False, mlp_bias: bool = False,
               attn_scale: float | None = None, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = _plain_norm(width, **kw)
    self.attn = vit.Attention(width, num_heads, qk_norm='layer' if qk_norm
                          else None, norm_epsilon=FLEX_LN_EPS,
                          use_bias=attn_bias, scale=attn_scale, **kw)
    self.norm2 = _plain_norm(width, **kw)
    hidden = int(2 * int(width * mlp_ratio) / 3)
    self.mlp = GatedMlp(width, max(hidden, 1), use_bias=mlp_bias, **kw)
    self.groups = adaln_groups
    self.ada = (vit.linear(width, adaln_groups * 6 * width, ('embed', 'mlp'),
                           zero=True, **kw) if adaln_groups else None)

  def _modulation(self, c: Array, segments) -> list[Array]:
    """c [B, D] -> six [B, N or 1, D] (gate_msa, gate_mlp, shift_msa,
    scale_msa, shift_mlp, scale_mlp)."""
    b, d = c.shape
    mod = self.ada(nnx.silu(c)).reshape(b, self.groups, 6, d)
    if self.groups > 1:  # (One group: [B, 1, 6, D], the same for all.)
      if segments is None or len(segments) != self.groups:
        raise ValueError(f'{self.groups} adaLN groups need as many token '
                         f'segments; got {segments}')
      mod = jnp.take(mod, jnp.asarray(_group_ids(segments)), axis=1)
    return [mod[:, :, i] for i in range(6)]

  def __call__(self, x: Array, c: Array | None = None,
               mask: Array | None = None, segments=None) -> Array:
    if self.ada is None:
      x = x + self.attn(self.norm1(x), mask)
      return x + self.mlp(self.norm2(x))
    g1, g2, sh1, sc1, sh2, sc2 = self._modulation(c, segments)
    x = x + g1 * self.attn(self.norm1(x) * (1 + sc1) + sh1, mask)
    return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)


class FlexTransformer(nnx.Module):
  """`depth` FlexBlocks and a parameter-free final LayerNorm (the release's
  readout norm), adaLN-modulated (shift, scale) by c with `final_adaln`.
  Same call signature as `vit.Transformer` / `vit.AdaLNTransformer`."""

  def __init__(self, width: int, depth: int, num_heads: int,
               mlp_ratio: float = 4.0, *, adaln_groups: int = 0,
               final_adaln: bool = False, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs, **block_kw):
    kw = dict(dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        FlexBlock(width, num_heads, mlp_ratio, adaln_groups=adaln_groups,
                  **block_kw, **kw) for _ in range(depth)])
    self.norm = _plain_norm(width, **kw)
    self.ada = (vit.linear(width, 2 * width, ('embed', 'mlp'), zero=True,
                           **kw) if final_adaln else None)

  def __call__(self, x: Array, c: Array | None = None,
               mask: Array | None = None, return_layer: int | None = None,
               segments=None):
    hidden = None
    for i, block in enumerate(self.blocks):
      x = block(x, c, mask, segments)
      if return_layer == i + 1:
        hidden = x
    out = self.norm(x)
    if self.ada is not None:
      shift, scale = jnp.split(self.ada(nnx.silu(c)), 2, axis=-1)
      out = vit.modulate(out, shift, scale)
    return out if return_layer is None else (out, hidden)


class FlexTok(nnx.Module):
  """FlexTok 1D tokenizer (see the module docstring).

  Args:
    image_size: H = W.
    patch_size: P.
    num_registers: R, the maximum number of tokens.
    width, encoder_depth, decoder_depth, num_heads, mlp_ratio: transformers.
    embed_dim: E; must equal len(levels) for FSQ without projections.
    quantizer: registry spec (default FSQ [8, 8, 8, 5, 5, 5]).
    causal_registers: the causal mask among registers.
    nested_dropout: 'pow2', 'uniform' or None (always all R).
    cond_dropout: probability of dropping all registers in training.
    time_sampler, time_loc, time_scale: training times (`rectified_flow`).
    num_sample_steps, guidance_scale, sample_seed: the eval/decode sampler.
    repa: None (off) or dict(layer=, teacher=<make_teacher spec>,
      proj_dim=).
    channels: C, the input's channels (3 for images; a VAE's latent width).
    trunk: 'vit' (ours) or 'flextok' (the release's blocks, see the module
      docstring); the options below apply to 'flextok' only:
      qk_norm, attn_bias, mlp_bias: per-head q/k LayerNorm; biases.
      mup_scale: attention logits scaled by 8 / head_dim (the release's
        muP scale) instead of head_dim ** -0.5.
      adaln_groups: 1 (one modulation for all decoder tokens) or 2 (patches
        and registers separately).
    time_freq_dim, time_max_period, time_embed_scale: the sinusoidal time
      embedding (defaults: the decoder width, 10000, 1000).
    decoder_width, decoder_num_heads: the decoder's (default: the
      encoder's width and num_heads).
    register_pos_before_dropout, null_cond: see the module docstring.
    guidance: 'cfg' or 'apg' (adaptive projected guidance, the release's
      perform_norm_guidance; `rectified_flow.apg_combine`) when
      guidance_scale != 1.
  """

  modality = 'image'
  one_dimensional = True
  token_count_key = 'num_registers'  # config.model key of the token count

  def __init__(self, *, image_size: int, patch_size: int = 4,
               num_registers: int = 16, width: int = 64,
               encoder_depth: int = 2, decoder_depth: int = 2,
               num_heads: int = 4, mlp_ratio: float = 4.0, embed_dim: int = 6,
               quantizer: dict[str, Any] | None = None,
               causal_registers: bool = True,
               nested_dropout: str | None = 'pow2', cond_dropout: float = 0.1,
               time_sampler: str = 'logit_normal', time_loc: float = 0.0,
               time_scale: float = 1.0,
               num_sample_steps: int = 8, guidance_scale: float = 1.0,
               sample_seed: int = 0, repa: dict[str, Any] | None = None,
               channels: int = 3, trunk: str = 'vit', qk_norm: bool = True,
               attn_bias: bool = False, mlp_bias: bool = False,
               mup_scale: bool = False, adaln_groups: int = 1,
               decoder_width: int | None = None,
               decoder_num_heads: int | None = None,
               time_freq_dim: int | None = None,
               time_max_period: float = 10000.0,
               time_embed_scale: float = 1000.0,
               register_pos_before_dropout: bool = False,
               null_cond: str | None = None, guidance: str = 'cfg',
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f'image_size {image_size} is not divisible by '
                       f'patch_size {patch_size}')
    if nested_dropout not in NESTED_DROPOUT:
      raise ValueError(f'unknown nested_dropout {nested_dropout!r}; known: '
                       f'{NESTED_DROPOUT}')
    if time_sampler not in rf.TIME_SAMPLERS:
      raise ValueError(f'unknown time_sampler {time_sampler!r}; known: '
                       f'{rf.TIME_SAMPLERS}')
    if not 0.0 <= cond_dropout < 1.0:
      raise ValueError(f'cond_dropout must be in [0, 1); got {cond_dropout}')
    if num_sample_steps < 1:
      raise ValueError(f'num_sample_steps must be >= 1; got '
                       f'{num_sample_steps}')
    if trunk not in TRUNKS:
      raise ValueError(f'unknown trunk {trunk!r}; known: {TRUNKS}')
    if null_cond not in NULL_CONDS:
      raise ValueError(f'unknown null_cond {null_cond!r}; known: '
                       f'{NULL_CONDS}')
    if guidance not in rf.GUIDANCE:
      raise ValueError(f'unknown guidance {guidance!r}; known: '
                       f'{rf.GUIDANCE}')
    if adaln_groups not in (1, 2):
      raise ValueError(f'adaln_groups must be 1 or 2; got {adaln_groups}')
    if trunk == 'vit' and adaln_groups != 1:
      raise ValueError("adaln_groups=2 needs trunk='flextok'")
    kw = dict(dtype=dtype, rngs=rngs)
    quantizer = dict(quantizer or dict(name='fsq', levels=(8, 8, 8, 5, 5, 5)))
    self.image_size = image_size
    self.patch_size = patch_size
    self.num_registers = num_registers
    self.num_patches = (image_size // patch_size) ** 2
    self.nested_dropout_mode = nested_dropout
    self.cond_dropout = cond_dropout
    self.time_sampler = time_sampler
    self.time_loc = time_loc
    self.time_scale = time_scale
    self.num_sample_steps = num_sample_steps
    self.guidance_scale = guidance_scale
    self.sample_seed = sample_seed
    self.channels = channels
    pdim = patch_size * patch_size * channels
    self.causal_registers = causal_registers
    self.width = width
    dw = decoder_width or width
    dh = decoder_num_heads or num_heads
    self.decoder_width = dw
    self.trunk = trunk
    self.time_freq_dim = time_freq_dim or dw
    self.time_max_period = time_max_period
    self.time_embed_scale = time_embed_scale
    self.register_pos_before_dropout = register_pos_before_dropout
    self.null_cond = null_cond
    self.guidance = guidance
    if trunk == 'vit' and dw != width:
      raise ValueError("decoder_width != width needs trunk='flextok'")
    flex_kw = dict(qk_norm=qk_norm, attn_bias=attn_bias, mlp_bias=mlp_bias)

    def scale(w, h):  # The release's muP attention scale, 8 / head_dim.
      return dict(attn_scale=8.0 * h / w if mup_scale else None)
    # Encoder.
    self.patch_embed = vit.linear(pdim, width, ('embed_in', 'embed'), **kw)
    self.registers = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (num_registers, width)),
        **qbase.logical(None, 'embed'))
    self.register_pos = vit.learned_pos(num_registers, width, rngs)
    if trunk == 'flextok':
      self.encoder = FlexTransformer(width, encoder_depth, num_heads,
                                     mlp_ratio, **flex_kw,
                                     **scale(width, num_heads), **kw)
    else:
      self.encoder = vit.Transformer(width, encoder_depth, num_heads,
                                     mlp_ratio, **kw)
    self.to_code = vit.linear(width, embed_dim, ('embed', 'code_dim'), **kw)
    self.quantizer = registry.make_quantizer(quantizer.pop('name'),
                                             dim=embed_dim, rngs=rngs,
                                             **quantizer)
    # Decoder.
    self.from_code = vit.linear(embed_dim, dw, ('code_dim', 'embed'), **kw)
    self.mask_token = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (dw,)),
        **qbase.logical('embed'))
    self.null_token = (nnx.Param(jnp.zeros((dw,)), **qbase.logical('embed'))
                       if null_cond == 'learned' else None)
    self.dec_register_pos = vit.learned_pos(num_registers, dw, rngs)
    self.noisy_embed = vit.linear(pdim, dw, ('embed_in', 'embed'), **kw)
    self.time_mlp1 = vit.linear(self.time_freq_dim, dw, ('embed', 'mlp'),
                                **kw)
    self.time_mlp2 = vit.linear(dw, dw, ('mlp', 'embed'), **kw)
    if trunk == 'flextok':
      self.decoder = FlexTransformer(dw, decoder_depth, dh, mlp_ratio,
                                     adaln_groups=adaln_groups,
                                     final_adaln=True, **flex_kw,
                                     **scale(dw, dh), **kw)
    else:
      self.decoder = vit.AdaLNTransformer(width, decoder_depth, dh, width,
                                          mlp_ratio, **kw)
    self.out = vit.linear(dw, pdim, ('embed', 'embed_in'), zero=True, **kw)
    repa = dict(repa or {})
    self.repa_layer = int(repa.get('layer', 1)) if repa else None
    teacher = None
    if repa:
      unknown = set(repa) - {'layer', 'teacher', 'proj_dim'}
      if unknown:
        raise ValueError(f'unknown repa keys {sorted(unknown)}; known: '
                         'layer, teacher, proj_dim')
      if not 1 <= self.repa_layer <= decoder_depth:
        raise ValueError(f'repa.layer must be in 1..{decoder_depth}; got '
                         f'{self.repa_layer}')
      teacher = teachers_lib.make_teacher(
          repa.get('teacher') or dict(name='random_conv'))
      pd = int(repa.get('proj_dim', 4 * dw))
      self.repa_proj1 = vit.linear(dw, pd, ('embed', 'mlp'), **kw)
      self.repa_proj2 = vit.linear(pd, teacher.out_dim, ('mlp', 'embed'),
                                   **kw)
    self.teacher = teacher

  @property
  def codebook_size(self) -> int:
    return self.quantizer.codebook_size

  @property
  def num_tokens(self) -> int:
    return self.num_registers

  @property
  def loss_terms(self) -> tuple[str, ...]:
    return ('quantizer', 'flow') + (('repa',) if self.repa_layer else ())

  @property
  def last_layer(self):
    return self.out.kernel

  def token_shape(self, image_shape) -> tuple[int, ...]:
    return (image_shape[0], self.num_registers)

  def _pos_2d(self, width: int | None = None) -> np.ndarray:
    g = self.image_size // self.patch_size
    return vit.sincos_2d(g, g, width or self.width)

  # ---- encoder ---------------------------------------------------------------

  def encode_latents(self, x: Array) -> Array:
    """[B, H, W, 3] -> pre-quantization register latents [B, R, E]."""
    s, ch = self.image_size, self.channels
    if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, ch):
      raise ValueError(f'FlexTok expects images [B, {s}, {s}, {ch}]; got '
                       f'{tuple(x.shape)}')
    b = x.shape[0]
    t = self.patch_embed(vit.patchify(x, self.patch_size))
    t = t + jnp.asarray(self._pos_2d(), t.dtype)
    reg = (self.registers[...] + self.register_pos[...]).astype(t.dtype)
    h = self.encoder(
        jnp.concatenate([t, jnp.broadcast_to(reg, (b,) + reg.shape)], axis=1),
        mask=jnp.asarray(encoder_mask(self.num_patches, self.num_registers,
                                      self.causal_registers)))
    return self.to_code(h[:, self.num_patches:])

  # ---- decoder ---------------------------------------------------------------

  def condition(self, zq: Array, num_kept: Array | None) -> Array:
    """Quantized registers [B, R, E] -> decoder register tokens [B, R, D]
    (registers >= num_kept[b] replaced by the mask token; with `null_cond`,
    all registers of a sample with num_kept 0 are the null condition)."""
    r = self.from_code(zq)
    pos = self.dec_register_pos[...].astype(r.dtype)
    if self.register_pos_before_dropout:
      r = r + pos
    if num_kept is not None:
      r = nested_dropout(r, num_kept, self.mask_token[...])
    if not self.register_pos_before_dropout:
      r = r + pos
    if self.null_cond is not None and num_kept is not None:
      null = (jnp.zeros((self.decoder_width,), r.dtype)
              if self.null_token is None
              else self.null_token[...].astype(r.dtype))
      r = jnp.where((num_kept == 0)[:, None, None], null, r)
    return r

  def velocity(self, x_t: Array, t: Array, cond: Array,
               return_layer: int | None = None):
    """The decoder: noised images [B, H, W, 3], times [B] and register
    tokens [B, R, D] -> velocity [B, H, W, 3] (and block `return_layer`'s
    patch hidden states)."""
    s, p = self.image_size, self.patch_size
    h = self.noisy_embed(vit.patchify(x_t.astype(cond.dtype), p))
    h = h + jnp.asarray(self._pos_2d(self.decoder_width), h.dtype)
    c = vit.timestep_embedding(t, self.time_freq_dim,
                               max_period=self.time_max_period,
                               scale=self.time_embed_scale).astype(h.dtype)
    c = self.time_mlp2(nnx.silu(self.time_mlp1(c)))
    seq = jnp.concatenate([h, cond], axis=1)
    if self.trunk == 'flextok':
      out = self.decoder(seq, c, return_layer=return_layer,
                         segments=(self.num_patches, cond.shape[1]))
    else:
      out = self.decoder(seq, c, return_layer=return_layer)
    out, hidden = out if return_layer else (out, None)
    v = vit.unpatchify(self.out(out[:, :self.num_patches]), p, s, s)
    if return_layer:
      return v, hidden[:, :self.num_patches]
    return v

  def sample(self, zq: Array, num_kept: Array | None = None, *,
             key: Array | None = None, num_steps: int | None = None,
             guidance_scale: float | None = None) -> Array:
    """Euler sampling of images conditioned on quantized registers."""
    b = zq.shape[0]
    key = jax.random.PRNGKey(self.sample_seed) if key is None else key
    steps = self.num_sample_steps if num_steps is None else num_steps
    w = self.guidance_scale if guidance_scale is None else guidance_scale
    cond = self.condition(zq, num_kept)
    uncond = self.condition(zq, jnp.zeros((b,), jnp.int32))
    s = self.image_size
    noise = jax.random.normal(key, (b, s, s, self.channels), jnp.float32)
    return rf.euler_sample(lambda x, t: self.velocity(x, t, cond), noise,
                           steps, guidance_scale=w,
                           uncond_velocity_fn=lambda x, t: self.velocity(
                               x, t, uncond), guidance=self.guidance)

  # ---- the image-task interface ----------------------------------------------

  def __call__(self, x: Array, train: bool = False, *, step=None, rng=None,
               quantizer_hook=None):
    del step
    z = self.encode_latents(x)
    out = self.quantizer(z, train=train)
    zq = out.quantized
    if quantizer_hook is not None:
      zq = quantizer_hook(self.quantizer, out)
    if not train:
      return model_base.output(self.sample(zq), out)
    if rng is None:
      raise ValueError('FlexTok training needs rng (times, noise, dropout)')
    b = x.shape[0]
    k_key, t_key, n_key = jax.random.split(rng, 3)
    num_kept = None
    if self.nested_dropout_mode is not None or self.cond_dropout > 0:
      mode = self.nested_dropout_mode or 'uniform'
      num_kept = sample_num_kept(k_key, b, self.num_registers, mode,
                                 self.cond_dropout)
      if self.nested_dropout_mode is None:
        num_kept = jnp.where(num_kept > 0, self.num_registers, 0)
    t = rf.sample_time(t_key, b, self.time_sampler, loc=self.time_loc,
                       scale=self.time_scale)
    x0 = x.astype(jnp.float32)
    noise = jax.random.normal(n_key, x0.shape, jnp.float32)
    x_t = rf.interpolate(x0, noise, t)
    cond = self.condition(zq, num_kept)
    layer = self.repa_layer
    res = self.velocity(x_t, t, cond, return_layer=layer)
    v, hidden = res if layer else (res, None)
    flow = rf.flow_loss(v, x0, noise)
    terms = {'flow': flow}
    if layer:
      pred = self.repa_proj2(nnx.silu(self.repa_proj1(hidden)))
      pred = jnp.mean(pred.astype(jnp.float32), axis=1)
      target = jax.lax.stop_gradient(self.teacher(x0))
      cos = jnp.sum(_l2n(pred) * _l2n(target), -1)
      terms['repa'] = jnp.mean(1 - cos)
    metrics = dict(flow_t=jnp.mean(t))
    if num_kept is not None:
      metrics['tokens_kept'] = jnp.mean(num_kept.astype(jnp.float32))
    x_hat = rf.x0_estimate(x_t, v, t).astype(x.dtype)
    return model_base.output(x_hat, out, terms, metrics)

  def encode(self, x: Array, num_tokens: int | None = None) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> the first k token ids, int32 [B, k]
    (k = num_tokens, default R)."""
    k = self.num_registers if num_tokens is None else int(num_tokens)
    if not 1 <= k <= self.num_registers:
      raise ValueError(f'num_tokens must be in 1..{self.num_registers}; got '
                       f'{k}')
    return self.quantizer.encode(self.encode_latents(x))[:, :k]

  def decode(self, indices: Array, *, key: Array | None = None,
             num_steps: int | None = None,
             guidance_scale: float | None = None) -> Array:
    """Token ids [B, L] (any 1 <= L <= R, a prefix) -> images [B, H, W, 3]:
    the missing registers are the mask token, as in nested dropout."""
    if indices.ndim != 2:
      raise ValueError(f'decode expects ids [B, L]; got {indices.shape}')
    b, length = indices.shape
    if not 1 <= length <= self.num_registers:
      raise ValueError(f'{length} tokens given; expected 1..'
                       f'{self.num_registers}')
    zq = self.quantizer.decode(indices)
    zq = jnp.pad(zq, ((0, 0), (0, self.num_registers - length), (0, 0)))
    return self.sample(zq, jnp.full((b,), length, jnp.int32), key=key,
                       num_steps=num_steps, guidance_scale=guidance_scale)


def _l2n(x: Array) -> Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
