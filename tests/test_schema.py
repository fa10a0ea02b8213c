"""The batch contract: checks that name the field, the point-wise view, task populations."""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest

from onetrans_jax.data.synthetic import SyntheticConfig, SyntheticSource
from onetrans_jax.schema import (CategoricalFeature, FeatureSchema, SchemaError, Task, Vocabulary,
                                 flatten_candidates, label_weights)

SRC = SyntheticSource(SyntheticConfig(num_users=50, num_items=100, num_categories=5,
                                      num_brands=10, num_candidates=4, min_candidates=2,
                                      click_len=6, cart_len=4, order_len=3, num_requests=1000))


def _batch(n=3):
  return jax.tree.map(lambda *x: np.stack(x), *[SRC[i] for i in range(n)])


def test_valid_batch_passes_and_spec_matches():
  b = _batch()
  SRC.schema.check_batch(b)
  spec = SRC.schema.batch_spec(3, with_true_prob=True)
  shapes = jax.tree.map(lambda s: s[0], spec, is_leaf=lambda x: isinstance(x, tuple))
  assert jax.tree.map(np.shape, b) == shapes


@pytest.mark.parametrize('mutate, message', [
    (lambda b: b['cand']['cat'].__setitem__((0, 0, 0), 10_000),
     r'cand/cat column 0 has ids in \[.*10000\].*vocabulary \'item\' has size 101'),
    (lambda b: b['request']['cat'].__setitem__((1, 1), -1), r'request/cat column 1 .*\'age\''),
    (lambda b: b['seq']['click']['ids'].__setitem__((0, 0, 1), 99), r'seq/click/ids column 1'),
    (lambda b: b['request']['num'].__setitem__((0, 0), np.nan), r'request/num holds 1 non-finite'),
    (lambda b: b['labels'].__setitem__((0, 0, 0), 0.5), r'labels must be 0 or 1'),
    (lambda b: b['cand']['mask'].__setitem__(0, False), r'no valid candidate'),
])
def test_check_batch_names_the_field(mutate, message):
  b = copy.deepcopy(_batch())
  mutate(b)
  with pytest.raises(SchemaError, match=message):
    SRC.schema.check_batch(b)


def test_check_batch_shape_dtype_alignment():
  b = _batch()
  b['cand']['num'] = b['cand']['num'][:, :, :1]
  with pytest.raises(SchemaError, match=r'cand/num has shape \(3, 4, 1\).*\(3, 4, 2\)'):
    SRC.schema.check_batch(b)
  b = _batch()
  b['cand']['cat'] = b['cand']['cat'].astype(np.int64)
  with pytest.raises(SchemaError, match='cand/cat has dtype int64.*int32'):
    SRC.schema.check_batch(b)
  b = _batch()
  m = b['seq']['cart']['mask']
  m[0] = False
  m[0, 0] = True  # a valid event before padding: left-aligned
  with pytest.raises(SchemaError, match='seq/cart/mask is not right-aligned'):
    SRC.schema.check_batch(b)
  b = _batch()
  del b['seq']['order']
  with pytest.raises(SchemaError, match=r"missing field\(s\) \['order'\] under seq"):
    SRC.schema.check_batch(b)


def test_schema_validation_messages():
  kw = dict(vocabularies=(Vocabulary('v', 5),), request_categorical=(),
            request_numeric=(), sequences=(), candidate_categorical=(), candidate_numeric=(),
            tasks=(Task('click'),), num_candidates=2)
  FeatureSchema(**kw)
  with pytest.raises(SchemaError, match="uses vocabulary 'w', which is not declared"):
    FeatureSchema(**{**kw, 'candidate_categorical': (CategoricalFeature('x', 'w', 'item'),)})
  with pytest.raises(SchemaError, match="parent 'cart' must be an earlier task"):
    FeatureSchema(**{**kw, 'tasks': (Task('order', 'cart'), Task('cart'))})
  with pytest.raises(SchemaError, match='size must be >= 2'):
    FeatureSchema(**{**kw, 'vocabularies': (Vocabulary('v', 1),)})


def test_flatten_candidates():
  b = _batch(3)
  flat = flatten_candidates(b)
  c = SRC.schema.num_candidates
  assert flat['cand']['mask'].shape == (3 * c,)
  assert flat['labels'].shape == (3 * c, 3)
  # Candidate j of request i is row i*C + j, with request i's user side beside it.
  np.testing.assert_array_equal(flat['cand']['cat'][1 * c + 2], b['cand']['cat'][1, 2])
  np.testing.assert_array_equal(flat['seq']['click']['ids'][1 * c + 2], b['seq']['click']['ids'][1])
  np.testing.assert_array_equal(flat['request']['user_id'][1 * c + 2], b['request']['user_id'][1])
  # Same on jax arrays.
  flat_j = flatten_candidates(jax.tree.map(jax.numpy.asarray, b))
  np.testing.assert_array_equal(np.asarray(flat_j['cand']['cat']), flat['cand']['cat'])


def test_label_weights_follow_the_funnel():
  labels = np.array([[[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]]], np.float32)
  mask = np.array([[True, True, True, False]])
  w = label_weights(labels, mask, (-1, 0, 1))
  np.testing.assert_array_equal(w[0], [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
