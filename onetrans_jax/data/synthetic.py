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

Mechanism world (``SyntheticConfig.mechanisms``, any subset; none by default). The OneTrans
ablations (SPEC A.10) each remove one design choice, and on the base world most of them have
little to lose: nothing in its planted truth needs them. Each mechanism plants a term in the
click logit and in the (click-conditional) cart logit that one component is meant to exploit, so
removing that component costs measurable signal. ``mechanism_strength`` multiplies every planted
term. What each plants and why was written down here, and the scales were set from the oracle
analysis (``mechanisms.py``), before any model was trained on them.

  * ``interplay`` -- cross-sequence temporal interplay; tests the timestamp-aware merge against
    the timestamp-agnostic one (with and without [SEP]). The 2 most recent events of each of the
    cart and order sequences are re-timed onto the click time scale (the older ones keep their
    slow scales), so which sequence holds the globally most recent event varies per request.
    Term: for the most recent event m1 and the second most recent m2 of the merged timeline,
    ``w[type(m)] * [category(candidate) == category(m)]`` (m2 at half weight), with the weights
    (click, cart, order) = (+1.2, +2.4, -1.8) on the click logit (an order means satiation) and
    (+0.7, +2.4, -2.4) on the cart logit. A timestamp-agnostic model sees each sequence's own last
    events in its own segment, but not which of them happened last (unless it is given the times
    another way, e.g. time-gap bucket embeddings), so it cannot tell whether a category match
    should raise or lower the score; without [SEP] it also has to find the segment boundaries.
  * ``heterogeneous`` -- non-sequential features that need differently shaped transforms; tests
    token-specific (mixed) parameters against parameters shared by all tokens. A periodic function
    of user_activity (times item popularity), a step in account_age (times the price bucket), a
    user-specific price optimum ``-|item_log_price - pref(user)|`` (pref: income plus a per-user
    offset) and random tables of categorical pairs the base world does not use (city x brand,
    device x price_bucket, weekday x category, page x brand). One shared FFN for all tokens must
    fit all of these shapes with the same weights.
  * ``cross_group`` -- XOR-like 3-way interactions (random tables with every main effect and
    2-way margin removed, so they cannot be learned additively) whose three features lie in three
    different groups of ``tokenizer.default_groups`` for 8 and for 12 NS tokens (``TRIPLES``):
    gender x income x item_brand, hour x page x item_category, age x weekday x item_price_bucket.
    The group-wise tokenizer encodes each group separately and must rebuild the interaction across
    tokens later; the auto-split tokenizer's one MLP sees all features at once.
  * ``deep_match`` -- candidate x history matches deep in the click sequence; tests the unified
    model against encode-then-interact ones and the value of long sequences. Term:
    ``log1p(#clicks in the older half of the click history with the candidate's brand)`` plus
    whether the exact candidate item was clicked (and, for the cart logit, carted) before. So
    that such matches are common, 15% of the candidates re-target an item clicked in the older
    half of the history and 20% another item of such an item's brand (the base history's older
    two thirds follow long-term taste, the recent third the request's intent). A model that
    compresses the history before it sees the candidate, or that keeps only the recent tail,
    loses these per-candidate counts.
  * ``recent_tail`` -- signal concentrated in the recent tail; the pyramid (only the most recent
    tokens stay queries in deep layers) should cost nothing here. Term: the similarity of the
    candidate's "style" vector (brand style plus item noise, independent of the base latent
    vectors) to the mean style of the 4 most recent events over all sequences.

Randomness: each request's mechanism draws come from its own stream (Philox keyed by (seed, 2)
at counter ``index``, see ``MechanismWorld.draws``) in fixed-size blocks (interplay's, then
deep_match's), and the mechanism tables from ``default_rng([seed, 3])``, all drawn whichever
mechanisms are on. The base world's streams are never touched, so ``mechanisms=()`` is the base
world bit for bit, and a mechanism's draws and tables are the same alone as with all five on.
Oracle AUC drops per mechanism: ``python -m onetrans_jax.data.mechanisms``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
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
  mechanisms: tuple[str, ...] = ()  # planted mechanisms (MECHANISMS); () = the base world
  mechanism_strength: float = 1.0   # multiplies every planted mechanism term

  def __post_init__(self):
    object.__setattr__(self, 'mechanisms', canonical(self.mechanisms))
    if not self.mechanism_strength >= 0:
      raise ValueError(f'config.data.mechanism_strength must be >= 0, got '
                       f'{self.mechanism_strength}')
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
    # Planted mechanisms: their own tables and streams, so the base world above is unchanged.
    self.mech = MechanismWorld(cfg, self) if cfg.mechanisms else None

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
    return self.request_with_terms(index)[0]

  def request_with_terms(self, index: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Request ``index`` and each active mechanism's planted logit term for its valid
    candidates, ``{name: [n_cand, 2]}`` (click, cart; before ``mechanism_strength``)."""
    cfg = self.cfg
    if not 0 <= index < cfg.num_requests:
      raise IndexError(f'request index {index} outside [0, {cfg.num_requests})')
    rng = np.random.default_rng([cfg.seed, 1, index])
    mech = self.mech
    mech_draws = mech.draws(index) if mech is not None and mech.needs_rng else None
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
    if mech_draws is not None:
      mech.retime(mech_draws, seqs, t_req, n_cart, n_order)

    # Candidates: a mix of intent, favourite and random categories; padded to C.
    C = cfg.num_candidates
    n_cand = int(rng.integers(cfg.min_candidates, C + 1))
    draw = rng.random(n_cand)
    cats = np.where(draw < 0.4, intent,
                    np.where(draw < 0.6, fav[rng.integers(0, 2, size=n_cand)],
                             rng.integers(1, n_c + 1, size=n_cand))).astype(np.int32)
    cand = self._items_in(rng, cats)
    if mech_draws is not None:
      cand = mech.candidates(mech_draws, cand, click_items)
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
    req_cat = np.array([u, age, gender, self.user_city[u], income, self.user_device[u],
                        hour, weekday, page], np.int32)
    terms = {}
    if mech is not None:
      terms = mech.terms(u=u, req_cat=req_cat, cand=cand, seqs=seqs,
                         counts=(n_click, n_cart, n_order), click_items=click_items,
                         cart_items=cart_items)
      planted = mech.combine(terms)
      click_logit = click_logit + planted[:, 0]
      cart_logit = cart_logit + planted[:, 1]
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
            'cat': req_cat,
            'num': np.array([act, self.user_account_age[u]], np.float32),
        },
        'seq': seqs,
        'cand': {'cat': cand_cat, 'num': cand_num, 'mask': cand_mask},
        'labels': labels,
        'true_prob': true_prob,
    }, terms


# ---- planted mechanisms (the mechanism world) -------------------------------------------------
MECHANISMS = ('interplay', 'heterogeneous', 'cross_group', 'deep_match', 'recent_tail')
# heterogeneous: (request feature, candidate feature) of each random pair table.
PAIRS = (('city', 'item_brand'), ('device', 'item_price_bucket'), ('weekday', 'item_category'),
         ('page', 'item_brand'))
# cross_group: (request feature, request feature, candidate feature) of each 3-way table.
TRIPLES = (('gender', 'income', 'item_brand'), ('hour', 'page', 'item_category'),
           ('age', 'weekday', 'item_price_bucket'))

_RECENT_GAP = 1800.0  # interplay: mean gap of the re-timed cart / order tail (the click scale)
_RETIMED = 2          # interplay: events re-timed at the end of the cart and order sequences
_TAIL = 4             # recent_tail: most recent events of the merged timeline
_RETARGET_ITEM = 0.15  # deep_match: share of candidates that are an older clicked item
_RETARGET_BRAND = 0.2  # deep_match: share that are another item of an older click's brand
_SIBLINGS = 8          # deep_match: same-brand items kept per item for the brand re-target
# Planted weights, columns (click logit, cart logit).
_INTERPLAY_W = np.array([[1.2, 0.7], [2.4, 2.4], [-1.8, -2.4]])  # rows: click, cart, order
_PERIODIC_W, _STEP_W = np.array([0.7, 0.5]), np.array([0.6, 0.4])
_PRICE_OPT_W, _PAIR_STD, _CROSS_STD = np.array([0.6, 0.9]), 0.3, 0.6
_RECENCY_W = np.array([[0.5], [1.0]])  # interplay: second most recent, most recent event
# deep_match rows: log1p(brand matches in the older half of the clicks), clicked, carted before.
_DEEP_W = np.array([[1.1, 0.7], [1.6, 1.0], [0.0, 2.0]])
_RECENT_W = np.array([2.4, 2.2])
# Scales above: each term's std is about 1 on the click and the cart logit, so with all five on
# each carries a similar share of the signal (mechanisms.py). Offsets added to the (click,
# cart) logits by each mechanism: roughly minus the term's mean, a little lower, so that the
# positive rates stay near the base world's with any subset on.
_OFFSETS = {'interplay': (-0.45, -0.8), 'heterogeneous': (0.1, -0.25),
            'cross_group': (-0.1, -0.45), 'deep_match': (-0.9, -1.0), 'recent_tail': (-0.3, -0.6)}


def canonical(names: str | Sequence[str]) -> tuple[str, ...]:
  """Validated mechanism names in ``MECHANISMS`` order (a comma-separated string also works)."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  names = tuple(names)
  unknown = [n for n in names if n not in MECHANISMS]
  if unknown:
    raise ValueError(f'config.data.mechanisms={names!r}: unknown {unknown}; choose any of '
                     f'{list(MECHANISMS)}')
  return tuple(m for m in MECHANISMS if m in names)


def _pure_interaction(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
  """A random table over ``shape`` (real levels) with all main effects and 2-way margins removed,
  two copies (click, cart) on the last axis, index 0 (padding) prepended on every axis."""
  t = rng.normal(size=shape + (2,))
  a, b, c = 0, 1, 2
  m = lambda *ax: t.mean(axis=ax, keepdims=True)  # noqa: E731
  t = t - m(a) - m(b) - m(c) + m(a, b) + m(a, c) + m(b, c) - m(a, b, c)
  t *= std / t.std()
  return np.pad(t, ((1, 0), (1, 0), (1, 0), (0, 0)))


class MechanismWorld:
  """Tables of the planted mechanisms and the per-request planting, for one synthetic world.

  Per-request work is a few dozen numpy calls on arrays of a few dozen entries, so whatever can
  be is precomputed per user or per item here (training generates requests on the fly).
  """

  def __init__(self, cfg: SyntheticConfig, world: SyntheticWorld):
    self.cfg, self.world = cfg, world
    self.on = frozenset(cfg.mechanisms)
    self.strength = float(cfg.mechanism_strength)
    self._key = np.array([cfg.seed, 2], np.uint64)
    self._generators: dict[int, np.random.Generator] = {}
    n_u, n_i, n_b = cfg.num_users, cfg.num_items, cfg.num_brands
    rng = np.random.default_rng([cfg.seed, 3])
    # heterogeneous: per-user coefficients of (popularity, price bucket), both standardised:
    # periodic in user_activity and a step in account_age.
    phase = rng.uniform(0, 2 * np.pi, size=2)
    periodic = np.sin(6 * np.pi * world.user_activity[:, None] + phase) * _PERIODIC_W
    step = np.where(world.user_account_age < 0.3, 1.0, -0.6)[:, None] * _STEP_W
    self.user_het = np.stack([periodic, step], axis=1)  # [users, 2 item features, 2 logits]
    mid = (_NUM_PRICE_BUCKETS + 1) / 2
    self.item_het = np.stack([world.item_pop / 0.5,
                              (world.item_price_bucket - mid) / (mid - 1) * np.sqrt(3)], -1)
    self.price_pref = 0.5 * (world.user_income - 3.0) + 0.7 * rng.normal(size=n_u + 1)
    # Pair and 3-way tables: (request column(s), candidate column, table [sizes..., 2]), the
    # columns those of request/cat and of (item, category, brand, price bucket).
    schema = synthetic_schema(cfg)
    vocab = {v.name: v.size for v in schema.vocabularies}
    req = {f.name: (i, vocab[f.vocab]) for i, f in enumerate(schema.request_categorical)}
    cand = {f.name: (i, vocab[f.vocab]) for i, f in enumerate(schema.candidate_categorical)}
    self.pairs = tuple((req[a][0], cand[c][0], rng.normal(size=(req[a][1], cand[c][1], 2)) *
                        _PAIR_STD) for a, c in PAIRS)
    self.cross = tuple(
        (req[a][0], req[b][0], cand[c][0],
         _pure_interaction(rng, (req[a][1] - 1, req[b][1] - 1, cand[c][1] - 1), _CROSS_STD))
        for a, b, c in TRIPLES)
    # deep_match: _SIBLINGS random items of each item's brand (to re-target a brand cheaply).
    brands = world.item_brand[1:]
    brand_items = 1 + np.argsort(brands, kind='stable')
    count = np.bincount(brands, minlength=n_b + 1)
    first = np.cumsum(count) - count
    b = world.item_brand[:, None]
    self.siblings = brand_items[first[b] + (rng.random((n_i + 1, _SIBLINGS)) * count[b]).astype(
        np.int64)].astype(np.int32)
    self.siblings[0] = 0
    # recent_tail: style vectors near their brand's.
    k = 4
    brand_style = rng.normal(size=(n_b + 1, k))
    self.item_style = (brand_style[world.item_brand] +
                       0.5 * rng.normal(size=(n_i + 1, k))) / np.sqrt(k)
    self.item_style[0] = 0.0
    # Static per-request pieces.
    self.offset = np.sum([_OFFSETS[m] for m in cfg.mechanisms], axis=0)
    self._tail_k = tuple(min(_TAIL, n) for n in (cfg.click_len, cfg.cart_len, cfg.order_len))
    self._tail_kind = np.concatenate([np.full(k, i) for i, k in enumerate(self._tail_k)])
    scale = []  # interplay: mean gap of each cart / order event, most recent first
    for n, base in ((cfg.cart_len, 6 * 3600.0), (cfg.order_len, 3 * SECONDS_PER_DAY)):
      scale.append(np.full(n, base))
      scale[-1][:_RETIMED] = _RECENT_GAP
    self._scale = np.concatenate(scale)
    self._item_cbp = np.stack([world.item_cat, world.item_brand, world.item_price_bucket], -1)

  @property
  def needs_rng(self) -> bool:
    return bool(self.on & {'interplay', 'deep_match'})

  def draws(self, index: int) -> dict[str, np.ndarray]:
    """The request's own draws, in fixed-size blocks (interplay's, then deep_match's), so each
    mechanism's draws do not depend on which other mechanisms are on.

    The stream is Philox keyed by (seed, 2) at counter ``index``: counter-based, so every request
    has its own stream, like ``default_rng([seed, 2, index])``, but re-positioning a generator
    costs a third of seeding a new one (measured). One generator per thread: grain reads a
    source from several threads.
    """
    cfg = self.cfg
    rng = self._generators.get(threading.get_ident())
    if rng is None:
      rng = self._generators[threading.get_ident()] = np.random.Generator(np.random.Philox(0))
    rng.bit_generator.state = {
        'bit_generator': 'Philox', 'buffer': np.zeros(4, np.uint64), 'buffer_pos': 4,
        'state': {'counter': np.array([0, 0, 0, index], np.uint64), 'key': self._key},
        'has_uint32': 0, 'uinteger': 0}
    return {'gaps': rng.standard_exponential(cfg.cart_len + cfg.order_len),
            'cand': rng.random((3, cfg.num_candidates))}

  # ---- history and candidates ----------------------------------------------------------------
  def candidates(self, draws: Mapping[str, np.ndarray], cand: np.ndarray,
                 click_items: np.ndarray) -> np.ndarray:
    """deep_match: a share of the candidates re-targets the older half of the click history,
    so deep history matches happen: ``_RETARGET_ITEM`` the clicked item itself,
    ``_RETARGET_BRAND`` another item of its brand."""
    n_old = len(click_items) // 2
    if 'deep_match' not in self.on or not n_old:
      return cand
    which, pick, other = draws['cand'][:, :len(cand)]
    old = click_items[(pick * n_old).astype(np.intp)]
    same_brand = self.siblings[old, (other * _SIBLINGS).astype(np.intp)]
    return np.where(which < _RETARGET_ITEM, old,
                    np.where(which < _RETARGET_ITEM + _RETARGET_BRAND, same_brand, cand))

  def retime(self, draws: Mapping[str, np.ndarray], seqs: dict[str, dict[str, np.ndarray]],
             t_req: int, n_cart: int, n_order: int) -> None:
    """interplay: the last ``_RETIMED`` cart and order events move onto the click time scale.

    Times are ``t_req - cumsum(gaps)`` with exponential gaps + 1 s, so they stay strictly
    increasing within a sequence and before the request, as in the base world.
    """
    if 'interplay' not in self.on:
      return
    gaps = draws['gaps'] * self._scale + 1.0  # cart's, then order's; most recent first
    if n_cart:
      seqs['cart']['time'][-n_cart:] = (t_req - np.cumsum(gaps[:n_cart]))[::-1]
    if n_order:
      c = self.cfg.cart_len
      seqs['order']['time'][-n_order:] = (t_req - np.cumsum(gaps[c:c + n_order]))[::-1]

  # ---- planted terms ---------------------------------------------------------------------------
  def merged_tail(self, seqs: Mapping[str, Mapping[str, np.ndarray]], num_events: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, categories, sequence index) of the up to ``_TAIL`` most recent of the
    ``num_events`` events over all sequences, oldest first. Padding has time 0, so it sorts
    first; ties in time go to the later sequence in schema order, as in the timestamp-aware
    merge (a stable sort of click, cart, order by time)."""
    (k0, k1, k2), c, a, o = self._tail_k, seqs['click'], seqs['cart'], seqs['order']
    time = np.concatenate((c['time'][-k0:], a['time'][-k1:], o['time'][-k2:]))
    ids = np.concatenate((c['ids'][-k0:], a['ids'][-k1:], o['ids'][-k2:]))
    order = np.argsort(time, kind='stable')
    top = order[len(order) - min(num_events, _TAIL):]
    return ids[top, 0], ids[top, 1], self._tail_kind[top]

  def terms(self, *, u: int, req_cat: np.ndarray, cand: np.ndarray,
            seqs: Mapping[str, Mapping[str, np.ndarray]], counts: tuple[int, int, int],
            click_items: np.ndarray, cart_items: np.ndarray) -> dict[str, np.ndarray]:
    """Each active mechanism's planted term, [n_cand, 2] (click logit, cart logit), unscaled.
    ``counts``: the events in the click, cart and order sequences."""
    w, on = self.world, self.on
    rc = req_cat.tolist()
    c_cat, c_brand, c_pb = self._item_cbp[cand].T
    cc = (cand, c_cat, c_brand, c_pb)  # the candidate categorical features in schema order
    out = {}
    if 'interplay' in on or 'recent_tail' in on:
      num = min(sum(min(n, k) for n, k in zip(counts, self._tail_k)), _TAIL)
      t_items, t_cats, t_kind = self.merged_tail(seqs, num)
    if 'interplay' in on:
      # [n_cand, 2 most recent events] category matches @ their (half-)weights [2 events, 2].
      last = slice(-min(num, 2), None) if num else slice(0, 0)
      match = c_cat[:, None] == t_cats[last]
      out['interplay'] = match @ (_INTERPLAY_W[t_kind[last]] * _RECENCY_W[last])
    if 'heterogeneous' in on:
      (i0, k0, t0), (i1, k1, t1), (i2, k2, t2), (i3, k3, t3) = self.pairs
      price = 1.0 - np.abs(w.item_log_price[cand] - self.price_pref[u])
      out['heterogeneous'] = (
          self.item_het[cand] @ self.user_het[u] + price[:, None] * _PRICE_OPT_W +
          t0[rc[i0], cc[k0]] + t1[rc[i1], cc[k1]] + t2[rc[i2], cc[k2]] + t3[rc[i3], cc[k3]])
    if 'cross_group' in on:
      (i0, j0, k0, t0), (i1, j1, k1, t1), (i2, j2, k2, t2) = self.cross
      out['cross_group'] = (t0[rc[i0], rc[j0], cc[k0]] + t1[rc[i1], rc[j1], cc[k1]] +
                            t2[rc[i2], rc[j2], cc[k2]])
    if 'deep_match' in on:
      old_brands = w.item_brand[click_items[:len(click_items) // 2]]
      f = np.empty((len(cand), 3))
      f[:, 0] = np.log1p((c_brand[:, None] == old_brands).sum(1))
      f[:, 1] = (cand[:, None] == click_items).any(1)
      f[:, 2] = (cand[:, None] == cart_items).any(1)
      out['deep_match'] = f @ _DEEP_W
    if 'recent_tail' in on:
      style = self.item_style[t_items].sum(0) if num else np.zeros(self.item_style.shape[1])
      out['recent_tail'] = (self.item_style[cand] @ style)[:, None] * (_RECENT_W / max(num, 1))
    return out

  def combine(self, terms: Mapping[str, np.ndarray]) -> np.ndarray:
    """The planted addition to the (click, cart) logits: strength x (terms + offsets)."""
    it = iter(terms.values())
    total = next(it) + self.offset
    for t in it:
      total += t
    if self.strength != 1.0:
      total *= self.strength
    return total


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
