"""Feature statistics and the Frechet distance (float64 numpy, no JAX).

`FeatureStats` accumulates the count, the sum and the sum of outer products
of feature batches (plain sums, so shards from several processes add up; see
`FeatureStats.merge`), and `frechet_distance` evaluates
  FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)
with tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))) from symmetric
eigendecompositions (no `scipy.linalg.sqrtm`). Covariances use ddof=1, like
pytorch-fid's `np.cov(..., rowvar=False)`. With InceptionV3 pool3 features
(`evaluators/fid.py`) this is FID.

Dimension legend:
  N: number of feature vectors
  D: feature dimension (2048 for pool3)
"""

from __future__ import annotations

from typing import Any

import numpy as np




class FeatureStats:
  """Streaming count, sum and sum of outer products of [B, D] features.

  The three fields are plain float64 sums, so accumulators from different
  shards or processes combine exactly by adding them (`merge`, or an
  all-reduce of `count`, `total` and `outer`).

  Attributes:
    count: number of feature vectors N seen.
    total: [D] float64 sum of the features (None before the first `add`).
    outer: [D, D] float64 sum of x x^T (None before the first `add`).
  """

  def __init__(self, dim: int | None = None):
    """`dim` fixes D up front; otherwise the first batch sets it."""
    self.dim, self.count, self.total, self.outer = None, 0, None, None
    if dim is not None:
      self._start(dim)

  def _start(self, dim: int):
    self.dim = int(dim)
    self.total = np.zeros((self.dim,), np.float64)
    self.outer = np.zeros((self.dim, self.dim), np.float64)

  def add(self, features: Any) -> 'FeatureStats':
    """Accumulates features [B, D] (any array type); returns self.

    Raises:
      ValueError: for a non-2-D batch, a D that differs from earlier batches,
        or non-finite values.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f'FeatureStats.add expects [B, D] features, got '
                       f'shape {x.shape}.')
    if self.dim is not None and x.shape[1] != self.dim:
      raise ValueError(f'FeatureStats has D={self.dim}; got features of '
                       f'shape {x.shape}.')
    if not np.all(np.isfinite(x)):
      bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
      raise ValueError(f'FeatureStats.add got non-finite (NaN/inf) features '
                       f'in {bad} of {x.shape[0]} rows.')
    if self.dim is None:
      self._start(x.shape[1])
    self.count += x.shape[0]
    self.total += x.sum(axis=0)
    self.outer += x.T @ x
    return self

  def merge(self, other: 'FeatureStats') -> 'FeatureStats':
    """Adds another accumulator's sums into this one; returns self."""
    if other.dim is None:
      return self
    if self.dim is not None and other.dim != self.dim:
      raise ValueError(f'Cannot merge FeatureStats with D={self.dim} and '
                       f'D={other.dim}.')
    if self.dim is None:
      self._start(other.dim)
    self.count += other.count
    self.total += other.total
    self.outer += other.outer
    return self

  def mean_cov(self, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64), divided by N - ddof.

    ddof=1 (default) equals `np.cov(x, rowvar=False)`, as pytorch-fid uses.

    Raises:
      ValueError: with fewer than ddof + 1 (and at least 2) samples.
    """
    if self.count < max(2, ddof + 1):
      raise ValueError(f'FeatureStats needs at least {max(2, ddof + 1)} '
                       f'samples for a covariance, has {self.count}.')
    mu = self.total / self.count
    cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - ddof)
    return mu, 0.5 * (cov + cov.T)


def _as_stats(x: Any, what: str) -> FeatureStats:
  if isinstance(x, FeatureStats):
    return x
  try:
    return FeatureStats().add(x)
  except ValueError as e:
    raise ValueError(f'{what}: {e}') from e


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
  """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

  |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64. The trace
  term is sum_i sqrt(l_i), l_i the eigenvalues of the symmetric PSD matrix
  sqrt(S1) S2 sqrt(S1) (same spectrum as S1 S2), with sqrt(S1) from `eigh`;
  tiny negative eigenvalues from rounding are clipped to 0, so singular
  covariances (N <= D) need no diagonal offset. Covariances are
  symmetrized first. The result is clipped at 0.

  Args:
    mu1: mean [D].
    sigma1: covariance [D, D].
    mu2: mean [D].
    sigma2: covariance [D, D].

  Returns:
    The distance, a Python float.

  Raises:
    ValueError: on mismatched shapes or non-finite inputs.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
  d = mu1.shape[0]
  if mu1.ndim != 1 or mu2.shape != (d,):
    raise ValueError(f'frechet_distance means must both be [D], got '
                     f'{mu1.shape} and {mu2.shape}.')
  if s1.shape != (d, d) or s2.shape != (d, d):
    raise ValueError(f'frechet_distance covariances must be [{d}, {d}] to '
                     f'match the means, got {s1.shape} and {s2.shape}.')
  for name, a in (('mu1', mu1), ('sigma1', s1), ('mu2', mu2), ('sigma2', s2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'frechet_distance: {name} has non-finite values.')
  s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
  return float(max(fid, 0.0))


def fid_from_features(a: Any, b: Any) -> float:
  """FID between two feature sets: [N, D] arrays or `FeatureStats`.

  Raises:
    ValueError: on mismatched D, fewer than 2 samples, or non-finite values.
  """
  sa = _as_stats(a, 'fid_from_features(a)')
  sb = _as_stats(b, 'fid_from_features(b)')
  if sa.dim != sb.dim:
    raise ValueError(f'fid_from_features: feature dims differ ({sa.dim} vs '
                     f'{sb.dim}).')
  mu1, sigma1 = sa.mean_cov()
  mu2, sigma2 = sb.mean_cov()
  return frechet_distance(mu1, sigma1, mu2, sigma2)
