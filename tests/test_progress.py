"""The trainer's throughput meter (reporting.Progress): evaluations and saves are paused out."""

from __future__ import annotations

import pytest

from onetrans_jax import reporting


def test_paused_time_leaves_the_rate_and_the_step_time_but_not_the_eta(monkeypatch):
  clock = iter([0.0, 10.0, 30.0, 40.0, 41.0])
  monkeypatch.setattr(reporting.time, 'perf_counter', lambda: next(clock))
  p = reporting.Progress(total_steps=400, start_step=0)
  first = p.update(100, examples=1000)     # 10 s for 100 steps: holds the compile
  p.pause(15.0)                            # a validation of 15 s
  second = p.update(200, examples=1000)    # 20 s wall, 5 s training
  assert first['examples_per_s'] == pytest.approx(100.0)
  assert second['examples_per_s'] == pytest.approx(200.0)
  assert second['eta_s'] == pytest.approx(200 / (200 / 30.0))   # wall time, pauses included
  assert p.step_seconds() == pytest.approx(0.05)   # the first interval left out
  p.update(300, examples=1000)                     # 10 s for 100 steps
  assert p.step_seconds() == pytest.approx((0.05 + 0.1) / 2)  # median of two intervals
  p.pause(-3.0)                                     # never negative
  assert p.paused == 0.0


def test_one_interval_is_all_there_is_and_none_before_it():
  p = reporting.Progress(total_steps=10, start_step=5)
  assert p.step_seconds() is None
  p.update(10, examples=10)
  assert p.step_seconds() is not None and p.step_seconds() > 0
