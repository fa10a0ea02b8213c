"""A trained run read back from its workdir: its config, data, model and the weights it chose.

``onetrans eval``, ``predict`` and ``export`` start here. The config is the one training saved
(``<workdir>/config.json``), so the data, the model and the metrics are the run's own, whatever
experiment file produced it. The weights are those the run's final evaluation used: the
best-validating step (``best_checkpoint/``, kept when validation chose the step) or else the latest
checkpoint, and ``SavedRun.chosen`` says which.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import linen as nn
from jax.sharding import Mesh

from onetrans_jax import checkpointing, sharding
from onetrans_jax.data import pipeline
from onetrans_jax.data.types import Dataset
from onetrans_jax.errors import WorkdirError
from onetrans_jax.models import build_model
from onetrans_jax.optimizers import make_optimizer
from onetrans_jax.train import init_train_state

CONFIG_FILE = 'config.json'


def _tuples(tree: Any) -> Any:
  """JSON lists back to the tuples the experiment files write (model fields are hashed)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in ``workdir``; WorkdirError naming what is missing."""
  if not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} does not exist; give the directory a training run '
                       'wrote (onetrans train --workdir ...)')
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f'{workdir} holds no {CONFIG_FILE}, so it is not a training run\'s '
                       'workdir (onetrans train writes one when it starts); check --workdir')
  try:
    with open(path, encoding='utf-8') as f:
      tree = json.load(f)
  except ValueError as e:
    raise WorkdirError(f'{path} is not valid JSON ({e}); it was written by training: restore '
                       'it, or train again into a new workdir') from None
  if 'sweep' in tree:
    raise WorkdirError(f'{workdir} holds a sweep: point --workdir at one of its runs '
                       '(<workdir>/<variant>/seed_<n>)')
  return ml_collections.ConfigDict(_tuples(tree))


@dataclasses.dataclass
class SavedRun:
  """What eval, predict and export need: the run's config, data, model, mesh and weights."""
  workdir: str
  config: ml_collections.ConfigDict
  dataset: Dataset
  model: nn.Module
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]
  params: Any
  params_sharding: Any
  step: int
  chosen: str   # 'best' (the best-validating step) or 'latest'
  note: str     # one line saying which step was taken and why


def load(workdir: str, dataset: Dataset | None = None,
         log: Callable[[str], None] = print) -> SavedRun:
  """Reads ``workdir``'s config, builds its data (or takes ``dataset``, which must have the run's
  schema) and model, and restores the weights of its best step, else its latest one."""
  config = load_config(workdir)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  dataset = dataset or pipeline.build_dataset(config.data)
  model = build_model(config.model, dataset.schema)
  tx = make_optimizer(config.optimizer)
  _, state_shd, abstract, _ = init_train_state(model, tx, dataset.schema, mesh, rules,
                                               jax.random.key(int(config.seed)))
  target = checkpointing.abstract_with_sharding(abstract, state_shd)
  best = os.path.join(workdir, 'best_checkpoint')
  found = checkpointing.restore_state(best, target)
  if found is not None:
    state, step = found
    chosen, note = 'best', f'the best-validating step {step} ({best})'
  else:
    latest = os.path.join(workdir, 'checkpoints')
    found = checkpointing.restore_state(latest, target)
    if found is None:
      raise WorkdirError(f'{workdir} holds no checkpoint ({latest} is empty or missing): the run '
                         'stopped before saving one; train it (the same command resumes)')
    state, step = found
    why = ('validation chose no step' if os.path.isdir(best) else
           'the run did not validate (config.train.eval_every=0)')
    chosen, note = 'latest', f'the latest step {step}: {why}, so no best checkpoint'
  log(f'{workdir}: scoring with {note}')
  return SavedRun(workdir, config, dataset, model, mesh, rules, state.params, state_shd.params,
                  step, chosen, note)
