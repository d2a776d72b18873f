"""Tests for tokenizers_jax.data.speech (eSpeak NG corpus).

References: speech timing (syllable rate; duration inversely proportional to
the speaking rate), an energy/voicing check against silence, and the split
rule (disjoint sentences) on a tiny build in a temporary directory.

Dimension legend:
  N: samples
"""

import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_datasets as tfds

from tokenizers_jax.data import speech

TEXT = 'The quick brown fox jumps over the lazy dog near the river bank.'


class SynthesizeTest(absltest.TestCase):

  def test_non_silent_speech_of_expected_duration(self):
    words = len(TEXT.split())
    durations = {}
    for rate in (120, 240):
      x = speech.synthesize(TEXT, 'en-us', rate=rate, sample_rate=16000)
      self.assertEqual(x.dtype, np.float32)
      dur = len(x) / 16000
      durations[rate] = dur
      # eSpeak speaks `rate` words per minute (plus a short final pause).
      expected = words / rate * 60
      self.assertBetween(dur, 0.7 * expected, 1.4 * expected + 0.3)
      # Non-silent: loud frames throughout, RMS well above the noise floor,
      # and most energy in the speech band (100 Hz - 4 kHz).
      frames = x[:len(x) // 320 * 320].reshape(-1, 320)
      rms = np.sqrt(np.mean(frames ** 2, -1))
      self.assertGreater(np.mean(rms > 0.01), 0.5)
      spec = np.abs(np.fft.rfft(x)) ** 2
      f = np.fft.rfftfreq(len(x), 1 / 16000)
      band = spec[(f > 100) & (f < 4000)].sum() / spec.sum()
      self.assertGreater(band, 0.8)
    # Twice the rate: about half the duration.
    self.assertBetween(durations[120] / durations[240], 1.6, 2.4)

  def test_voices_differ_and_bad_voice(self):
    a = speech.synthesize('Hello there.', 'en-us+m1')
    b = speech.synthesize('Hello there.', 'en-us+f3', pitch=80)
    n = min(len(a), len(b))
    self.assertGreater(np.abs(a[:n] - b[:n]).mean(), 0.01)
    with self.assertRaisesRegex(ValueError, 'no voice'):
      speech.synthesize('Hello.', 'xx-nonexistent')
    with self.assertRaisesRegex(ValueError, 'empty text'):
      speech.synthesize('  ')
    with self.assertRaisesRegex(ValueError, 'rate'):
      speech.synthesize('Hello.', rate=10)


class CorpusTest(absltest.TestCase):

  def test_sentences_deterministic_distinct_multilingual(self):
    a = speech.generate_sentences(200, seed=3)
    self.assertEqual(a, speech.generate_sentences(200, seed=3))
    self.assertNotEqual(a, speech.generate_sentences(200, seed=4))
    self.assertLen({t for _, t in a}, 200)
    self.assertEqual({l for l, _ in a}, {'en', 'de', 'fr', 'es', 'it'})

  def test_tiny_build_split_by_sentence(self):
    with tempfile.TemporaryDirectory() as tmp:
      data_dir = speech.build_espeak_speech(tmp, 16000, num_sentences=12)
      name = speech.config_name(16000, 12)
      ds = tfds.data_source(f'espeak_speech/{name}', data_dir=data_dir)
      train, val = ds['train'], ds['validation']
      self.assertEqual((len(train), len(val)), (11, 1))
      texts = {r['text'] for r in train}
      self.assertNotIn(val[0]['text'], texts)
      sentences = speech.generate_sentences(12)
      self.assertEqual(val[0]['text'].decode(), sentences[9][1])
      r = train[0]
      self.assertEqual(r['audio'].dtype, np.int16)
      self.assertEqual(int(r['sample_rate']), 16000)
      self.assertGreater(np.abs(r['audio']).max(), 1000)
      # Building again is a no-op (same directory, nothing rebuilt).
      self.assertEqual(speech.build_espeak_speech(tmp, 16000,
                                                  num_sentences=12), data_dir)


if __name__ == '__main__':
  absltest.main()
