"""`espeak_speech`: an offline TFDS speech dataset synthesised with eSpeak NG.

The `espeakng-loader` wheel ships the eSpeak NG shared library and its voice
data. `synthesize` drives the library through ctypes (synchronous mode, a
callback collecting 16-bit samples at 22 050 Hz), and `EspeakSpeech` is a
TFDS builder that renders a deterministic set of generated sentences in
several languages, voices, speeds and pitches into ArrayRecord files, built
once under the default data dir with no network and no TensorFlow:

  data_dir = build_espeak_speech(sample_rate=16000)
  ds = tfds.data_source('espeak_speech/16k', data_dir=data_dir)
  ds['train'][0]   # {'audio': int16 [N], 'sample_rate': 16000,
                   #  'text': b'...', 'voice': b'de+f2',
                   #  'language': b'de', 'rate': 163, 'pitch': 41}

Content. `generate_sentences(n, seed)` builds n distinct sentences from
small per-language grammars (English, German, French, Spanish, Italian; half
of them English). Sentence i is rendered once with a voice variant
(`VARIANTS`), a speed in words per minute (`RATE_RANGE`), a base pitch and a
pitch range, all drawn from a generator seeded with (seed, i); the 22 050 Hz
output is resampled to the configured rate with soxr (very high quality)
and stored as int16. Splits are by sentence: every `VAL_EVERY`-th sentence
is in `validation`, all others in `train`, so no sentence is in both.

Builds are atomic and locked as in `skimage_photos` (same helpers).

Dimension legend:
  N: samples of one utterance at the dataset's sample rate
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pathlib
import threading

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from tokenizers_jax.data import skimage_photos

DATASET_NAME = 'espeak_speech'
VERSION = '1.0.0'
ESPEAK_RATE = 22050
DEFAULT_SENTENCES = 600
VAL_EVERY = 10
LANGUAGES = ('en', 'en', 'en', 'en', 'de', 'fr', 'es', 'it')
VOICE_NAMES = {'en': ('en-us', 'en'), 'de': ('de',), 'fr': ('fr',),
               'es': ('es',), 'it': ('it',)}
VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'f1', 'f2', 'f3', 'f4',
            'f5')
RATE_RANGE = (120, 220)      # words per minute (eSpeak default 175)
PITCH_RANGE = (20, 80)       # eSpeak base pitch, 0-100 (default 50)
INTONATION_RANGE = (20, 90)  # eSpeak pitch range, 0-100 (default 50)

# eSpeak NG C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {'rate': 1, 'volume': 2, 'pitch': 3, 'range': 4}


# -----------------------------------------------------------------------------
# eSpeak NG through ctypes.
# -----------------------------------------------------------------------------


class _Espeak:
  """The process-wide eSpeak NG library (not thread-safe: one lock)."""

  _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                               ctypes.c_int, ctypes.c_void_p)

  def __init__(self):
    try:
      import espeakng_loader  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError('the embedded speech corpus needs the espeakng-loader '
                        'package (pip install espeakng-loader)') from e
    lib_path = espeakng_loader.get_library_path()
    data_path = espeakng_loader.get_data_path()
    if not os.path.exists(lib_path):
      raise FileNotFoundError(f'eSpeak NG library not found at {lib_path}')
    lib = ctypes.CDLL(lib_path)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int,
                                      ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int,
                                        ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p,
                                 ctypes.c_void_p]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 data_path.encode(), 0)
    if rate <= 0:
      raise RuntimeError(f'espeak_Initialize failed ({rate}) with data at '
                         f'{data_path}')
    self.sample_rate = rate
    self._lib = lib
    self._chunks: list[np.ndarray] = []
    self._callback = self._CALLBACK(self._collect)  # Kept alive here.
    lib.espeak_SetSynthCallback(self._callback)
    self.lock = threading.Lock()

  def _collect(self, wav, num_samples, events):
    del events
    if wav and num_samples > 0:
      self._chunks.append(
          np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0

  def synth(self, text: str, voice: str, rate: int, pitch: int,
            pitch_range: int) -> np.ndarray:
    with self.lock:
      if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f'eSpeak NG has no voice {voice!r} (expected a '
                         'language such as "en-us" optionally with a variant, '
                         'e.g. "en-us+f3")')
      for name, value in (('rate', rate), ('pitch', pitch),
                          ('range', pitch_range), ('volume', 100)):
        self._lib.espeak_SetParameter(_PARAM[name], int(value), 0)
      self._chunks = []
      data = text.encode('utf-8')
      err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0,
                                   _CHARS_UTF8, None, None)
      self._lib.espeak_Synchronize()
      if err != 0:
        raise RuntimeError(f'espeak_Synth failed ({err}) on {text!r}')
      chunks, self._chunks = self._chunks, []
    return (np.concatenate(chunks) if chunks
            else np.zeros((0,), np.int16)).astype(np.int16)


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Espeak:
  global _ENGINE
  with _ENGINE_LOCK:
    if _ENGINE is None:
      _ENGINE = _Espeak()
  return _ENGINE


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Band-limited resampling with soxr (float32 in, float32 out)."""
  if rate_in == rate_out:
    return np.asarray(x, np.float32)
  import soxr  # pylint: disable=g-import-not-at-top
  return soxr.resample(np.asarray(x, np.float32), rate_in, rate_out,
                       quality='VHQ').astype(np.float32)


def synthesize(text: str, voice: str = 'en-us', *, rate: int = 175,
               pitch: int = 50, pitch_range: int = 50,
               sample_rate: int | None = None) -> np.ndarray:
  """Speaks `text` with eSpeak NG; float32 [N] in [-1, 1].

  Args:
    text: UTF-8 text.
    voice: eSpeak voice name, a language ('en-us', 'de', ...) optionally with
      a variant ('en-us+f3').
    rate: speed in words per minute (80-450).
    pitch: base pitch 0-100.
    pitch_range: intonation range 0-100.
    sample_rate: output rate; None keeps eSpeak's 22 050 Hz.

  Raises:
    ValueError: empty text, unknown voice, parameters out of range.
  """
  if not text or not text.strip():
    raise ValueError('synthesize: empty text')
  if not 80 <= rate <= 450:
    raise ValueError(f'synthesize: rate must be 80-450 words/min; got {rate}')
  if not (0 <= pitch <= 100 and 0 <= pitch_range <= 100):
    raise ValueError(f'synthesize: pitch and pitch_range must be 0-100; got '
                     f'{pitch}, {pitch_range}')
  engine = _engine()
  wav = engine.synth(text, voice, rate, pitch, pitch_range)
  x = wav.astype(np.float32) / 32768.0
  if sample_rate is not None:
    x = resample(x, engine.sample_rate, sample_rate)
  return x


# -----------------------------------------------------------------------------
# Sentences.
# -----------------------------------------------------------------------------

_GRAMMARS = {
    'en': dict(
        subj=['the old man', 'my sister', 'a young doctor', 'the teacher',
              'our neighbour', 'the little girl', 'a tired farmer',
              'the captain', 'every student', 'the baker', 'my friend',
              'the musician', 'a quiet child', 'the pilot', 'her brother'],
        verb=['painted', 'carried', 'found', 'opened', 'watched', 'repaired',
              'cleaned', 'described', 'forgot', 'borrowed', 'followed',
              'counted', 'visited', 'bought', 'noticed'],
        obj=['a red bicycle', 'the wooden door', 'seven green apples',
             'the broken clock', 'a heavy suitcase', 'the yellow kite',
             'an empty bottle', 'the morning paper', 'a silver coin',
             'the tall ladder', 'twelve old letters', 'the village church'],
        tail=['before dinner', 'in the rain', 'near the river',
              'after the long journey', 'without a word', 'on Sunday morning',
              'at the station', 'under the bridge', 'quite slowly',
              'for the third time', 'in the garden', 'late at night'],
        q=['Did {s} really say that?', 'Why is {s} always so late?',
           'Where did {s} put {o}?']),
    'de': dict(
        subj=['der alte Mann', 'meine Schwester', 'ein junger Arzt',
              'die Lehrerin', 'unser Nachbar', 'das kleine Kind',
              'der Kapitän', 'mein Freund', 'die Bäckerin', 'der Pilot'],
        verb=['kaufte', 'reparierte', 'fand', 'öffnete', 'malte', 'trug',
              'suchte', 'brachte', 'zählte', 'vergaß'],
        obj=['ein rotes Fahrrad', 'die alte Uhr', 'sieben grüne Äpfel',
             'einen schweren Koffer', 'die Zeitung', 'eine leere Flasche',
             'den hölzernen Tisch', 'zwölf alte Briefe'],
        tail=['am Abend', 'im Regen', 'am Fluss', 'ohne ein Wort',
              'am Sonntag', 'im Garten', 'nach der Reise', 'sehr langsam'],
        q=['Hat {s} das wirklich gesagt?', 'Wo hat {s} {o} gelassen?']),
    'fr': dict(
        subj=['le vieil homme', 'ma soeur', 'un jeune médecin',
              "l'institutrice", 'notre voisin', 'la petite fille',
              'le capitaine', 'mon ami', 'la boulangère', 'le pilote'],
        verb=['a acheté', 'a réparé', 'a trouvé', 'a ouvert', 'a peint',
              'a porté', 'a cherché', 'a oublié', 'a compté', 'a vendu'],
        obj=['un vélo rouge', 'la vieille horloge', 'sept pommes vertes',
             'une lourde valise', 'le journal', 'une bouteille vide',
             'la table en bois', 'douze vieilles lettres'],
        tail=['avant le dîner', 'sous la pluie', 'près de la rivière',
              'sans un mot', 'dimanche matin', 'dans le jardin',
              'après le voyage', 'très lentement'],
        q=['Est-ce que {s} a vraiment dit cela?', 'Où {s} a-t-il mis {o}?']),
    'es': dict(
        subj=['el anciano', 'mi hermana', 'un joven médico', 'la maestra',
              'nuestro vecino', 'la niña', 'el capitán', 'mi amigo',
              'la panadera', 'el piloto'],
        verb=['compró', 'reparó', 'encontró', 'abrió', 'pintó', 'llevó',
              'buscó', 'olvidó', 'contó', 'vendió'],
        obj=['una bicicleta roja', 'el reloj viejo', 'siete manzanas verdes',
             'una maleta pesada', 'el periódico', 'una botella vacía',
             'la mesa de madera', 'doce cartas antiguas'],
        tail=['antes de la cena', 'bajo la lluvia', 'cerca del río',
              'sin decir nada', 'el domingo', 'en el jardín',
              'después del viaje', 'muy despacio'],
        q=['¿De verdad {s} dijo eso?', '¿Dónde dejó {s} {o}?']),
    'it': dict(
        subj=["l'uomo anziano", 'mia sorella', 'un giovane medico',
              'la maestra', 'il nostro vicino', 'la bambina', 'il capitano',
              'il mio amico', 'la fornaia', 'il pilota'],
        verb=['ha comprato', 'ha riparato', 'ha trovato', 'ha aperto',
              'ha dipinto', 'ha portato', 'ha cercato', 'ha dimenticato',
              'ha contato', 'ha venduto'],
        obj=['una bicicletta rossa', 'il vecchio orologio',
             'sette mele verdi', 'una valigia pesante', 'il giornale',
             'una bottiglia vuota', 'il tavolo di legno',
             'dodici vecchie lettere'],
        tail=['prima di cena', 'sotto la pioggia', 'vicino al fiume',
              'senza una parola', 'domenica mattina', 'nel giardino',
              'dopo il viaggio', 'molto lentamente'],
        q=['{s} ha detto davvero questo?', 'Dove ha messo {o} {s}?']),
}


def _one_sentence(lang: str, rng: np.random.Generator) -> str:
  g = _GRAMMARS[lang]
  pick = lambda key: g[key][int(rng.integers(len(g[key])))]
  s, o = pick('subj'), pick('obj')
  form = int(rng.integers(6))
  if form == 0:
    text = pick('q').format(s=s, o=o)
    return text[0].upper() + text[1:]
  text = f'{s} {pick("verb")} {o}'
  if form >= 2:
    text += f' {pick("tail")}'
  if form >= 4:
    joiner = {'en': 'and then', 'de': 'und dann', 'fr': 'et puis',
              'es': 'y luego', 'it': 'e poi'}[lang]
    text += f', {joiner} {pick("subj")} {pick("verb")} {pick("obj")}'
  return text[0].upper() + text[1:] + '.'


def generate_sentences(num: int, seed: int = 0) -> list[tuple[str, str]]:
  """`num` distinct (language, sentence) pairs, deterministic in `seed`."""
  if num < 1:
    raise ValueError(f'need >= 1 sentence; got {num}')
  rng = np.random.default_rng([seed, 7])
  out, seen = [], set()
  attempts = 0
  while len(out) < num:
    attempts += 1
    if attempts > 50 * num + 1000:
      raise ValueError(f'cannot generate {num} distinct sentences')
    lang = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
    text = _one_sentence(lang, rng)
    if text not in seen:
      seen.add(text)
      out.append((lang, text))
  return out


def rendering(index: int, lang: str, seed: int = 0) -> dict:
  """The voice, speed and pitch sentence `index` is spoken with."""
  rng = np.random.default_rng([seed, 11, index])
  names = VOICE_NAMES[lang]
  voice = names[int(rng.integers(len(names)))]
  variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
  return dict(voice=f'{voice}+{variant}',
              rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
              pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
              pitch_range=int(rng.integers(INTONATION_RANGE[0],
                                           INTONATION_RANGE[1] + 1)))


def split_of(index: int) -> str:
  return 'validation' if index % VAL_EVERY == VAL_EVERY - 1 else 'train'


# -----------------------------------------------------------------------------
# TFDS builder.
# -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, kw_only=True)
class EspeakSpeechConfig(tfds.core.BuilderConfig):
  """Sample rate, corpus size and seed of one build."""
  sample_rate: int = 16000
  num_sentences: int = DEFAULT_SENTENCES
  seed: int = 0


def config_name(sample_rate: int, num_sentences: int = DEFAULT_SENTENCES,
                seed: int = 0) -> str:
  """'16k' for the defaults at 16 kHz, else '16000_n12_s0'."""
  if (num_sentences, seed) == (DEFAULT_SENTENCES, 0) and sample_rate in (
      16000, 24000):
    return f'{sample_rate // 1000}k'
  return f'{sample_rate}_n{num_sentences}_s{seed}'


def make_config(sample_rate: int = 16000,
                num_sentences: int = DEFAULT_SENTENCES,
                seed: int = 0) -> EspeakSpeechConfig:
  if not 4000 <= sample_rate <= 48000:
    raise ValueError(f'sample_rate must be 4000-48000 Hz; got {sample_rate}')
  if num_sentences < 2:
    raise ValueError(f'num_sentences must be >= 2 (a train and a validation '
                     f'sentence); got {num_sentences}')
  name = config_name(sample_rate, num_sentences, seed)
  for config in EspeakSpeech.BUILDER_CONFIGS:
    if config.name == name:
      return config
  return EspeakSpeechConfig(
      name=name, sample_rate=sample_rate, num_sentences=num_sentences,
      seed=seed, description=f'{num_sentences} sentences at {sample_rate} Hz,'
                             f' seed {seed}.')


class EspeakSpeech(tfds.core.GeneratorBasedBuilder):
  """Generated sentences spoken by eSpeak NG in several voices."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'Initial release.'}
  BUILDER_CONFIGS = [
      EspeakSpeechConfig(name=f'{sr // 1000}k', sample_rate=sr,
                         description=f'{DEFAULT_SENTENCES} sentences at '
                                     f'{sr} Hz.')
      for sr in (16000, 24000)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '16k'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Sentences from small grammars in five languages, spoken '
                    'by eSpeak NG with varied voices, speeds and pitches; '
                    'train/validation split by sentence.',
        features=tfds.features.FeaturesDict({
            # A Tensor, not tfds.features.Audio: Audio needs TensorFlow.
            'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16),
            'sample_rate': np.int32,
            'text': tfds.features.Text(),
            'voice': tfds.features.Text(),
            'language': tfds.features.Text(),
            'rate': np.int32,
            'pitch': np.int32,
        }),
        homepage='https://github.com/espeak-ng/espeak-ng',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples('train'),
            'validation': self._generate_examples('validation')}

  def _generate_examples(self, split: str):
    cfg = self.builder_config
    for i, (lang, text) in enumerate(generate_sentences(cfg.num_sentences,
                                                        cfg.seed)):
      if split_of(i) != split:
        continue
      r = rendering(i, lang, cfg.seed)
      x = synthesize(text, r['voice'], rate=r['rate'], pitch=r['pitch'],
                     pitch_range=r['pitch_range'],
                     sample_rate=cfg.sample_rate)
      pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
      yield f'{i:06d}', {'audio': pcm, 'sample_rate': cfg.sample_rate,
                         'text': text, 'voice': r['voice'],
                         'language': lang, 'rate': r['rate'],
                         'pitch': r['pitch']}


def dataset_dir(data_dir: str, config: EspeakSpeechConfig) -> pathlib.Path:
  return pathlib.Path(data_dir) / DATASET_NAME / config.name / VERSION


def is_built(data_dir: str, config: EspeakSpeechConfig) -> bool:
  return (dataset_dir(data_dir, config) / 'dataset_info.json').exists()


def build_espeak_speech(data_dir: str | os.PathLike | None = None,
                        sample_rate: int = 16000, *,
                        num_sentences: int = DEFAULT_SENTENCES,
                        seed: int = 0) -> str:
  """Builds `espeak_speech/<config>` once in `data_dir`; returns data_dir.

  A no-op when already built. The default (600 sentences, ~34 min of
  speech) takes ~15 s and ~66 MB at 16 kHz.

  Args:
    data_dir: TFDS data dir; default `$TOKENIZERS_JAX_DATA_DIR`, else
      `~/.cache/tokenizers_jax/tfds`.
    sample_rate: stored sample rate (Hz).
    num_sentences: sentences (one utterance each; 1 in `VAL_EVERY` is
      validation).
    seed: sentence and rendering seed.
  """
  data_dir = skimage_photos.default_data_dir(data_dir)
  config = make_config(sample_rate, num_sentences, seed)
  skimage_photos.build_once(
      data_dir, f'{DATASET_NAME}_{config.name}', dataset_dir(data_dir, config),
      lambda tmp: EspeakSpeech(config=config, data_dir=str(tmp),
                               file_format='array_record'),
      lambda tmp: dataset_dir(str(tmp), config))
  return data_dir
