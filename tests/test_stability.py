"""Training stability across a study's rows (onetrans_jax/stability.py): the run records carry
the diagnostics series, the report compares each row's detrended loss variance with the
reference's seed by seed and judges OneRank's detachment claim."""

from __future__ import annotations

import json
import math

import pytest

from onetrans_jax import stability
from onetrans_jax.errors import ConfigError
from onetrans_jax.sweep import run_sweep
from tests.helpers import sweep_config


def _record(seed: int, cart: float, click: float = 1e-4, window: int = 3, n: int = 6,
            cos: float = 0.2) -> dict:
  """A run record whose diagnostics hold ``n`` points; the first window - 1 are a transient."""
  series = [{'step': 100 * (i + 1), 'loss_var/click': click * (50 if i < window - 1 else 1),
             'loss_var/cart': cart * (50 if i < window - 1 else 1 + 0.01 * i),
             'grad_cos/click__cart': cos + 0.01 * i} for i in range(n)]
  return {'seed': seed, 'config': {'train.diagnostics_window': window}, 'diagnostics': series}


def test_a_run_is_summarised_over_its_full_window_points():
  s = stability.run_summary(_record(0, cart=2e-4), ['click', 'cart'])
  # Points 2..5 (window 3): cart 2e-4 x (1.02, 1.03, 1.04, 1.05), the transient left out.
  assert s['loss_var/cart'] == pytest.approx(2e-4 * 1.035)
  assert s['loss_var/click'] == pytest.approx(1e-4)
  assert s['grad_cos/click__cart'] == pytest.approx(0.2 + 0.035)
  assert stability.run_summary({'seed': 0, 'config': {}}, ['click']) is None
  # Too short to fill a window: every point counts.
  short = stability.run_summary(_record(0, cart=1.0, n=1), ['cart'])
  assert short['loss_var/cart'] == pytest.approx(50.0)


def test_rows_are_compared_seed_by_seed_and_the_claim_judged():
  recs = {'OneRank': [_record(s, cart=1e-4 * (1 + 0.1 * s)) for s in range(3)],
          'no detachment': [_record(s, cart=2e-4 * (1 + 0.1 * s) * (1 + 0.02 * s))
                            for s in range(3)],
          'same': [_record(s, cart=1e-4 * (1 + 0.1 * s) * (1.1 if s == 1 else 0.95))
                   for s in range(3)]}
  a = stability.analyse(recs, list(recs), 'OneRank', ['click', 'cart'])
  cell = a['rows']['no detachment']['vs_reference']['cart']
  expected = math.exp(sum(math.log(2 * (1 + 0.02 * s)) for s in range(3)) / 3)
  assert cell['ratio'] == pytest.approx(expected) and cell['n'] == 3
  assert 1.0 < cell['ci95'][0] < cell['ratio'] < cell['ci95'][1]
  assert a['rows']['no detachment']['vs_reference']['click']['ratio'] == pytest.approx(1.0)
  assert 'vs_reference' in a['rows']['OneRank'] and not a['rows']['OneRank']['vs_reference']
  yes = stability.check(a, 'no detachment', 'cart')
  assert yes['reproduced'] is True and 'ratio 2.04' in yes['evidence']
  no = stability.check(a, 'same', 'cart')
  assert no['reproduced'] is False
  lo, hi = a['rows']['same']['vs_reference']['cart']['ci95']
  assert lo < 1.0 < hi
  text = '\n'.join(stability.markdown(a, yes))
  assert '## Training stability' in text and 'no detachment' in text
  assert 'reproduced. cart detrended BCE variance ratio 2.04, 95% CI [' in text
  assert stability.analyse({'OneRank': [{'seed': 0, 'config': {}}]}, ['OneRank'], 'OneRank',
                           ['cart']) == {}


def test_a_study_report_carries_the_stability_section_from_its_records(tmp_path):
  """A sweep whose runs log diagnostics: each record keeps the series, and the report (here from
  the committed records alone, in a fresh workdir) has the section and the claim's verdict, and
  the claims section (onetrans_jax/claims.py) of the same records."""
  c = sweep_config()
  c.train.total_steps = 4
  c.train.diagnostics_every = 1
  c.train.diagnostics_window = 2
  c.sweep.seeds = (0,)   # one seed per row (each run compiles three programs): no interval
  c.sweep.results_dir = str(tmp_path / 'study' / 'runs')
  c.sweep.stability_check = ('wide', 'cart')
  c.sweep.claims = (('wide is at least as good as base', 'wide', 'at_least', ('base',),
                     ('click/auc',)),)
  run_sweep(c, str(tmp_path / 'w1'))
  rec = json.loads(next((tmp_path / 'study' / 'runs' / 'wide').glob('seed_0-*.json'))
                   .read_text())
  assert [p['step'] for p in rec['diagnostics']] == [1, 2, 3, 4]
  assert {'loss_var/click', 'loss_var/cart', 'grad_cos/click__cart'} <= set(rec['diagnostics'][0])
  out = run_sweep(c, str(tmp_path / 'w2'))   # every run reused: no run directory has a log
  assert [r.action for r in out['plan']] == ['reuse'] * 2
  report = (tmp_path / 'w2' / 'report.md').read_text()
  assert '## Training stability' in report
  assert '**wide trains cart less stably than base' in report and 'undecided' in report
  summ = json.loads((tmp_path / 'w2' / 'summary.json').read_text())
  cell = summ['stability']['rows']['wide']['vs_reference']['cart']
  want = (stability.run_summary(rec, ['cart'])['loss_var/cart']
          / stability.run_summary(json.loads(next((tmp_path / 'study' / 'runs' / 'base')
                                                  .glob('seed_0-*.json')).read_text()),
                                  ['cart'])['loss_var/cart'])
  assert cell['n'] == 1 and cell['ci95'] is None and cell['ratio'] == pytest.approx(want)
  assert summ['stability']['claim']['reproduced'] is None
  # The claims section, judged on the same records (one seed: the point estimate decides).
  (claim,) = summ['claims']
  diff = claim['cells'][0]['difference']['mean']
  assert claim['reproduced'] is (diff >= 0.0) and claim['cells'][0]['difference']['n'] == 1
  assert "## The paper's claims" in report and '**wide is at least as good as base**' in report


@pytest.mark.parametrize('check', [('nope', 'cart'), ('wide', 'order'), ('wide',)])
def test_a_bad_stability_check_names_the_field(tmp_path, check):
  c = sweep_config()
  c.sweep.stability_check = check
  with pytest.raises(ConfigError, match=r'config.sweep.stability_check=.*give \(row, task\)'):
    run_sweep(c, str(tmp_path))


def test_a_bad_claim_stops_the_sweep_before_anything_runs(tmp_path):
  c = sweep_config()
  c.sweep.claims = (('t', 'nope', 'below', ('base',), ('click/auc',)),)
  with pytest.raises(ConfigError, match=r"config.sweep.claims\[0\]: rows \['nope'\]"):
    run_sweep(c, str(tmp_path))
  assert not (tmp_path / 'base').exists()
