"""Embedded synthetic ranking data with a planted ground truth: the default of ``python launch.py``.

Industrial in shape (SPEC A.1, A.2): 3 behaviour sequences with timestamps (click, cart, order),
17 non-sequential features (user profile, request context, candidate item), C candidates per
request and a click -> add-to-cart -> order funnel where a later stage implies the earlier one.

The labels are drawn from known probabilities that need what a strong ranker must model:
  * sequence x candidate: click depends on the candidate's similarity to the user's *recent* click
    events (a per-request intent that no user-id embedding can memorise), cart on the similarity
    to the cart/order history, order on whether the candidate's category was bought before;
  * feature x feature: age x category, hour x category, gender x brand and income x price tables.
The true conditional probabilities travel with each batch (``true_prob``), so the Bayes-limit
("oracle") AUC is reported beside the model's.

Every request is generated from ``(seed, index)`` alone, so any index is random-access, the stream
is identical for the same seed on any machine and process, and tens of millions of requests never
sit in memory. Request time grows with the index, so an index range split is chronological.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from onetrans_jax.schema import (CategoricalFeature, FeatureSchema, NumericFeature,
                                 SequenceFeature, Task, Vocabulary)

_T0 = 1_700_000_000  # first request time, unix seconds
_REQUEST_SPACING = 30  # seconds between consecutive requests (2880 requests a day)
SECONDS_PER_DAY = 86_400
_NUM_AGE, _NUM_GENDER, _NUM_CITY, _NUM_INCOME, _NUM_DEVICE, _NUM_PAGE = 7, 2, 30, 5, 4, 5
_NUM_PRICE_BUCKETS = 10


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes of the synthetic world. Defaults are CPU-sized; every field is a config override."""
  seed: int = 0
  num_users: int = 2000
  num_items: int = 4000
  num_categories: int = 24
  num_brands: int = 60
  latent_dim: int = 8
  num_candidates: int = 16
  min_candidates: int = 8
  click_len: int = 64
  cart_len: int = 24
  order_len: int = 12
  num_requests: int = 10_000_000

  def __post_init__(self):
    for name in ('num_users', 'num_items', 'num_categories', 'num_brands', 'latent_dim',
                 'num_candidates', 'min_candidates', 'click_len', 'cart_len', 'order_len',
                 'num_requests'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.data.{name} must be >= 1, got {getattr(self, name)}')
    if self.min_candidates > self.num_candidates:
      raise ValueError(f'config.data.min_candidates ({self.min_candidates}) must be <= '
                       f'config.data.num_candidates ({self.num_candidates})')
    if self.num_items < self.num_categories:
      raise ValueError(f'config.data.num_items ({self.num_items}) must be >= '
                       f'config.data.num_categories ({self.num_categories})')


def synthetic_schema(cfg: SyntheticConfig) -> FeatureSchema:
  side = (('category', 'category'), ('brand', 'brand'))
  return FeatureSchema(
      vocabularies=(
          Vocabulary('user', cfg.num_users + 1), Vocabulary('age', _NUM_AGE + 1),
          Vocabulary('gender', _NUM_GENDER + 1), Vocabulary('city', _NUM_CITY + 1),
          Vocabulary('income', _NUM_INCOME + 1), Vocabulary('device', _NUM_DEVICE + 1),
          Vocabulary('hour', 25), Vocabulary('weekday', 8), Vocabulary('page', _NUM_PAGE + 1),
          Vocabulary('item', cfg.num_items + 1), Vocabulary('category', cfg.num_categories + 1),
          Vocabulary('brand', cfg.num_brands + 1),
          Vocabulary('price_bucket', _NUM_PRICE_BUCKETS + 1),
      ),
      request_categorical=(
          CategoricalFeature('user_id', 'user', 'user'), CategoricalFeature('age', 'age', 'user'),
          CategoricalFeature('gender', 'gender', 'user'), CategoricalFeature('city', 'city', 'user'),
          CategoricalFeature('income', 'income', 'user'),
          CategoricalFeature('device', 'device', 'user'),
          CategoricalFeature('hour', 'hour', 'context'),
          CategoricalFeature('weekday', 'weekday', 'context'),
          CategoricalFeature('page', 'page', 'context'),
      ),
      request_numeric=(NumericFeature('user_activity', 'user'),
                       NumericFeature('account_age', 'user')),
      sequences=(
          SequenceFeature('click', cfg.click_len, 'item', side),
          SequenceFeature('cart', cfg.cart_len, 'item', side),
          SequenceFeature('order', cfg.order_len, 'item', side),
      ),
      candidate_categorical=(
          CategoricalFeature('item_id', 'item', 'item'),
          CategoricalFeature('item_category', 'category', 'item'),
          CategoricalFeature('item_brand', 'brand', 'item'),
          CategoricalFeature('item_price_bucket', 'price_bucket', 'item'),
      ),
      candidate_numeric=(NumericFeature('item_log_price', 'item'),
                         NumericFeature('item_popularity', 'item')),
      tasks=(Task('click'), Task('cart', parent='click'), Task('order', parent='cart')),
      num_candidates=cfg.num_candidates,
  )


class SyntheticWorld:
  """The fixed part of the world (users, items, interaction tables), drawn once from the seed."""

  def __init__(self, cfg: SyntheticConfig):
    self.cfg = cfg
    rng = np.random.default_rng([cfg.seed, 0])
    n_i, n_c, k = cfg.num_items, cfg.num_categories, cfg.latent_dim
    # Items: id 1..n_i, category by id, latent vector near the category centroid.
    self.centroids = rng.normal(size=(n_c + 1, k)) * (1.5 / np.sqrt(k))
    item_ids = np.arange(n_i + 1)
    self.item_cat = np.where(item_ids > 0, 1 + (item_ids - 1) % n_c, 0).astype(np.int32)
    self.item_vec = self.centroids[self.item_cat] + rng.normal(size=(n_i + 1, k)) * (0.6 / np.sqrt(k))
    self.item_vec[0] = 0.0
    brands_per_cat = max(1, cfg.num_brands // n_c)
    self.item_brand = (1 + ((self.item_cat - 1) * brands_per_cat +
                            rng.integers(0, brands_per_cat + 2, size=n_i + 1)) % cfg.num_brands)
    self.item_brand = self.item_brand.astype(np.int32)
    self.item_brand[0] = 0
    cat_price = rng.normal(size=n_c + 1)
    self.item_log_price = (cat_price[self.item_cat] + 0.5 * rng.normal(size=n_i + 1)).astype(np.float32)
    edges = np.quantile(self.item_log_price[1:], np.linspace(0, 1, _NUM_PRICE_BUCKETS + 1)[1:-1])
    self.item_price_bucket = (1 + np.searchsorted(edges, self.item_log_price)).astype(np.int32)
    self.item_pop = (0.5 * rng.normal(size=n_i + 1)).astype(np.float32)
    # Users: profile, two favourite categories, activity level.
    n_u = cfg.num_users
    self.user_age = rng.integers(1, _NUM_AGE + 1, size=n_u + 1).astype(np.int32)
    self.user_gender = rng.integers(1, _NUM_GENDER + 1, size=n_u + 1).astype(np.int32)
    self.user_city = rng.integers(1, _NUM_CITY + 1, size=n_u + 1).astype(np.int32)
    self.user_income = rng.integers(1, _NUM_INCOME + 1, size=n_u + 1).astype(np.int32)
    self.user_device = rng.integers(1, _NUM_DEVICE + 1, size=n_u + 1).astype(np.int32)
    self.user_fav = rng.integers(1, n_c + 1, size=(n_u + 1, 2)).astype(np.int32)
    self.user_activity = rng.uniform(0.2, 0.95, size=n_u + 1).astype(np.float32)
    self.user_account_age = rng.uniform(0.0, 1.0, size=n_u + 1).astype(np.float32)
    # Feature x feature interaction tables of the planted truth.
    self.age_cat = rng.normal(size=(_NUM_AGE + 1, n_c + 1)) * 0.7
    self.hour_cat = rng.normal(size=(25, n_c + 1)) * 0.4
    self.gender_brand = rng.normal(size=(_NUM_GENDER + 1, cfg.num_brands + 1)) * 0.6

  # ---- sampling helpers ----------------------------------------------------------------------
  def _items_in(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
    """A uniformly random item of each given category (ids are laid out category-major)."""
    n_c = self.cfg.num_categories
    per_cat = (self.cfg.num_items - cats + n_c) // n_c  # items with id = cat + j * n_c, j >= 0
    return (cats + n_c * (rng.random(cats.shape) * per_cat).astype(np.int64)).astype(np.int32)

  def _sequence(self, rng: np.random.Generator, items: np.ndarray, max_len: int,
                t_request: int, mean_gap: float) -> dict[str, np.ndarray]:
    """Right-aligned event block: oldest first, most recent last, padding on the left."""
    n = len(items)
    ids = np.zeros((max_len, 3), np.int32)
    time = np.zeros((max_len,), np.int32)
    mask = np.zeros((max_len,), np.bool_)
    if n:
      gaps = rng.exponential(mean_gap, size=n) + 1.0
      t = (t_request - np.cumsum(gaps)[::-1]).astype(np.int64)  # increasing, all < t_request
      ids[max_len - n:, 0] = items
      ids[max_len - n:, 1] = self.item_cat[items]
      ids[max_len - n:, 2] = self.item_brand[items]
      time[max_len - n:] = t
      mask[max_len - n:] = True
    return {'ids': ids, 'time': time, 'mask': mask}

  # ---- one request ---------------------------------------------------------------------------
  def request(self, index: int) -> dict[str, Any]:
    """Request ``index``: features, funnel labels and the planted conditional probabilities."""
    cfg = self.cfg
    if not 0 <= index < cfg.num_requests:
      raise IndexError(f'request index {index} outside [0, {cfg.num_requests})')
    rng = np.random.default_rng([cfg.seed, 1, index])
    n_c = cfg.num_categories
    u = int(rng.integers(1, cfg.num_users + 1))
    t_req = _T0 + index * _REQUEST_SPACING + int(rng.integers(0, _REQUEST_SPACING))
    hour = (t_req // 3600) % 24 + 1
    weekday = (t_req // SECONDS_PER_DAY) % 7 + 1
    page = int(rng.integers(1, _NUM_PAGE + 1))
    act = float(self.user_activity[u])
    fav = self.user_fav[u]
    # Per-request intent: usually one of the favourites, sometimes something new.
    intent = int(fav[rng.integers(0, 2)]) if rng.random() < 0.6 else int(rng.integers(1, n_c + 1))

    # Click history: older events follow long-term taste, the recent third follows the intent.
    n_click = 0 if rng.random() < 0.03 else int(rng.binomial(cfg.click_len, act))
    n_recent = int(np.ceil(n_click / 3))
    old_cats = np.where(rng.random(n_click - n_recent) < 0.6,
                        fav[rng.integers(0, 2, size=n_click - n_recent)],
                        rng.integers(1, n_c + 1, size=n_click - n_recent))
    new_cats = np.where(rng.random(n_recent) < 0.7, intent,
                        rng.integers(1, n_c + 1, size=n_recent))
    click_items = self._items_in(rng, np.concatenate([old_cats, new_cats]).astype(np.int32))
    # Carts mostly re-visit clicked items; orders mostly come from carts.
    n_cart = int(rng.binomial(cfg.cart_len, act * 0.5))
    cart_items = (click_items[rng.integers(0, n_click, size=n_cart)] if n_click
                  else self._items_in(rng, fav[rng.integers(0, 2, size=n_cart)]))
    if n_click:
      fresh = rng.random(n_cart) < 0.3
      cart_items = np.where(fresh, self._items_in(rng, fav[rng.integers(0, 2, size=n_cart)]),
                            cart_items)
    n_order = int(rng.binomial(cfg.order_len, act * 0.3))
    order_items = (cart_items[rng.integers(0, n_cart, size=n_order)] if n_cart
                   else self._items_in(rng, fav[rng.integers(0, 2, size=n_order)]))
    seqs = {
        'click': self._sequence(rng, click_items, cfg.click_len, t_req, 1800.0),
        'cart': self._sequence(rng, cart_items, cfg.cart_len, t_req, 6 * 3600.0),
        'order': self._sequence(rng, order_items, cfg.order_len, t_req, 3 * SECONDS_PER_DAY),
    }

    # Candidates: a mix of intent, favourite and random categories; padded to C.
    C = cfg.num_candidates
    n_cand = int(rng.integers(cfg.min_candidates, C + 1))
    draw = rng.random(n_cand)
    cats = np.where(draw < 0.4, intent,
                    np.where(draw < 0.6, fav[rng.integers(0, 2, size=n_cand)],
                             rng.integers(1, n_c + 1, size=n_cand))).astype(np.int32)
    cand = self._items_in(rng, cats)
    c_cat, c_brand = self.item_cat[cand], self.item_brand[cand]
    c_price = self.item_log_price[cand]

    # Planted truth. Recency-weighted mean of the last clicks = the request's intent signal.
    vec = self.item_vec
    if n_click:
      recent = click_items[-10:]
      w = 0.8 ** np.arange(len(recent))[::-1]
      intent_vec = (w[:, None] * vec[recent]).sum(0) / w.sum()
    else:
      intent_vec = np.zeros(cfg.latent_dim)
    hist = np.concatenate([cart_items, order_items])
    taste_vec = vec[hist].mean(0) if len(hist) else np.zeros(cfg.latent_dim)
    bought_cats = np.zeros(n_c + 1, bool)
    bought_cats[self.item_cat[order_items]] = True
    age, gender, income = self.user_age[u], self.user_gender[u], self.user_income[u]
    price_pain = (3.0 - income) / 2.0  # > 0: price-sensitive users
    click_logit = (-2.8 + 1.6 * vec[cand] @ intent_vec + self.age_cat[age, c_cat] +
                   self.hour_cat[hour, c_cat] + self.item_pop[cand] - 0.3 * price_pain * c_price)
    cart_logit = (-1.5 + 1.2 * vec[cand] @ taste_vec + self.gender_brand[gender, c_brand] -
                  0.6 * price_pain * c_price)
    order_logit = -0.6 + 1.5 * bought_cats[c_cat] - 0.8 * price_pain * c_price + 0.6 * (act - 0.5)
    probs = 1.0 / (1.0 + np.exp(-np.stack([click_logit, cart_logit, order_logit], -1)))
    draws = rng.random((n_cand, 3)) < probs
    click = draws[:, 0]
    cart = click & draws[:, 1]
    order = cart & draws[:, 2]

    cand_cat = np.zeros((C, 4), np.int32)
    cand_cat[:n_cand] = np.stack([cand, c_cat, c_brand, self.item_price_bucket[cand]], -1)
    cand_num = np.zeros((C, 2), np.float32)
    cand_num[:n_cand] = np.stack([c_price, self.item_pop[cand]], -1)
    cand_mask = np.zeros((C,), np.bool_)
    cand_mask[:n_cand] = True
    labels = np.zeros((C, 3), np.float32)
    labels[:n_cand] = np.stack([click, cart, order], -1)
    true_prob = np.zeros((C, 3), np.float32)
    true_prob[:n_cand] = probs
    return {
        'request': {
            'user_id': np.int32(u),
            'time': np.int32(t_req),
            'cat': np.array([u, age, gender, self.user_city[u], income, self.user_device[u],
                             hour, weekday, page], np.int32),
            'num': np.array([act, self.user_account_age[u]], np.float32),
        },
        'seq': seqs,
        'cand': {'cat': cand_cat, 'num': cand_num, 'mask': cand_mask},
        'labels': labels,
        'true_prob': true_prob,
    }


class SyntheticSource:
  """grain random-access source: ``source[i]`` is request ``i``; no state beyond the world."""

  def __init__(self, cfg: SyntheticConfig):
    self.cfg = cfg
    self.world = SyntheticWorld(cfg)
    self.schema = synthetic_schema(cfg)

  def __len__(self) -> int:
    return self.cfg.num_requests

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.world.request(int(index))

  def __repr__(self) -> str:
    return f'SyntheticSource({self.cfg})'
