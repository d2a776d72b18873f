"""Metrics of generated images: Inception Score and the pieces of gFID.

gFID is the Frechet distance between the FID Inception's pool3 features of
generated images and of the tokenizer's held-out images
(`evaluators/frechet.py`). The Inception Score needs the network's 1008-way
classifier (`fc.weight` [1008, 2048], `fc.bias` of the same pt_inception
state dict that `fid.InceptionV3.from_file` reads; the FID network itself
ignores it):

  IS = exp( E_x KL( p(y | x) || p(y) ) ),  p(y) = E_x p(y | x),

over `splits` equal parts of the samples (mean and standard deviation over
the parts), as in Salimans et al. (2016).

Dimension legend: N samples; F = 2048 features; C = 1008 classes.
"""

from __future__ import annotations

import os

import numpy as np


def load_classifier(path: str | os.PathLike):
  """(weight [C, F], bias [C]) float64 from the Inception weights file, or
  None when the file has no `fc.*` entries."""
  from tokenizers_jax.nn import weights  # pylint: disable=g-import-not-at-top
  state = weights.load_state_dict(path, 'FID InceptionV3')
  if 'fc.weight' not in state or 'fc.bias' not in state:
    return None

  def arr(v):
    if hasattr(v, 'detach'):
      v = v.detach().cpu().double().numpy()
    return np.asarray(v, np.float64)

  return arr(state['fc.weight']), arr(state['fc.bias'])


def class_logits(features: np.ndarray, classifier) -> np.ndarray:
  """pool3 features [N, F] -> logits [N, C]."""
  w, b = classifier
  return np.asarray(features, np.float64) @ w.T + b


def inception_score(logits: np.ndarray, splits: int = 1
                    ) -> tuple[float, float]:
  """(mean, std over `splits` parts) of exp(E KL(p(y|x) || p(y)))."""
  logits = np.asarray(logits, np.float64)
  n = logits.shape[0]
  if n < splits or splits < 1:
    raise ValueError(f'{n} samples cannot make {splits} splits')
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  scores = []
  for part in np.array_split(np.arange(n), splits):
    lp = logp[part]
    p = np.exp(lp)
    log_marginal = np.log(p.mean(0) + 1e-300)
    kl = np.sum(p * (lp - log_marginal[None]), -1)
    scores.append(float(np.exp(kl.mean())))
  return float(np.mean(scores)), float(np.std(scores))
