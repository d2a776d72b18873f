r"""Sample tokens from a trained generator and decode them with its tokenizer.

  python -m tokenizers_jax.sample --workdir=/tmp/maskgit --num=16 \
      --output=/tmp/s
  python -m tokenizers_jax.sample --workdir=/tmp/ar --num=16 --output=/tmp/s \
      --guidance_scale=2 --label=3 --temperature=0.9 --top_k=50

The generator's config.json names the tokenizer's workdir (recorded from
the pretokenized manifest); `--tokenizer_workdir` overrides it. Images go
to DIR/samples.png (a grid) and DIR/samples.npy (uint8 [N, S, S, 3]);
audio to DIR/sample_000.wav, ... (soundfile); EEG windows to
DIR/samples.npy (float32 [N, C, A*P] in the tokenizer's units, decoded with
its running signal statistics) and DIR/sample_000.png, ... (plots); the
token ids always to DIR/tokens.npy. Sampling settings default to the config's `sample` block.
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags():
  """The command-line flags (defined only when run as a command, so that
  the module imports next to other commands)."""
  flags.DEFINE_string('workdir', None, 'Generator training workdir.')
  flags.DEFINE_string('output', None, 'Output directory.')
  flags.DEFINE_integer('num', 16, 'Number of samples.')
  flags.DEFINE_integer('batch_size', 16, 'Samples per call.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer(
      'label', None, 'Class label of every sample (default: the training '
      'labels in turn; -1: the null label).')
  flags.DEFINE_float('guidance_scale', None, 'CFG weight w.')
  flags.DEFINE_float('temperature', None, 'Sampling temperature.')
  flags.DEFINE_integer('top_k', None, 'Top-k (0: off).')
  flags.DEFINE_integer('num_steps', None, 'MaskGIT decoding steps.')
  flags.DEFINE_string('tokenizer_workdir', None,
                      'Override the tokenizer workdir of the config.')
  flags.DEFINE_bool('no_ema', False, 'Raw instead of EMA weights.')


def load_generator(workdir: str, *, use_ema: bool = True,
                   step: int | None = None):
  """(model, config, step) of a generator workdir (EMA weights when kept)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from tokenizers_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models import registry  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  config = workdir_lib.load_config(workdir)
  if config.get('task') != 'tokens':
    raise ValueError(f'{workdir} is not a generator workdir (task '
                     f'{config.get("task", "image")!r}); sample from a run '
                     'of configs/maskgit.py or configs/ar.py')
  box = {}

  def structure():
    graph, p, r = nnx.split(registry.build_model(config), nnx.Param, ...)
    box['graph'] = graph
    return nnx.to_pure_dict(p), nnx.to_pure_dict(r)

  want_p, want_r = jax.eval_shape(structure)
  params, rest, step, _ = workdir_lib.read_generator(workdir, step, use_ema)
  # pylint: disable=protected-access
  tokenizer_lib._check_same_structure(workdir, want_p, params, 'parameters')
  model = nnx.merge(box['graph'], tokenizer_lib._fill(want_p, params),
                    tokenizer_lib._fill(want_r, rest))
  # pylint: enable=protected-access
  return model, config, step


def run(workdir: str, output: str, *, num: int = 16, batch_size: int = 16,
        seed: int = 0, label: int | None = None,
        guidance_scale: float | None = None, temperature: float | None = None,
        top_k: int | None = None, num_steps: int | None = None,
        tokenizer_workdir: str | None = None, use_ema: bool = True) -> dict:
  """Samples `num` examples into `output`; returns what was written."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from tokenizers_jax.training import tokens_task  # pylint: disable=g-import-not-at-top
  model, config, step = load_generator(workdir, use_ema=use_ema)
  kw = tokens_task.sample_kwargs(config, model)
  for key, value in (('guidance_scale', guidance_scale),
                     ('temperature', temperature), ('top_k', top_k),
                     ('num_steps', num_steps)):
    if value is not None and (key != 'num_steps' or model.kind == 'maskgit'):
      kw[key] = (int(value) or None) if key == 'top_k' else value
  tok_dir = tokenizer_workdir or config.tokens.tokenizer_workdir
  if not tok_dir or not os.path.isdir(tok_dir):
    raise FileNotFoundError(
        f'the tokenizer workdir {tok_dir!r} recorded in {workdir}/config.json '
        'does not exist; pass --tokenizer_workdir')
  tok = Tokenizer.from_workdir(tok_dir)
  graph, state = nnx.split(model)
  gen = jax.jit(lambda s, k, l: nnx.merge(graph, s).generate(k, l, **kw))
  labels_all = (np.full((num,), label, np.int32) if label is not None
                else tokens_task.grid_labels(config, num))
  key = jax.random.PRNGKey(seed)
  ids = []
  for i, start in enumerate(range(0, num, batch_size)):
    lab = labels_all[start:start + batch_size]
    pad = batch_size - lab.shape[0]
    lab = np.concatenate([lab, np.full((pad,), -1, np.int32)])
    out = np.asarray(gen(state, jax.random.fold_in(key, i), lab))
    ids.append(out[:batch_size - pad])
  ids = np.concatenate(ids)
  os.makedirs(output, exist_ok=True)
  written = {'tokens': os.path.join(output, 'tokens.npy'), 'step': step,
             'settings': kw, 'labels': labels_all.tolist()}
  np.save(written['tokens'], ids)
  if tok.modality == 'image':
    from PIL import Image  # pylint: disable=g-import-not-at-top
    images = np.concatenate([np.asarray(tok.decode(ids[i:i + batch_size]))
                             for i in range(0, num, batch_size)])
    np.save(os.path.join(output, 'samples.npy'), Tokenizer.to_uint8(images))
    grid = tokens_task.sample_grid(images)
    written['grid'] = os.path.join(output, 'samples.png')
    Image.fromarray(grid).save(written['grid'])
  elif tok.modality == 'eeg':
    from PIL import Image  # pylint: disable=g-import-not-at-top
    windows = np.concatenate([np.asarray(tok.decode(ids[i:i + batch_size]))
                              for i in range(0, num, batch_size)])
    written['samples'] = os.path.join(output, 'samples.npy')
    np.save(written['samples'], windows.astype(np.float32))
    written['plots'] = []
    for i in range(num):
      plot = tokens_task.eeg_sample_plot(tok, ids[i:i + 1])
      if plot is None:  # No matplotlib.
        break
      path = os.path.join(output, f'sample_{i:03d}.png')
      Image.fromarray(plot).save(path)
      written['plots'].append(path)
  else:
    import soundfile  # pylint: disable=g-import-not-at-top
    rate = int(tok.config.data.sample_rate)
    written['wavs'] = []
    for i in range(num):
      wav = np.asarray(tok.decode(ids[i:i + 1]))[0]
      path = os.path.join(output, f'sample_{i:03d}.wav')
      soundfile.write(path, np.clip(wav, -1, 1), rate)
      written['wavs'].append(path)
  with open(os.path.join(output, 'samples.json'), 'w') as f:
    json.dump({k: v for k, v in written.items()}, f, indent=2, default=str)
  return written


def main(argv):
  del argv
  f = FLAGS
  written = run(f.workdir, f.output, num=f.num, batch_size=f.batch_size,
                seed=f.seed, label=f.label, guidance_scale=f.guidance_scale,
                temperature=f.temperature, top_k=f.top_k,
                num_steps=f.num_steps, tokenizer_workdir=f.tokenizer_workdir,
                use_ema=not f.no_ema)
  print(json.dumps(written, indent=2, default=str))


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['workdir', 'output'])
  app.run(main)
