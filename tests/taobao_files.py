"""Taobao UserBehavior fixture files: a hand-checked log and a random one.

Shared by tests/test_taobao.py and tests/fuzz_readers.py (test modules never import each
other: tests/test_imports.py).
"""

from __future__ import annotations

import os

import numpy as np

from onetrans_jax.data import taobao

T0 = 1_511_568_000  # 2017-11-25 00:00 UTC = 08:00 Beijing, a Saturday (the window's first day)

# ---------------------------------------------------------------------------------- the fixture
# Dense ids: users 7 -> 1, 55 -> 2, 100 -> 3; items 1000..5000 -> 1..5; categories 10, 20, 30 ->
# 1, 2, 3 (items 1000, 2000: 10; 3000: 20; 4000, 5000: 30). (user, item, category, type, dt).
ROWS = [
    (100, 1000, 10, 'pv', 0),         # A: u100's first request, with the next pv
    (100, 2000, 10, 'pv', 60),
    (100, 1000, 10, 'cart', 120),     # carts 1000 60 s after its view: cart label of that pv
    (100, 1000, 10, 'buy', 4000),     # 4000 s after the view: outside label_window (3600)
    (100, 3000, 20, 'fav', 3000),
    (7, 5000, 30, 'pv', 100),         # C1: u7, the first two pvs (C = 2 splits the session)
    (7, 3000, 20, 'pv', 100),
    (7, 2000, 10, 'pv', 200),         # C2
    (7, 5000, 30, 'cart', 50),        # before the pv of 5000: a sequence event, not a label
    (100, 4000, 30, 'pv', 5000),      # B: after 4940 s of silence (> session_gap)
    (100, 4000, 30, 'buy', 5000),     # same second as its pv: its buy label, not in B's sequence
    (55, 1000, 10, 'pv', 10000),      # D: the same item viewed twice, then bought
    (55, 1000, 10, 'pv', 10010),
    (55, 1000, 10, 'buy', 10020),
    (55, 2000, 10, 'pv', taobao.OFFICIAL_WINDOW[0] - 5 - T0),  # before the window: dropped
    (55, 3000, 20, 'pv', taobao.OFFICIAL_WINDOW[1] - T0),      # the window is half-open: dropped
]
FIXTURE_CONFIG = dict(session_gap=1800, num_candidates=2, pv_len=3, fav_len=2, cart_len=2,
                      buy_len=2, negatives=0, eval_fraction=0.4, batch_size=2, num_threads=1)


def write_csv(path, rows=ROWS, name: str = taobao.FILE) -> str:
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, name), 'wb') as f:
    f.write(''.join(f'{u},{i},{c},{b},{T0 + dt}\n' for u, i, c, b, dt in rows).encode('ascii'))
  return str(path)


def random_rows(seed: int = 0, users: int = 40, n: int = 3000) -> list[tuple]:
  """A log with the dataset's shape: bursts of pvs, some followed by a cart / buy of the item."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n // 3):
    u, item = int(rng.integers(1, users + 1)), int(rng.integers(1, 60))
    t = int(rng.integers(0, 8 * 86_400))
    rows.append((u, item, item % 7 + 1, 'pv', t))
    for b, p in (('fav', 0.1), ('cart', 0.3), ('buy', 0.2)):
      if rng.random() < p:
        rows.append((u, item, item % 7 + 1, b, t + int(rng.integers(0, 5000))))
  rng.shuffle(rows)
  return rows
