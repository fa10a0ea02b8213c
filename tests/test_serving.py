"""Cached serving and its export: exact scores, any batch shape, no training code at load time."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from onetrans_jax import serving
from onetrans_jax.models import build_model
from onetrans_jax.models.layers import partitioning
from onetrans_jax.schema import dummy_batch
from onetrans_jax.serving_runtime import load_scorer
from tests.helpers import ROOT, onetrans_model_config


@pytest.fixture(scope='module')
def trained_like(data):
  """A model with random (not zero) parameters and its per-candidate reference scores."""
  schema, batch = data
  model = build_model(onetrans_model_config(), schema)
  params = partitioning.unbox(
      jax.jit(model.init)(jax.random.key(3), dummy_batch(schema, 1))['params'])
  naive = build_model(onetrans_model_config(request_level=False), schema)
  reference = jax.jit(lambda p, b: naive.apply({'params': p}, b))(params, batch)
  return schema, batch, model, params, np.asarray(reference)


def _sub(batch, requests, candidates):
  out = jax.tree.map(lambda x: x[requests], batch)
  out['cand'] = jax.tree.map(lambda x: x[:, candidates], out['cand'])
  return out


def test_jitted_cached_scoring_is_exact_for_any_candidate_subset(trained_like):
  _, batch, model, params, reference = trained_like
  user_fn, score_fn = serving.cached_scoring_fns(model)
  cache = user_fn(params, serving.user_part(batch))
  full = score_fn(params, serving.candidate_part(batch), cache)
  assert np.max(np.abs(np.asarray(full) - reference)) <= 1e-5
  # A candidate's score does not depend on which other candidates share the request.
  for cands in (slice(0, 1), slice(2, 7)):
    part = _sub(batch, slice(None), cands)
    sub = score_fn(params, serving.candidate_part(part), cache)
    np.testing.assert_allclose(sub, reference[:, cands], atol=1e-5)


def test_cached_serving_refused_for_full_attention(data):
  schema, _ = data
  with pytest.raises(ValueError, match='cached serving needs config.model.attention'):
    serving.cached_scoring_fns(build_model(onetrans_model_config(attention='full'), schema))


LOADER = r'''
import sys, numpy as np
sys.path.insert(0, {root!r})
from onetrans_jax.serving_runtime import load_scorer, unflatten
scorer = load_scorer({export!r})
batch = unflatten(dict(np.load({batch!r})))
cache = scorer.user_cache({{'request': batch['request'], 'seq': batch['seq']}})
logits = scorer.score({{'request': batch['request'], 'cand': batch['cand']}}, cache)
np.save({out!r}, np.asarray(logits))
leaked = sorted(m for m in sys.modules if m.startswith(('flax', 'optax', 'orbax', 'grain'))
                or m.startswith('onetrans_jax.') and m != 'onetrans_jax.serving_runtime')
print('LEAKED', leaked)
'''


def test_export_round_trip_in_a_process_without_training_code(trained_like, tmp_path):
  schema, batch, model, params, reference = trained_like
  manifest = serving.export_scorer(model, params, schema, str(tmp_path / 'export'))
  assert manifest['tasks'] == list(schema.task_names) and manifest['platforms'] == ['cpu']
  # Another batch shape than the one used to lower: R and C are symbolic.
  part = _sub(batch, slice(0, 2), slice(1, 6))
  np.savez(tmp_path / 'batch.npz', **serving._flatten(part))
  script = LOADER.format(root=ROOT, export=str(tmp_path / 'export'),
                         batch=str(tmp_path / 'batch.npz'), out=str(tmp_path / 'logits.npy'))
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'LEAKED []' in proc.stdout, proc.stdout
  logits = np.load(tmp_path / 'logits.npy')
  assert logits.shape == (2, 5, schema.num_tasks)
  assert np.max(np.abs(logits - reference[:2, 1:6])) <= 1e-5
  # In process too, and a clear error for a directory that is not an export.
  scorer = load_scorer(str(tmp_path / 'export'))
  cache = scorer.user_cache(serving.user_part(batch))
  np.testing.assert_allclose(scorer.score(serving.candidate_part(batch), cache), reference,
                             atol=1e-5)
  with pytest.raises(FileNotFoundError, match='score.jaxexport is missing'):
    os.remove(tmp_path / 'export' / 'score.jaxexport')
    load_scorer(str(tmp_path / 'export'))


def test_onerank_exports_as_one_forward_pass_with_the_models_scores(data, tmp_path):
  """OneRank has no candidate-independent stage (its task channels read the request's candidate
  set), so export_model writes its forward pass: the loaded function scores a batch of another
  shape (R and C symbolic) as the in-process model does, to float32 rounding (atol 1e-5)."""
  from onetrans_jax.models.onerank import config as onerank_config
  schema, batch = data
  model = build_model(onerank_config.defaults(width=16, num_heads=2, num_layers=2, embed_dim=4),
                      schema)
  params = partitioning.unbox(
      jax.jit(model.init)(jax.random.key(5), dummy_batch(schema, 1))['params'])
  manifest = serving.export_model(model, params, schema, str(tmp_path / 'export'),
                                  name='onerank')
  assert manifest['model'] == 'onerank' and manifest['stages'] == 'forward'
  scorer = load_scorer(str(tmp_path / 'export'))
  part = _sub(batch, slice(0, 2), slice(0, 5))
  expected = jax.jit(lambda p, b: model.apply({'params': p}, b))(params, part)
  np.testing.assert_allclose(scorer.predict(part), expected, atol=1e-5, rtol=0)
  assert np.std(np.asarray(expected)) > 1e-3  # random weights: the scores differ
  with pytest.raises(ValueError, match='one forward pass'):
    scorer.user_cache(serving.user_part(part))


def test_onetrans_export_predicts_through_both_stages(trained_like, tmp_path):
  schema, batch, model, params, reference = trained_like
  assert serving.export_model(model, params, schema, str(tmp_path / 'e'))['stages'] == (
      'user_cache+score')
  np.testing.assert_allclose(load_scorer(str(tmp_path / 'e')).predict(batch), reference,
                             atol=1e-5, rtol=0)
