"""Frozen weights and the local weight-file reader."""

import os
import shutil
import tempfile

from absl.testing import absltest
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenizers_jax.nn import weights


def _state():
  rng = np.random.default_rng(0)
  return {'a.weight': rng.normal(size=(3, 2)).astype(np.float32),
          'a.bias': rng.normal(size=(3,)).astype(np.float32)}


class _Model(nnx.Module):

  def __init__(self):
    self.frozen = weights.frozen(np.ones((2, 3)), 'embed', 'mlp')
    self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

  def __call__(self, x):
    return self.lin(x) + x @ weights.frozen_value(self.frozen, x.dtype)


class FrozenTest(absltest.TestCase):

  def test_frozen_is_not_a_param_and_has_logical_axes(self):
    model = _Model()
    self.assertNotIsInstance(model.frozen, nnx.Param)
    self.assertEqual(model.frozen.get_metadata()['out_sharding'],
                     ('embed', 'mlp'))
    self.assertEqual(model.frozen[...].dtype, jnp.float32)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    self.assertNotIn('frozen', params)
    self.assertIn('frozen', rest)
    opt = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    self.assertNotIn('frozen', nnx.state(opt, nnx.OptState))

  def test_frozen_value_stops_the_gradient(self):
    model = _Model()
    graph, frozen, rest = nnx.split(model, weights.Frozen, ...)
    x = jnp.ones((1, 2))

    def f(fr):
      return jnp.sum(nnx.merge(graph, fr, rest)(x))

    grads = jax.grad(f)(frozen)
    self.assertFalse(any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads)))


class LoadStateDictTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp(prefix='weights_test_')
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
    self.state = _state()

  def _check(self, loaded, dtype=np.float32):
    self.assertEqual(set(loaded), set(self.state))
    for k, v in self.state.items():
      self.assertEqual(loaded[k].dtype, dtype)
      np.testing.assert_array_equal(loaded[k], v)

  def test_npz(self):
    path = os.path.join(self.dir, 'w.npz')
    np.savez(path, **self.state)
    self._check(weights.load_state_dict(path))

  def test_safetensors(self):
    # pylint: disable-next=g-import-not-at-top
    from safetensors.numpy import save_file
    path = os.path.join(self.dir, 'w.safetensors')
    save_file(self.state, path)
    self._check(weights.load_state_dict(path))

  def test_torch_state_dict_nested_and_non_tensor_entries(self):
    import torch  # pylint: disable=g-import-not-at-top
    tensors = {k: torch.from_numpy(v) for k, v in self.state.items()}
    path = os.path.join(self.dir, 'w.pth')
    torch.save(tensors, path)
    self._check(weights.load_state_dict(path))
    nested = os.path.join(self.dir, 'nested.pt')
    torch.save({'state_dict': dict(tensors, step=3)}, nested)
    self._check(weights.load_state_dict(nested))
    half = os.path.join(self.dir, 'half.bin')
    torch.save({k: v.to(torch.bfloat16) for k, v in tensors.items()}, half)
    kept = weights.load_state_dict(half, dtype=None)
    self.assertEqual(kept['a.bias'].dtype, np.float32)
    np.testing.assert_allclose(kept['a.bias'], self.state['a.bias'],
                               rtol=1e-2)

  def test_dtype_none_keeps_stored_dtypes(self):
    path = os.path.join(self.dir, 'w.npz')
    np.savez(path, ids=np.arange(3, dtype=np.int64), **self.state)
    loaded = weights.load_state_dict(path, dtype=None)
    self.assertEqual(loaded['ids'].dtype, np.int64)
    self.assertEqual(weights.load_state_dict(path)['ids'].dtype, np.float32)

  def test_errors(self):
    with self.assertRaisesRegex(FileNotFoundError, 'VGG16 weights.*nope.pth'):
      weights.load_state_dict(os.path.join(self.dir, 'nope.pth'), 'VGG16')
    unknown = os.path.join(self.dir, 'w.pkl')
    with open(unknown, 'wb') as f:
      f.write(b'\0')
    with self.assertRaisesRegex(ValueError, r"unknown extension '\.pkl'.*npz"):
      weights.load_state_dict(unknown)
    objects = os.path.join(self.dir, 'objects.npz')
    np.savez(objects, a=np.array([{'x': 1}], dtype=object))
    with self.assertRaisesRegex(ValueError, 'unpickled'):
      weights.load_state_dict(objects)
    import torch  # pylint: disable=g-import-not-at-top
    pickled = os.path.join(self.dir, 'module.pth')
    torch.save(torch.nn.Linear(2, 3), pickled)  # A whole module: needs pickle.
    with self.assertRaisesRegex(ValueError, 'unpickled.*state_dict'):
      weights.load_state_dict(pickled)
    not_dict = os.path.join(self.dir, 'list.pt')
    torch.save([torch.zeros(2)], not_dict)
    with self.assertRaisesRegex(ValueError, 'does not hold a state dict'):
      weights.load_state_dict(not_dict)


if __name__ == '__main__':
  absltest.main()
