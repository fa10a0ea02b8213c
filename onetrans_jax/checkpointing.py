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
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        extra=ocp.args.JsonSave(extra)))

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]]:
    """``abstract_state``: ShapeDtypeStructs carrying the target shardings."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter),
        extra=ocp.args.JsonRestore()))
    return out['state'], out['extra']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


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


def abstract_with_sharding(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
