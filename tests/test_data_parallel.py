"""Data parallelism: a batch split over 2 (simulated) devices trains like one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = r'''
import json, sys
sys.path.insert(0, {root!r})
import jax
from onetrans_jax.train import train_and_evaluate
from tests.helpers import small_config
c = small_config()
c.train.total_steps = 6
out = train_and_evaluate(c, {workdir!r})
print('RESULT', json.dumps({{'devices': jax.device_count(), 'final': out['final']}}))
'''


def _run(devices: int, workdir: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                                   f' --xla_force_host_platform_device_count={devices}').strip())
  proc = subprocess.run([sys.executable, '-c', SCRIPT.format(root=ROOT, workdir=workdir)],
                        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def test_two_devices_match_one(tmp_path):
  one = _run(1, str(tmp_path / 'one'))
  two = _run(2, str(tmp_path / 'two'))
  assert one['devices'] == 1 and two['devices'] == 2
  for task, m in one['final'].items():
    for key in ('auc', 'logloss', 'uauc'):
      assert abs(m[key] - two['final'][task][key]) < 1e-4, (task, key, m[key], two['final'][task])
