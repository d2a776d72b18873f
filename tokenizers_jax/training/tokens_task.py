"""The tokens task: token generators (MaskGIT, autoregressive) trained on a
pretokenized dataset (`python -m tokenizers_jax.pretokenize`), on the same
training core as the tokenizers (no discriminator).

  python -m tokenizers_jax.train --config=configs/maskgit.py:tiny \
      --config.data.dir=/tmp/tokens --workdir=/tmp/maskgit

`validate_config` reads `data.dir/manifest.json` and records what the model
and the sampler need in `config.tokens` (codebook size, token shape,
levels, classes, the tokenizer's workdir and step), so the generator's
config.json describes it without the data.

Batches: {'tokens': int32 [b, *token_shape], 'label': int32 [b], 'mask':
bool [b]} (+ 'valid': bool [b, L] for audio crops, `data.crop_tokens`, and
for EEG windows, whose positions in padding patches are not valid).

Evaluation over the held-out split (the tokenizer's validation split, or
`eval.split`; audio: the first `data.crop_tokens` tokens of each
utterance):
  eval/bits_per_image (audio, EEG: eval/bits_per_example per utterance
      crop or window, and eval/bits_per_second of signal)
      negative log-likelihood with the null label, in bits: exact for the
      autoregressive model; for MaskGIT the any-order upper bound
      (`models/maskgit.py`), estimated with `eval.elbo_samples` stratified
      mask sizes per example (fixed keys);
  eval/bits_per_token, eval/nll_nats_per_token (the same per token),
  eval/bits_per_image_cond with the examples' labels (labelled data),
  eval/uniform_bits_per_image = L Q log2 K (the raw tokens' size);
  MaskGIT also eval/masked_ce (the training objective, fixed key).
With `eval.inception_path` (images): eval/gfid against the validation
split's images (those that were pretokenized) and eval/inception_score over `eval.num_fid_samples`
samples. The picture is a grid of samples decoded by the tokenizer (EEG:
a plot of one sampled window, decoded with the tokenizer's running signal
statistics).

Dimension legend: B batch; L positions; Q levels; K codebook size.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from tokenizers_jax import config_lib
from tokenizers_jax.data import tokens as tokens_lib
from tokenizers_jax.models import registry
from tokenizers_jax.training import core
from tokenizers_jax.training import tasks

LN2 = math.log(2.0)


# -----------------------------------------------------------------------------
# Config.
# -----------------------------------------------------------------------------


def token_facts(manifest: dict, crop_tokens: int = 0) -> dict:
  """config.tokens from a manifest (audio: the crop length fixes T)."""
  shape = list(manifest['token_shape'])
  if shape and shape[0] is None:
    if not crop_tokens:
      raise config_lib.ConfigError(
          'config.data.crop_tokens: variable-length tokens (audio) need a '
          'crop length in tokens (e.g. 100 = 1 s at 100 tokens/s)')
    shape[0] = int(crop_tokens)
  facts = {
      'modality': manifest['modality'],
      'codebook_size': int(manifest['codebook_size']),
      'token_shape': tuple(int(s) for s in shape),
      'num_levels': int(manifest['num_levels']),
      'level_kind': manifest['level_kind'],
      'num_classes': int(manifest['num_classes']),
      'train_labels': tuple(int(l) for l in manifest['splits']['train']
                            .get('labels', ())),
      'tokenizer_workdir': manifest['tokenizer_workdir'] or '',
      'tokenizer_step': int(manifest['tokenizer_step'] or 0),
      'tokens_per_second': float(manifest.get('tokens_per_second', 0.0)),
      # The dataset the held-out tokens came from (gFID's real images).
      'validation_source': manifest['splits'].get('validation', {}).get(
          'source') or '',
  }
  return facts


def validate_config(config) -> None:
  """Reads the manifest of `data.dir` into config.tokens; fails with a
  message naming the key for configs that cannot work."""
  req = config_lib.require
  tasks.check_model(config, 'tokens')
  d = config.data
  req(bool(d.dir), 'data.dir', 'set it to the output of python -m '
      'tokenizers_jax.pretokenize')
  try:
    manifest = tokens_lib.read_manifest(d.dir)
  except FileNotFoundError as e:
    raise config_lib.ConfigError(f'config.data.dir: {e}') from None
  splits = manifest.get('splits', {})
  for split in ('train', 'validation'):
    req(split in splits, 'data.dir',
        f'{d.dir} has no pretokenized {split!r} split; run python -m '
        f'tokenizers_jax.pretokenize --split={split} with the same --output')
  facts = token_facts(manifest, d.get('crop_tokens', 0))
  old = config.get('tokens', None)
  if old is not None and old.get('codebook_size'):
    for key in ('codebook_size', 'token_shape', 'num_levels'):
      req(tuple(np.atleast_1d(old[key])) == tuple(np.atleast_1d(facts[key])),
          f'tokens.{key}', f'{old[key]} recorded, {facts[key]} in the '
          f'manifest of {d.dir}')
  with config.unlocked():
    config.tokens = ml_collections.ConfigDict(facts, type_safe=False)
  m = config.model
  req(m.width % m.num_heads == 0, 'model.width',
      f'{m.width} not divisible by num_heads={m.num_heads}')
  req(0.0 <= m.label_dropout < 1.0, 'model.label_dropout', 'must be in [0, 1)')
  tasks.check_batch_fits_mesh(config, ('global_batch_size', 'eval_batch_size'))
  req(0.0 <= config.ema_decay < 1.0, 'ema_decay', 'must be in [0, 1)')
  req(config.total_steps > 0, 'total_steps', 'must be positive')
  req(config.eval.elbo_samples >= 1, 'eval.elbo_samples', 'at least 1')


def create(config, mesh):
  """(trainer, state on the mesh, state shardings)."""
  return core.build_state(config, mesh, registry.build_model(config))


# -----------------------------------------------------------------------------
# Training.
# -----------------------------------------------------------------------------


def train_step(trainer: core.Trainer, state: dict, batch: dict):
  """One update of the generator; a non-finite loss or gradient skips it."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']),
                           state['step'])

  def forward(params):
    model = trainer.merge_gen(params, state['gen']['rest'])
    out = model(batch['tokens'], labels=batch['label'],
                valid=batch.get('valid'), train=True, rng=rng)
    loss = core.weighted_terms(jnp.zeros((), jnp.float32), out.terms,
                               trainer.weights)
    new_rest, fwd_params = core.model_state(model)
    return loss, loss, dict(out=out, new_rest=new_rest, fwd_params=fwd_params)

  grads, aux, adv = core.generator_grads(trainer, state, forward,
                                         batch['tokens'])
  params, gen_opt, ema = core.generator_update(trainer, state, grads,
                                               aux['fwd_params'])
  ok = core.all_finite(adv['total'], grads)
  new_state = core.commit(state, dict(
      gen={'params': params, 'rest': aux['new_rest']}, gen_opt=gen_opt,
      ema=ema), ok)
  out = aux['out']
  metrics = {'train/loss': adv['total'],
             'train/grad_norm': optax.tree.norm(grads),
             'train/ce': out.terms['ce'],
             'train/bits_per_token': out.terms['ce'] / LN2}
  return new_state, core.step_metrics(new_state, ok, metrics, out.metrics)


def dataset(config, train: bool, batch_size: int | None = None):
  """Training batches, or one evaluation pass over `eval.split` (default
  'validation'; 'train' measures how much of the training data is
  memorised)."""
  d = config.data
  split = None if train else (config.eval.get('split', None) or 'validation')
  return tokens_lib.make_token_dataset(
      d.dir, split=split, train=train,
      global_batch_size=batch_size or (d.global_batch_size if train
                                       else d.eval_batch_size),
      seed=config.seed, crop_tokens=d.get('crop_tokens', 0) or None,
      process_index=jax.process_index(), process_count=jax.process_count())


def train_iterator(config):
  return iter(dataset(config, train=True))


# -----------------------------------------------------------------------------
# Evaluation.
# -----------------------------------------------------------------------------

_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(config):
  """The generator's tokenizer (cached), or None when its workdir is gone."""
  path = config.tokens.tokenizer_workdir
  if not path or not os.path.isdir(path):
    return None
  if path not in _TOKENIZERS:
    from tokenizers_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    _TOKENIZERS[path] = Tokenizer.from_workdir(path)
  return _TOKENIZERS[path]


def sample_kwargs(config, model) -> dict:
  s = config.sample
  kw = dict(temperature=float(s.temperature), top_k=int(s.top_k) or None,
            guidance_scale=float(s.guidance_scale))
  if model.kind == 'maskgit':
    kw.update(num_steps=int(s.num_steps),
              choice_temperature=float(s.choice_temperature))
  return kw


def grid_labels(config, n: int) -> np.ndarray:
  """Labels for n samples: the training split's labels in turn (-1, the
  null label, when unlabelled)."""
  present = tuple(config.tokens.train_labels)
  if not config.tokens.num_classes or not present:
    return np.full((n,), -1, np.int32)
  return np.asarray([present[i % len(present)] for i in range(n)], np.int32)


def make_sampler(trainer, config, mesh, use_ema: bool = True):
  """jit (state, key, labels [B]) -> tokens [B, *token_shape], replicated
  (every process can read and decode them)."""

  def sample(state, key, labels):
    params = core.eval_params(state, config, use_ema)
    gen = trainer.merge_gen(params, state['gen']['rest'])
    return gen.generate(key, labels, **sample_kwargs(config, gen))

  return jax.jit(sample, out_shardings=NamedSharding(mesh, P()))


def evaluate(trainer, state, config, mesh, *, use_ema: bool = True,
             num_batches: int | None = None):
  """Held-out NLL in bits, samples and (with Inception weights) gFID/IS."""
  bsz = config.data.eval_batch_size
  rep = NamedSharding(mesh, P())
  facts = config.tokens
  elbo_samples = int(config.eval.elbo_samples)
  base_key = jax.random.PRNGKey(config.seed + 5)
  kind = registry.model_class(config.model_name).kind

  @jax.jit
  def step(state, batch, key):
    params = core.eval_params(state, config, use_ema)
    gen = trainer.merge_gen(params, state['gen']['rest'])
    t, m = batch['tokens'], batch['mask'].astype(jnp.float32)
    valid = batch.get('valid')
    b = t.shape[0]
    n_pos = (jnp.sum(valid, -1) if valid is not None else
             jnp.full((b,), gen.seq_len)).astype(jnp.float32)
    sums = {}
    if kind == 'ar':
      nll = gen.nll(t, None, valid)
      nll_cond = gen.nll(t, batch['label'], valid)
    else:
      nll = nll_cond = 0.0
      k_u = jax.random.uniform(jax.random.fold_in(key, 1), (b,))
      for s in range(elbo_samples):
        # Stratified mask sizes k in 1..L_valid, one per stratum.
        k = jnp.floor((s + k_u) / elbo_samples * n_pos).astype(jnp.int32) + 1
        ks = jax.random.fold_in(key, 2 + s)
        nll = nll + gen.elbo(t, None, ks, k, valid) / elbo_samples
        nll_cond = nll_cond + gen.elbo(t, batch['label'], ks, k,
                                       valid) / elbo_samples
      out = gen(t, labels=None, valid=valid, train=False,
                rng=jax.random.fold_in(key, 0))
      sums['masked_nll'] = jnp.sum(out.aux['nll'] * m)
      sums['masked_count'] = jnp.sum(out.aux['count'] * m)
    sums['nll'] = jnp.sum(nll * m)
    sums['nll_cond'] = jnp.sum(nll_cond * m)
    sums['tokens'] = jnp.sum(n_pos * gen.num_levels * m)
    sums['positions'] = jnp.sum(n_pos * m)
    sums['examples'] = jnp.sum(m)
    return jax.lax.with_sharding_constraint(sums, rep)

  totals = None
  for i, batch in enumerate(core.eval_batches(config, mesh,
                                              dataset(config, train=False),
                                              bsz, num_batches)):
    totals = core.add_sums(totals, step(state, batch,
                                        jax.random.fold_in(base_key, i)))
  if totals is None:
    raise ValueError('evaluation saw no token examples (empty split?)')
  n = max(float(totals['examples']), 1.0)
  ntok = max(float(totals['tokens']), 1.0)
  bits = float(totals['nll']) / LN2
  per = 'image' if facts.modality == 'image' else 'example'
  results = {
      f'eval/bits_per_{per}': bits / n,
      'eval/bits_per_token': bits / ntok,
      'eval/nll_nats_per_token': float(totals['nll']) / ntok,
      f'eval/uniform_bits_per_{per}': (
          float(totals['tokens']) / n * math.log2(facts.codebook_size)),
      'eval/num_examples': n,
  }
  if facts.num_classes:
    results[f'eval/bits_per_{per}_cond'] = float(totals['nll_cond']) / LN2 / n
  if facts.modality in ('audio', 'eeg') and facts.tokens_per_second:
    seconds = float(totals['positions']) / facts.tokens_per_second
    results['eval/bits_per_second'] = bits / max(seconds, 1e-9)
  if kind == 'maskgit':
    results['eval/masked_ce'] = float(totals['masked_nll']) / max(
        float(totals['masked_count']), 1.0)
  picture = None
  tok = (load_tokenizer(config) if facts.modality in ('image', 'eeg')
         else None)
  if tok is not None:
    sampler = make_sampler(trainer, config, mesh, use_ema)
    k = int(config.num_grid_images)
    labels = jnp.asarray(grid_labels(config, k))
    ids = np.asarray(jax.device_get(sampler(state, base_key, labels)))
    if facts.modality == 'eeg':
      picture = eeg_sample_plot(tok, ids[:1])
    else:
      picture = sample_grid(np.asarray(tok.decode(ids)))
      if _inception_path(config):
        results.update(generation_metrics(config, tok, sampler, state))
  return results, picture


def sample_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
  """uint8 [rows * S, cols * S, 3] grid of images [N, S, S, 3] in [-1, 1]."""
  n, s = images.shape[0], images.shape[1]
  cols = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.full((rows * s, cols * s, 3), 255, np.uint8)
  u8 = np.clip((np.asarray(images) + 1) * 127.5, 0, 255).round().astype(
      np.uint8)
  for i in range(n):
    r, c = divmod(i, cols)
    grid[r * s:(r + 1) * s, c * s:(c + 1) * s] = u8[i]
  return grid


def eeg_sample_plot(tok, ids: np.ndarray):
  """uint8 plot of the first sampled EEG window (None without matplotlib)."""
  from tokenizers_jax.data import eeg  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import eeg_task  # pylint: disable=g-import-not-at-top
  x = np.asarray(tok.decode(ids[:1]))[0]
  return eeg_task.plot_window(x, None, list(tok.config.data.channels),
                              eeg.SFREQ)


def _inception_path(config):
  ev = config.get('eval', None)
  return ev.get('inception_path', None) if ev is not None else None


_REAL_STATS: dict[tuple, Any] = {}


def generation_metrics(config, tok, sampler, state) -> dict:
  """gFID against the validation split's images and the Inception
  Score, over `eval.num_fid_samples` samples."""
  from tokenizers_jax.evaluators import fid as fid_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.evaluators import generation as gen_metrics  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import image_task  # pylint: disable=g-import-not-at-top
  path = _inception_path(config)
  net = image_task.load_inception(path)
  classifier = gen_metrics.load_classifier(path)
  bsz = int(config.data.eval_batch_size)
  cache_key = (path, config.tokens.tokenizer_workdir,
               config.tokens.get('validation_source', ''))
  real = _REAL_STATS.get(cache_key)
  if real is None:
    real = fid_lib.FeatureStats(2048)
    examples = tokens_lib.tokenizer_examples(
        tok.config, 'validation',
        source=config.tokens.get('validation_source') or None)
    for start in range(0, len(examples), bsz):
      x = np.stack([examples[i]['input'] for i in
                    range(start, min(start + bsz, len(examples)))])
      real.add(np.asarray(net.features(x)))
    _REAL_STATS[cache_key] = real
  fake = fid_lib.FeatureStats(2048)
  logits = []
  num = int(config.eval.num_fid_samples)
  key = jax.random.PRNGKey(config.seed + 7)
  for i in range(math.ceil(num / bsz)):
    labels = jnp.asarray(np.roll(grid_labels(config, bsz), -i))
    ids = np.asarray(jax.device_get(sampler(state, jax.random.fold_in(key, i),
                                            labels)))
    feats = np.asarray(net.features(np.asarray(tok.decode(ids))))
    feats = feats[:max(0, min(bsz, num - i * bsz))]
    fake.add(feats)
    if classifier is not None:
      logits.append(gen_metrics.class_logits(feats, classifier))
  out = {'eval/gfid': fid_lib.fid_from_features(real, fake),
         'eval/num_fid_samples': float(num)}
  if logits:
    mean, std = gen_metrics.inception_score(np.concatenate(logits))
    out['eval/inception_score'] = mean
    out['eval/inception_score_std'] = std
  return out


def eval_note(config) -> str | None:
  notes = []
  if config.get('model_name') == 'maskgit':
    notes.append('MaskGIT bits per image are the any-order upper bound on '
                 'the NLL (no exact likelihood)')
  if config.get('tokens', {}).get('modality') == 'image' and not (
      _inception_path(config)):
    notes.append('gFID and IS not computed: no FID Inception weights file '
                 '(set config.eval.inception_path to a local '
                 'pt_inception-2015-12-05 state dict)')
  return '; '.join(notes) or None


TASK = tasks.Task(
    name='tokens',
    headline=('train/bits_per_token', 'quant/accuracy'),
    validate_config=validate_config,
    create=create,
    train_step=train_step,
    train_iterator=train_iterator,
    evaluate=evaluate,
    eval_note=eval_note,
)
