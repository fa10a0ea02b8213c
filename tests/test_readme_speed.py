"""The README's speed tables come from suite JSON files (benchmarks/readme_speed.py)."""

from __future__ import annotations

import glob
import json
import os

import pytest

from onetrans_jax.benchmarks import readme_speed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite(backend: str = 'cpu', complete: bool = True) -> dict:
  train = [{'shape': 'onetrans_l', 'variant': 'default', 'requests': 128, 'candidates': 16,
            'examples': 2048, 'dtype': 'bfloat16', 'attention_impl': 'xla', 'schedule': [8],
            'seconds': 0.2, 'compile_seconds': 31.5, 'examples_per_s': 10240.0,
            'peak_bytes': 3 * 2**30, 'flops': 2e13, 'flops_per_s': 1e14, 'mfu': 0.125},
           {'shape': 'onetrans_l', 'variant': 'attention=cudnn', 'requests': 128,
            'candidates': 16, 'examples': 2048, 'dtype': 'bfloat16', 'attention_impl': 'cudnn',
            'schedule': [8], 'seconds': 0.1, 'compile_seconds': 20.0, 'examples_per_s': 20480.0,
            'peak_bytes': 2**30, 'flops': 2e13, 'flops_per_s': 2e14, 'mfu': 0.25}]
  return {'machine': {'backend': backend, 'device': 'NVIDIA H200' if backend == 'gpu' else 'cpu',
                      'device_count': 1, 'jax': '0.11.2', 'cpu_count': 16,
                      'processor': 'x86_64'},
          'command': '/x/onetrans_jax/benchmarks/suite.py --shapes=onetrans_l --json=g.json',
          'repeats': 5, 'complete': complete,
          'ceiling': {'matmul_bfloat16': 8e14, 'copy_bytes_per_s': 4e12}, 'attention': [],
          'train': train, 'workloads': [], 'failed': [], 'savings': []}


def test_render_carries_every_measured_figure_the_machine_and_the_command():
  block = readme_speed.render([('results/speed/g.json', _suite('gpu', complete=False))])
  assert block.startswith(readme_speed.BEGIN) and block.endswith(readme_speed.END)
  assert '1 × NVIDIA H200 (gpu), jax 0.11.2, `results/speed/g.json`' in block
  assert 'python -m onetrans_jax.benchmarks.suite --shapes=onetrans_l --json=g.json' in block
  assert '*Incomplete' in block
  assert 'bfloat16 matmul 800000.0 GFLOP/s, copy 4000.0 GB/s' in block
  # default row: 200.0 ms, 12.5% MFU, 1.00x, the paper's 30.8% beside it; cudnn 0.50x, no paper.
  assert ('| onetrans_l | **default** (`xla`, bfloat16) | 200.0 | 10,240 | 3.00 | 100000.0 | '
          '12.5% | 1.00× | 31.5 | 30.8% |') in block
  assert '| 100.0 | 20,480 | 1.00 | 200000.0 | 25.0% | 0.50× | 20.0 | — |' in block


def test_splice_replaces_only_the_marked_block_and_names_a_missing_marker():
  text = f'intro\n{readme_speed.BEGIN}\nold numbers\n{readme_speed.END}\noutro\n'
  new = readme_speed.splice(text, readme_speed.render([('c.json', _suite())]))
  assert new.startswith('intro\n') and new.endswith('\noutro\n') and 'old numbers' not in new
  assert '16 CPU cores (x86_64)' in new and 'paper MFU' not in new
  with pytest.raises(ValueError, match='NOTES.md: no speed-tables markers'):
    readme_speed.splice('no markers', 'x', 'NOTES.md')


def test_check_fails_on_a_stale_readme_and_passes_after_regenerating(tmp_path, capsys):
  path = tmp_path / 'suite.json'
  path.write_text(json.dumps(_suite()))
  readme = tmp_path / 'README.md'
  readme.write_text(f'# x\n{readme_speed.BEGIN}\nhand-typed 1.00\n{readme_speed.END}\n')
  assert readme_speed.main([str(path), f'--readme={readme}', '--check']) == 1
  assert 'differ' in capsys.readouterr().err
  assert readme_speed.main([str(path), f'--readme={readme}']) == 0
  assert readme_speed.main([str(path), f'--readme={readme}', '--check']) == 0
  bad = tmp_path / 'bad.json'
  bad.write_text('{"train": []}')
  with pytest.raises(SystemExit, match='bad.json: no "machine"'):
    readme_speed.main([str(bad), f'--readme={readme}'])


def test_the_readme_speed_tables_match_the_committed_suite_json():
  files = sorted(glob.glob(os.path.join(ROOT, 'results', 'speed', '*.json')))
  if not files:
    pytest.skip('no committed suite JSON under results/speed/')
  rel = [os.path.relpath(f, ROOT) for f in files]
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert readme_speed.main([*rel, '--check']) == 0
  finally:
    os.chdir(cwd)
