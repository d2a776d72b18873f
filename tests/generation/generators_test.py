"""MaskGIT and the autoregressive transformer against independent reference
computations: the mask schedule, iterative decoding, causal masking, the
classifier-free guidance formula, top-k sampling and NLL in bits."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizers_jax.models import maskgit
from tokenizers_jax.models import token_transformer as tt
from tokenizers_jax.models.autoregressive import AutoregressiveTransformer
from tokenizers_jax.models.maskgit import MaskGIT

K = 8
# The model as a jit argument (an NNX module is a pytree): one compile per
# shape instead of one per eager op.
_logits = jax.jit(lambda m, t, lab: m(t, labels=lab).logits)
SMALL = dict(codebook_size=K, num_classes=3, width=16, depth=1, num_heads=2,
             mlp_ratio=2.0, label_dropout=0.1)


@pytest.fixture(scope='module')
def ar():
  return AutoregressiveTransformer(token_shape=(2, 3), **SMALL,
                                   rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def ar_levels():
  return AutoregressiveTransformer(token_shape=(4, 3), num_levels=3, **SMALL,
                                   rngs=nnx.Rngs(1))


# ----------------------------------------------------------------------------
# Mask schedule.
# ----------------------------------------------------------------------------


def test_cosine_schedule_values():
  r = np.linspace(0, 1, 11)
  np.testing.assert_allclose(maskgit.cosine_schedule(r),
                             np.cos(np.pi / 2 * r), atol=1e-6)


def test_training_mask_counts_follow_the_cosine_schedule():
  b, l = 4096, 16
  valid = jnp.ones((b, l), bool).at[:8, 10:].set(False)
  masked, r = maskgit.training_mask(jax.random.key(0), valid)
  masked, r = np.asarray(masked), np.asarray(r, np.float64)
  n_valid = np.asarray(valid).sum(-1)
  want = np.clip(np.ceil(np.cos(np.pi / 2 * r) * n_valid), 1, n_valid)
  np.testing.assert_array_equal(masked.sum(-1), want)
  assert not (masked & ~np.asarray(valid)).any()  # Padding never masked.
  # r ~ U[0, 1): E[cos(pi r / 2)] = 2 / pi (+ the ceil, < 1/L).
  ratio = masked[8:].sum(-1) / l
  assert abs(ratio.mean() - 2 / np.pi - 0.5 / l) < 0.02
  # Positions chosen uniformly: every position masked about equally often.
  freq = masked[8:].mean(0)
  assert freq.max() - freq.min() < 0.06


# ----------------------------------------------------------------------------
# Iterative decoding.
# ----------------------------------------------------------------------------


def _reference_decode(scales, num_steps, seq_len):
  """numpy MaskGIT decoding for the fake model of the test: at every
  unknown position l the model proposes id (#known mod K) with log-prob
  log softmax(scale_l * onehot)[id]; greedy, no confidence noise."""
  ids = np.full(seq_len, -1)
  unknown = np.ones(seq_len, bool)
  final = None
  for t in range(num_steps):
    n_known = int((~unknown).sum())
    cand = np.where(unknown, n_known % K, ids)
    logp = scales - np.log(np.exp(scales) + (K - 1))
    conf = np.where(unknown, logp, np.inf)
    ratio = (t + 1) / num_steps
    n = int(np.floor(seq_len * np.cos(np.pi / 2 * ratio)))
    n = max(1, min(int(unknown.sum()) - 1, n))
    order = np.argsort(conf, kind='stable')
    remask = np.zeros(seq_len, bool)
    remask[order[:n]] = True
    final = cand.copy()
    ids = np.where(remask, -1, cand)
    unknown = remask
  return final


@pytest.mark.parametrize('num_steps', [1, 4, 7])
def test_decode_remasks_the_lowest_confidence_tokens(num_steps):
  seq_len = 12
  scales = np.random.default_rng(num_steps).permutation(seq_len) * 0.37 + 0.5

  def propose(ids, key):
    n_known = jnp.sum(ids[..., 0] != K, -1)  # [B]
    cand = jnp.broadcast_to((n_known % K)[:, None], ids.shape[:2])
    logits = jnp.asarray(scales)[None, :, None] * jax.nn.one_hot(cand, K)
    sampled, logp = tt.sample_logits(key, logits, temperature=0.0)
    return sampled[..., None], logp

  got = maskgit.decode(propose, jax.random.key(0), 2, seq_len, 1, mask_id=K,
                       num_steps=num_steps, choice_temperature=0.0)
  want = _reference_decode(scales, num_steps, seq_len)
  np.testing.assert_array_equal(np.asarray(got)[0, :, 0], want)
  np.testing.assert_array_equal(np.asarray(got)[1, :, 0], want)


def test_maskgit_generate_fills_every_position_and_is_seeded():
  m = MaskGIT(token_shape=(3, 3, 2), num_levels=2, **SMALL, rngs=nnx.Rngs(2))
  labels = jnp.array([0, 1, -1])
  gen = jax.jit(lambda k: m.generate(k, labels, num_steps=3, top_k=4,
                                     guidance_scale=2.0))
  a, b = gen(jax.random.key(0)), gen(jax.random.key(0))
  assert a.shape == (3, 3, 3, 2)
  assert int(a.min()) >= 0 and int(a.max()) < K  # No mask id left.
  np.testing.assert_array_equal(a, b)


def test_maskgit_bound_with_everything_masked_is_the_summed_ce():
  m = MaskGIT(token_shape=(6,), **SMALL, rngs=nnx.Rngs(3))
  t = jax.random.randint(jax.random.key(1), (2, 6), 0, K)
  lab = jnp.array([1, 2])
  bound = jax.jit(m.elbo)(t, lab, jax.random.key(2), jnp.array([6, 6]))
  ids_in = jnp.full((2, 6, 1), K)
  logits = jax.jit(lambda i: m.level_logits(m.contexts(i, lab),
                                            t[..., None]))(ids_in)
  want = tt.token_nll(logits, t[..., None]).sum((1, 2))
  np.testing.assert_allclose(bound, want, rtol=1e-5)


# ----------------------------------------------------------------------------
# Causal masking.
# ----------------------------------------------------------------------------


def test_a_token_never_sees_later_ones(ar):
  t = jax.random.randint(jax.random.key(0), (1, 2, 3), 0, K)
  lab = jnp.array([1])
  base = np.asarray(_logits(ar, t, lab))[0]
  flat = np.asarray(t).reshape(-1)
  for i in range(flat.size):
    changed = flat.copy()
    changed[i:] = (changed[i:] + 1 + np.arange(flat.size - i)) % K
    out = np.asarray(_logits(ar, jnp.asarray(changed.reshape(1, 2, 3)),
                             lab))[0]
    # Logits at positions <= i predict tokens <= i from tokens < i only.
    np.testing.assert_allclose(out[:i + 1], base[:i + 1], atol=1e-6)
    if i + 1 < flat.size:
      assert np.abs(out[i + 1:] - base[i + 1:]).max() > 1e-4


def test_depth_head_level_sees_earlier_levels_only(ar_levels):
  t = jax.random.randint(jax.random.key(1), (1, 4, 3), 0, K)
  base = np.asarray(_logits(ar_levels, t, None))
  for q in range(3):
    changed = t.at[..., q:].set((t[..., q:] + 1) % K)
    out = np.asarray(_logits(ar_levels, changed, None))
    # Same positions: levels <= q unchanged (all other positions see the
    # change only through later positions' inputs).
    first = np.asarray(out)[0, 0]
    np.testing.assert_allclose(first[:q + 1], base[0, 0, :q + 1], atol=1e-6)


# ----------------------------------------------------------------------------
# Guidance and sampling.
# ----------------------------------------------------------------------------


def test_cfg_formula():
  c, u = jnp.array([1.0, 3.0, -2.0]), jnp.array([0.5, 1.0, 1.0])
  for w in (0.0, 1.0, 1.5, 4.0):
    np.testing.assert_allclose(tt.cfg_logits(c, u, w),
                               np.array(u) + w * (np.array(c) - np.array(u)),
                               rtol=1e-6)


def test_guided_greedy_sampling_equals_the_formula(ar):
  """Greedy AR samples with w = 3 against a step-by-step reference that
  calls the model once with the labels and once with the null label."""
  w = 3.0
  labels = jnp.array([0, 2])
  got = np.asarray(ar.generate(jax.random.key(0), labels, temperature=0.0,
                               guidance_scale=w)).reshape(2, -1)
  null = jnp.full((2,), ar.null_label)
  seq = np.zeros((2, 6), np.int32)
  for i in range(6):
    t = jnp.asarray(seq.reshape(2, 6, 1))
    lc = ar.level_logits(ar.contexts(t, labels), t)[:, i, 0]
    lu = ar.level_logits(ar.contexts(t, null), t)[:, i, 0]
    guided = np.asarray(lu) + w * (np.asarray(lc) - np.asarray(lu))
    seq[:, i] = guided.argmax(-1)
  np.testing.assert_array_equal(got, seq)


def test_top_k_sampling_frequencies():
  logits = jnp.log(jnp.array([0.1, 0.4, 0.2, 0.3]))
  ids, logp = tt.sample_logits(jax.random.key(0),
                               jnp.broadcast_to(logits, (20000, 4)),
                               temperature=1.0, top_k=2)
  counts = np.bincount(np.asarray(ids), minlength=4) / 20000
  np.testing.assert_allclose(counts, [0, 4 / 7, 0, 3 / 7], atol=0.015)
  np.testing.assert_allclose(np.exp(np.asarray(logp))[np.asarray(ids) == 1],
                             4 / 7, rtol=1e-5)
  greedy, _ = tt.sample_logits(jax.random.key(1), logits[None], temperature=0)
  assert int(greedy[0]) == 1


def test_label_dropout_and_null_labels(ar):
  lab = ar.labels_in(jnp.array([0, 1, 2, -1, 7] * 400), 2000, train=True,
                     rng=jax.random.key(0))
  lab = np.asarray(lab)
  assert (lab[3::5] == ar.null_label).all() and (lab[4::5] == 3).all()
  dropped = (lab[0::5] == ar.null_label).mean()
  assert abs(dropped - 0.1) < 0.03
  assert (np.asarray(ar.labels_in(jnp.array([0, 1]), 2, train=False,
                                  rng=jax.random.key(0))) == [0, 1]).all()


# ----------------------------------------------------------------------------
# Likelihood in bits.
# ----------------------------------------------------------------------------


def test_nll_bits_on_a_known_distribution():
  p = np.array([0.5, 0.25, 0.125, 0.125])
  targets = np.array([0, 1, 2, 3, 3, 1])
  logits = jnp.log(jnp.broadcast_to(jnp.asarray(p), (6, 4)))
  bits = float(tt.nll_bits(tt.token_nll(logits, jnp.asarray(targets)).sum()))
  want = -np.log2(p[targets]).sum()  # 1 + 2 + 3 + 3 + 3 + 2 = 14 bits.
  assert want == 14.0
  np.testing.assert_allclose(bits, want, rtol=1e-6)
  np.testing.assert_allclose(bits, float(tt.token_nll(
      logits, jnp.asarray(targets)).sum()) / math.log(2), rtol=1e-7)


def test_ar_nll_is_the_chain_rule_sum(ar_levels):
  t = jax.random.randint(jax.random.key(2), (2, 4, 3), 0, K)
  out = jax.jit(lambda m, t: m(t))(ar_levels, t)
  logp = jax.nn.log_softmax(out.logits, -1)
  want = -np.take_along_axis(np.asarray(logp), np.asarray(t)[..., None],
                             -1).sum((1, 2, 3))
  np.testing.assert_allclose(out.aux['nll'], want, rtol=1e-5)
  np.testing.assert_allclose(out.terms['ce'], want.sum() / (2 * 4 * 3),
                             rtol=1e-5)
