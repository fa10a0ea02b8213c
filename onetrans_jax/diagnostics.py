r"""Training-stability diagnostics for multi-task models (SPEC B.5, C.6).

The OneRank paper reports that without cross-task gradient detachment training is "unstable".
Two signals make that checkable:

  * ``per_task_gradient_cosine``: the [T, T] cosine similarity of the tasks' gradients on a chosen
    part of the parameters (usually the shared encoder: everything but the task-specific heads).
    Conflicting tasks (negative cosine) pull the shared weights apart.
  * ``LossVariance``: each task's loss over a sliding window of logged steps (host-side numpy);
    per task its mean and its *detrended* variance: the variance of the residuals around the
    window's least-squares line, so a loss that is still falling (the training trend) does not
    read as instability; the plain variance is kept beside it. The trainer feeds it each task's
    BCE, the one loss definition every model and loss mode shares.

``cosine_summary`` and ``LossVariance.summary`` turn both into flat dicts of floats for the
training log: ``loss_var/<task>`` (detrended), ``loss_var_raw/<task>``, ``loss_mean/<task>``,
``grad_cos/<task_a>__<task_b>`` (upper triangle, a before b in task order).

  select = excluding('towers')      # the shared encoder: every parameter outside the heads
  cos = jax.jit(lambda p: per_task_gradient_cosine(loss_fn, p, select))(params)
  tracker.update(per_task_losses)
  log(tracker.summary(cos))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]


def path_names(key_path: Sequence[Any]) -> Path:
  """A jax key path (DictKey, GetAttrKey, SequenceKey, ...) as a tuple of strings."""
  names = []
  for k in key_path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def excluding(*names: str) -> Callable[[Path], bool]:
  """Predicate: True for parameters whose path contains none of ``names`` (e.g. the heads)."""
  blocked = frozenset(names)
  return lambda path: not blocked.intersection(path)


def under(*names: str) -> Callable[[Path], bool]:
  """Predicate: True for parameters whose path contains one of ``names``."""
  wanted = frozenset(names)
  return lambda path: bool(wanted.intersection(path))


def cosine_matrix(grads: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Rows of the stacked per-task gradients, as leaves [T, ...] -> [T, T] cosine similarity.

  The Gram matrix is summed leaf by leaf (no concatenated [T, P] copy). A zero gradient has
  cosine 0 with everything, itself included.
  """
  t = grads[0].shape[0]
  gram = jnp.zeros((t, t), jnp.float32)
  for g in grads:
    g = g.reshape(t, -1).astype(jnp.float32)
    gram = gram + g @ g.T
  norm = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  denom = norm[:, None] * norm[None, :]
  ok = denom > 0
  return jnp.where(ok, gram / jnp.where(ok, denom, 1.0), 0.0)


def per_task_gradient_cosine(per_task_loss_fn: Callable[[Any], jnp.ndarray], params: Any,
                             select: Callable[[Path], bool]) -> jnp.ndarray:
  """[T, T] cosine similarity of each task's gradient on the parameters ``select`` picks.

  per_task_loss_fn(params) -> [T] losses. ``select(path)`` gets each parameter's path as a tuple
  of names (e.g. ('block_0', 'ffn', 'w1')); the other parameters are held constant and their
  gradients are not computed. One reverse-mode Jacobian (``jax.jacrev``: the T cotangents run
  vmapped), no loop over tasks; jit-friendly (``select`` runs at trace time).
  """
  leaves, treedef = jax.tree.flatten_with_path(params)
  keep = [bool(select(path_names(path))) for path, _ in leaves]
  if not any(keep):
    raise ValueError('select picked no parameter: the gradient cosine would be empty')
  values = [v for _, v in leaves]
  chosen = [v for v, k in zip(values, keep) if k]

  def loss_of_chosen(chosen_leaves):
    it = iter(chosen_leaves)
    full = [next(it) if k else v for v, k in zip(values, keep)]
    return jnp.asarray(per_task_loss_fn(jax.tree.unflatten(treedef, full)))

  jac = jax.jacrev(loss_of_chosen)(chosen)   # each leaf [T, *shape]
  return cosine_matrix(jac)


def cosine_summary(matrix: Any, task_names: Sequence[str]) -> dict[str, float]:
  """The upper triangle of a [T, T] cosine matrix as {'grad_cos/<a>__<b>': float}."""
  m = np.asarray(matrix, dtype=np.float64)
  t = len(task_names)
  if m.shape != (t, t):
    raise ValueError(f'cosine matrix of shape {m.shape} for {t} task names {list(task_names)}')
  return {f'grad_cos/{task_names[i]}__{task_names[j]}': float(m[i, j])
          for i in range(t) for j in range(i + 1, t)}


class LossVariance:
  """Each task's loss over the last ``window`` logged steps; variance and mean per task.

  Host-side numpy ring buffer, fed once per logged step with T losses (a sequence in task order
  or a mapping task name -> loss). Variance is numpy's population variance (ddof=0) over the
  steps held (fewer than ``window`` before the window fills).
  """

  def __init__(self, task_names: Sequence[str], window: int = 100):
    if window < 1:
      raise ValueError(f'window must be a positive integer, got {window!r}')
    self.task_names = tuple(task_names)
    self.window = int(window)
    self._buf = np.zeros((self.window, len(self.task_names)), np.float64)
    self._count = 0                  # steps fed in total

  def update(self, losses: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
    if isinstance(losses, Mapping):
      missing = [n for n in self.task_names if n not in losses]
      if missing:
        raise KeyError(f'losses lack tasks {missing}')
      row = np.array([float(losses[n]) for n in self.task_names])
    else:
      row = np.asarray(losses, np.float64).reshape(-1)
      if row.shape[0] != len(self.task_names):
        raise ValueError(f'{row.shape[0]} losses for tasks {list(self.task_names)}')
    self._buf[self._count % self.window] = row
    self._count += 1

  def __len__(self) -> int:
    """Steps currently held (at most ``window``)."""
    return min(self._count, self.window)

  def values(self) -> np.ndarray:
    """The held losses [n, T], oldest first."""
    n = len(self)
    if self._count <= self.window:
      return self._buf[:n].copy()
    start = self._count % self.window
    return np.concatenate([self._buf[start:], self._buf[:start]])

  def variance(self) -> np.ndarray:
    """[T] variance over the window; NaN before the first update."""
    return np.var(self.values(), axis=0) if len(self) else np.full(len(self.task_names), np.nan)

  def detrended_variance(self) -> np.ndarray:
    """[T] variance of the residuals around each task's least-squares line over the window (the
    steps held, in order); with fewer than 3 steps no trend is fitted (the plain variance). NaN
    before the first update."""
    y = self.values()
    n = len(y)
    if n < 3:
      return self.variance()
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0      # centred: slope and mean separate
    slope = (t @ (y - y.mean(axis=0))) / (t @ t)
    resid = y - y.mean(axis=0) - np.outer(t, slope)
    return np.mean(resid ** 2, axis=0)

  def mean(self) -> np.ndarray:
    """[T] mean over the window; NaN before the first update."""
    return np.mean(self.values(), axis=0) if len(self) else np.full(len(self.task_names), np.nan)

  def summary(self, grad_cos: Any | None = None) -> dict[str, float]:
    """{'loss_var/<task>' (detrended), 'loss_var_raw/<task>', 'loss_mean/<task>'} (empty
    before the first update), plus the ``cosine_summary`` of ``grad_cos`` when given."""
    out: dict[str, float] = {}
    if len(self):
      for name, var, raw, mean in zip(self.task_names, self.detrended_variance(),
                                      self.variance(), self.mean()):
        out[f'loss_var/{name}'] = float(var)
        out[f'loss_var_raw/{name}'] = float(raw)
        out[f'loss_mean/{name}'] = float(mean)
    if grad_cos is not None:
      out.update(cosine_summary(grad_cos, self.task_names))
    return out
