"""TiTok (1D image tokenizer) and One-D-Piece's tail-token drop.

TiTok ("An Image is Worth 32 Tokens"):

  x [B, H, W, 3] -> P x P patches -> Linear -> + pos       [B, N, D]
  concat(patches, K learned latent tokens + pos)            [B, N + K, D]
  -> ViT encoder -> keep the K latent outputs -> Linear     [B, K, E]
  -> quantizer (default l2-normalised VQ)                    [B, K, E]
  decoder: concat(N mask tokens + pos, Linear(z_q) + pos)    [B, N + K, D]
  -> ViT decoder -> keep the N mask-token outputs -> head:
       pixels:  Linear -> P*P*3 -> unpatchify -> x_hat       (single stage)
       proxy:   Linear -> logits over a teacher VQ-GAN's codes per patch

Only the latents are quantized, so an image is K token ids whatever its size.

One-D-Piece (`tail_drop='batch'` or 'example'): during training the decoder
sees only the first k quantized tokens, k ~ U{1..K} drawn once per batch (as
in One-D-Piece) or per example. Truncation is implemented as an attention
mask that hides latent tokens k..K-1 from every query; since the dropped
tokens' own outputs are never read, this equals running the decoder on the
truncated sequence (tested). `decode(ids)` accepts any length 1..K and
truncates for real.

Two-stage proxy-code training (`proxy_teacher` = a VQ-GAN module or a
training workdir of this project):

  stage 1: the frozen teacher's codes on the H/P x W/P grid are the targets of
    a cross-entropy on the decoder logits (the train-mode loss term
    `proxy_ce`); reconstructions are the teacher decoder's rendering
    of the argmax codes. The teacher's weights are converted to
    `teachers.Frozen` variables, so the optimizer never sees them.
  stage 2 (`finetune_decoder=True`, as TiTok's `finetune_decoder`): TiTok's
    encoder and quantizer run frozen (eval mode, gradients stopped, quantizer
    loss 0; the training config also zeroes their updates with
    `optim.frozen`), and the decoder is fine-tuned together with the
    teacher's pixel decoder on pixel losses. The logits feed the pixel
    decoder differentiably, as TiTok does: the code probabilities
    softmax(logits) [B, N, V] mix the teacher's code vectors
    (`teacher.quantizer.decode(0..V-1)`, [V, Et]) into a soft latent grid
    [B, H/P, W/P, Et] that `teacher.decode_latents` renders; this path is
    used in training, evaluation and `decode`. The teacher's decode path
    (codebook, post-quant conv, decoder) stays `nnx.Param`, trainable and
    initialised from the teacher; its encoder side stays `Frozen`. Stage 2
    starts from the stage-1 run's weights via the training config's
    `init_from` (see training/steps.py).

Options for the released TiTok checkpoints (bytedance/1d-tokenizer; all off
by default; `convert/titok.py` sets them):
  class_token      a learned token first in both ViT sequences (the
                   release's class embedding with its positional embedding
                   folded in); its outputs are never read.
  pre_norm         a LayerNorm over each ViT's input sequence (`ln_pre`).
  ln_eps, gelu_approximate   LayerNorm epsilon (PyTorch's 1e-5) and exact
                   GELU (PyTorch's `nn.GELU()`) in the ViTs.
  decoder_width, decoder_num_heads   a decoder ViT of another size (the
                   'BL'/'SL' releases: base/small encoder, large decoder).
  legacy_latent_reshape  the release's `is_legacy` encoder read-out: the
                   [K, D] latent outputs of each image are reinterpreted
                   (row-major) as [D, K] before the 1x1 projection.
  head_hidden      a hidden layer of that width and `head_activation`
                   ('tanh' in the release) before the head.
  out_conv         a 3x3 conv on the unpatchified pixels (the non-legacy
                   release's `conv_out`).
  proxy_codes      V > 0 without `proxy_teacher`: the head predicts V-way
                   logits per patch (the legacy release's proxy codes of a
                   MaskGIT-VQGAN); `decode_logits(ids)` gives the logits.
                   Without `pixel_decoder`, `decode` and `__call__` raise.
  pixel_decoder    with `proxy_codes`: the keyword arguments of a
                   `frontends/maskgit_vqgan.py: MaskgitDecoder` (the legacy
                   release's fine-tuned MaskGIT-VQGAN decoder, its
                   `pixel_decoder`) and a code table `pixel_codebook`
                   [V, Z] (its `pixel_quantize`). Pixels are rendered as in
                   stage 2: softmax(logits) [B, N, V] mixes the rows of
                   `pixel_codebook` into a grid [B, H/P, W/P, Z] that the
                   decoder renders (its up-sampling factor must be P).
                   `finetune_decoder` may then be set without a teacher
                   (encoder and quantizer frozen in `__call__`).

Interface (`models/base.py`): `__call__(x, train, *, step, rng,
quantizer_hook)` -> ModelOutput (terms 'quantizer' and, in stage-1
training, 'proxy_ce'); `encode(x, num_tokens=k)` -> int32 [B, k];
`decode(ids [B, L])` -> images.

Dimension legend:
  B: batch; H, W: image size; P: patch size; N = (H/P)(W/P) patch tokens
  K: latent tokens (`num_tokens`); k, L: tokens kept / given (1..K)
  D: transformer width; E: quantizer dimension (`embed_dim`)
  V: teacher codebook size (proxy mode); Et: the teacher's latent dimension
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from tokenizers_jax.models import base as model_base
from tokenizers_jax.models import teachers as teachers_lib
from tokenizers_jax.models import vit
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import registry

Array = jax.Array
Dtype = Any
TAIL_DROP = (None, 'batch', 'example')
HEAD_ACTIVATIONS = {'tanh': jnp.tanh, 'gelu': jax.nn.gelu}


def freeze_params(module: nnx.Module) -> nnx.Module:
  """Replaces every `nnx.Param` of `module` by a `teachers.Frozen` variable
  (same value and logical axis names), in place; returns the module."""
  found = [(p, v) for p, v in nnx.iter_graph(module)
           if isinstance(v, nnx.Param)]
  for path, var in found:
    parent = module
    for p in path[:-1]:
      parent = (parent[p] if isinstance(parent, (nnx.List, list, dict))
                else getattr(parent, p))
    names = var.get_metadata().get('out_sharding')
    new = teachers_lib.Frozen(var[...], out_sharding=names,
                              eager_sharding=False)
    if isinstance(parent, (nnx.List, list)):
      parent[int(path[-1])] = new
    else:
      setattr(parent, path[-1], new)
  return module


# The teacher's encoder side: frozen in stage 2 too (its decode path trains).
_TEACHER_ENCODER_SIDE = ('frontend.encoder', 'quant_conv', 'pre_quant_norm',
                         'quantizer.project_in')


def load_teacher(spec, trainable_decoder: bool = False) -> nnx.Module:
  """A proxy-code teacher from a module or a training workdir path.

  All its weights become `Frozen`, or with `trainable_decoder` (stage 2) only
  those of its encoder side; the decode path (`quantizer` codes, then
  `decode_latents`) keeps `nnx.Param`s.
  """
  if isinstance(spec, str):
    from tokenizers_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    spec = Tokenizer.from_workdir(spec).model
  if not isinstance(spec, nnx.Module) or not hasattr(spec, 'encode'):
    raise TypeError('proxy_teacher must be a tokenizer module with encode/'
                    f'decode or a workdir path; got {type(spec).__name__}')
  if not trainable_decoder:
    return freeze_params(spec)
  missing = [a for a in ('decode_latents', 'quantizer', 'frontend',
                         'quant_conv') if not hasattr(spec, a)]
  if missing:
    raise TypeError('finetune_decoder needs a VQ-GAN-like teacher (quantizer,'
                    ' frontend, quant_conv, decode_latents); '
                    f'{type(spec).__name__} lacks {missing}')
  for dotted in _TEACHER_ENCODER_SIDE:
    sub = spec
    for name in dotted.split('.'):
      sub = getattr(sub, name, None)
    if sub is not None:
      freeze_params(sub)
  return spec


def sample_num_kept(key: Array, batch: int, num_tokens: int,
                    mode: str) -> Array:
  """int32 [B] kept-token counts k ~ U{1..K}: one draw shared by the batch
  ('batch') or one per example ('example')."""
  if mode == 'batch':
    k = jax.random.randint(key, (), 1, num_tokens + 1)
    return jnp.full((batch,), k, jnp.int32)
  if mode == 'example':
    return jax.random.randint(key, (batch,), 1, num_tokens + 1)
  raise ValueError(f'unknown tail_drop mode {mode!r}; known: {TAIL_DROP}')


class TiTok(nnx.Module):
  """TiTok / One-D-Piece 1D tokenizer (see the module docstring).

  Args:
    image_size: H = W.
    patch_size: P.
    num_tokens: K latent tokens.
    width, encoder_depth, decoder_depth, num_heads, mlp_ratio: the ViTs.
    embed_dim: E, the quantizer's input dimension.
    quantizer: registry spec, e.g. dict(name='vq', codebook_size=4096,
      use_cosine_sim=True).
    tail_drop: None (TiTok), 'batch' or 'example' (One-D-Piece).
    proxy_teacher: None (pixel head) or a VQ-GAN module / workdir path whose
      codes on the patch grid are the stage-1 targets.
    finetune_decoder: stage 2 (needs `proxy_teacher`): frozen encoder and
      quantizer; the soft codes feed the trainable teacher pixel decoder.
  """

  # The parameters that `encode` uses (path prefixes): the ones stage 2
  # freezes (configs/titok.py's `optim.frozen` lists the same names).
  ENCODER_PARAMS = ('patch_embed', 'patch_pos', 'latent_tokens', 'latent_pos',
                    'encoder', 'to_code', 'quantizer')

  modality = 'image'
  one_dimensional = True
  token_count_key = 'num_tokens'  # config.model key of the token count

  def __init__(self, *, image_size: int, patch_size: int = 4,
               num_tokens: int = 16, width: int = 64, encoder_depth: int = 2,
               decoder_depth: int = 2, num_heads: int = 4,
               mlp_ratio: float = 4.0, embed_dim: int = 8,
               quantizer: dict[str, Any], tail_drop: str | None = None,
               proxy_teacher=None,
               finetune_decoder: bool = False,
               class_token: bool = False, pre_norm: bool = False,
               ln_eps: float = vit.LN_EPS, gelu_approximate: bool = True,
               decoder_width: int | None = None,
               decoder_num_heads: int | None = None,
               legacy_latent_reshape: bool = False, head_hidden: int = 0,
               head_activation: str = 'tanh', out_conv: bool = False,
               proxy_codes: int = 0,
               pixel_decoder: dict[str, Any] | None = None,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f'image_size {image_size} is not divisible by '
                       f'patch_size {patch_size}')
    if num_tokens < 1:
      raise ValueError(f'num_tokens must be >= 1; got {num_tokens}')
    if tail_drop not in TAIL_DROP:
      raise ValueError(f'unknown tail_drop {tail_drop!r}; known: {TAIL_DROP}')
    if pixel_decoder is not None and not proxy_codes:
      raise ValueError('pixel_decoder renders proxy codes: it needs '
                       'proxy_codes > 0')
    if finetune_decoder and proxy_teacher is None and pixel_decoder is None:
      raise ValueError('finetune_decoder (stage 2) needs a proxy_teacher whose'
                       ' pixel decoder renders the predicted codes')
    if head_activation not in HEAD_ACTIVATIONS:
      raise ValueError(f'unknown head_activation {head_activation!r}; known: '
                       f'{sorted(HEAD_ACTIVATIONS)}')
    if proxy_codes and proxy_teacher is not None:
      raise ValueError('proxy_codes is for a model without a pixel decoder; '
                       'with a proxy_teacher the codes are the teacher\'s')
    if proxy_codes and out_conv:
      raise ValueError('out_conv acts on pixels; a proxy_codes model has none')
    kw = dict(dtype=dtype, rngs=rngs)
    vit_kw = dict(ln_eps=ln_eps, gelu_approximate=gelu_approximate, **kw)
    dwidth = decoder_width or width
    self.image_size = image_size
    self.patch_size = patch_size
    self.num_tokens = num_tokens
    self.grid = image_size // patch_size
    n = self.grid ** 2
    self.num_patches = n
    self.tail_drop = tail_drop
    self.finetune_decoder = finetune_decoder
    self.legacy_latent_reshape = legacy_latent_reshape
    self.proxy_codes = proxy_codes
    self.head_activation = head_activation
    pdim = patch_size * patch_size * 3
    self.patch_embed = vit.linear(pdim, width, ('embed_in', 'embed'), **kw)
    self.patch_pos = vit.learned_pos(n, width, rngs)
    self.latent_tokens = nnx.Param(
        width ** -0.5 * jax.random.normal(rngs.params(), (num_tokens, width)),
        **qbase.logical(None, 'embed'))
    self.latent_pos = vit.learned_pos(num_tokens, width, rngs)
    # The release's class tokens (positional embedding folded in).
    cls = dec_cls = None
    if class_token:
      cls = nnx.Param(
          width ** -0.5 * jax.random.normal(rngs.params(), (width,)),
          **qbase.logical('embed'))
      dec_cls = nnx.Param(
          dwidth ** -0.5 * jax.random.normal(rngs.params(), (dwidth,)),
          **qbase.logical('embed'))
    self.class_token, self.dec_class_token = cls, dec_cls
    self.ln_pre = (vit.layer_norm(width, epsilon=ln_eps, **kw) if pre_norm
                   else None)
    self.dec_ln_pre = (vit.layer_norm(dwidth, epsilon=ln_eps, **kw)
                       if pre_norm else None)
    self.encoder = vit.Transformer(width, encoder_depth, num_heads, mlp_ratio,
                                   **vit_kw)
    self.to_code = vit.linear(width, embed_dim, ('embed', 'code_dim'), **kw)
    q_kwargs = dict(quantizer)
    self.quantizer = registry.make_quantizer(q_kwargs.pop('name'),
                                             dim=embed_dim, rngs=rngs,
                                             **q_kwargs)
    self.from_code = vit.linear(embed_dim, dwidth, ('code_dim', 'embed'), **kw)
    self.dec_latent_pos = vit.learned_pos(num_tokens, dwidth, rngs)
    self.mask_token = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (dwidth,)),
        **qbase.logical('embed'))
    self.dec_patch_pos = vit.learned_pos(n, dwidth, rngs)
    self.decoder = vit.Transformer(dwidth, decoder_depth,
                                   decoder_num_heads or num_heads, mlp_ratio,
                                   **vit_kw)
    self.head_hidden = (vit.linear(dwidth, head_hidden, ('embed', 'mlp'),
                                   **kw) if head_hidden else None)
    head_in = head_hidden or dwidth
    self.out_conv = (nnx.Conv(3, 3, (3, 3), padding='SAME', dtype=dtype,
                              rngs=rngs) if out_conv else None)
    teacher = None
    if proxy_teacher is not None:
      teacher = load_teacher(proxy_teacher, finetune_decoder)
      shape = teacher.token_shape((1, image_size, image_size, 3))
      if tuple(shape[1:]) != (self.grid, self.grid):
        raise ValueError(
            f'proxy teacher tokens {tuple(shape[1:])} do not match the patch '
            f'grid {(self.grid, self.grid)}: set patch_size to the teacher\'s '
            'downsampling factor (single-code teachers only)')
      self.head = vit.linear(head_in, teacher.codebook_size,
                             ('embed', 'codebook'), **kw)
    elif proxy_codes:
      self.head = vit.linear(head_in, proxy_codes, ('embed', 'codebook'),
                             **kw)
    else:
      self.head = vit.linear(head_in, pdim, ('embed', 'embed_in'), **kw)
    self.teacher = teacher
    if pixel_decoder is None:
      self.pixel_codebook = self.pixel_decoder = None
    else:
      from tokenizers_jax.frontends import maskgit_vqgan  # pylint: disable=g-import-not-at-top
      dec = maskgit_vqgan.MaskgitDecoder(dtype=dtype, rngs=rngs,
                                         **dict(pixel_decoder))
      if dec.upsample_factor != patch_size:
        raise ValueError(
            f'pixel_decoder up-samples by {dec.upsample_factor}; the proxy '
            f'codes are on the {patch_size}x{patch_size}-patch grid')
      self.pixel_codebook = nnx.Param(
          jax.random.normal(rngs.params(), (proxy_codes, dec.z_channels)),
          **qbase.logical('codebook', 'code_dim'))
      self.pixel_decoder = dec

  @property
  def codebook_size(self) -> int:
    return self.quantizer.codebook_size

  @property
  def loss_terms(self) -> tuple[str, ...]:
    """'quantizer', and 'proxy_ce' (cross-entropy of the predicted proxy
    codes against the teacher's, training only) in proxy-code stage 1."""
    if self.teacher is not None and not self.finetune_decoder:
      return ('quantizer', 'proxy_ce')
    return ('quantizer',)

  @property
  def last_layer(self):
    if self.pixel_decoder is not None:
      return self.pixel_decoder.last_layer
    if self.finetune_decoder:
      return self.teacher.last_layer  # the pixel decoder's output conv
    if self.out_conv is not None:
      return self.out_conv.kernel
    return self.head.kernel

  @property
  def init_from_new_params(self) -> tuple[str, ...]:
    """Param path prefixes that `config.init_from` may lack: in stage 2 the
    teacher's pixel decoder, initialised from the teacher's own weights."""
    return (('teacher',) if self.finetune_decoder and self.teacher is not None
            else ())

  def token_shape(self, image_shape) -> tuple[int, ...]:
    return (image_shape[0], self.num_tokens)

  def _check_images(self, x: Array) -> None:
    s = self.image_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3):
      raise ValueError(f'{type(self).__name__} expects images [B, {s}, {s}, 3]'
                       f'; got {tuple(x.shape)}')

  # ---- encoder ---------------------------------------------------------------

  def encode_latents(self, x: Array) -> Array:
    """[B, H, W, 3] -> pre-quantization latents [B, K, E]."""
    self._check_images(x)
    b = x.shape[0]
    t = self.patch_embed(vit.patchify(x, self.patch_size))
    t = t + self.patch_pos[...].astype(t.dtype)
    lat = (self.latent_tokens[...] + self.latent_pos[...]).astype(t.dtype)
    parts = [t, jnp.broadcast_to(lat, (b,) + lat.shape)]
    start = self.num_patches
    if self.class_token is not None:
      cls = self.class_token[...].astype(t.dtype)
      parts.insert(0, jnp.broadcast_to(cls, (b, 1) + cls.shape))
      start += 1
    h = jnp.concatenate(parts, axis=1)
    if self.ln_pre is not None:
      h = self.ln_pre(h)
    h = self.encoder(h)[:, start:]
    if self.legacy_latent_reshape:
      # The release's `is_legacy` read-out: [K, D] reinterpreted as [D, K].
      k, d = h.shape[1:]
      h = h.reshape(b, d, k).swapaxes(1, 2)
    return self.to_code(h)

  # ---- decoder ---------------------------------------------------------------

  def decode_features(self, zq: Array, num_kept: Array | None = None) -> Array:
    """Quantized latents [B, L, E] (L <= K) -> mask-token outputs [B, N, D].

    `num_kept` int [B]: only the first num_kept[b] latents are visible
    (tail drop); None keeps all L.
    """
    b, length = zq.shape[:2]
    if not 1 <= length <= self.num_tokens:
      raise ValueError(f'{length} tokens given; expected 1..{self.num_tokens}')
    lat = self.from_code(zq) + self.dec_latent_pos[:length].astype(zq.dtype)
    masks = self.mask_token[...] + self.dec_patch_pos[...]
    masks = jnp.broadcast_to(masks.astype(lat.dtype), (b,) + masks.shape)
    parts = [masks, lat]
    c = 0  # class tokens before the mask tokens
    if self.dec_class_token is not None:
      cls = self.dec_class_token[...].astype(lat.dtype)
      parts.insert(0, jnp.broadcast_to(cls, (b, 1) + cls.shape))
      c = 1
    mask = None
    if num_kept is not None:
      n = c + self.num_patches
      pos = jnp.arange(n + length)
      keep = (pos[None] < n) | (pos[None] - n < num_kept[:, None])  # [B, Nk]
      mask = keep[:, None, :]
    h = jnp.concatenate(parts, axis=1)
    if self.dec_ln_pre is not None:
      h = self.dec_ln_pre(h)
    h = self.decoder(h, mask)
    return h[:, c:c + self.num_patches]

  def head_output(self, feats: Array) -> Array:
    """Mask-token features [B, N, D] -> the head's output [B, N, P*P*3 or V]
    (through `head_hidden` and its activation when present)."""
    if self.head_hidden is not None:
      feats = HEAD_ACTIVATIONS[self.head_activation](self.head_hidden(feats))
    return self.head(feats)

  def decode_logits(self, indices: Array) -> Array:
    """Token ids [B, L] -> the head's per-patch output [B, N, V] (proxy-code
    logits; pixel patches [B, N, P*P*3] for a pixel head)."""
    if indices.ndim < 2:
      raise ValueError(f'decode_logits expects ids [B, L]; got '
                       f'{indices.shape}')
    return self.head_output(self.decode_features(
        self.quantizer.decode(indices)))

  def soft_codes(self, logits: Array) -> Array:
    """Stage 2: logits [B, N, V] -> the teacher latent grid [B, h, w, Et]
    mixing the teacher's code vectors (or `pixel_codebook`'s rows) with
    weights softmax(logits)."""
    if self.pixel_codebook is not None:
      codes = self.pixel_codebook[...]
    else:
      v = self.teacher.codebook_size
      codes = self.teacher.quantizer.decode(jnp.arange(v, dtype=jnp.int32))
    probs = jax.nn.softmax(logits, axis=-1)
    zq = jnp.einsum('bnv,ve->bne', probs, codes.astype(jnp.float32))
    return zq.reshape(zq.shape[0], self.grid, self.grid, zq.shape[-1])

  def _render(self, feats: Array,
              train: bool = False) -> tuple[Array, Array | None]:
    """Mask-token features -> (images, proxy logits or None)."""
    out = self.head_output(feats)
    if self.proxy_codes and self.pixel_decoder is not None:
      logits = out.astype(jnp.float32)
      zq = self.soft_codes(logits).astype(feats.dtype)
      return self.pixel_decoder(zq, train=train), logits
    if self.proxy_codes:
      raise ValueError(
          f'this TiTok predicts {self.proxy_codes}-way proxy codes '
          '(model.proxy_codes; the legacy two-stage release) and has no pixel '
          'decoder: use decode_logits(ids); pixels need the release\'s '
          'MaskGIT-VQGAN decoder (model.pixel_decoder; convert a checkpoint '
          'that has pixel_quantize.* and pixel_decoder.*)')
    if self.teacher is None:
      s = self.image_size
      x_hat = vit.unpatchify(out, self.patch_size, s, s)
      if self.out_conv is not None:
        x_hat = self.out_conv(x_hat)
      return x_hat, None
    logits = out.astype(jnp.float32)
    if self.finetune_decoder:
      zq = self.soft_codes(logits).astype(feats.dtype)
      return self.teacher.decode_latents(zq, train=train), logits
    codes = jnp.argmax(logits, -1).reshape(-1, self.grid, self.grid)
    x_hat = jax.lax.stop_gradient(self.teacher.decode(codes))
    return x_hat, logits

  # ---- the image-task interface ----------------------------------------------

  def __call__(self, x: Array, train: bool = False, *, step=None, rng=None,
               quantizer_hook=None):
    del step
    if self.finetune_decoder:
      # Stage 2: encoder and quantizer frozen (eval mode, no gradient).
      out = self.quantizer(jax.lax.stop_gradient(self.encode_latents(x)),
                           train=False)
      out = out.replace(quantized=jax.lax.stop_gradient(out.quantized),
                        loss=jnp.zeros((), jnp.float32))
    else:
      out = self.quantizer(self.encode_latents(x), train=train)
    zq = out.quantized
    if quantizer_hook is not None:
      zq = quantizer_hook(self.quantizer, out)
    num_kept = None
    if train and self.tail_drop is not None and rng is not None:
      num_kept = sample_num_kept(jax.random.fold_in(rng, 1), x.shape[0],
                                 self.num_tokens, self.tail_drop)
      out = out.replace(metrics=dict(
          out.metrics, tokens_kept=jnp.mean(num_kept.astype(jnp.float32))))
    x_hat, logits = self._render(self.decode_features(zq, num_kept), train)
    terms = {}
    if train and 'proxy_ce' in self.loss_terms:
      targets = jax.lax.stop_gradient(self.teacher.encode(x))
      targets = targets.reshape(x.shape[0], -1)
      terms['proxy_ce'] = jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    return model_base.output(x_hat, out, terms)

  def encode(self, x: Array, num_tokens: int | None = None) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> the first k token ids, int32 [B, k]
    (k = num_tokens, default K)."""
    k = self.num_tokens if num_tokens is None else int(num_tokens)
    if not 1 <= k <= self.num_tokens:
      raise ValueError(f'num_tokens must be in 1..{self.num_tokens}; got {k}')
    ids = self.quantizer.encode(self.encode_latents(x))
    return ids[:, :k]

  def decode(self, indices: Array) -> Array:
    """Token ids [B, L] (any 1 <= L <= K, a prefix) -> images [B, H, W, 3]."""
    if indices.ndim < 2:
      raise ValueError(f'decode expects ids [B, L]; got {indices.shape}')
    x_hat, _ = self._render(self.decode_features(
        self.quantizer.decode(indices)))
    return x_hat
