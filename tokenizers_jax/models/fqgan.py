"""FQGAN: factorized quantization with semantic sub-codebooks.

FQGAN (Factorized Visual Tokenization and Generation) splits one VQGAN
encoder into F heads, each with its own small sub-codebook:

  x -> ImageEncoder -> z [B, h, w, Z]                      (shared trunk)
  head i: z -> FactorizedAdapter_i -> 1x1 conv (Z -> C) -> VQ_i -> q_i
  concat(q_0 .. q_{F-1}) [B, h, w, F*C] -> post_quant_conv (1x1) -> ImageDecoder

Each `FactorizedAdapter` is a small pre-LN transformer over the h*w latent
tokens (learned positional embedding; paper: 6 layers, width 512, 8 heads)
followed by a 1x1 conv back to Z channels. Each head's `VectorQuantizer` is an
l2-normalised (cosine) sub-codebook (paper: 16384 codes x 8, commitment 0.25,
codebook 1.0, entropy loss 0.03 at temperature 0.01).

Loss terms (`ModelOutput.terms`, weighted by the task):
  'quantizer' = sum_i VQ_i.loss
      + disentangle_weight (0.1) * mean over head pairs (i < j) and tokens of
        <l2n(q_i), l2n(q_j)>^2                       (`disentanglement`)
  'semantic' = sum over semantic heads s of
      InfoNCE(FeatPredHead_s(q_s), sg(teacher_s(x)))
      (the paper weights it 0.5: `config.loss.weights.semantic`)

A `FeatPredHead` linearly up-projects a head's quantized tokens to the
teacher's width, prepends a learned CLS token, runs a small transformer
(paper: 3 layers) and returns the CLS output. The frozen teacher (see
`teachers.py`; the default is a fixed random conv net) gives one feature per
image. InfoNCE uses cosine similarities of l2-normalised vectors divided by
`infonce_temperature` (1.0) with in-batch negatives: row i's positive is
teacher feature i and the other B - 1 teacher features are negatives. With
`infonce_symmetric=True` (default, CLIP-style) the loss is the mean of the
prediction->teacher and teacher->prediction cross-entropies; with False only
prediction->teacher (rows of the similarity matrix) is used.

By default head 0 is the pure reconstruction ("detail") head and heads
1 .. F-1 are semantic, each with its own teacher: Dual [1], Triple [1, 2].

Dimension legend:
  B: batch; H, W: image size; h, w: latent grid (H/f, W/f); N = h * w
  Z: encoder latent channels; F: number of heads (factors)
  C: per-head code dimension (`codebook_dim`); K: codes per sub-codebook
  A: adapter width; T: teacher feature width
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from tokenizers_jax.frontends.image import ImageDecoder
from tokenizers_jax.frontends.image import ImageEncoder
from tokenizers_jax.models import base as model_base
from tokenizers_jax.models import teachers as teachers_lib
from tokenizers_jax.nn import attention
from tokenizers_jax.quantizers import base as qbase
from tokenizers_jax.quantizers import fq as fq_lib
from tokenizers_jax.quantizers import functional as qf
from tokenizers_jax.quantizers import perturbation as perturb_lib
from tokenizers_jax.quantizers import vq as vq_lib

Array = jax.Array
Dtype = Any

# Paper defaults of the sub-codebooks' VectorQuantizer (overridable via `vq`).
DEFAULT_VQ = dict(use_cosine_sim=True, commitment_weight=0.25,
                  codebook_weight=1.0, entropy_loss_weight=0.03,
                  entropy_temperature=0.01)
DEFAULT_ADAPTER = dict(depth=6, width=512, num_heads=8, mlp_ratio=4.0)
DEFAULT_FEAT_PRED = dict(depth=3, num_heads=8, mlp_ratio=4.0)
DEFAULT_TEACHER = dict(name='random_conv', out_dim=256, width=32)
LAYER_NORM_EPSILON = 1e-6
# Metrics averaged (rather than summed) over heads.
_MEAN_METRICS = ('usage', 'perplexity', 'dead_codes')


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any] | None,
           what: str) -> dict[str, Any]:
  given = dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f'{what}: unknown keys {unknown}; known: '
                     f'{sorted(defaults)}.')
  return {**defaults, **given}


# -----------------------------------------------------------------------------
# Losses.
# -----------------------------------------------------------------------------


def info_nce(pred: Array, target: Array, temperature: float = 1.0,
             symmetric: bool = True) -> Array:
  """InfoNCE with in-batch negatives on cosine similarities.

  logits[i, j] = <l2n(pred_i), l2n(target_j)> / temperature; the positives
  are the diagonal.

  Args:
    pred: [B, T] predictions.
    target: [B, T] targets (teacher features).
    temperature: logit temperature.
    symmetric: average the row-wise (pred -> target) and column-wise
      (target -> pred) cross-entropies; else row-wise only.

  Returns:
    fp32 scalar.
  """
  if pred.shape != target.shape or pred.ndim != 2:
    raise ValueError(f'info_nce expects two [B, T] arrays of one shape; got '
                     f'{tuple(pred.shape)} and {tuple(target.shape)}.')
  a = qf.l2_normalize(pred.astype(jnp.float32))
  b = qf.l2_normalize(target.astype(jnp.float32))
  logits = (a @ b.T) / temperature
  diag = jnp.diagonal(logits)
  rows = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  if not symmetric:
    return rows
  cols = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (rows + cols)


# -----------------------------------------------------------------------------
# Transformer pieces (trainable).
# -----------------------------------------------------------------------------


def _linear(din: int, dout: int, names: tuple[str, str], *, dtype: Dtype,
            rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, dtype=dtype, rngs=rngs,
                    kernel_metadata=qbase.logical(*names),
                    bias_metadata=qbase.logical(names[1]))


def _layer_norm(width: int, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=LAYER_NORM_EPSILON, dtype=dtype,
                       rngs=rngs, scale_metadata=qbase.logical('embed'),
                       bias_metadata=qbase.logical('embed'))


class TransformerBlock(attention.Attention):
  """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)) (GELU).

  The block is its own attention (`nn.attention.Attention`: fused [q | k | v]
  projection, head-major; scores and softmax in fp32), so `qkv` and `proj`
  sit at the block's top level next to `norm1`, `norm2`, `fc1` and `fc2`.
  """

  def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, *,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    hidden = max(int(round(width * mlp_ratio)), 1)
    kw = dict(dtype=dtype, rngs=rngs)
    self.norm1 = _layer_norm(width, **kw)
    super().__init__(width, num_heads, **kw)  # qkv, proj.
    self.norm2 = _layer_norm(width, **kw)
    self.fc1 = _linear(width, hidden, ('embed', 'mlp'), **kw)
    self.fc2 = _linear(hidden, width, ('mlp', 'embed'), **kw)

  def __call__(self, x: Array) -> Array:
    """[B, N, A] -> [B, N, A]."""
    x = x + super().__call__(self.norm1(x))
    return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class Transformer(nnx.Module):
  """`depth` pre-LN blocks and a final LayerNorm."""

  def __init__(self, width: int, depth: int, num_heads: int,
               mlp_ratio: float = 4.0, *, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    if depth < 0:
      raise ValueError(f'transformer depth must be >= 0; got {depth}.')
    self.blocks = nnx.List([
        TransformerBlock(width, num_heads, mlp_ratio, dtype=dtype, rngs=rngs)
        for _ in range(depth)])
    self.norm = _layer_norm(width, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    for block in self.blocks:
      x = block(x)
    return self.norm(x)


def _pos_param(num: int, width: int, rngs: nnx.Rngs) -> nnx.Param:
  init = 0.02 * jax.random.normal(rngs.params(), (num, width), jnp.float32)
  return nnx.Param(init, **qbase.logical(None, 'embed'))


class FactorizedAdapter(nnx.Module):
  """One head's adapter: [B, h, w, Z] -> [B, h, w, Z].

  Linear Z -> A, plus a learned positional embedding over the h x w grid
  (bilinearly interpolated when the grid differs from `grid`), a pre-LN
  transformer, a final LayerNorm, and a 1x1 conv A -> Z (`conv_out`).
  """

  def __init__(self, in_channels: int, *, grid: tuple[int, int],
               depth: int = 6, width: int = 512, num_heads: int = 8,
               mlp_ratio: float = 4.0, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.grid = tuple(grid)
    self.proj_in = _linear(in_channels, width, ('embed_in', 'embed'), **kw)
    self.pos_embed = _pos_param(grid[0] * grid[1], width, rngs)
    self.transformer = Transformer(width, depth, num_heads, mlp_ratio, **kw)
    self.conv_out = nnx.Conv(
        width, in_channels, (1, 1), rngs=rngs, dtype=dtype,
        kernel_metadata=qbase.logical(None, None, 'embed_in', 'embed'),
        bias_metadata=qbase.logical('embed'))

  def __call__(self, z: Array) -> Array:
    b, hh, ww, _ = z.shape
    t = self.proj_in(z.reshape(b, hh * ww, z.shape[-1]))
    pos = teachers_lib.interpolate_pos_embed(self.pos_embed[...], self.grid,
                                             (hh, ww))
    t = self.transformer(t + pos.astype(t.dtype))
    return self.conv_out(t.reshape(b, hh, ww, -1))


class FeatPredHead(nnx.Module):
  """Predicts a teacher feature from one head's quantized tokens.

  [B, h, w, C] -> Linear C -> T -> [CLS; tokens] + learned positions ->
  pre-LN transformer -> final LayerNorm -> CLS output [B, T] (fp32).
  """

  def __init__(self, in_dim: int, out_dim: int, *, grid: tuple[int, int],
               depth: int = 3, num_heads: int = 8, mlp_ratio: float = 4.0,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.grid = tuple(grid)
    self.proj_in = _linear(in_dim, out_dim, ('code_dim', 'embed'), **kw)
    self.cls_token = nnx.Param(
        0.02 * jax.random.normal(rngs.params(), (out_dim,), jnp.float32),
        **qbase.logical('embed'))
    self.pos_embed = _pos_param(grid[0] * grid[1] + 1, out_dim, rngs)
    self.transformer = Transformer(out_dim, depth, num_heads, mlp_ratio, **kw)

  def __call__(self, q: Array) -> Array:
    b, hh, ww, c = q.shape
    t = self.proj_in(q.reshape(b, hh * ww, c))
    cls = jnp.broadcast_to(self.cls_token[...].astype(t.dtype),
                           (b, 1, t.shape[-1]))
    t = jnp.concatenate([cls, t], axis=1)
    pos = self.pos_embed[...]
    pos = jnp.concatenate(
        [pos[:1], teachers_lib.interpolate_pos_embed(pos[1:], self.grid,
                                                     (hh, ww))], axis=0)
    t = self.transformer(t + pos.astype(t.dtype))
    return t[:, 0].astype(jnp.float32)


# -----------------------------------------------------------------------------
# The sub-codebooks as one quantizer.
# -----------------------------------------------------------------------------


class FactorizedCodebooks(fq_lib.FactorizedVQ):
  """F independent `VectorQuantizer`s over F channel blocks of the input.

  A `FactorizedVQ` whose per-factor input projections are channel slices and
  whose output projection is the identity (FQGAN's per-head convs and
  post_quant_conv do those projections), so code that handles FactorizedVQ
  through `factors`, `decode` and `decode_factors` (e.g. the latent
  perturbation of `quantizers.perturbation`) handles it too.

  Input [..., F*C]: block i (channels i*C .. (i+1)*C - 1) is head i's latent.
  Output `quantized` is the concatenation of the heads' codes [..., F*C],
  `indices` [..., F]; `loss` = sum of the heads' VQ losses +
  `disentangle_weight` * disentanglement. Each head's VQ loss includes its
  entropy loss when `entropy_loss_weight` > 0 (E[H(p(.|z))] - gamma *
  H(E[p(.|z)]), p = softmax(-d(z, c) / temperature); see `VectorQuantizer`).
  Metrics: each head's VQ metrics as '{name}/{i}', their mean (usage,
  perplexity, dead_codes) or sum (loss terms) under '{name}',
  'disentanglement', and 'vq_loss' (sum of VQ losses).

  Attributes:
    factors: the per-head `VectorQuantizer`s (their `codebook` is [K, C]).
  """

  def __init__(self, num_factors: int, codebook_size: int, codebook_dim: int,
               *, disentangle_weight: float = 0.1, rngs: nnx.Rngs,
               **vq_kwargs: Any):
    if num_factors < 1 or codebook_dim < 1:
      raise ValueError(f'num_factors ({num_factors}) and codebook_dim '
                       f'({codebook_dim}) must be >= 1.')
    if 'codebook_dim' in vq_kwargs or 'dim' in vq_kwargs:
      raise ValueError('vq kwargs must not set dim/codebook_dim; use the '
                       'model argument codebook_dim.')
    # FactorizedVQ.__init__ (which builds projections) is deliberately not
    # called.
    self.num_factors = num_factors
    self.num_codebooks = num_factors
    self.codebook_size = codebook_size
    self.codebook_dim = codebook_dim
    self.dim = num_factors * codebook_dim
    self.disentangle_weight = disentangle_weight
    self.factors = nnx.List([
        vq_lib.VectorQuantizer(codebook_size, codebook_dim, rngs=rngs,
                               **vq_kwargs)
        for _ in range(num_factors)])

  def split(self, x: Array) -> list[Array]:
    """[..., F*C] -> F arrays [..., C]."""
    return jnp.split(x, self.num_factors, axis=-1)

  def __call__(self, x: Array, *, train: bool = False,
               mask: Array | None = None) -> qbase.QuantizerOutput:
    name = type(self).__name__
    qbase.check_input(x, self.dim, name)
    qbase.check_mask(mask, x.shape[:-1], name)
    m = None if mask is None else mask.reshape(-1)
    outs = [fac(part, train=train, mask=mask)
            for fac, part in zip(self.factors, self.split(x))]
    dis = qf.disentanglement_loss(
        [o.quantized.reshape(-1, self.codebook_dim) for o in outs], m)
    vq_loss = sum(o.loss for o in outs)
    metrics = {'disentanglement': dis, 'vq_loss': vq_loss}
    for i, o in enumerate(outs):
      for k, v in o.metrics.items():
        metrics[f'{k}/{i}'] = v
    for k in outs[0].metrics:
      vals = jnp.stack([o.metrics[k] for o in outs])
      metrics[k] = jnp.mean(vals) if k in _MEAN_METRICS else jnp.sum(vals)
    return qbase.QuantizerOutput(
        quantized=jnp.concatenate([o.quantized for o in outs], axis=-1),
        indices=jnp.stack([o.indices for o in outs], axis=-1),
        loss=(vq_loss + self.disentangle_weight * dis).astype(jnp.float32),
        metrics=metrics)

  def encode(self, x: Array) -> Array:
    """[..., F*C] -> int32 [..., F]."""
    qbase.check_input(x, self.dim, type(self).__name__)
    return jnp.stack([fac.encode(part) for fac, part in
                      zip(self.factors, self.split(x))], axis=-1)

  def decode_factors(self, indices: Array) -> list[Array]:
    """[..., F] -> the heads' codes, F arrays [..., C]."""
    if indices.ndim < 1 or indices.shape[-1] != self.num_factors:
      raise ValueError(f'{type(self).__name__}.decode: expected indices of '
                       f'shape (..., {self.num_factors}); got '
                       f'{tuple(indices.shape)}.')
    return [fac.decode(indices[..., i]) for i, fac in enumerate(self.factors)]

  def decode(self, indices: Array) -> Array:
    """[..., F] -> [..., F*C], what `quantized` is in eval mode."""
    return jnp.concatenate(self.decode_factors(indices), axis=-1)

  def lookup(self, indices: Array) -> Array:
    """`decode` without its index checks: [..., F] -> [..., F*C]."""
    return jnp.concatenate([fac.lookup(indices[..., i])
                            for i, fac in enumerate(self.factors)], axis=-1)


# -----------------------------------------------------------------------------
# The model.
# -----------------------------------------------------------------------------


class FQGAN(nnx.Module):
  """Factorized-quantization image tokenizer.

  `__call__(x, train) -> ModelOutput` (terms 'quantizer', 'semantic'),
  `encode(x) -> indices [B, h, w, F]`, `decode(indices) -> images`.

  The returned `QuantizerOutput` has `quantized` = the concatenated head codes
  [B, h, w, F*C] (head i in channels i*C .. (i+1)*C - 1, before
  post_quant_conv; straight-through in training), `indices` int32
  [B, h, w, F], `loss` = the quantizer term (VQ + weighted disentanglement;
  the semantic loss is the separate 'semantic' term), and `metrics`: 'disentanglement', 'semantic' (sum over
  semantic heads, unweighted) and 'semantic/{i}' per semantic head i,
  'vq_loss', every head's VQ metrics as '{name}/{i}' (e.g. 'usage/0',
  'perplexity/1', 'commitment/0', 'entropy/1'), and their means ('usage',
  'perplexity', 'dead_codes') or sums (loss terms); with a training
  perturbation also 'perturbed_samples' and 'perturbed_codes'.

  Attributes:
    encoder, adapters (F `FactorizedAdapter`s), quant_convs (F 1x1 convs
    Z -> C), quantizer (`FactorizedCodebooks`; `quantizer.factors[i]` is head
    i's `VectorQuantizer`), post_quant_conv (1x1, F*C -> Z), decoder,
    feat_preds and teachers (one per entry of `semantic_heads`).
  """

  modality = 'image'
  one_dimensional = False
  # Its sub-codebooks are configured in config.model, not config.quantizer.
  uses_config_quantizer = False
  loss_terms = ('quantizer', 'semantic')


  def __init__(self, *, frontend: Mapping[str, Any], image_size: int,
               num_factors: int = 2, codebook_size: int = 16384,
               codebook_dim: int = 8, vq: Mapping[str, Any] | None = None,
               adapter: Mapping[str, Any] | None = None,
               semantic_heads: Sequence[int] | None = None,
               teachers: Sequence[Any] | None = None,
               feat_pred: Mapping[str, Any] | None = None,
               disentangle_weight: float = 0.1,
               infonce_temperature: float = 1.0,
               infonce_symmetric: bool = True,
               perturb: Mapping[str, Any] | None = None,
               dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      frontend: `ImageEncoder`/`ImageDecoder` arguments (ch, ch_mult,
        num_res_blocks, attn_resolutions, z_channels, num_groups, dropout);
        `resolution` is set from `image_size`.
      image_size: training image size; fixes the adapters' and FeatPredHeads'
        positional grids (other sizes interpolate them).
      num_factors: F (2 = FQGAN-Dual, 3 = FQGAN-Triple).
      codebook_size: K, codes per sub-codebook (paper 16384).
      codebook_dim: C, per-head code dimension (paper 8).
      vq: `VectorQuantizer` keyword arguments for every head, merged over
        `DEFAULT_VQ` (cosine codebook, commitment 0.25, codebook 1.0, entropy
        0.03 at temperature 0.01).
      adapter: `depth`, `width`, `num_heads`, `mlp_ratio` of each
        FactorizedAdapter, merged over `DEFAULT_ADAPTER` (6, 512, 8, 4.0).
      semantic_heads: indices of the heads aligned with a teacher; default
        [1 .. F-1] (Dual [1], Triple [1, 2]). May be empty.
      teachers: one per semantic head: an `nnx.Module` teacher (see
        `teachers.py`) or a spec dict for `teachers.make_teacher`. Default:
        `RandomConvTeacher(out_dim=256, width=32, seed=head index)` each.
      feat_pred: `depth`, `num_heads`, `mlp_ratio` of each FeatPredHead,
        merged over `DEFAULT_FEAT_PRED` (3, 8, 4.0); its width is the
        teacher's `out_dim`.
      disentangle_weight: weight of the disentanglement loss (0.1).
      infonce_temperature: InfoNCE temperature (1.0).
      infonce_symmetric: symmetric InfoNCE (see the module docstring).
      perturb: optional training-time latent perturbation, as in `VQGAN`:
        dict(alpha, beta, delta, anneal_start=None, anneal_end=None); with
        `train=True` and an `rng`, a fraction beta (annealed by `step`) of the
        samples has each head's code replaced with probability alpha by one
        of its delta nearest codes in that head's sub-codebook (only the
        decoder sees it).
      dtype: compute dtype (parameters stay fp32).
      rngs: parameter RNGs (teachers use their own seeds).
    """
    if num_factors < 1:
      raise ValueError(f'num_factors must be >= 1; got {num_factors}.')
    self.perturb = perturb_lib.LatentPerturbation.from_config(perturb)
    fe = dict(frontend)
    if 'resolution' in fe:
      raise ValueError("frontend must not set 'resolution'; it is "
                       'image_size.')
    ad = _merge(DEFAULT_ADAPTER, adapter, 'adapter')
    fp = _merge(DEFAULT_FEAT_PRED, feat_pred, 'feat_pred')
    vq_kwargs = {**DEFAULT_VQ, **dict(vq or {})}
    if semantic_heads is None:
      semantic_heads = list(range(1, num_factors))
    semantic_heads = tuple(int(i) for i in semantic_heads)
    if len(set(semantic_heads)) != len(semantic_heads) or any(
        not 0 <= i < num_factors for i in semantic_heads):
      raise ValueError(f'semantic_heads {list(semantic_heads)} must be '
                       f'distinct head indices in [0, {num_factors}).')
    if teachers is None:
      teachers = [dict(DEFAULT_TEACHER, seed=i) for i in semantic_heads]
    teachers = list(teachers)
    if len(teachers) != len(semantic_heads):
      raise ValueError(f'{len(teachers)} teachers given for '
                       f'{len(semantic_heads)} semantic heads '
                       f'{list(semantic_heads)}; give one per head.')

    kw = dict(dtype=dtype, rngs=rngs)
    self.encoder = ImageEncoder(resolution=image_size, **fe, **kw)
    self.decoder = ImageDecoder(resolution=image_size, **fe, **kw)
    z = self.encoder.z_channels
    f = self.encoder.downsample_factor
    grid = (image_size // f, image_size // f)
    self.adapters = nnx.List([
        FactorizedAdapter(z, grid=grid, **ad, **kw)
        for _ in range(num_factors)])
    self.quant_convs = nnx.List([
        nnx.Conv(z, codebook_dim, (1, 1), rngs=rngs, dtype=dtype,
                 kernel_metadata=qbase.logical(None, None, 'embed',
                                               'code_dim'),
                 bias_metadata=qbase.logical('code_dim'))
        for _ in range(num_factors)])
    self.quantizer = FactorizedCodebooks(
        num_factors, codebook_size, codebook_dim,
        disentangle_weight=disentangle_weight, rngs=rngs, **vq_kwargs)
    self.post_quant_conv = nnx.Conv(
        num_factors * codebook_dim, z, (1, 1), rngs=rngs, dtype=dtype,
        kernel_metadata=qbase.logical(None, None, 'code_dim', 'embed'),
        bias_metadata=qbase.logical('embed'))

    built = [teachers_lib.make_teacher(t) for t in teachers]
    preds = []
    for i, teacher in zip(semantic_heads, built):
      out_dim = getattr(teacher, 'out_dim', None)
      if not isinstance(out_dim, int) or out_dim < 1:
        raise ValueError(f'the teacher of head {i} ({type(teacher).__name__}) '
                         f'needs a positive int `out_dim` attribute.')
      if out_dim % fp['num_heads']:
        raise ValueError(f'feat_pred num_heads {fp["num_heads"]} does not '
                         f'divide the width {out_dim} of the teacher of head '
                         f'{i}.')
      preds.append(FeatPredHead(codebook_dim, out_dim, grid=grid, **fp, **kw))
    self.teachers = nnx.List(built)
    self.feat_preds = nnx.List(preds)

    self.num_factors = num_factors
    self.codebook_size = codebook_size
    self.codebook_dim = codebook_dim
    self.semantic_heads = semantic_heads
    self.infonce_temperature = infonce_temperature
    self.infonce_symmetric = infonce_symmetric
    self.image_size = image_size

  # ----------------------------------------------------------------- access

  @property
  def quantizers(self) -> list[vq_lib.VectorQuantizer]:
    """The per-head sub-codebook quantizers (`quantizer.factors`)."""
    return list(self.quantizer.factors)

  @property
  def last_layer(self) -> nnx.Param:
    """The decoder's output conv kernel (for the adaptive GAN weight)."""
    return self.decoder.last_layer

  def token_shape(self, image_shape) -> tuple[int, ...]:
    """Static shape of `encode`'s indices for images of `image_shape`."""
    latent = self.encoder.output_shape(tuple(image_shape))
    return latent[:-1] + (self.num_factors,)

  # ----------------------------------------------------------------- pieces

  def encode_latents(self, x: Array, train: bool = False) -> Array:
    """Images [B, H, W, 3] -> pre-quantization head latents [B, h, w, F*C]."""
    z = self.encoder(x, train=train)
    return jnp.concatenate([conv(adapter(z)) for adapter, conv in
                            zip(self.adapters, self.quant_convs)], axis=-1)

  def decode_latents(self, zq: Array, train: bool = False) -> Array:
    """Concatenated head codes [B, h, w, F*C] -> images [B, H, W, 3]."""
    return self.decoder(self.post_quant_conv(zq), train=train)

  def semantic_losses(self, x: Array, quantized: Array) -> dict[int, Array]:
    """{head index: InfoNCE(FeatPredHead(q_head), sg(teacher(x)))}.

    Args:
      x: the input images [B, H, W, 3].
      quantized: concatenated head codes [B, h, w, F*C].
    """
    heads = self.quantizer.split(quantized)
    out = {}
    for i, pred_head, teacher in zip(self.semantic_heads, self.feat_preds,
                                     self.teachers):
      target = jax.lax.stop_gradient(teacher(x).astype(jnp.float32))
      pred = pred_head(heads[i])
      if target.shape != pred.shape:
        raise ValueError(f'the teacher of head {i} returned '
                         f'{tuple(target.shape)}; expected '
                         f'{tuple(pred.shape)}.')
      out[i] = info_nce(pred, target, self.infonce_temperature,
                        self.infonce_symmetric)
    return out

  # ----------------------------------------------------------------- API

  def __call__(
      self, x: Array, train: bool = False, *, step: Array | None = None,
      rng: Array | None = None,
      quantizer_hook: Callable[[FactorizedCodebooks, qbase.QuantizerOutput],
                               Array] | None = None,
  ) -> model_base.ModelOutput:
    """Reconstructs `x`; returns the ModelOutput.

    Args:
      x: images [B, H, W, 3] in [-1, 1].
      train: training mode (straight-through codes, codebook state updates,
        dropout).
      step: the train step; anneals the latent perturbation's beta.
      rng: PRNG key of the latent perturbation (train only; no perturbation
        without it).
      quantizer_hook: as in `VQGAN`: called as `quantizer_hook(
        self.quantizer, qout)` with the `FactorizedCodebooks` and its output
        (`qout.quantized` [B, h, w, F*C], `qout.indices` [B, h, w, F]; the
        perturbed codes if a training perturbation applied); it returns a
        replacement for `qout.quantized` (same shape), which is decoded
        instead, e.g. `lambda q, o: perturbation.perturb_output(q, o, key,
        alpha=.., beta=.., delta=..)[0].quantized` or
        `lambda q, o: q.decode(new_indices)`. Only the reconstruction sees
        it (and the training perturbation): the returned losses, indices and
        `quantized` are those of the unmodified codes.

    Returns:
      ModelOutput: reconstruction [B, H, W, 3], the factorized
      QuantizerOutput, terms 'quantizer' and 'semantic' (unweighted).
    """
    z = self.encode_latents(x, train=train)
    qout = self.quantizer(
        z.astype(jnp.float32) if z.dtype == jnp.float16 else z, train=train)
    sem = self.semantic_losses(x, qout.quantized)
    semantic = (sum(sem.values()) if sem else jnp.zeros((), jnp.float32))
    metrics = dict(qout.metrics)
    zq = qout.quantized
    if train and self.perturb is not None and rng is not None:
      perturbed, info = self.perturb(self.quantizer, qout, rng, step)
      zq = perturbed.quantized
      metrics['perturbed_samples'] = info['sample_fraction']
      metrics['perturbed_codes'] = info['code_fraction']
    if quantizer_hook is not None:
      zq = quantizer_hook(self.quantizer, qout.replace(quantized=zq))
      if zq.shape != qout.quantized.shape:
        raise ValueError(f'quantizer_hook returned shape {tuple(zq.shape)}; '
                         f'expected {tuple(qout.quantized.shape)}.')
    x_hat = self.decode_latents(zq.astype(z.dtype), train=train)
    metrics['semantic'] = semantic
    for i, v in sem.items():
      metrics[f'semantic/{i}'] = v
    qout = qout.replace(metrics=metrics)
    return model_base.output(
        x_hat, qout, {'semantic': jnp.asarray(semantic, jnp.float32)})

  def encode(self, x: Array) -> Array:
    """Images [B, H, W, 3] in [-1, 1] -> token indices int32 [B, h, w, F]."""
    return self.quantizer.encode(self.encode_latents(x))

  def decode(self, indices: Array) -> Array:
    """Token indices [B, h, w, F] -> images [B, H, W, 3]."""
    return self.decode_latents(self.quantizer.decode(indices))
