"""The audio task: waveform codecs (`models/audio_codec.py`) with GAN training.

  python -m tokenizers_jax.train --config=configs/audio_codec.py:tiny \
      --workdir=/tmp/audio

State: the training core's (`training/core.py`), `disc` the MPD + MRD
discriminator.

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

from tokenizers_jax import config_lib
from tokenizers_jax.data import audio as audio_data
from tokenizers_jax.evaluators import audio as audio_metrics
from tokenizers_jax.frontends.audio import AudioConfig
from tokenizers_jax.losses import adversarial
from tokenizers_jax.losses import spectral
from tokenizers_jax.models import registry
from tokenizers_jax.models.audio_discriminators import AudioDiscriminator
from tokenizers_jax.quantizers import functional as qf
from tokenizers_jax.training import core
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
  config_lib.upgrade(config)
  req(config.get('task') == 'audio', 'task', "must be 'audio'")
  tasks.check_model(config, 'audio')
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
  codec = registry.build_model(config, seed)
  disc = AudioDiscriminator(dtype=dtype, rngs=nnx.Rngs(seed + 1),
                            **_plain(config.disc))
  return codec, disc


def _disc_apply(disc, x):
  """MPD + MRD: (list of logits, list of feature lists)."""
  return disc(x)


def create(config, mesh):
  """Trainer, initial state on the mesh, and its shardings."""
  gen, disc = build_models(config)
  return core.build_state(config, mesh, gen, disc, disc_apply=_disc_apply)


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


def train_step(trainer, state: dict, batch: dict):
  """One generator and one discriminator update (see module docstring).

  The adversarial terms are multiplied by gate = (step >= disc_start), as in
  the image task. When `disc_start >= total_steps` no discriminator pass is
  compiled at all (`core.gan_enabled`; a reconstruction-only run, ~2.5x
  faster on CPU). A `lax.cond` between the two steps was tried: XLA on CPU
  ran the chosen branch ~5x slower than the same step outside a conditional.
  """
  cfg = trainer.config
  lc = cfg.loss
  sr = cfg.data.sample_rate
  scales = tuple(tuple(s) for s in lc.mel_scales)
  x = batch['audio'].astype(jnp.float32)
  stft_weight = _opt(lc, 'stft_weight', 0.0)

  def forward(params):
    gen = trainer.merge_gen(params, state['gen']['rest'])
    out = gen(x, train=True)
    x_hat = out.reconstruction.astype(jnp.float32)
    mel = spectral.multiscale_mel_l1(x, x_hat, sr, scales)
    loss = lc.mel_weight * mel
    mrstft = jnp.zeros((), jnp.float32)
    if stft_weight:
      mrstft = spectral.multires_stft_loss(
          x, x_hat, tuple(tuple(r) for r in lc.stft_resolutions))
      loss = loss + stft_weight * mrstft
    loss = core.weighted_terms(loss, out.terms, trainer.weights)
    new_rest, fwd_params = core.model_state(gen)
    return loss, x_hat, dict(out=out, mel=mel, mrstft=mrstft,
                             new_rest=new_rest, fwd_params=fwd_params)

  new_state, ok, aux, metrics = core.train_step(trainer, state, forward, x)
  out = aux['out']
  metrics.update({'train/recon': aux['mel'], 'train/mel': aux['mel'],
                  'train/mrstft': aux['mrstft'],
                  **{f'train/{k}': v for k, v in out.terms.items()}})
  return new_state, core.step_metrics(new_state, ok, metrics, out.metrics)


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
  replicated = NamedSharding(mesh, P())
  sr = config.data.sample_rate
  batch_size = config.data.eval_batch_size
  params = core.eval_params(state, config, use_ema)
  model = trainer.merge_gen(params, state['gen']['rest'], copy=False)
  k, levels = model.codebook_size, model.num_codebooks
  hop = model.hop

  @jax.jit
  def step(params, rest, batch):
    gen = trainer.merge_gen(params, rest)
    x, n, m = batch['audio'], batch['length'], batch['mask']
    out = gen(x, train=False, lengths=n)
    x_hat, qout = out.reconstruction, out.quantizer
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
  for batch in core.eval_batches(config, mesh, ds, batch_size, num_batches):
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
  bits = audio_metrics.bits_per_token([k] * levels)
  results = {
      'eval/mel_distance': float(per_all[:, 0].mean()),
      'eval/stft_distance': float(per_all[:, 1].mean()),
      'eval/si_snr': float(per_all[:, 2].mean()),
      'eval/pesq': float(np.mean(pesqs)) if pesqs else float('nan'),
      'eval/stoi': float(np.mean(stois)) if stois else float('nan'),
      'eval/pesq_failures': float(failures),
      **core.codebook_stats(counts),
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
    headline=('train/mel', 'quant/usage'),
    validate_config=validate_config,
    create=create,
    train_step=train_step,
    train_iterator=train_iterator,
    evaluate=evaluate,
)
