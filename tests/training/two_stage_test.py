"""TiTok two-stage training, stage 2, on the shared training system:
`config.init_from` (a workdir's weights into a new model), `optim.frozen`
(zero updates), and the stage-2 model (frozen encoder side; the decoder's
soft codes drive the teacher's trainable pixel decoder).

Checkpoints are written by `steps.create` + `checkpoint.save` (no training)
so that only the stage-2 train step is compiled.
"""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tokenizers_jax import config_lib
from tokenizers_jax import sharding as sharding_lib
from tokenizers_jax.models import titok
from tokenizers_jax.training import checkpoint as ckpt_lib
from tokenizers_jax.training import optim
from tokenizers_jax.training import steps as steps_lib
from tokenizers_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
TITOK = os.path.join(REPO, 'configs', 'titok.py')


def _flat(tree):
  return {optim.path_str(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _save_run(config, workdir, edit=None):
  """Writes `workdir` as a training run would (config.json + a checkpoint at
  step 1) from freshly created state, optionally edited on the host first;
  returns the saved state on the host."""
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    _, state, _ = steps_lib.create(config, mesh)
    state = jax.device_get(state)
    if edit is not None:
      state = edit(state)
    mgr = ckpt_lib.manager(workdir, keep=1)
    ckpt_lib.save(mgr, 1, jax.device_put(state), force=True)
    mgr.wait_until_finished()
    mgr.close()
  train_lib.write_config(config, workdir)
  return state


def _titok_config(spec):
  c = config_lib.load_config_file(f'{TITOK}:{spec}')
  c.model.patch_size = 2  # the VQ-GAN test teacher's 8x8 token grid at 16²
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A VQ-GAN teacher run, a stage-1 TiTok run on it (seed 5, an EMA that
  differs from the raw params, a rescaled Frozen teacher output conv), and
  the stage-2 trainer + state built from them."""
  root = tmp_path_factory.mktemp('two_stage')
  teacher_dir, s1_dir = str(root / 'vqgan'), str(root / 'titok_s1')
  _save_run(config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'vqgan.py') + ':test'), teacher_dir)

  def edit(state):
    state['ema'] = jax.tree.map(lambda p: p * 0.5 + 0.25,
                                state['gen']['params'])
    conv = state['gen']['rest']['teacher']['frontend']['decoder']['conv_out']
    conv['kernel'] = conv['kernel'] * 2.0
    return state

  c1 = _titok_config(f'test,teacher={teacher_dir}')
  c1.seed = 5
  s1 = _save_run(c1, s1_dir, edit)
  c2 = _titok_config(f'test,teacher={teacher_dir},stage2={s1_dir}')
  c2.optim.update(lr=1e-3, warmup_steps=0)
  c2.loss.adaptive_weight = False  # a smaller program to compile
  mesh = train_lib.make_mesh(c2)
  with jax.set_mesh(mesh):
    trainer, state, shardings = steps_lib.create(c2, mesh)
  return dict(teacher_dir=teacher_dir, s1_dir=s1_dir, s1=s1, c2=c2,
              mesh=mesh, trainer=trainer, state=state, shardings=shardings)


def test_init_from_loads_matching_weights_exactly(runs):
  """Every stage-2 parameter equals the stage-1 checkpoint's EMA (not the raw
  params); the now-trainable teacher pixel decoder comes from the stage-1
  run's Frozen teacher weights (the rescaled conv); non-param state too."""
  s1, state = runs['s1'], jax.device_get(runs['state'])
  ema, raw = _flat(s1['ema']), _flat(s1['gen']['params'])
  s1_rest = _flat(s1['gen']['rest'])
  params = _flat(state['gen']['params'])
  teacher = [p for p in params if p.startswith('teacher/')]
  assert 'teacher/frontend/decoder/conv_out/kernel' in teacher
  assert not any(p.startswith('teacher/frontend/encoder') for p in params)
  for path, value in params.items():
    src = s1_rest[path] if path.startswith('teacher/') else ema[path]
    np.testing.assert_array_equal(value, src, err_msg=path)
    if not path.startswith('teacher/'):
      assert not np.array_equal(value, raw[path]), path
  rest = _flat(state['gen']['rest'])
  for path in ('quantizer/initialized', 'quantizer/rng_key'):
    np.testing.assert_array_equal(rest[path], s1_rest[path])
  # The EMA starts from the loaded weights too.
  jax.tree.map(np.testing.assert_array_equal, state['ema'],
               state['gen']['params'])


def test_stage2_trains_decoder_and_pixel_decoder_only(runs):
  """On a fixed batch: the L2 loss falls; the frozen prefixes stay bitwise
  equal; the decoder and the teacher's pixel decoder move by far more than
  weight decay alone could (their gradients are non-zero)."""
  trainer, c2 = runs['trainer'], runs['c2']
  frozen = tuple(c2.optim.frozen)
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 16, 16, 3), minval=-1,
                         maxval=1)
  with jax.set_mesh(runs['mesh']):
    batch = {'image': jax.device_put(x, train_lib.batch_sharding(runs['mesh']))}
    step = jax.jit(lambda s, b: steps_lib.train_step(trainer, s, b),
                   in_shardings=(runs['shardings'], None),
                   out_shardings=(runs['shardings'], None))
    state = runs['state']
    before = _flat(jax.device_get(state['gen']['params']))
    recon = []
    for _ in range(12):
      state, metrics = step(state, batch)
      recon.append(float(metrics['train/recon']))
      assert int(metrics['train/skipped']) == 0
      assert float(metrics['train/quantizer']) == 0.0
  after = _flat(jax.device_get(state['gen']['params']))
  assert recon[-1] < 0.8 * recon[0], recon
  is_frozen = lambda p: any(p == f or p.startswith(f + '/') for f in frozen)
  assert sum(map(is_frozen, before)) >= len(frozen)
  lr, wd, n = c2.optim.lr, c2.optim.weight_decay, len(recon)
  for path in before:
    delta = np.abs(after[path] - before[path]).max()
    if is_frozen(path):
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    elif (path.startswith(('head/', 'decoder/', 'teacher/frontend/decoder/'))
          and path.endswith('kernel')):
      # Weight decay alone moves a weight by at most n * lr * wd * |w|.
      # (Kernels only: e.g. an attention key bias has an exactly zero
      # gradient, softmax being shift-invariant.)
      bound = n * lr * wd * np.abs(before[path]).max()
      assert delta > 100 * bound and delta > 1e-4, (path, delta)


def test_init_from_mismatch_is_an_error(runs):
  """A single-stage TiTok (pixel head, no teacher) cannot start from the
  stage-1 run: the head's shape differs, and the error lists it."""
  c = _titok_config('test')
  c.init_from = runs['s1_dir']
  mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  with jax.set_mesh(mesh), pytest.raises(ValueError) as err:
    steps_lib.create(c, mesh)
  msg = str(err.value)
  assert 'head/kernel: shape (32, 32) in the checkpoint, (32, 12) here' in msg
  assert 'encoder' not in msg  # matching parameters are not reported
  c.init_from = runs['s1_dir'] + '_missing'
  with jax.set_mesh(mesh), pytest.raises(FileNotFoundError,
                                         match='no checkpoints under'):
    steps_lib.create(c, mesh)


def test_config_errors():
  params = {'encoder': {'w': jnp.ones(2)}, 'decoder': {'w': jnp.ones(2)}}
  cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=0, schedule='constant', end_lr_factor=1.0,
      grad_clip=1.0, b1=0.9, b2=0.99, weight_decay=0.0, frozen=('encodr',)))
  with pytest.raises(config_lib.ConfigError, match=r"\['encodr'\] match no"):
    optim.make_optimizer(cfg, 10).init(params)
  cfg.frozen = ('encoder',)
  tx = optim.make_optimizer(cfg, 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['encoder']['w'], 0.0)
  assert np.all(np.asarray(optax.apply_updates(params, updates)['decoder']['w'])
                < 1.0)
  with pytest.raises(ValueError, match='needs teacher=WORKDIR'):
    config_lib.load_config_file(f'{TITOK}:test,stage2=/tmp/x')
  c = config_lib.load_config_file(
      os.path.join(REPO, 'configs', 'one_d_piece.py')
      + ':tiny,teacher=/tmp/t,stage2=/tmp/s1')
  assert c.init_from == '/tmp/s1' and c.model.finetune_decoder
  assert c.model.tail_drop == 'batch'
  assert tuple(c.optim.frozen) == titok.TiTok.ENCODER_PARAMS
  with pytest.raises(ValueError, match='needs a proxy_teacher'):
    titok.TiTok(image_size=8, patch_size=4, num_tokens=2, width=8,
                encoder_depth=1, decoder_depth=1, num_heads=2, embed_dim=4,
                quantizer=dict(name='vq', codebook_size=4),
                finetune_decoder=True, rngs=nnx.Rngs(0))


def test_soft_codes_feed_the_teacher_decoder(runs):
  """Stage 2's render: softmax(logits) mixes the teacher's code vectors
  (numpy reference on the table decode(0..V-1)); with near one-hot logits it
  equals the teacher decoding the argmax codes (stage 1's hard path)."""
  trainer, state = runs['trainer'], jax.device_get(runs['state'])
  gen = trainer.merge_gen(state['gen']['params'], state['gen']['rest'])
  graph, st = nnx.split(gen)
  v, n = gen.teacher.codebook_size, gen.num_patches
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, n), 0, v)
  logits = jax.random.normal(jax.random.PRNGKey(2), (2, n, v))

  @jax.jit
  def run(st, logits, ids):
    m = nnx.merge(graph, st)
    table = m.teacher.quantizer.decode(jnp.arange(v))
    sharp = m.teacher.decode_latents(m.soft_codes(
        60.0 * jax.nn.one_hot(ids, v)))
    hard = m.teacher.decode(ids.reshape(2, m.grid, m.grid))
    return m.soft_codes(logits), table, sharp, hard

  soft, table, sharp, hard = map(np.asarray, run(st, logits, ids))
  lg = np.asarray(logits, np.float64)
  p = np.exp(lg - lg.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(soft.reshape(2, n, -1), p @ table, atol=1e-5)
  np.testing.assert_allclose(sharp, hard, atol=1e-4)


@pytest.mark.slow
def test_stage2_run_trains_and_reloads(runs, tmp_path):
  """`configs/titok.py:test,teacher=..,stage2=..` through
  `train_and_evaluate`, then reloaded from its workdir (config.json round
  trip of `init_from` / `optim.frozen`): the encoder's tokens equal the
  stage-1 model's (EMA weights), decoding works."""
  c = _titok_config(f'test,teacher={runs["teacher_dir"]},'
                    f'stage2={runs["s1_dir"]}')
  final = train_lib.train_and_evaluate(c, str(tmp_path), stop_after=2)
  assert final['step'] == 2 and np.isfinite(final['eval/psnr'])
  from tokenizers_jax.models.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  tok2 = Tokenizer.from_workdir(str(tmp_path))
  tok1 = Tokenizer.from_workdir(runs['s1_dir'])
  assert tuple(tok2.config.optim.frozen) == titok.TiTok.ENCODER_PARAMS
  x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3))
  np.testing.assert_array_equal(tok2.encode(x), tok1.encode(x))
  assert tok2.decode(tok2.encode(x)).shape == (4, 16, 16, 3)
