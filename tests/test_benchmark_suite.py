"""The benchmark suite end to end on the tiny shape: the table, the JSON record, its arithmetic."""

import json
import os
import subprocess
import sys

import pytest

from onetrans_jax.data import pipeline
from tests.helpers import ROOT


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('bench') / 'tiny.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  # Through the `onetrans` command (cli.py): the same program as python -m ...benchmarks.suite.
  proc = subprocess.run(
      [sys.executable, '-m', 'onetrans_jax.cli', 'benchmark', '--shapes=tiny', '--repeats=1',
       '--workloads=tiny', '--workload_steps=3', f'--json={out}'],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['command'].startswith('onetrans benchmark --shapes=tiny')
  return proc.stdout, result


# The tiny suite end to end (about 80 s of compiles): slow, opt-in. The default run keeps the
# suite's table and error paths (test_bad_flags_are_named, test_a_failing_variant_is_recorded_not_fatal)
# and the profile of one step (test_profile_step_groups_the_time_by_component).
@pytest.mark.slow
def test_printed_table_and_record(tiny_run):
  stdout, result = tiny_run
  assert result['machine']['backend'] == 'cpu'
  assert result['ceiling']['matmul_float32'] > 1e8 and result['ceiling']['copy_bytes_per_s'] > 1e7
  assert [r['implementation'] for r in result['attention']] == [
      'xla', 'xla, unfused dots', 'blocked']
  variants = [r['variant'] for r in result['train']]
  assert variants == ['default', 'attention=xla', 'unfused dots', 'xla attn, unfused dots',
                      'ns token-last', 'no pyramid', '4x2 per candidate']
  for name in ('ceiling:', 'attention (layer 0, fwd+bwd)', 'train step', 'optimization',
               'compile s', 'e2e ex/s'):
    assert name in stdout
  assert result['complete'] and [w['workload'] for w in result['workloads']] == ['tiny']
  for row in result['train']:
    assert row['flops_per_s'] == pytest.approx(row['flops'] / row['seconds'])
    assert row['mfu'] == pytest.approx(row['flops_per_s'] / result['ceiling']['matmul_float32'])
    assert row['examples'] == 8 and row['peak_bytes'] > 0


@pytest.mark.slow
def test_layouts_and_savings(tiny_run):
  _, result = tiny_run
  rows = {r['variant']: r for r in result['train']}
  default, flat = rows['default'], rows['no pyramid']
  assert default['attention_impl'] == 'blocked' and rows['attention=xla']['attention_impl'] == 'xla'
  assert default['schedule'][-1] == 4 and flat['schedule'] == [flat['schedule'][0]] * 2
  # The same examples cost the same analytic FLOPs whichever attention path runs, and the
  # pyramid / request-level sharing cost less.
  assert rows['attention=xla']['flops'] == default['flops']
  assert flat['flops'] > default['flops']
  assert rows['4x2 per candidate']['flops'] > default['flops']
  savings = {r['optimization']: r for r in result['savings']}
  assert savings['pyramid']['flops_ratio'] == pytest.approx(default['flops'] / flat['flops'])
  assert savings['pyramid']['time_ratio'] == pytest.approx(default['seconds'] / flat['seconds'])
  assert savings['pyramid']['paper_time_ratio'] == pytest.approx(1 - 0.287)
  assert savings['request_level']['memory_ratio'] == pytest.approx(
      default['peak_bytes'] / rows['4x2 per candidate']['peak_bytes'])


def test_bad_flags_are_named():
  proc = subprocess.run(
      [sys.executable, '-m', 'onetrans_jax.benchmarks.suite', '--shapes=huge'],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=300)
  assert proc.returncode != 0
  assert "--shapes: unknown shape 'huge'" in proc.stderr


def test_profile_step_groups_the_time_by_component():
  proc = subprocess.run(
      [sys.executable, '-m', 'onetrans_jax.benchmarks.profile_step', '--shape=tiny',
       '--top=3', '--set=model.attention_impl=xla', '--component=ffn'],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  start = lines.index(next(l for l in lines if l.startswith('component'))) + 1
  table = lines[start:lines.index('', start)]
  components = {l.split()[0] for l in table}
  assert {'attention', 'ffn', 'projections'} <= components
  assert "one step of 'tiny' took" in proc.stdout
  listed = lines[lines.index(next(l for l in lines if l.startswith("'ffn' by source path"))) + 1:]
  assert listed and all('ffn' in l for l in listed[:3]) and all(' ms  ' in l for l in listed[:3])
  bad = subprocess.run(
      [sys.executable, '-m', 'onetrans_jax.benchmarks.profile_step', '--shape=tiny',
       '--set=model.no_such_field=1'],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=300)
  assert bad.returncode != 0 and 'expected section.field=value' in bad.stderr


def test_a_failing_variant_is_recorded_not_fatal():
  from onetrans_jax.benchmarks import suite
  failed = []

  def out_of_memory():
    raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 49 GiB\n(details)')

  assert suite._guarded(failed, 'onetrans_s', '128x16 per candidate', out_of_memory) is None
  assert suite._guarded(failed, 'onetrans_s', 'default', lambda x: x + 1, 41) == 42
  assert failed == [{'shape': 'onetrans_s', 'what': '128x16 per candidate',
                     'error': 'RESOURCE_EXHAUSTED: Out of memory allocating 49 GiB'}]
  text = suite.tables({'machine': {'device': 'H100', 'backend': 'gpu', 'jax': '0.10.2',
                                   'cpu_count': 16}, 'command': 'suite.py', 'failed': failed})
  assert 'FAILED onetrans_s / 128x16 per candidate: RESOURCE_EXHAUSTED' in text


def _parsed_flags():
  from absl import flags
  from onetrans_jax.benchmarks import suite
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['suite'], known_only=True)
  return suite


def test_variants_are_selected_by_name_or_attention_path():
  suite = _parsed_flags()
  rows = [('default', 0), ('attention=xla', 1), ('attention=cudnn', 2), ('no pyramid', 3)]
  assert suite.select_variants(rows, None, 's') == rows
  assert suite.select_variants(rows, ['default', 'cudnn'], 's') == [rows[0], rows[2]]
  assert suite.select_variants(rows, ['attention=xla', 'no pyramid'], 's') == rows[1::2]
  from absl import app
  with pytest.raises(app.UsageError, match=r"--variants: \['flash'\] match no train row of "
                                           r"shape 's'.*'no pyramid'"):
    suite.select_variants(rows, ['default', 'flash'], 's')


def test_study_workloads_are_the_studies_own_runs():
  """Each workload is its study row's config: OneTrans_S of the mechanism world has the
  fingerprint of the committed RQ2 record (results/rq2_mechanisms), seed 0."""
  from onetrans_jax import records
  from onetrans_jax.benchmarks import workloads
  names = {k: (lambda m: m.name if m.name != 'baseline' else f'{m.interaction}+{m.sequence}')(
      workloads.workload_config(k).model) for k in workloads.WORKLOADS}
  assert names == {'onetrans_s_mech': 'onetrans', 'dcnv2_din_mech': 'dcnv2+din',
                   'rankmixer_transformer_mech': 'rankmixer+transformer',
                   'onerank_mech': 'onerank', 'onetrans_ple_mech': 'onetrans',
                   'onetrans_s_small': 'onetrans'}
  fp = records.fingerprint(workloads.workload_config('onetrans_s_mech'))[0]
  assert fp.startswith('89a2443545a8')
  assert workloads.workload_config('onetrans_ple_mech').model.predictor == 'ple'
  with pytest.raises(ValueError, match="unknown workload 'bert'"):
    workloads.workload_config('bert')


def test_the_json_keeps_every_finished_row_when_a_run_is_cut_short(tmp_path, monkeypatch):
  """A time limit part-way: the record on disk has the rows measured so far and says it is
  incomplete (the H200 run lost its ceiling and finished rows when it wrote only at the end)."""
  suite = _parsed_flags()
  from onetrans_jax.benchmarks import workloads
  calls = []

  def fake_row(key, cfg, peak, steps, repeats):
    if calls:
      raise KeyboardInterrupt('time limit')
    calls.append(key)
    return {'workload': key, 'model': 'onetrans', 'requests': 4, 'candidates': 2,
            'compile_seconds': 1.0, 'step_seconds': 0.01, 'e2e_seconds_per_step': 0.02,
            'e2e_examples_per_s': 400.0, 'data_examples_per_s': 1e4, 'input_share': 0.5,
            'flops': 1e6, 'flops_per_s': 1e8, 'mfu': 0.1}
  monkeypatch.setattr(workloads, 'workload_row', fake_row)
  monkeypatch.setattr(workloads, 'workload_config', lambda key: suite.shape_config('tiny'))
  path = tmp_path / 'out' / 'bench.json'
  with pytest.raises(KeyboardInterrupt):
    suite.run([], ['workloads'], str(path), None, ['onetrans_s_mech', 'dcnv2_din_mech'], 3)
  saved = json.loads(path.read_text())
  assert saved['complete'] is False and [w['workload'] for w in saved['workloads']] == [
      'onetrans_s_mech']
  assert 'onetrans_s_mech' in '\n'.join(workloads.table(saved['workloads']))


@pytest.mark.slow   # a compile and a few steps (~15 s); the default run keeps the JSON and flags
def test_a_workload_row_times_the_trainers_run():
  suite = _parsed_flags()
  from onetrans_jax.benchmarks import workloads
  row = workloads.workload_row('tiny', suite.shape_config('tiny'), 1e11, num_steps=3, repeats=2)
  assert row['requests'] == 4 and row['candidates'] == 2 and row['e2e_steps'] == 3
  assert row['flops_per_s'] == pytest.approx(row['flops'] / row['step_seconds'])
  assert row['mfu'] == pytest.approx(row['flops_per_s'] / 1e11)
  from onetrans_jax.data import pipeline
  tiny = suite.shape_config('tiny')
  assert row['flops'] == pytest.approx(
      suite.step_flops(tiny, pipeline.build_dataset(tiny.data).schema, True))
  assert 0 < row['e2e_examples_per_s'] <= 8 / row['e2e_seconds_per_step'] + 1e-6
  assert 0.0 <= row['input_share'] < 1.0 and row['compile_seconds'] > 0


def test_ns_layout_ab_times_both_layouts_of_the_same_function():
  from onetrans_jax.benchmarks import ns_layout
  t = ns_layout.measure(r=4, c=2, n=3, d=8, mult=2, repeats=2)   # asserts the gradients agree
  assert set(t) == {'token-last [R,C,N,d]', 'token-first [N,R,C,d]'} and min(t.values()) > 0


def test_the_suite_records_the_cpu_model_beside_the_jax_version():
  from onetrans_jax.benchmarks import suite
  m = suite.machine()
  assert isinstance(m['cpu_model'], str) and m['cpu_model'] and m['cpu_model'] != 'unknown'
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    if names:
      assert m['cpu_model'] == names[0]


def test_the_input_cache_benchmark_rows_are_the_studies_rows_on_a_small_world():
  from onetrans_jax.benchmarks import input_cache
  for key in input_cache.ROWS:
    c = input_cache.row_config(key, requests=640, num_steps=40, cache_mb=0)
    assert c.data.num_train_requests == 640 + 512 and c.data.cache_mb == 0
    assert c.train.total_steps == 40 and c.train.log_every == 10 and 'sweep' not in c
    ds = pipeline.build_dataset(c.data)
    assert ds.train_range[1] - ds.train_range[0] == 640 and ds.valid_range == (640, 1152)
