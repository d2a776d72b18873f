"""bytedance/1d-tokenizer TiTok checkpoints -> our TiTok workdirs.

  python -m tokenizers_jax.convert --from=titok \
      --checkpoint=tokenizer_titok_sl256_vq8k_imagenet/model.safetensors \
      --reference_config=tokenizer_titok_sl256_vq8k_imagenet/config.json \
      --workdir=/tmp/titok_sl256

The release (`modeling/titok.py: TiTok.state_dict()`: a `pytorch_model.bin`,
`model.safetensors` or `.bin` state dict; its config is the repository's
YAML or the Hugging Face `config.json`, both with `model.vq_model.*` and
`dataset.preprocessing.crop_size`) maps onto `models/titok.py: TiTok` with
`class_token`, `pre_norm`, `ln_eps=1e-5`, `gelu_approximate=False`:

  release                                         ours (gen params)
  latent_tokens [K, D]                            latent_tokens
  encoder.patch_embed (conv P x P, stride P)      patch_embed (linear on
                                                  (p1, p2, c) patches)
  encoder.class_embedding + positional_embedding[0]   class_token
  encoder.positional_embedding[1:]                patch_pos
  encoder.latent_token_positional_embedding       latent_pos
  encoder.ln_pre / ln_post                        ln_pre / encoder/norm
  {en,de}coder.transformer.{i}.ln_1 / ln_2        {en,de}coder/blocks/{i}/norm1 / norm2
  ....attn.in_proj_weight / bias [3D, D]          .../attn/qkv ([q | k | v])
  ....attn.out_proj                               .../attn/proj
  ....mlp.c_fc / c_proj                           .../mlp/fc1 / fc2
  encoder.conv_out (1x1, D -> token_size)         to_code
  quantize.embedding.weight [codes, token_size]   quantizer/codebook
  decoder.decoder_embed                           from_code
  decoder.class_embedding + positional_embedding[0]   dec_class_token
  decoder.positional_embedding[1:]                dec_patch_pos
  decoder.mask_token [1, 1, Dd]                   mask_token
  decoder.latent_token_positional_embedding       dec_latent_pos
  decoder.ln_pre / ln_post                        dec_ln_pre / decoder/norm
  legacy:     decoder.ffn.0 / ffn.2 (1x1 convs, tanh between)
                                                  head_hidden / head (proxy_codes)
  non-legacy: decoder.ffn.0 (1x1 conv -> P*P*3)   head
              decoder.conv_out (3x3, 3 -> 3)      out_conv
  legacy, `finetune_decoder` (the MaskGIT-VQGAN pixel decoder):
  pixel_quantize.embedding.weight [V, Z]          pixel_codebook
  pixel_decoder.conv_in                           pixel_decoder/conv_in
  pixel_decoder.mid.{j}                           pixel_decoder/mid/{j}
  pixel_decoder.up.{i}.block.{j}                  pixel_decoder/up/{i}/blocks/{j}
  pixel_decoder.up.{i}.upsample_conv              pixel_decoder/up/{i}/upsample
  pixel_decoder.norm_out / conv_out               pixel_decoder/norm_out / conv_out
  ...{block}.norm1, conv1, norm2, conv2,          .../norm1, conv1, norm2, conv2,
     nin_shortcut                                    shortcut

Folds (exact up to float rounding): the release's images are in [0, 1],
ours in [-1, 1], so the patch embedding absorbs x01 = (x + 1) / 2 (kernel
/ 2, bias + sum(kernel) / 2) and a pixel output absorbs x = 2 x01 - 1
(`out_conv` kernel and bias x 2, bias - 1); a class embedding and its
positional embedding are one parameter here (their sum).

Two release families:
  - legacy (`is_legacy: True`, the two-stage TiTok-L-32 / B-64 / S-128): the
    decoder predicts 1024-way logits of a MaskGIT-VQGAN's codes per patch,
    which the (fine-tuned) MaskGIT-VQGAN decoder renders (`finetune_decoder`):
    softmax(logits) mixes the rows of `pixel_quantize.embedding.weight` into
    a soft latent grid, which `pixel_decoder` (the release's
    `modeling/modules/maskgit_vqgan.py: Decoder`; ours is
    `frontends/maskgit_vqgan.py: MaskgitDecoder`, the same layers, its
    [0, 1] output mapped to [-1, 1]) renders. The converted model has
    `proxy_codes=1024` and `pixel_decoder` (its widths, levels and blocks read
    off the shapes) and `finetune_decoder=True` with the encoder side in
    `optim.frozen`, as the release's stage 2: `encode`, `decode_logits`,
    `decode` and the forward match the release. A legacy checkpoint without
    the pixel tensors converts to `proxy_codes` only (`decode` raises).
  - single-stage (`is_legacy: False`, the VQ8k BL-64 / BL-128 / SL-256
    releases): pixels out, converted completely.
VAE releases (`quantize_mode: vae`) and TA-TiTok are not supported.

Architecture: read off the tensor shapes (widths, depths, token count,
codebook, patch size, grid, head type); the heads are the release's model
size table (small / base / large: 8 / 12 / 16, i.e. width / 64, also used
without a config). `use_l2_norm` and `commitment_cost` come from the
config; without one the release's values are assumed (l2-normalised with
commitment 0.25 for the legacy models, plain VQ for the single-stage ones)
and the report says so.

Dimension legend: K latent tokens, D / Dd encoder / decoder width, P patch
size, N = (H/P)^2 patches, E = token_size, V proxy codes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tokenizers_jax.convert import common

# The release's ViT sizes: width, layers, heads.
SIZES = {'small': (512, 8, 8), 'base': (768, 12, 12), 'large': (1024, 24, 16)}
PIXEL_PREFIXES = ('pixel_quantize.', 'pixel_decoder.')
# models/titok.py: TiTok.ENCODER_PARAMS plus the release options' encoder
# weights: what stage 2 (`finetune_decoder`) freezes.
FROZEN = ('patch_embed', 'patch_pos', 'latent_tokens', 'latent_pos',
          'encoder', 'to_code', 'quantizer', 'class_token', 'ln_pre')
LN_EPS = 1e-5  # torch.nn.LayerNorm's default


@dataclasses.dataclass(frozen=True)
class TiTokArch:
  """A TiTok release's architecture (`model.vq_model` + crop size)."""
  image_size: int
  patch_size: int
  num_tokens: int
  token_size: int
  codebook_size: int
  enc_width: int
  enc_depth: int
  enc_heads: int
  dec_width: int
  dec_depth: int
  dec_heads: int
  legacy: bool
  proxy_codes: int = 0        # legacy head's output classes
  legacy_hidden: int = 0      # legacy head's hidden width (2 Dd)
  use_l2_norm: bool = False
  commitment_cost: float = 0.25
  pixel_decoder: bool = False  # pixel_quantize / pixel_decoder present
  # The MaskGIT-VQGAN pixel decoder (when present): MaskgitDecoder options.
  pixel_ch: int = 0
  pixel_ch_mult: tuple[int, ...] = ()
  pixel_res_blocks: int = 0
  pixel_z: int = 0
  from_config: bool = False


def _count(sd: common.StateDict, pattern: str) -> int:
  n = 0
  while pattern.format(n) in sd:
    n += 1
  return n


def _need(sd: common.StateDict, names) -> None:
  missing = [n for n in names if n not in sd]
  if missing:
    raise common.ConversionError(
        f'{sd.what}: not a TiTok state dict, missing {missing}')


def infer_arch(sd: common.StateDict) -> TiTokArch:
  """The architecture from the tensor shapes alone."""
  _need(sd, ('latent_tokens', 'encoder.patch_embed.weight',
             'encoder.positional_embedding', 'encoder.conv_out.weight',
             'decoder.decoder_embed.weight', 'decoder.positional_embedding'))
  if 'quantize.embedding.weight' not in sd:
    raise common.ConversionError(
        f'{sd.what}: no quantize.embedding.weight: a VAE TiTok release '
        '(quantize_mode: vae) or TA-TiTok, which this converter does not '
        'support (VQ releases only)')
  if any(n.startswith('text_') or n.startswith('decoder.text_')
         for n in sd.names()):
    raise common.ConversionError(f'{sd.what}: a TA-TiTok (text-aware) '
                                 'checkpoint; only TiTok is supported')
  k, d = sd.shape('latent_tokens')
  dw, cin, p, p2 = sd.shape('encoder.patch_embed.weight')
  if cin != 3 or p != p2 or dw != d:
    raise common.ConversionError(
        f'{sd.what}: encoder.patch_embed.weight {sd.shape("encoder.patch_embed.weight")}'
        f' is not [{d}, 3, P, P]')
  n1 = sd.shape('encoder.positional_embedding')[0]
  grid = int(round((n1 - 1) ** 0.5))
  if grid * grid + 1 != n1:
    raise common.ConversionError(
        f'{sd.what}: encoder.positional_embedding has {n1} rows, not '
        'grid^2 + 1')
  e = sd.shape('encoder.conv_out.weight')[0]
  codes, e2 = sd.shape('quantize.embedding.weight')
  if e2 != e:
    raise common.ConversionError(
        f'{sd.what}: the codebook is {e2}-dimensional but encoder.conv_out '
        f'gives {e} channels (a VAE head gives 2 x token_size)')
  dd = sd.shape('decoder.decoder_embed.weight')[0]
  if sd.shape('decoder.positional_embedding')[0] != n1:
    raise common.ConversionError(
        f'{sd.what}: the decoder grid ({sd.shape("decoder.positional_embedding")[0]}'
        f' positions) differs from the encoder grid ({n1}): '
        'vit_dec_patch_size != vit_enc_patch_size is not supported')
  legacy = 'decoder.ffn.2.weight' in sd
  if not legacy and 'decoder.conv_out.weight' not in sd:
    raise common.ConversionError(
        f'{sd.what}: neither a legacy head (decoder.ffn.2) nor a pixel head '
        '(decoder.conv_out)')
  proxy = hidden = 0
  if legacy:
    hidden = sd.shape('decoder.ffn.0.weight')[0]
    proxy = sd.shape('decoder.ffn.2.weight')[0]
  pixel = any(n.startswith(PIXEL_PREFIXES) and n not in sd.skipped
              for n in sd.names())
  pixel_kw = {}
  if pixel:
    if not legacy:
      raise common.ConversionError(
          f'{sd.what}: pixel_quantize / pixel_decoder tensors with a '
          'single-stage (pixel) head: not a TiTok layout')
    pixel_kw = infer_pixel_decoder(sd, proxy, grid, p)
  return TiTokArch(
      image_size=grid * p, patch_size=p, num_tokens=k, token_size=e,
      codebook_size=codes, enc_width=d,
      enc_depth=_count(sd, 'encoder.transformer.{}.ln_1.weight'),
      enc_heads=max(d // 64, 1), dec_width=dd,
      dec_depth=_count(sd, 'decoder.transformer.{}.ln_1.weight'),
      dec_heads=max(dd // 64, 1), legacy=legacy, proxy_codes=proxy,
      legacy_hidden=hidden, use_l2_norm=legacy,
      commitment_cost=0.25, pixel_decoder=pixel, **pixel_kw)


PIX = 'pixel_decoder'


def infer_pixel_decoder(sd: common.StateDict, proxy: int, grid: int,
                        patch: int) -> dict[str, Any]:
  """The MaskGIT-VQGAN decoder's shape (`TiTokArch.pixel_*`)."""
  _need(sd, ('pixel_quantize.embedding.weight', f'{PIX}.conv_in.weight',
             f'{PIX}.conv_out.weight', f'{PIX}.mid.0.conv1.weight',
             f'{PIX}.up.0.block.0.conv1.weight'))
  v, z = sd.shape('pixel_quantize.embedding.weight')
  if v != proxy:
    raise common.ConversionError(
        f'{sd.what}: pixel_quantize has {v} codes but the decoder head '
        f'predicts {proxy}')
  levels = _count(sd, PIX + '.up.{}.block.0.conv1.weight')
  blocks = _count(sd, PIX + '.mid.{}.conv1.weight')
  widths = [sd.shape(f'{PIX}.up.{i}.block.0.conv1.weight')[0]
            for i in range(levels)]
  if sd.shape(f'{PIX}.conv_in.weight')[1] != z:
    raise common.ConversionError(
        f'{sd.what}: {PIX}.conv_in takes {sd.shape(PIX + ".conv_in.weight")[1]}'
        f' channels but pixel_quantize codes are {z}-dimensional')
  if 2 ** (levels - 1) != patch:
    raise common.ConversionError(
        f'{sd.what}: the pixel decoder has {levels} levels (x{2 ** (levels - 1)}'
        f' up-sampling) but the proxy codes are on the {grid}x{grid} grid of '
        f'{patch}x{patch} patches')
  ch = int(np.gcd.reduce(widths))
  return dict(pixel_ch=ch, pixel_ch_mult=tuple(w // ch for w in widths),
              pixel_res_blocks=blocks, pixel_z=z)


def _get(cfg: dict, *keys, default=None):
  node = cfg
  for k in keys:
    if not isinstance(node, dict) or k not in node:
      return default
    node = node[k]
  return node


def arch_from_config(cfg: dict, arch: TiTokArch) -> TiTokArch:
  """The release config (`model.vq_model`, `dataset.preprocessing`) checked
  against the shapes; it adds the heads, `use_l2_norm` and
  `commitment_cost`."""
  vq = _get(cfg, 'model', 'vq_model')
  if not isinstance(vq, dict):
    raise common.ConversionError('reference config has no model.vq_model '
                                 '(not a TiTok config)')
  mode = vq.get('quantize_mode', 'vq')
  if mode != 'vq':
    raise common.ConversionError(f'model.vq_model.quantize_mode={mode!r}: '
                                 'only VQ TiTok releases are supported')
  problems = []
  out = {}

  def check(key, config_value, shape_value):
    if config_value is not None and int(config_value) != int(shape_value):
      problems.append(f'{key}={config_value} but the checkpoint has '
                      f'{shape_value}')

  for side, prefix in (('enc', 'vit_enc'), ('dec', 'vit_dec')):
    size = vq.get(f'{prefix}_model_size')
    if size is None:
      continue
    if size not in SIZES:
      raise common.ConversionError(
          f'model.vq_model.{prefix}_model_size={size!r}: unknown (known: '
          f'{sorted(SIZES)})')
    width, depth, heads = SIZES[size]
    check(f'{prefix}_model_size ({size}) width', width,
          getattr(arch, f'{side}_width'))
    check(f'{prefix}_model_size ({size}) layers', depth,
          getattr(arch, f'{side}_depth'))
    out[f'{side}_heads'] = heads
    check(f'{prefix}_patch_size', vq.get(f'{prefix}_patch_size'),
          arch.patch_size)
  check('num_latent_tokens', vq.get('num_latent_tokens'), arch.num_tokens)
  check('token_size', vq.get('token_size'), arch.token_size)
  check('codebook_size', vq.get('codebook_size'), arch.codebook_size)
  check('dataset.preprocessing.crop_size',
        _get(cfg, 'dataset', 'preprocessing', 'crop_size'), arch.image_size)
  legacy = bool(vq.get('is_legacy', True))  # the release's default
  if legacy != arch.legacy:
    problems.append(f'is_legacy={legacy} but the checkpoint has a '
                      f'{"legacy" if arch.legacy else "pixel"} decoder head')
  if problems:
    raise common.ConversionError('the reference config does not match the '
                                 'checkpoint: ' + '; '.join(problems))
  if 'use_l2_norm' in vq:
    out['use_l2_norm'] = bool(vq['use_l2_norm'])
  if 'commitment_cost' in vq:
    out['commitment_cost'] = float(vq['commitment_cost'])
  return dataclasses.replace(arch, from_config=True, **out)


# -----------------------------------------------------------------------------
# Config.
# -----------------------------------------------------------------------------


def model_options(arch: TiTokArch) -> dict[str, Any]:
  """config.model for `arch` (models/titok.py's options)."""
  return dict(
      patch_size=arch.patch_size, num_tokens=arch.num_tokens,
      width=arch.enc_width, encoder_depth=arch.enc_depth,
      decoder_depth=arch.dec_depth, num_heads=arch.enc_heads, mlp_ratio=4.0,
      embed_dim=arch.token_size, decoder_width=arch.dec_width,
      decoder_num_heads=arch.dec_heads, class_token=True, pre_norm=True,
      ln_eps=LN_EPS, gelu_approximate=False,
      legacy_latent_reshape=arch.legacy,
      head_hidden=arch.legacy_hidden, head_activation='tanh',
      out_conv=not arch.legacy, proxy_codes=arch.proxy_codes,
      **({'pixel_decoder': pixel_decoder_options(arch),
          'finetune_decoder': True} if arch.pixel_decoder else {}))


def pixel_decoder_options(arch: TiTokArch) -> dict[str, Any]:
  """config.model.pixel_decoder: MaskgitDecoder's options (GroupNorm with
  32 groups and epsilon 1e-6, swish, images in [0, 1], as the release)."""
  return dict(ch=arch.pixel_ch, ch_mult=list(arch.pixel_ch_mult),
              num_res_blocks=arch.pixel_res_blocks, z_channels=arch.pixel_z,
              in_channels=3, resolution=arch.image_size, num_groups=32,
              activation='swish', pixel_range='unit')


def build_config(arch: TiTokArch, base_config: str | None,
                 image_size: int | None):
  if image_size not in (None, arch.image_size):
    raise common.ConversionError(
        f'--image_size={image_size}: the release\'s positional embeddings fix '
        f'it at {arch.image_size}')
  c = common.load_base_config(base_config or
                              common.default_base_config('titok.py:s128'))
  if c.get('model_name') not in ('titok', 'one_d_piece'):
    raise common.ConversionError(f'base config has model_name='
                                 f'{c.get("model_name")!r}, not titok')
  c.data.image_size = arch.image_size
  for key, value in model_options(arch).items():
    c.model[key] = value
  c.quantizer = dict(name='vq', codebook_size=arch.codebook_size,
                     use_cosine_sim=arch.use_l2_norm,
                     commitment_weight=arch.commitment_cost,
                     codebook_weight=1.0, kmeans_init=False,
                     threshold_ema_dead_code=0.0)
  if arch.pixel_decoder:  # The release's stage 2: the encoder side frozen.
    c.optim.frozen = FROZEN
  return c


# -----------------------------------------------------------------------------
# Tensors.
# -----------------------------------------------------------------------------


def _linear(sd, name, din, dout):
  """torch Linear [out, in] -> (kernel [in, out], bias)."""
  w = sd.take(f'{name}.weight', (dout, din))
  b = sd.take(f'{name}.bias', (dout,))
  return None if w is None else w.T, b


def _conv1x1(sd, name, din, dout):
  w = sd.take(f'{name}.weight', (dout, din, 1, 1))
  b = sd.take(f'{name}.bias', (dout,))
  return None if w is None else w[:, :, 0, 0].T, b


def _layer_norm(sd, name, width):
  return {'scale': sd.take(f'{name}.weight', (width,)),
          'bias': sd.take(f'{name}.bias', (width,))}


def _dense(pair):
  return {'kernel': pair[0], 'bias': pair[1]}


def _vit(sd, prefix: str, width: int, depth: int) -> dict:
  blocks = {}
  hidden = 4 * width
  for i in range(depth):
    p = f'{prefix}.transformer.{i}'
    w = sd.take(f'{p}.attn.in_proj_weight', (3 * width, width))
    blocks[i] = {
        'norm1': _layer_norm(sd, f'{p}.ln_1', width),
        'attn': {'qkv': {'kernel': None if w is None else w.T,
                         'bias': sd.take(f'{p}.attn.in_proj_bias',
                                         (3 * width,))},
                 'proj': _dense(_linear(sd, f'{p}.attn.out_proj', width,
                                        width))},
        'norm2': _layer_norm(sd, f'{p}.ln_2', width),
        'mlp': {'fc1': _dense(_linear(sd, f'{p}.mlp.c_fc', width, hidden)),
                'fc2': _dense(_linear(sd, f'{p}.mlp.c_proj', hidden, width))},
    }
  return {'blocks': blocks, 'norm': _layer_norm(sd, f'{prefix}.ln_post',
                                                width)}


def _with_class(sd, prefix, width, n):
  """(class token + its position, patch positions [N, width])."""
  cls = sd.take(f'{prefix}.class_embedding', (1, width))
  pos = sd.take(f'{prefix}.positional_embedding', (n + 1, width))
  if cls is None or pos is None:
    return None, None
  return cls[0] + pos[0], pos[1:]


def _conv(sd, name, din, dout, k, bias=True):
  w = sd.take(f'{name}.weight', (dout, din, k, k))
  out = {'kernel': None if w is None else common.conv_from_torch(w)}
  if bias:
    out['bias'] = sd.take(f'{name}.bias', (dout,))
  return out


def _resblock(sd, name, din, dout):
  out = {'norm1': _layer_norm(sd, f'{name}.norm1', din),
         'conv1': _conv(sd, f'{name}.conv1', din, dout, 3, bias=False),
         'norm2': _layer_norm(sd, f'{name}.norm2', dout),
         'conv2': _conv(sd, f'{name}.conv2', dout, dout, 3, bias=False)}
  if din != dout:
    out['shortcut'] = _conv(sd, f'{name}.nin_shortcut', dout, dout, 1,
                            bias=False)
  return out


def take_pixel_decoder(sd: common.StateDict, arch: TiTokArch) -> dict:
  """MaskgitDecoder's parameters from the release's `pixel_decoder.*`."""
  widths = [arch.pixel_ch * m for m in arch.pixel_ch_mult]
  blocks = arch.pixel_res_blocks
  width = widths[-1]
  out = {'conv_in': _conv(sd, f'{PIX}.conv_in', arch.pixel_z, width, 3),
         'mid': {j: _resblock(sd, f'{PIX}.mid.{j}', width, width)
                 for j in range(blocks)}}
  up = {}
  for i in reversed(range(len(widths))):
    level = {}
    for j in range(blocks):
      level[j] = _resblock(sd, f'{PIX}.up.{i}.block.{j}', width, widths[i])
      width = widths[i]
    up[i] = {'blocks': level}
    if i > 0:
      up[i]['upsample'] = _conv(sd, f'{PIX}.up.{i}.upsample_conv', width,
                                width, 3)
  out['up'] = up
  out['norm_out'] = _layer_norm(sd, f'{PIX}.norm_out', width)
  out['conv_out'] = _conv(sd, f'{PIX}.conv_out', width, 3, 3)
  return out


def take_params(sd: common.StateDict, arch: TiTokArch) -> dict:
  """Our TiTok's parameters (nested like its `nnx.to_pure_dict`) from the
  release's tensors, the pixel-range folds applied."""
  d, dd, e, k = arch.enc_width, arch.dec_width, arch.token_size, arch.num_tokens
  p = arch.patch_size
  n = (arch.image_size // p) ** 2
  out = {}
  w = sd.take('encoder.patch_embed.weight', (d, 3, p, p))
  b = sd.take('encoder.patch_embed.bias', (d,))
  if w is not None and b is not None:
    # Conv [D, c, p1, p2] -> linear on (p1, p2, c) patches, and [0, 1] input.
    kernel = np.transpose(w, (2, 3, 1, 0)).reshape(p * p * 3, d)
    out['patch_embed'] = {'kernel': kernel / 2,
                          'bias': b + kernel.sum(0) / 2}
  out['class_token'], out['patch_pos'] = _with_class(sd, 'encoder', d, n)
  out['latent_tokens'] = sd.take('latent_tokens', (k, d))
  out['latent_pos'] = sd.take('encoder.latent_token_positional_embedding',
                              (k, d))
  out['ln_pre'] = _layer_norm(sd, 'encoder.ln_pre', d)
  out['encoder'] = _vit(sd, 'encoder', d, arch.enc_depth)
  out['to_code'] = _dense(_conv1x1(sd, 'encoder.conv_out', d, e))
  out['quantizer'] = {'codebook': sd.take('quantize.embedding.weight',
                                          (arch.codebook_size, e))}
  out['from_code'] = _dense(_linear(sd, 'decoder.decoder_embed', e, dd))
  out['dec_class_token'], out['dec_patch_pos'] = _with_class(
      sd, 'decoder', dd, n)
  mask = sd.take('decoder.mask_token', (1, 1, dd))
  out['mask_token'] = None if mask is None else mask[0, 0]
  out['dec_latent_pos'] = sd.take('decoder.latent_token_positional_embedding',
                                  (k, dd))
  out['dec_ln_pre'] = _layer_norm(sd, 'decoder.ln_pre', dd)
  out['decoder'] = _vit(sd, 'decoder', dd, arch.dec_depth)
  if arch.legacy:
    out['head_hidden'] = _dense(_conv1x1(sd, 'decoder.ffn.0', dd,
                                         arch.legacy_hidden))
    out['head'] = _dense(_conv1x1(sd, 'decoder.ffn.2', arch.legacy_hidden,
                                  arch.proxy_codes))
  else:
    out['head'] = _dense(_conv1x1(sd, 'decoder.ffn.0', dd, p * p * 3))
    w = sd.take('decoder.conv_out.weight', (3, 3, 3, 3))
    b = sd.take('decoder.conv_out.bias', (3,))
    if w is not None and b is not None:
      # Output in [0, 1] -> ours in [-1, 1]: x = 2 x01 - 1.
      out['out_conv'] = {'kernel': common.conv_from_torch(w) * 2,
                         'bias': b * 2 - 1}
  if arch.pixel_decoder:
    out['pixel_codebook'] = sd.take('pixel_quantize.embedding.weight',
                                    (arch.proxy_codes, arch.pixel_z))
    out['pixel_decoder'] = take_pixel_decoder(sd, arch)
  return out


def _fill_tree(want, have, path=()):
  """`want`'s structure (abstract pure dict) with `have`'s arrays."""
  if isinstance(want, dict):
    if not isinstance(have, dict):
      raise common.ConversionError(f'internal: no tensors for '
                                   f'{"/".join(map(str, path))}')
    extra = set(have) - set(want)
    if extra:
      raise common.ConversionError(f'internal: converted {sorted(extra)} under'
                                   f' {"/".join(map(str, path))}, which our '
                                   'model lacks')
    return {key: _fill_tree(value, have.get(key), path + (key,))
            for key, value in want.items()}
  if have is None:
    raise common.ConversionError(f'internal: no tensor for '
                                 f'{"/".join(map(str, path))}')
  have = np.asarray(have, np.float32)
  if tuple(have.shape) != tuple(want.shape):
    raise common.ConversionError(
        f'internal: {"/".join(map(str, path))} {have.shape} != {want.shape}')
  return have


def _abstract_params(config) -> dict:
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  return common.abstract_variables(lambda: registry.build_model(config))[0][0]


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None, image_size: int | None = None,
            overrides: tuple[str, ...] = (), lpips_dir: str | None = None,
            ignore: tuple[str, ...] = (), overwrite: bool = False) -> dict:
  """Converts a TiTok release checkpoint into a training workdir.

  Args:
    checkpoint: the release's state dict (`pytorch_model.bin`/.pt/.pth
      loadable with weights_only=True, `model.safetensors`, or .npz).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's YAML (configs/...) or config.json;
      without it the architecture is read off the tensor shapes.
    base_config: our config the workdir starts from (default
      configs/titok.py:s128).
    image_size: must equal the release's crop size when given.
    overrides: 'key=value' config overrides, applied last.
    lpips_dir: a `--from=lpips` output dir for the perceptual loss (else
      loss.perceptual_weight is set to 0).
    ignore: tensor-name prefixes to drop on purpose.
    overwrite: replace the checkpoints already in `workdir`.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  sd = common.StateDict(common.read_tensors(checkpoint),
                        f'TiTok checkpoint {checkpoint!r}')
  sd.skip_prefixes(ignore)
  arch = infer_arch(sd)
  notes = []
  if reference_config:
    arch = arch_from_config(common.read_config_file(reference_config), arch)
  else:
    notes.append(
        f'no reference config: heads = width / 64 (the release\'s sizes), '
        f'use_l2_norm={arch.use_l2_norm} and commitment_cost='
        f'{arch.commitment_cost} assumed (the release\'s values for '
        f'{"legacy" if arch.legacy else "single-stage"} models)')
  config = build_config(arch, base_config, image_size)
  if lpips_dir:
    common.use_lpips_files(config, lpips_dir)
  elif config.loss.perceptual_weight > 0:
    config.loss.perceptual_weight = 0.0
    notes.append('no --lpips_dir: loss.perceptual_weight set to 0 (the '
                 'release has no loss weights; run --from=lpips and pass '
                 '--lpips_dir to fine-tune with LPIPS)')
  notes.append('the release has no discriminator: it starts random')
  if arch.legacy and arch.pixel_decoder:
    notes.append(
        f'legacy two-stage release: the decoder predicts {arch.proxy_codes}-way'
        ' MaskGIT-VQGAN proxy codes (model.proxy_codes) whose softmax mixes '
        'pixel_quantize\'s codes for the fine-tuned MaskGIT-VQGAN pixel '
        'decoder (model.pixel_decoder); model.finetune_decoder=True and '
        'optim.frozen hold the encoder side fixed, as the release\'s stage 2')
  elif arch.legacy:
    notes.append(
        f'legacy two-stage release without its pixel decoder (no '
        f'pixel_quantize.* / pixel_decoder.*): the decoder predicts '
        f'{arch.proxy_codes}-way MaskGIT-VQGAN proxy codes (model.proxy_codes);'
        ' encode and decode_logits match the release, decode/evaluate/train '
        'raise')
  common.apply_overrides(config, overrides)

  params = take_params(sd, arch)
  sd.check_complete()
  gen = _fill_tree(_abstract_params(config), params)

  def fill(state):
    state['gen']['params'] = gen
    if common.flatten(state['ema']):
      state['ema'] = _fill_tree(state['ema'], gen)
    return state

  report = common.conversion_report(
      'titok', checkpoint, reference_config, arch, sd, notes,
      pixel_range=('release [0, 1] folded into patch_embed (and out_conv);'
                   ' pixel_decoder maps its [0, 1] output to [-1, 1]'))
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  return report
