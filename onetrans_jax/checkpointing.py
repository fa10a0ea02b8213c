"""orbax checkpoints of a whole run: train state, data-iterator position and evaluation state.

Saving the grain iterator next to the model (MaxText style) is what makes a resume exact: the
restarted run reads the very batches the uninterrupted run would have read. ``extra`` is a small
JSON tree (next-batch evaluation buffers, per-day metrics, the early-stopping record) that the
loop needs to continue.

``BestCheckpointer`` keeps, beside them, the train state of the step that validated best: the
hold-out is scored with those weights, not the last ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from onetrans_jax import diagnostics
from onetrans_jax.errors import WorkdirError


class Checkpointer:

  def __init__(self, directory: str, keep: int):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={
            'state': ocp.StandardCheckpointHandler(),
            'data': grain.checkpoint.CheckpointHandler(),
            'extra': ocp.JsonCheckpointHandler(),
        })

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any, extra: dict[str, Any]) -> None:
    """Saves and waits for the write: a failed save (disk full, no permission) fails here, at its
    own step and naming the path, not silently until the next save."""
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iter),
          extra=ocp.args.JsonSave(extra)))
      self.manager.wait_until_finished()
    except (OSError, ValueError, RuntimeError) as e:
      latest = [s for s in self.manager.all_steps() if s != step]
      resume = f'step {max(latest)}' if latest else 'the start'
      raise WorkdirError(
          f'saving the checkpoint of step {step} in {self.manager.directory} failed '
          f'({type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}); free disk '
          f'space or fix the permissions, then rerun the same command (it resumes from '
          f'{resume})') from e

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]]:
    """``abstract_state``: ShapeDtypeStructs carrying the target shardings."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter),
        extra=ocp.args.JsonRestore()))
    return out['state'], out['extra']

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def mismatch(self, step: int, abstract_state: Any) -> str | None:
    """The arrays whose saved shape or dtype differs from ``abstract_state``'s, read from the
    step's metadata alone; None when they all fit or the metadata cannot be read (then the
    restore itself decides: a corrupt step fails there).

    Checking before restoring names the arrays that do not fit, and it starts no read: a restore
    that fails part way leaves orbax's other reads of that step pending, to be reported as
    "Exception ignored" warnings when they are collected.
    """
    try:
      tree = self.manager.item_metadata(step)['state']
      saved = _shapes(getattr(tree, 'tree', tree))
    except Exception:  # noqa: BLE001 -- unreadable metadata is the restore's to report
      return None
    want = _shapes(abstract_state)
    if 2 * len(saved.keys() & want.keys()) < len(want):
      return None  # the names do not line up (another orbax layout): let the restore decide
    diffs = [f'{k}: {_shape_text(*saved[k], want[k][1])} saved, '
             f'{_shape_text(*want[k], saved[k][1])} here'
             for k in want if k in saved and saved[k] != want[k]]
    diffs += [f'{k}: not in the checkpoint' for k in want if k not in saved]
    diffs += [f'{k}: in the checkpoint only' for k in saved if k not in want]
    if not diffs:
      return None
    more = f' and {len(diffs) - 3} more' if len(diffs) > 3 else ''
    return '; '.join(diffs[:3]) + more

  def set_aside(self, step: int) -> str:
    """Move an unreadable step out of the manager's directory (kept for inspection, never read
    again: the resumed run writes that step anew)."""
    src = os.path.join(self.manager.directory, str(step))
    dst_dir = f'{os.path.normpath(self.manager.directory)}.corrupt'
    os.makedirs(dst_dir, exist_ok=True)
    dst, k = os.path.join(dst_dir, str(step)), 0
    while os.path.exists(dst):
      k += 1
      dst = os.path.join(dst_dir, f'{step}.{k}')
    os.replace(src, dst)
    self.manager.reload()
    return dst

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def restore_latest_intact(ckpt: Checkpointer, abstract_state: Any, data_iter: Any,
                          config_changes: str, log: Callable[[str], None]
                          ) -> tuple[int, Any, dict[str, Any]] | None:
  """(step, state, extra) of the newest checkpoint that reads back, or None when there is none.

  A step that fails to restore while the config is unchanged is corrupt (a disk fault, a copy cut
  short): it is set aside with a warning naming it and the previous kept step is tried. When the
  config changed, the failure is the change (a shape that no longer fits): the error names the
  changed fields and the two ways out, and nothing in the workdir is touched.
  """
  steps = ckpt.all_steps()
  bad: list[str] = []
  for step in reversed(steps):
    misfit = ckpt.mismatch(step, abstract_state) if config_changes else None
    if misfit:
      raise WorkdirError(
          f'cannot resume {ckpt.manager.directory} (step {step}) with this config: it changes '
          f'{config_changes}, and the checkpoint does not fit it ({misfit}). Use a new '
          '--workdir for the new config, or resume with the config saved in its config.json')
    try:
      state, extra = ckpt.restore(step, abstract_state, data_iter)
    except Exception as e:  # orbax / tensorstore / grain raise many types for one bad file
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      if config_changes:
        raise WorkdirError(
            f'cannot resume {ckpt.manager.directory} (step {step}) with this config: it changes '
            f'{config_changes}, and the checkpoint does not fit it ({reason}). Use a new '
            '--workdir for the new config, or resume with the config saved in its config.json'
        ) from None
      where = ckpt.set_aside(step)
      bad.append(f'{step} ({reason}; moved to {where})')
      log(f'warning: checkpoint step {step} in {ckpt.manager.directory} cannot be read '
          f'({reason}); moved to {where}, trying the previous kept step')
      continue
    if bad:
      log(f'resuming from step {step}, the newest intact checkpoint (unreadable: '
          f'{", ".join(bad)})')
    return step, state, extra
  if bad:
    raise WorkdirError(
        f'no intact checkpoint in {ckpt.manager.directory}: every kept step failed to read '
        f'({"; ".join(bad)}); start over with a new --workdir (or delete this one)')
  return None


class BestCheckpointer:
  """The train state of the best-validating step only (orbax ``best_fn`` / ``best_mode``).

  The trainer saves only evaluations that improved on the best, so the one kept checkpoint is the
  early-stopping record's ``best_step``; orbax's best-N policy would keep the best by ``metric``
  even if more were saved. Steps saved after the latest resumable checkpoint are dropped on
  resume (``drop_after``): the resumed run saves them again from its own weights.
  """

  def __init__(self, directory: str, metric: str, mode: str):
    best_fn: Callable[[dict[str, float]], float] = lambda m: m[metric]
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=best_fn, best_mode=mode,
            keep_checkpoints_without_metrics=False, create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler()})
    self.metric = metric

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, value: float) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      metrics={self.metric: float(value)}, force=True)

  def restore(self, step: int, abstract_state: Any) -> Any:
    """``abstract_state``: ShapeDtypeStructs carrying the target shardings."""
    self.manager.wait_until_finished()
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return out['state']

  def drop_after(self, step: int) -> None:
    for s in self.steps():
      if s > step:
        self.manager.delete(s)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _shape_text(shape: tuple[int, ...], dtype: str, other_dtype: str) -> str:
  """'[208, 32]', with the dtype only where the two sides' dtypes differ."""
  return f'{list(shape)}' + (f' {dtype}' if dtype != other_dtype else '')


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'a/b/c' -> (shape, dtype) of every array leaf: the same names for a train state's pytree and
  for orbax's saved metadata (nested dicts keyed by the same field names)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(diagnostics.path_names(path)): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves if hasattr(leaf, 'shape')}


def abstract_with_sharding(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def restore_state(directory: str, abstract_state: Any, step: int | None = None
                  ) -> tuple[Any, int] | None:
  """(the train state, its step) from a ``Checkpointer`` or ``BestCheckpointer`` directory, the
  latest step unless ``step``; None when it holds none. Reads only the state item: evaluation and
  export need no data iterator."""
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={'state': ocp.StandardCheckpointHandler()})
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      return None
    step = steps[-1] if step is None else step
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return out['state'], step
  finally:
    manager.close()
