"""The audio task: waveform codecs (`models/audio_codec.py`) with GAN training.

  python -m tokenizers_jax.train --config=configs/audio_codec.py:tiny \
      --workdir=/tmp/audio

State (the conventions of `tasks.py`; `disc` is the MPD + MRD discriminator):

  state = {'step', 'gen': {'params', 'rest'}, 'gen_opt',
           'disc': {'params', 'rest'}, 'disc_opt', 'ema', 'rng',
           'nonfinite_consecutive', 'nonfinite_total'}

Train step (WavTokenizer / Vocos recipe): one generator update on
  mel_weight · multi-scale log-mel L1 + quantizer_weight · quantizer loss
  [+ stft_weight · multi-resolution STFT loss]
  + gate · (disc_weight · mean_d g_loss(D_d(x̂)) + fm_weight · FM)
(FM: feature matching)
then one discriminator update on mean_d d_loss(D_d(x), D_d(sg(x̂))) (hinge or
least squares from `losses/adversarial.py`). gate = step >= disc_start
(`adversarial.disc_start_gate`); with disc_start >= total_steps the
discriminator is not run at all. A
non-finite batch, loss or gradient leaves the state untouched, as in the image
task.

Evaluation: whole validation utterances, padded to one length with their
valid `length`; mel distance, MR-STFT distance and SI-SNR over valid samples
in the jitted step, PESQ (wideband) and STOI on the host, codebook usage
over valid frames, and the bitrate. Utterances where PESQ fails (e.g. no
speech detected) are counted in `eval/pesq_failures` and left out of the
mean.

Dimension legend:
  B: batch; N: samples; T: frames (N / hop); K: codebook size; Q: levels
"""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.data import audio as audio_data
from tokenizers_jax.evaluators import audio as audio_metrics
from tokenizers_jax.frontends.audio import AudioConfig
from tokenizers_jax.losses import adversarial
from tokenizers_jax.losses import spectral
from tokenizers_jax.models.audio_codec import AudioCodec
from tokenizers_jax.models.audio_discriminators import AudioDiscriminator
from tokenizers_jax.quantizers import functional as qf
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import tasks

Array = jax.Array


def _opt(cfg, key, default=None):
  return cfg[key] if key in cfg else default


def _plain(v):
  return v.to_dict() if hasattr(v, 'to_dict') else v


# -----------------------------------------------------------------------------
# Config, models, state.
# -----------------------------------------------------------------------------


def hop_of(config) -> int:
  return math.prod(config.model.frontend.strides)


def crop_length(config) -> int:
  """Training crop in samples: crop_seconds, rounded down to whole frames."""
  hop = hop_of(config)
  n = int(config.data.crop_seconds * config.data.sample_rate) // hop * hop
  return n


def validate_config(config) -> None:
  """Fails with a message naming the key for configs that cannot work."""
  req = config_lib.require
  req(config.get('task') == 'audio', 'task', "must be 'audio'")
  try:
    AudioConfig(**{k: tuple(v) if isinstance(v, list) else v
                   for k, v in _plain(config.model.frontend).items()})
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(f'config.model.frontend: {e}') from None
  tasks.check_quantizer_name(config)
  sr = config.data.sample_rate
  req(4000 <= sr <= 48000, 'data.sample_rate', f'{sr} Hz is not 4-48 kHz')
  hop = hop_of(config)
  req(crop_length(config) >= 2 * hop, 'data.crop_seconds',
      f'{config.data.crop_seconds} s is under two frames of hop {hop}')
  for n_fft, _ in config.loss.mel_scales:
    req(n_fft // 2 < crop_length(config), 'loss.mel_scales',
        f'n_fft {n_fft} needs crops longer than {n_fft // 2} samples')
  tasks.check_batch_fits_mesh(config, ('global_batch_size', 'eval_batch_size'))
  req(config.loss.gan_loss in adversarial.D_LOSSES, 'loss.gan_loss',
      f'must be one of {sorted(adversarial.D_LOSSES)}')
  req(_opt(config.loss, 'g_loss') in (None,) + tuple(adversarial.G_LOSSES),
      'loss.g_loss', f'must be None or one of {sorted(adversarial.G_LOSSES)}')
  req(config.loss.mel_weight >= 0 and config.loss.fm_weight >= 0,
      'loss', 'weights must be >= 0')
  req(0.0 <= config.ema_decay < 1.0, 'ema_decay', 'must be in [0, 1)')
  req(config.total_steps > 0, 'total_steps', 'must be positive')


def build_models(config, seed: int | None = None):
  """(AudioCodec, AudioDiscriminator) on the host."""
  seed = config.seed if seed is None else seed
  dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
  codec = AudioCodec(frontend=_plain(config.model.frontend),
                     quantizer=_plain(config.quantizer),
                     sample_rate=config.data.sample_rate, dtype=dtype,
                     rngs=nnx.Rngs(seed))
  disc = AudioDiscriminator(dtype=dtype, rngs=nnx.Rngs(seed + 1),
                            **_plain(config.disc))
  return codec, disc


def create(config, mesh):
  """Trainer, initial state on the mesh, and its shardings."""
  validate_config(config)
  gen, disc = build_models(config)
  gen_graph, gp, gr = steps_lib._split(gen)  # pylint: disable=protected-access
  disc_graph, dp, dr = steps_lib._split(disc)  # pylint: disable=protected-access
  trainer = steps_lib.Trainer(
      config, gen_graph, disc_graph,
      steps_lib.make_optimizer(config.optim, config.total_steps),
      steps_lib.make_optimizer(config.disc_optim, config.total_steps),
      None, ())
  rules = tuple(tuple(r) for r in config.sharding_rules)

  def sh(module, filt):
    return nnx.to_pure_dict(sharding_lib.state_shardings(
        nnx.state(module, filt), mesh, rules))

  replicated = NamedSharding(mesh, P())
  gen_sh = {'params': sh(gen, nnx.Param), 'rest': sh(gen, nnx.Not(nnx.Param))}
  disc_sh = {'params': sh(disc, nnx.Param),
             'rest': sh(disc, nnx.Not(nnx.Param))}
  host = {
      'step': jnp.zeros((), jnp.int32),
      'gen': {'params': gp, 'rest': gr},
      'disc': {'params': dp, 'rest': dr},
      'ema': jax.tree.map(np.array, gp) if config.ema_decay > 0 else {},
      'rng': jax.random.key_data(jax.random.PRNGKey(config.seed + 2)),
      'nonfinite_consecutive': jnp.zeros((), jnp.int32),
      'nonfinite_total': jnp.zeros((), jnp.int32),
  }
  shardings = {'step': replicated, 'gen': gen_sh, 'disc': disc_sh,
               'ema': gen_sh['params'] if config.ema_decay > 0 else {},
               'rng': replicated, 'nonfinite_consecutive': replicated,
               'nonfinite_total': replicated}
  state = jax.device_put(host, shardings)
  state['gen_opt'] = jax.jit(trainer.gen_tx.init)(state['gen']['params'])
  state['disc_opt'] = jax.jit(trainer.disc_tx.init)(state['disc']['params'])
  return trainer, state, jax.tree.map(lambda x: x.sharding, state)


def train_iterator(config):
  d = config.data
  ds = audio_data.make_audio_dataset(
      d.source, train=True, sample_rate=d.sample_rate,
      crop_length=crop_length(config), global_batch_size=d.global_batch_size,
      seed=config.seed, data_dir=d.data_dir,
      espeak_kwargs=dict(num_sentences=d.num_sentences),
      process_index=jax.process_index(), process_count=jax.process_count())
  return iter(ds)


# -----------------------------------------------------------------------------
# Train step.
# -----------------------------------------------------------------------------


def _mean(values) -> Array:
  return sum(values) / len(values)


def train_step(trainer, state: dict, batch: dict):
  """One generator and one discriminator update (see module docstring).

  The adversarial terms are multiplied by gate = (step >= disc_start), as in
  the image task. When `disc_start >= total_steps` no discriminator pass is
  compiled at all (a reconstruction-only run, ~2.5x faster on CPU). A
  `lax.cond` between the two steps was tried: XLA on CPU ran the chosen
  branch ~5x slower than the same step outside a conditional.
  """
  cfg = trainer.config
  return _step(trainer, state, batch,
               gan=cfg.loss.disc_start < cfg.total_steps)


def _step(trainer, state: dict, batch: dict, *, gan: bool):
  """The train step with (gan=True) or without the adversarial terms."""
  cfg = trainer.config
  lc = cfg.loss
  sr = cfg.data.sample_rate
  scales = tuple(tuple(s) for s in lc.mel_scales)
  x = batch['audio'].astype(jnp.float32)
  step = state['step']
  gate = adversarial.disc_start_gate(step, lc.disc_start)
  g_loss_fn = adversarial.get_g_loss(_opt(lc, 'g_loss') or lc.gan_loss)
  d_loss_fn = adversarial.get_d_loss(lc.gan_loss)
  stft_weight = _opt(lc, 'stft_weight', 0.0)
  zero = jnp.zeros((), jnp.float32)

  def adversarial_terms(x_hat):
    disc = trainer.merge_disc(state['disc']['params'], state['disc']['rest'])
    logits_fake, feats_fake = disc(x_hat)
    _, feats_real = disc(x)
    g_adv = _mean([g_loss_fn(l) for l in logits_fake])
    return g_adv, spectral.feature_matching(feats_real, feats_fake)

  def gen_loss(params):
    gen = trainer.merge_gen(params, state['gen']['rest'])
    x_hat, qout = gen(x, train=True)
    x_hat = x_hat.astype(jnp.float32)
    mel = spectral.multiscale_mel_l1(x, x_hat, sr, scales)
    loss = lc.mel_weight * mel + lc.quantizer_weight * qout.loss
    mrstft = zero
    if stft_weight:
      mrstft = spectral.multires_stft_loss(
          x, x_hat, tuple(tuple(r) for r in lc.stft_resolutions))
      loss = loss + stft_weight * mrstft
    g_adv, fm = adversarial_terms(x_hat) if gan else (zero, zero)
    loss = loss + gate * (lc.disc_weight * g_adv + lc.fm_weight * fm)
    aux = dict(x_hat=x_hat, mel=mel, mrstft=mrstft, g_adv=g_adv, fm=fm,
               qout=qout,
               new_rest=nnx.to_pure_dict(nnx.state(gen, nnx.Not(nnx.Param))),
               fwd_params=jax.lax.stop_gradient(
                   nnx.to_pure_dict(nnx.state(gen, nnx.Param))))
    return loss, aux

  (total, aux), grads = jax.value_and_grad(gen_loss, has_aux=True)(
      state['gen']['params'])
  updates, new_gen_opt = trainer.gen_tx.update(grads, state['gen_opt'],
                                               aux['fwd_params'])
  new_gen_params = optax.apply_updates(aux['fwd_params'], updates)

  x_fake = jax.lax.stop_gradient(aux['x_hat'])

  def disc_loss(params):
    disc = trainer.merge_disc(params, state['disc']['rest'])
    real, _ = disc(x)
    fake, _ = disc(x_fake)
    loss = gate * _mean([d_loss_fn(r, f) for r, f in zip(real, fake)])
    return loss, (_mean([jnp.mean(r.astype(jnp.float32)) for r in real]),
                  _mean([jnp.mean(f.astype(jnp.float32)) for f in fake]))

  def disc_update(_):
    (loss, (r, f)), g = jax.value_and_grad(disc_loss, has_aux=True)(
        state['disc']['params'])
    upd, opt = trainer.disc_tx.update(g, state['disc_opt'],
                                      state['disc']['params'])
    return (optax.apply_updates(state['disc']['params'], upd), opt, loss, r, f,
            steps_lib._global_norm(g))  # pylint: disable=protected-access

  def disc_skip(_):
    return (state['disc']['params'], state['disc_opt'], zero, zero, zero,
            zero)

  new_disc_params, new_disc_opt, d_loss, real_mean, fake_mean, d_norm = (
      disc_update(None) if gan else disc_skip(None))

  decay = cfg.ema_decay
  new_ema = (tasks.ema_update(state['ema'], new_gen_params, decay) if decay > 0
             else {})
  g_norm = steps_lib._global_norm(grads)  # pylint: disable=protected-access
  ok = (jnp.all(jnp.isfinite(x)) & jnp.isfinite(total) & jnp.isfinite(d_loss)
        & jnp.isfinite(g_norm) & jnp.isfinite(d_norm))
  proposed = {
      'step': step + 1,
      'gen': {'params': new_gen_params, 'rest': aux['new_rest']},
      'gen_opt': new_gen_opt,
      'disc': {'params': new_disc_params, 'rest': state['disc']['rest']},
      'disc_opt': new_disc_opt,
      'ema': new_ema,
      'rng': state['rng'],
      'nonfinite_consecutive': jnp.zeros((), jnp.int32),
      'nonfinite_total': state['nonfinite_total'],
  }
  skipped = dict(state, step=step + 1,
                 nonfinite_consecutive=state['nonfinite_consecutive'] + 1,
                 nonfinite_total=state['nonfinite_total'] + 1)
  new_state = steps_lib._tree_where(ok, proposed, skipped)  # pylint: disable=protected-access
  qout = aux['qout']
  metrics = {
      'train/loss': total,
      'train/recon': aux['mel'],
      'train/mel': aux['mel'],
      'train/mrstft': aux['mrstft'],
      'train/quantizer_loss': qout.loss,
      'train/g_adv': aux['g_adv'],
      'train/feature_matching': aux['fm'],
      'train/d_loss': d_loss,
      'train/logits_real': real_mean,
      'train/logits_fake': fake_mean,
      'train/grad_norm': g_norm,
      'train/skipped': 1 - ok.astype(jnp.int32),
      'train/nonfinite_consecutive': new_state['nonfinite_consecutive'],
  }
  for k, v in qout.metrics.items():
    metrics[f'quant/{k}'] = v
  return new_state, metrics


# -----------------------------------------------------------------------------
# Evaluation.
# -----------------------------------------------------------------------------


def eval_dataset(config, batch_size: int | None = None):
  d = config.data
  eval_len = _opt(d, 'eval_length')
  return audio_data.make_audio_dataset(
      d.source, train=False, sample_rate=d.sample_rate,
      global_batch_size=batch_size or d.eval_batch_size,
      eval_length=eval_len if eval_len and eval_len > 0 else None,
      pad_multiple=hop_of(config), data_dir=d.data_dir,
      espeak_kwargs=dict(num_sentences=d.num_sentences),
      process_index=jax.process_index(), process_count=jax.process_count())


def spectrogram_picture(x: np.ndarray, x_hat: np.ndarray, sample_rate: int,
                        n_fft: int = 512) -> np.ndarray:
  """uint8 [H, W, 3]: log-mel spectrograms of x (top) and x_hat (bottom)."""
  def mel(v):
    m = np.asarray(spectral.log_mel(jnp.asarray(v), sample_rate, n_fft,
                                    n_fft // 4, 80))
    return m.T[::-1]
  a, b = mel(x), mel(x_hat)
  lo, hi = np.percentile(a, 1), a.max()
  to8 = lambda m: np.clip((m - lo) / max(hi - lo, 1e-6) * 255, 0, 255)
  sep = np.full((2, a.shape[1]), 255.0)
  pic = np.concatenate([to8(a), sep, to8(b)], 0).astype(np.uint8)
  return np.repeat(pic[..., None], 3, axis=-1)


def evaluate(trainer, state, config, mesh, *, use_ema: bool = True,
             num_batches: int | None = None):
  """Metrics over the validation split (see module docstring)."""
  from tokenizers_jax.training.train import batch_sharding, to_global  # pylint: disable=g-import-not-at-top
  sharding = batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  sr = config.data.sample_rate
  batch_size = config.data.eval_batch_size
  use_ema = use_ema and config.ema_decay > 0
  params = state['ema'] if use_ema else state['gen']['params']
  model = trainer.merge_gen(params, state['gen']['rest'], copy=False)
  k, levels = model.codebook_size, model.num_codebooks
  hop = model.hop

  @jax.jit
  def step(params, rest, batch):
    gen = trainer.merge_gen(params, rest)
    x, n, m = batch['audio'], batch['length'], batch['mask']
    x_hat, qout = gen(x, train=False, lengths=n)
    valid = jnp.arange(x.shape[1])[None, :] < n[:, None]
    x_hat = jnp.where(valid, jnp.clip(x_hat.astype(jnp.float32), -1, 1), 0.0)
    per = jnp.stack([audio_metrics.mel_distance(x, x_hat, sr, n),
                     audio_metrics.stft_distance(x, x_hat, sr, n),
                     audio_metrics.si_snr(x, x_hat, n)], -1)
    idx = qout.indices.reshape(x.shape[0], -1, levels)
    fmask = gen.frame_mask(n, x.shape[1]) & m[:, None]
    counts = jnp.stack([qf.code_counts(idx[..., g], k, fmask)
                        for g in range(levels)])
    return jax.lax.with_sharding_constraint(
        (per, counts, x_hat, x, n, m), replicated)

  ds = eval_dataset(config)
  per_all, lens, refs, recs = [], [], [], []
  counts = np.zeros((levels, k))
  for i, local in enumerate(ds):
    if num_batches is not None and num_batches >= 0 and i >= num_batches:
      break
    batch = to_global(local, sharding, batch_size)
    per, c, x_hat, x, n, m = jax.device_get(
        step(params, state['gen']['rest'], batch))
    counts += c
    for j in np.nonzero(m)[0]:
      per_all.append(per[j])
      lens.append(int(n[j]))
      refs.append(x[j, :n[j]])
      recs.append(x_hat[j, :n[j]])
  if not per_all:
    raise ValueError('evaluation saw no utterances (empty validation split?)')
  per_all = np.asarray(per_all, np.float64)
  pesqs, stois, failures = [], [], 0
  compute_pesq = _opt(config.eval, 'pesq', True)
  compute_stoi = _opt(config.eval, 'stoi', True)
  for ref, rec in zip(refs, recs):
    if compute_pesq:
      try:
        pesqs.append(audio_metrics.pesq_wb(ref, rec, sr))
      except ValueError:
        failures += 1
    if compute_stoi:
      stois.append(audio_metrics.stoi(ref, rec, sr))
  probs = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
  ent = -np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-30)),
                         0), -1)
  bits = audio_metrics.bits_per_token([k] * levels)
  results = {
      'eval/mel_distance': float(per_all[:, 0].mean()),
      'eval/stft_distance': float(per_all[:, 1].mean()),
      'eval/si_snr': float(per_all[:, 2].mean()),
      'eval/pesq': float(np.mean(pesqs)) if pesqs else float('nan'),
      'eval/stoi': float(np.mean(stois)) if stois else float('nan'),
      'eval/pesq_failures': float(failures),
      'eval/codebook_usage': float(np.mean((counts > 0).mean(-1))),
      'eval/perplexity': float(np.mean(np.exp(ent))),
      'eval/tokens_per_second': sr / hop,
      'eval/bits_per_token': bits,
      'eval/bitrate_bps': audio_metrics.bitrate(sr, hop, [k] * levels),
      'eval/num_utterances': float(len(lens)),
      'eval/seconds': float(sum(lens) / sr),
  }
  picture = spectrogram_picture(refs[0], recs[0], sr)
  return results, picture


TASK = tasks.Task(
    name='audio',
    validate_config=validate_config,
    create=create,
    train_step=train_step,
    train_iterator=train_iterator,
    evaluate=evaluate,
)
