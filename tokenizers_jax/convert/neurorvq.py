"""NeuroRVQ EEG tokenizer checkpoints -> our NeuroRVQ workdirs.

  python -m tokenizers_jax.convert --from=neurorvq \
      --checkpoint=NeuroRVQ_EEG_tokenizer_v1.pt \
      --reference_config=flags/NeuroRVQ_EEG_v1.yml --workdir=/tmp/neurorvq_v1

The release (`KonstantinosBarmpas/NeuroRVQ`, `NeuroRVQTokenizer.state_dict()`,
a plain torch state dict) maps onto `models/neurorvq.py: NeuroRVQ`:

  NeuroRVQ                                      ours (gen params unless rest)
  encoder.patch_embed.conv{j}_{g}.weight [K,I,1,k]  frontend/branches/{g-1}/convs/{j-1}/kernel [k,I,K]
  encoder.patch_embed.norm{j}_{g}.*             frontend/branches/{g-1}/norms/{j-1}/*
  {encoder,decoder}.cls_token [1,1,D]           frontend/{encoder,decoder}/cls [1,D]
  {encoder,decoder}.pos_embed [E+1,D]           .../spatial
  {encoder,decoder}.time_embed [N,D]            .../temporal
  *.blocks.{i}.norm1 / norm2                    .../blocks/{i}/norm1 / norm2
  *.blocks.{i}.attn.qkv.weight (+ q_bias, v_bias)  .../blocks/{i}/qkv (bias [q_bias, 0, v_bias])
  *.blocks.{i}.attn.q_norm / k_norm / proj      .../blocks/{i}/q_norm / k_norm / proj
  *.blocks.{i}.mlp.fc1 / fc2                    .../blocks/{i}/fc1 / fc2
  *.blocks.{i}.gamma_1 / gamma_2 (layer scale)  folded into proj / fc2 (columns and bias)
  encoder.fc_norm_{g} (head_{g}: Identity)      frontend/enc_norms/{g-1} (enc_heads: identity)
  encode_task_layer_{g}.0 / .2                  frontend/to_code/{g-1}/0 / 1
  decoder.patch_embed_{g}.proj [D,E,1,1]        frontend/dec_in/{g-1} [E,D]
  decoder.fc_norm_{g} (head_{g}: Identity)      frontend/dec_norms/{g-1} (dec_heads: identity)
  decode_task_layer_amplitude / angle_sin / angle_cos .0 / .2
                                                frontend/amp_head / sin_head / cos_head 0 / 1
  quantize_{g}.layers.{l}.embedding.weight      rest: quantizers/{g-1}/levels/{l}/codebook
  quantize_{g}.layers.{l}.cluster_size          rest: .../cluster_size (floored at 1) and
                                                embed_avg = codebook * cluster_size

Dropped on purpose: `quantize_*.layers.*.embedding.{cluster_size,embed_avg}`
(the k-means initialisation's leftovers, which the release's EMA never reads)
and `.embedding.initted` (must be 1: a trained codebook).

The model options that make the converted model compute the release's
function (models/neurorvq.py RELEASE_OPTIONS): the release's electrode list
(`ch_names_global`, 103 names for EEG v1; channel ids are 0-based indices in
it), temporal embeddings right-aligned (a window of A patches uses the last A
of `n_patches`, as the release's `create_embedding_ix`), LayerNorm epsilon
1e-5 (torch's default; qk-norm 1e-6), GroupNorm epsilon 1e-5 with statistics
over all patches and channels of an example (the release's GroupNorm runs on
a [B, K, C*A, T] image).

The architecture is read off the tensor shapes; `--reference_config` (the
release's `flags/NeuroRVQ_EEG_v1.yml`) is checked against them.

Dimension legend: G branches (4), K conv channels, D width, E code dimension,
N n_patches (max patches), L RVQ levels, V codes per level.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tokenizers_jax.convert import common

# `ch_names_global` of the release's EEG v1 inference code (103 names, in
# order: the spatial embedding row of a channel is its index here).
EEG_V1_ELECTRODES = (
    'a1 a2 af3 af4 af7 af8 afz c1 c2 c3 c4 c5 c6 ccp1 ccp2 ccp3 ccp4 ccp5 '
    'ccp6 ccp7 ccp8 cfc1 cfc2 cfc3 cfc4 cfc5 cfc6 cfc7 cfc8 cp1 cp2 cp3 cp4 '
    'cp5 cp6 cpz cz eog f1 f10 f2 f3 f4 f5 f6 f7 f8 f9 fc1 fc2 fc3 fc4 fc5 '
    'fc6 fcz fp1 fp2 fpz ft7 ft8 fz iz loc o1 o2 oz p08 p1 p10 p2 p3 p4 p5 '
    'p6 p7 p8 p9 po1 po10 po2 po3 po4 po7 po8 po9 poz pz roc sp1 sp2 t1 t10 '
    't2 t3 t4 t5 t6 t7 t8 t9 tp10 tp7 tp8 tp9').split()
# The release's LayerNorm (torch default) and GroupNorm epsilons.
TORCH_EPS = 1e-5
# The release's RVQ (beta = 1.0, decay 0.99, k-means init; hard-coded).
BETA, DECAY = 1.0, 0.99
_HEADS = {'amp_head': 'decode_task_layer_amplitude',
          'sin_head': 'decode_task_layer_angle_sin',
          'cos_head': 'decode_task_layer_angle_cos'}
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}


@dataclasses.dataclass(frozen=True)
class NeuroRVQArch:
  """A NeuroRVQ tokenizer's architecture (the fields of its YAML flags)."""
  branches: tuple[tuple[int, int], ...]
  out_chans: int
  embed_dim: int
  depth: int
  decoder_depth: int
  num_heads: int
  mlp_ratio: float
  qkv_bias: bool
  layer_scale: bool
  code_dim: int
  n_code: int
  num_quantizers: int
  n_patches: int
  n_global_electrodes: int
  patch_size: int
  enc_head: bool  # encoder.head_{g} is a Linear (num_classes = D), not Identity.
  dec_head: bool


# -----------------------------------------------------------------------------
# Architecture.
# -----------------------------------------------------------------------------


def _count(sd: common.StateDict, pattern: str, start: int = 0) -> int:
  n = 0
  while pattern.format(n + start) in sd:
    n += 1
  return n


def _need(sd: common.StateDict, name: str, what: str = '') -> tuple:
  if name not in sd:
    raise common.ConversionError(
        f'{name} not found: not a NeuroRVQ tokenizer state dict{what} (its '
        f'keys start with {sd.names()[:6]})')
  return sd.shape(name)


def infer_arch(sd: common.StateDict) -> NeuroRVQArch:
  """The architecture read off the tensor shapes."""
  for name in ('encoder.pos_embed', 'decoder.pos_embed',
               'encoder.patch_embed.conv1_1.weight',
               'encode_task_layer_1.2.weight',
               'decode_task_layer_amplitude.2.weight',
               'quantize_1.layers.0.embedding.weight'):
    _need(sd, name)
  if 'encoder.head_pre_1.weight' in sd or 'head_pre_1.weight' in sd:
    raise common.ConversionError('this is a NeuroRVQ foundation model '
                                 '(head_pre_*), not the tokenizer')
  g = _count(sd, 'encoder.patch_embed.conv1_{}.weight', 1)
  branches = []
  for i in range(1, g + 1):
    w1 = _need(sd, f'encoder.patch_embed.conv1_{i}.weight')
    w2 = _need(sd, f'encoder.patch_embed.conv2_{i}.weight')
    if len(w1) != 4 or w1[1] != 1 or w1[2] != 1 or w2[2] != 1:
      raise common.ConversionError(
          f'encoder.patch_embed.conv1_{i}/conv2_{i}: shapes {w1}, {w2} are not '
          'single-input (1, k) temporal convs')
    if w1[3] % 2 == 0 or w2[3] % 2 == 0:
      raise common.ConversionError(f'branch {i}: even kernel ({w1[3]}, '
                                   f'{w2[3]}); the release pads k // 2')
    branches.append((w1[3], w2[3]))
  out_chans = sd.shape('encoder.patch_embed.conv1_1.weight')[0]
  if out_chans % 4:
    raise common.ConversionError(f'{out_chans} conv channels: the release\'s '
                                 'GroupNorm(4) needs a multiple of 4')
  n_glob1, d = sd.shape('encoder.pos_embed')
  n_patches = _need(sd, 'encoder.time_embed')[0]
  if (sd.shape('decoder.pos_embed') != (n_glob1, d)
      or _need(sd, 'decoder.time_embed') != (n_patches, d)):
    raise common.ConversionError(
        'the decoder\'s pos_embed/time_embed differ in shape from the '
        'encoder\'s; our model shares n_patches and the electrode list')
  depth = _count(sd, 'encoder.blocks.{}.norm1.weight')
  dec_depth = _count(sd, 'decoder.blocks.{}.norm1.weight')
  if depth < 1 or dec_depth < 1:
    raise common.ConversionError(f'encoder depth {depth}, decoder depth '
                                 f'{dec_depth}: no transformer blocks found')
  qn = 'encoder.blocks.0.attn.q_norm.weight'
  if qn not in sd:
    raise common.ConversionError(
        f'{qn} not found: the release normalises q and k (qk_norm); a model '
        'without it has no counterpart here')
  head_dim = sd.shape(qn)[0]
  if d % head_dim:
    raise common.ConversionError(f'width {d} is not a multiple of the head '
                                 f'dimension {head_dim}')
  hidden = _need(sd, 'encoder.blocks.0.mlp.fc1.weight')[0]
  code_dim = sd.shape('encode_task_layer_1.2.weight')[0]
  n_code = sd.shape('quantize_1.layers.0.embedding.weight')[0]
  levels = _count(sd, 'quantize_1.layers.{}.embedding.weight')
  patch = sd.shape('decode_task_layer_amplitude.2.weight')[0]
  if patch % 8 or (patch // 8) * out_chans != d:
    raise common.ConversionError(
        f'decoder_out_dim {patch} with {out_chans} conv channels gives '
        f'(P/8)*K = {(patch // 8) * out_chans}, not embed_dim {d}: the '
        'release flattens the branch output as the transformer width')
  for i in range(2, g + 1):
    got = _count(sd, f'quantize_{i}.layers.{{}}.embedding.weight')
    if got != levels:
      raise common.ConversionError(f'quantize_{i} has {got} levels, '
                                   f'quantize_1 {levels}')
  if _count(sd, 'quantize_{}.layers.0.embedding.weight', 1) != g:
    raise common.ConversionError(f'{g} conv branches but a different number '
                                 'of quantize_* RVQs')

  def head(prefix):
    if f'{prefix}.head_1.weight' not in sd:
      return False
    shape = sd.shape(f'{prefix}.head_1.weight')
    if shape != (d, d):
      raise common.ConversionError(
          f'{prefix}.head_1.weight is {shape}: the tokenizer\'s branch heads '
          f'must be Identity (num_classes=0) or [{d}, {d}]')
    return True

  return NeuroRVQArch(
      branches=tuple(branches), out_chans=out_chans, embed_dim=d, depth=depth,
      decoder_depth=dec_depth, num_heads=d // head_dim,
      mlp_ratio=hidden / d,
      qkv_bias='encoder.blocks.0.attn.q_bias' in sd,
      layer_scale='encoder.blocks.0.gamma_1' in sd, code_dim=code_dim,
      n_code=n_code, num_quantizers=levels, n_patches=n_patches,
      n_global_electrodes=n_glob1 - 1, patch_size=patch,
      enc_head=head('encoder'), dec_head=head('decoder'))


def check_config(cfg: dict, arch: NeuroRVQArch) -> None:
  """The release's YAML flags (flags/NeuroRVQ_EEG_v1.yml) against the
  tensors; a difference is an error naming the key."""
  want = {'patch_size': arch.patch_size, 'n_patches': arch.n_patches,
          'embed_dim': arch.embed_dim, 'code_dim': arch.code_dim,
          'n_code': arch.n_code, 'out_chans_encoder': arch.out_chans,
          'depth_encoder': arch.depth, 'depth_decoder': arch.decoder_depth,
          'decoder_out_dim': arch.patch_size,
          'num_heads_tokenizer': arch.num_heads,
          'mlp_ratio_tokenizer': arch.mlp_ratio,
          'qkv_bias_tokenizer': arch.qkv_bias,
          'n_global_electrodes': arch.n_global_electrodes}
  diffs = []
  for key, value in want.items():
    if key in cfg and cfg[key] != value and not (
        isinstance(value, float) and abs(float(cfg[key]) - value) < 1e-6):
      diffs.append(f'{key}: config {cfg[key]!r}, tensors {value!r}')
  if 'init_values_tokenizer' in cfg and (
      float(cfg['init_values_tokenizer'] or 0) > 0) != arch.layer_scale:
    diffs.append(f'init_values_tokenizer: config {cfg["init_values_tokenizer"]}'
                 f', tensors {"with" if arch.layer_scale else "without"} '
                 'gamma_1/gamma_2')
  if cfg.get('in_chans_encoder', 1) != 1:
    diffs.append(f'in_chans_encoder: {cfg["in_chans_encoder"]} (only 1)')
  if diffs:
    raise common.ConversionError('the reference config does not describe '
                                 'this checkpoint: ' + '; '.join(diffs))


# -----------------------------------------------------------------------------
# Our config.
# -----------------------------------------------------------------------------


def quantizer_config(arch: NeuroRVQArch) -> dict:
  """The release's RVQ of NormEMAVectorQuantizers in our options."""
  return dict(name='rvq', num_quantizers=arch.num_quantizers,
              codebook_size=arch.n_code, quantizer='vq', use_cosine_sim=True,
              ema_update=True, kmeans_init=True, decay=DECAY,
              commitment_weight=BETA)


def _num_patches(want: int, segment: int, max_patches: int) -> int:
  for n in range(min(want, max_patches), 0, -1):
    if segment % n == 0:
      return n
  return 1


def build_config(arch: NeuroRVQArch, electrodes, base_config=None):
  """configs/neurorvq.py:paper with the release's architecture."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = common.load_base_config(base_config or common.default_base_config(
      'neurorvq.py:paper'))
  c.model_name = 'neurorvq'
  c.model.update(
      patch_size=arch.patch_size, max_patches=arch.n_patches,
      branches=arch.branches, conv_channels=arch.out_chans,
      embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
      decoder_depth=arch.decoder_depth, mlp_ratio=float(arch.mlp_ratio),
      code_dim=arch.code_dim, loss='neurorvq')
  c.model.electrodes = tuple(electrodes)
  c.model.temporal_align = 'right'
  c.model.norm_eps = TORCH_EPS
  c.model.group_norm_eps = TORCH_EPS
  c.model.group_norm_scope = 'example'
  c.quantizer = ml_collections.ConfigDict(quantizer_config(arch),
                                          type_safe=False)
  c.data.dataset.patch_size = arch.patch_size
  seg = c.data.dataset.get('segment_patches', 16)
  c.data.num_patches = _num_patches(c.data.num_patches, seg, arch.n_patches)
  return c


# -----------------------------------------------------------------------------
# Tensors.
# -----------------------------------------------------------------------------


def _block(sd, arch, prefix: str, leaf_path: tuple, shape: tuple):
  """One transformer-block leaf of ours from `prefix` = '{T}.blocks.{i}'."""
  module, leaf = leaf_path
  d = arch.embed_dim
  if module in ('norm1', 'norm2'):
    return sd.take(f'{prefix}.{module}.{_LEAF[leaf]}', shape)
  if module in ('q_norm', 'k_norm'):
    return sd.take(f'{prefix}.attn.{module}.{_LEAF[leaf]}', shape)
  if module == 'qkv':
    if leaf == 'kernel':
      w = sd.take(f'{prefix}.attn.qkv.weight', (3 * d, d))
      return None if w is None else w.T
    if not arch.qkv_bias:
      return np.zeros(shape, np.float32)
    qb = sd.take(f'{prefix}.attn.q_bias', (d,))
    vb = sd.take(f'{prefix}.attn.v_bias', (d,))
    if qb is None or vb is None:
      return None
    return np.concatenate([qb, np.zeros_like(qb), vb])
  source = {'proj': ('attn.proj', 'gamma_1'), 'fc1': ('mlp.fc1', None),
            'fc2': ('mlp.fc2', 'gamma_2')}[module]
  name, gamma_name = source
  w_shape = tuple(shape[::-1]) if leaf == 'kernel' else shape
  w = sd.take(f'{prefix}.{name}.{_LEAF[leaf]}', w_shape)
  if w is None:
    return None
  w = w.T if leaf == 'kernel' else w
  if gamma_name and arch.layer_scale:
    # x + gamma * (W h + b) = x + (W * gamma) h + gamma * b.
    gamma = sd.take(f'{prefix}.{gamma_name}', (d,))
    if gamma is None:
      return None
    w = w * (gamma[None, :] if leaf == 'kernel' else gamma)
  return w


def _identity_head(sd, arch, name: str, present: bool, leaf: str, shape):
  if present:
    w = sd.take(f'{name}.{_LEAF[leaf]}', shape[::-1] if leaf == 'kernel'
                else shape)
    return None if w is None else (w.T if leaf == 'kernel' else w)
  del arch
  return (np.eye(shape[0], dtype=np.float32) if leaf == 'kernel'
          else np.zeros(shape, np.float32))


def param_value(sd: common.StateDict, arch: NeuroRVQArch, path: tuple,
                shape: tuple):
  """Our generator parameter at `path` (shape `shape`) from the release."""
  if path[0] != 'frontend':
    raise common.ConversionError(f'{"/".join(map(str, path))}: no NeuroRVQ '
                                 'counterpart')
  part, rest = path[1], path[2:]
  if part == 'branches':
    g, kind, j, leaf = rest
    if kind == 'convs':
      base = f'encoder.patch_embed.conv{j + 1}_{g + 1}'
      if leaf == 'bias':
        return sd.take(f'{base}.bias', shape)
      k, cin, cout = shape
      w = sd.take(f'{base}.weight', (cout, cin, 1, k))
      return None if w is None else np.transpose(w[:, :, 0, :], (2, 1, 0))
    return sd.take(f'encoder.patch_embed.norm{j + 1}_{g + 1}.{_LEAF[leaf]}',
                   shape)
  if part in ('encoder', 'decoder'):
    if rest[0] == 'cls':
      v = sd.take(f'{part}.cls_token', (1, 1, shape[-1]))
      return None if v is None else v.reshape(shape)
    if rest[0] in ('spatial', 'temporal'):
      name = 'pos_embed' if rest[0] == 'spatial' else 'time_embed'
      return sd.take(f'{part}.{name}', shape)
    if rest[0] == 'blocks':
      return _block(sd, arch, f'{part}.blocks.{rest[1]}', rest[2:], shape)
  if part in ('enc_norms', 'dec_norms'):
    t = 'encoder' if part == 'enc_norms' else 'decoder'
    return sd.take(f'{t}.fc_norm_{rest[0] + 1}.{_LEAF[rest[1]]}', shape)
  if part in ('enc_heads', 'dec_heads'):
    t = 'encoder' if part == 'enc_heads' else 'decoder'
    present = arch.enc_head if part == 'enc_heads' else arch.dec_head
    return _identity_head(sd, arch, f'{t}.head_{rest[0] + 1}', present,
                          rest[1], shape)
  if part == 'to_code':
    g, j, leaf = rest
    name = f'encode_task_layer_{g + 1}.{2 * j}.{_LEAF[leaf]}'
    w = sd.take(name, shape[::-1] if leaf == 'kernel' else shape)
    return None if w is None else (w.T if leaf == 'kernel' else w)
  if part == 'dec_in':
    g, leaf = rest
    base = f'decoder.patch_embed_{g + 1}.proj'
    if leaf == 'bias':
      return sd.take(f'{base}.bias', shape)
    w = sd.take(f'{base}.weight', (shape[1], shape[0], 1, 1))
    return None if w is None else w[:, :, 0, 0].T
  if part in _HEADS:
    j, leaf = rest
    name = f'{_HEADS[part]}.{2 * j}.{_LEAF[leaf]}'
    w = sd.take(name, shape[::-1] if leaf == 'kernel' else shape)
    return None if w is None else (w.T if leaf == 'kernel' else w)
  raise common.ConversionError(f'{"/".join(map(str, path))}: no NeuroRVQ '
                               'counterpart')


def take_codebooks(sd: common.StateDict, arch: NeuroRVQArch) -> dict:
  """{(g, l): (codebook [V, E], cluster_size [V])}, checking unit norms."""
  out, bad = {}, []
  v, e = arch.n_code, arch.code_dim
  for g in range(len(arch.branches)):
    for l in range(arch.num_quantizers):
      base = f'quantize_{g + 1}.layers.{l}'
      cb = sd.take(f'{base}.embedding.weight', (v, e))
      cs = (sd.take(f'{base}.cluster_size', (v,))
            if f'{base}.cluster_size' in sd else None)
      for extra in ('embedding.cluster_size', 'embedding.embed_avg'):
        sd.skip(f'{base}.{extra}')
      if f'{base}.embedding.initted' in sd:
        initted = sd.tensors[f'{base}.embedding.initted']
        sd.skip(f'{base}.embedding.initted')
        if not np.all(np.asarray(initted) > 0):
          raise common.ConversionError(
              f'{base}.embedding.initted is 0: this codebook was never '
              'initialised (an untrained tokenizer)')
      if cb is None:
        continue
      norms = np.linalg.norm(cb, axis=-1)
      if np.max(np.abs(norms - 1.0)) > 1e-3:
        bad.append(f'{base}.embedding.weight (row norms '
                   f'{norms.min():.4f}..{norms.max():.4f})')
      out[g, l] = (cb, np.ones((v,), np.float32) if cs is None else cs)
  if bad:
    raise common.ConversionError(
        'codebooks that are not l2-normalised (the release keeps them unit '
        'norm; our cosine quantizer would renormalise them and give other '
        'tokens): ' + ', '.join(bad))
  return out


def _abstract_model(config):
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  return common.abstract_variables(lambda: registry.build_model(config))[0]


# -----------------------------------------------------------------------------
# Import.
# -----------------------------------------------------------------------------


def convert(checkpoint: str, workdir: str, *,
            reference_config: str | None = None,
            base_config: str | None = None,
            overrides: tuple[str, ...] = (), ignore: tuple[str, ...] = (),
            overwrite: bool = False, electrodes=None, channels=None,
            **unused) -> dict:
  """Converts a NeuroRVQ tokenizer state dict into a training workdir.

  Args:
    checkpoint: the release's state dict (`NeuroRVQ_EEG_tokenizer_v1.pt`,
      loadable with weights_only=True; or .safetensors / .npz).
    workdir: the output workdir (must not hold checkpoints yet).
    reference_config: the release's YAML flags, checked against the tensors.
    base_config: our config the workdir starts from (default
      configs/neurorvq.py:paper).
    overrides: 'key=value' config overrides, applied last (e.g.
      "data.channels=('Fp1','Cz','O2')").
    ignore: tensor-name prefixes to drop on purpose.
    overwrite: replace the checkpoints already in `workdir`.
    electrodes: the release's electrode list (`ch_names_global`); default
      the EEG v1 list when the checkpoint has its 103 (+1) spatial rows.
    channels: data.channels (default: the base config's).
    **unused: options of other converters (image_size, lpips_dir): ignored.

  Returns:
    The conversion report (also written to workdir/conversion.json).
  """
  unused = {k: v for k, v in unused.items() if v not in (None, (), '')}
  if unused:
    raise common.ConversionError(f'--from=neurorvq does not take '
                                 f'{sorted(unused)}')
  sd = common.StateDict(common.read_tensors(checkpoint),
                        f'NeuroRVQ checkpoint {checkpoint!r}')
  sd.skip_prefixes(ignore)
  arch = infer_arch(sd)
  if reference_config:
    check_config(common.read_config_file(reference_config), arch)
  if electrodes is None:
    if arch.n_global_electrodes != len(EEG_V1_ELECTRODES):
      raise common.ConversionError(
          f'the checkpoint has {arch.n_global_electrodes} electrodes (+1 '
          f'spatial rows), not the EEG v1 list\'s {len(EEG_V1_ELECTRODES)}: '
          'pass electrodes=[...] (the release\'s ch_names_global, in order)')
    electrodes = EEG_V1_ELECTRODES
  electrodes = tuple(str(e) for e in electrodes)
  if len(electrodes) != arch.n_global_electrodes:
    raise common.ConversionError(
        f'{len(electrodes)} electrode names for {arch.n_global_electrodes} '
        'spatial embeddings')
  config = build_config(arch, electrodes, base_config)
  if channels is not None:
    config.data.channels = tuple(channels)
  common.apply_overrides(config, overrides)
  from tokenizers_jax.models import neurorvq as model_lib  # pylint: disable=g-import-not-at-top
  try:
    ids = model_lib.release_channel_ids(config.data.channels, electrodes)
  except ValueError as e:
    raise common.ConversionError(f'config.data.channels: {e}') from None

  params, rest = _abstract_model(config)
  gen = common.map_tree(params, lambda p, leaf: param_value(sd, arch, p,
                                                      tuple(leaf.shape)))
  codebooks = take_codebooks(sd, arch)
  sd.check_complete()

  def fill_rest(path, value):
    value = np.array(value)
    if path[0] == 'quantizers' and path[2] == 'levels':
      cb, cs = codebooks[path[1], path[3]]
      cs = np.maximum(cs, 1.0).astype(np.float32)
      return {'codebook': cb, 'cluster_size': cs,
              'embed_avg': cb * cs[:, None],
              'initialized': np.ones((), bool)}.get(path[4], value)
    return value

  def fill(state):
    state['gen']['params'] = gen
    state['gen']['rest'] = common.map_tree(state['gen']['rest'], fill_rest)
    if common.flatten(state['ema']):
      state['ema'] = common.map_tree(gen, lambda p, v: np.array(v))
    return state

  notes = [
      'enc_heads/dec_heads: identity (the release\'s heads are Identity, '
      'num_classes=0); they train from there when fine-tuning'
      if not (arch.enc_head and arch.dec_head) else '',
      'layer scale (gamma_1/gamma_2) folded into proj and fc2'
      if arch.layer_scale else '',
      'qkv bias is [q_bias, 0, v_bias] (the k part is a trainable zero)'
      if arch.qkv_bias else 'no q_bias/v_bias: qkv bias set to zero',
      'EMA codebook state: cluster_size = the release\'s quantizer-level '
      'cluster_size floored at 1, embed_avg = codebook * cluster_size',
      'amp_stats (decode without stats) keep their default [0, 1]',
  ]
  report = common.conversion_report(
      'neurorvq', checkpoint, reference_config, arch, sd,
      [n for n in notes if n], channels=list(config.data.channels),
      channel_ids=list(ids))
  common.write_workdir(workdir, config, fill, overwrite=overwrite,
                       report=report)
  return report
