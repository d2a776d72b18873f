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
    pdim = patch_size * patch_size * 3
    self.causal_registers = causal_registers
    self.width = width
    # Encoder.
    self.patch_embed = vit.linear(pdim, width, ('embed_in', 'embed'), **kw)
    self.registers = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (num_registers, width)),
        **qbase.logical(None, 'embed'))
    self.register_pos = vit.learned_pos(num_registers, width, rngs)
    self.encoder = vit.Transformer(width, encoder_depth, num_heads, mlp_ratio,
                                   **kw)
    self.to_code = vit.linear(width, embed_dim, ('embed', 'code_dim'), **kw)
    self.quantizer = registry.make_quantizer(quantizer.pop('name'),
                                             dim=embed_dim, rngs=rngs,
                                             **quantizer)
    # Decoder.
    self.from_code = vit.linear(embed_dim, width, ('code_dim', 'embed'), **kw)
    self.mask_token = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (width,)),
        **qbase.logical('embed'))
    self.dec_register_pos = vit.learned_pos(num_registers, width, rngs)
    self.noisy_embed = vit.linear(pdim, width, ('embed_in', 'embed'), **kw)
    self.time_mlp1 = vit.linear(width, width, ('embed', 'mlp'), **kw)
    self.time_mlp2 = vit.linear(width, width, ('mlp', 'embed'), **kw)
    self.decoder = vit.AdaLNTransformer(width, decoder_depth, num_heads,
                                        width, mlp_ratio, **kw)
    self.out = vit.linear(width, pdim, ('embed', 'embed_in'), zero=True, **kw)
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
      pd = int(repa.get('proj_dim', 4 * width))
      self.repa_proj1 = vit.linear(width, pd, ('embed', 'mlp'), **kw)
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

  def _pos_2d(self) -> np.ndarray:
    g = self.image_size // self.patch_size
    return vit.sincos_2d(g, g, self.width)

  # ---- encoder ---------------------------------------------------------------

  def encode_latents(self, x: Array) -> Array:
    """[B, H, W, 3] -> pre-quantization register latents [B, R, E]."""
    s = self.image_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3):
      raise ValueError(f'FlexTok expects images [B, {s}, {s}, 3]; got '
                       f'{tuple(x.shape)}')
    b = x.shape[0]
    t = self.patch_embed(vit.patchify(x, self.patch_size))
    t = t + jnp.asarray(self._pos_2d(), t.dtype)
    reg = (self.registers[...] + self.register_pos[...]).astype(t.dtype)
    h = self.encoder(
        jnp.concatenate([t, jnp.broadcast_to(reg, (b,) + reg.shape)], axis=1),
        jnp.asarray(encoder_mask(self.num_patches, self.num_registers,
                                 self.causal_registers)))
    return self.to_code(h[:, self.num_patches:])

  # ---- decoder ---------------------------------------------------------------

  def condition(self, zq: Array, num_kept: Array | None) -> Array:
    """Quantized registers [B, R, E] -> decoder register tokens [B, R, D]
    (registers >= num_kept[b] replaced by the mask token)."""
    r = self.from_code(zq)
    if num_kept is not None:
      r = nested_dropout(r, num_kept, self.mask_token[...])
    return r + self.dec_register_pos[...].astype(r.dtype)

  def velocity(self, x_t: Array, t: Array, cond: Array,
               return_layer: int | None = None):
    """The decoder: noised images [B, H, W, 3], times [B] and register
    tokens [B, R, D] -> velocity [B, H, W, 3] (and block `return_layer`'s
    patch hidden states)."""
    s, p = self.image_size, self.patch_size
    h = self.noisy_embed(vit.patchify(x_t.astype(cond.dtype), p))
    h = h + jnp.asarray(self._pos_2d(), h.dtype)
    c = vit.timestep_embedding(t, self.width).astype(h.dtype)
    c = self.time_mlp2(nnx.silu(self.time_mlp1(c)))
    out = self.decoder(jnp.concatenate([h, cond], axis=1), c,
                       return_layer=return_layer)
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
    noise = jax.random.normal(key, (b, s, s, 3), jnp.float32)
    return rf.euler_sample(lambda x, t: self.velocity(x, t, cond), noise,
                           steps, guidance_scale=w,
                           uncond_velocity_fn=lambda x, t: self.velocity(
                               x, t, uncond))

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
