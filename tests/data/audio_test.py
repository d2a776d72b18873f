"""Tests for tokenizers_jax.data.audio (sources, checks, grain pipelines).

References: files written with soundfile (and a hand-truncated WAV), the
known frequency of a resampled tone, and the crop/padding arithmetic.

Dimension legend:
  B: batch; N: samples; C: channels; L: crop / eval length
"""

import pathlib
import tempfile

from absl.testing import absltest
import numpy as np
import soundfile

from tokenizers_jax.data import audio

SR = 16000


def _tone(seconds, rate, freq=440.0, channels=1):
  t = np.arange(int(seconds * rate)) / rate
  x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
  return np.stack([x] * channels, -1) if channels > 1 else x


class LoadWaveformTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    root = pathlib.Path(cls.tmp.name)
    soundfile.write(root / 'good.wav', _tone(1.0, SR), SR)
    soundfile.write(root / 'hi.flac', _tone(1.0, 48000, 1000.0), 48000)
    soundfile.write(root / 'low.wav', _tone(1.0, 8000), 8000)
    soundfile.write(root / 'stereo.wav', _tone(1.0, SR, channels=2), SR)
    soundfile.write(root / 'silent.wav', np.zeros(SR, np.float32), SR)
    data = (root / 'good.wav').read_bytes()
    (root / 'truncated.wav').write_bytes(data[:30])  # Header cut short.
    cls.root = root

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def _record(self, name):
    x, rate = soundfile.read(self.root / name, dtype='float32',
                             always_2d=True)
    return {'audio': x, 'sample_rate': rate, 'id': name}

  def test_good_file_and_resampling(self):
    x = audio.load_waveform(self._record('good.wav'), SR)
    self.assertEqual(x.shape, (SR,))
    y = audio.load_waveform(self._record('hi.flac'), SR)
    self.assertEqual(y.shape, (SR,))
    # The 1 kHz tone is still at 1 kHz after 48 -> 16 kHz.
    spec = np.abs(np.fft.rfft(y))
    self.assertAlmostEqual(np.fft.rfftfreq(SR, 1 / SR)[spec.argmax()], 1000.0)
    # int16 PCM is scaled by 1/32768.
    z = audio.load_waveform({'audio': np.array([16384, -32768, 0], np.int16),
                             'sample_rate': SR}, SR)
    np.testing.assert_allclose(z, [0.5, -1.0, 0.0])

  def test_malformed_files_give_clear_errors(self):
    src = audio.AudioFolderSource(self.root, 'train', val_fraction=0.0)
    names = src.files
    with self.assertRaisesRegex(ValueError, 'truncated.wav.*truncated or not '
                                'audio'):
      src[names.index('truncated.wav')]  # pylint: disable=expression-not-assigned
    with self.assertRaisesRegex(ValueError, 'low.wav: sample rate 8000 Hz is '
                                'below the required 16000 Hz'):
      audio.load_waveform(self._record('low.wav'), SR)
    with self.assertRaisesRegex(ValueError, 'stereo.wav: audio has 2 '
                                'channels'):
      audio.load_waveform(self._record('stereo.wav'), SR)
    with self.assertRaisesRegex(ValueError, 'silent.wav: audio is silent'):
      audio.load_waveform(self._record('silent.wav'), SR)
    with self.assertRaisesRegex(ValueError, 'resampling is off'):
      audio.load_waveform(self._record('hi.flac'), SR, resample=False)
    with self.assertRaisesRegex(ValueError, 'NaN'):
      audio.load_waveform({'audio': np.array([0.1, np.nan]),
                           'sample_rate': SR, 'id': 'r'}, SR)
    # The explicit escape hatches work.
    self.assertEqual(audio.load_waveform(self._record('stereo.wav'), SR,
                                         channels='mean').shape, (SR,))
    self.assertEqual(audio.load_waveform(self._record('low.wav'), SR,
                                         allow_upsample=True).shape, (SR,))

  def test_missing_folder(self):
    with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
      audio.AudioFolderSource(self.root / 'nope')


class PipelineTest(absltest.TestCase):

  def test_train_crops_and_resume(self):
    ds = audio.make_audio_dataset('fake:10', sample_rate=8000,
                                  crop_length=3000, global_batch_size=4,
                                  process_index=0, process_count=1)
    it = iter(ds)
    b = next(it)
    self.assertEqual(b['audio'].shape, (4, 3000))
    self.assertEqual(b['audio'].dtype, np.float32)
    state = it.get_state()
    nxt = next(it)['audio']
    it2 = iter(ds)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)['audio'], nxt)
    # Each crop is a contiguous piece of its 1-s clip.
    src = audio.FakeAudioSource(10, 8000)
    clips = [audio.load_waveform(src[i], 8000) for i in range(10)]
    for row in b['audio']:
      found = any(
          np.abs(np.correlate(c, row[:64], 'valid')).max()
          >= np.sum(row[:64] ** 2) * 0.999 for c in clips)
      self.assertTrue(found)

  def test_eval_whole_utterances_padded_and_masked(self):
    src = [{'audio': np.full(n, 0.1, np.float32), 'sample_rate': SR,
            'id': f'u{n}'} for n in (1000, 1700, 640)]
    batches = list(audio.make_audio_dataset(
        src, train=False, sample_rate=SR, global_batch_size=2,
        pad_multiple=160, process_index=0, process_count=1))
    self.assertLen(batches, 2)
    x = np.concatenate([b['audio'] for b in batches])
    lengths = np.concatenate([b['length'] for b in batches])
    mask = np.concatenate([b['mask'] for b in batches])
    self.assertEqual(x.shape, (4, 1760))      # 1700 rounded up to 11 x 160.
    np.testing.assert_array_equal(lengths, [1000, 1700, 640, 0])
    np.testing.assert_array_equal(mask, [True, True, True, False])
    for row, n in zip(x, lengths):
      self.assertTrue(np.all(row[:n] == np.float32(0.1)))
      self.assertTrue(np.all(row[n:] == 0))
    with self.assertRaisesRegex(ValueError, 'longer than eval_length'):
      next(iter(audio.make_audio_dataset(
          src, train=False, sample_rate=SR, global_batch_size=2,
          eval_length=800, process_index=0, process_count=1)))


if __name__ == '__main__':
  absltest.main()
