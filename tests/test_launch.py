"""launch.py (and `onetrans train`, the same program) as a user meets it: one clear line for
every bad input, a table for a good run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

DATA = ['--config.data.num_users=100', '--config.data.num_items=200',
         '--config.data.num_categories=8', '--config.data.click_len=8', '--config.data.cart_len=4',
         '--config.data.order_len=2', '--config.data.num_candidates=4',
         '--config.data.min_candidates=2', '--config.data.num_eval_requests=64',
         '--config.data.batch_size=8', '--config.train.total_steps=4', '--config.train.log_every=2']
# The fast plain baseline; the default experiment is OneTrans (test_the_default_job_is_onetrans).
SMALL = ['--config=onetrans_jax/experiments/pooled_mlp.py', *DATA, '--config.model.hidden=(16,)']


def _launch(*args: str, workdir: str, entry: tuple[str, ...] = ('launch.py',)
            ) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *entry, f'--workdir={workdir}', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize('args, message', [
    (['--config=experiments/nope.py:small'], r'--config experiments/nope.py:small: no such file, '
     r'and not a built-in experiment; .* default.py, .*, pooled_mlp.py'),
    (['--config=onetrans_jax/experiments/pooled_mlp.py', '--config.model.hiden=(8,)'],
     'unknown config field in an override: .*hidden'),
    (['--config.train.total_steps=ten'], 'config.train.total_steps=ten'),
    (['--config=onetrans_jax/experiments/pooled_mlp.py', '--config.model.hidden=abc'],
     r"config.model.hidden=\('abc',\): must be a non-empty tuple"),
    (['--config.eval.mode=weekly'], "config: config.eval.mode='weekly'"),
    (['--config.data.batch_size=0'], 'config.data.batch_size=0'),
    (['--config.model.name=transformer'], "config.model.name='transformer': not a known model"),
    (['--config.data.min_candidates=99'], 'config.data.min_candidates'),
    (['extra_positional'], 'unexpected arguments'),
    # Fields whose default is None (typed placeholders) are still overridable from the command line.
    (['--config=onetrans_jax/experiments/onetrans_s.py:small', '--config.model.request_level=True',
      '--config.model.attention=full'], "request_level=True needs config.model.attention='causal'"),
    (['--config=onetrans_jax/experiments/onetrans_s.py:small', '--config.model.use_sep=True'],
     "use_sep=True needs config.model.seq_merge='timestamp_agnostic'"),
    (['--config=onetrans_jax/experiments/onetrans_s.py:small',
      '--config.model.pyramid_schedule=(108,56,4)'],
     'pyramid_schedule goes down to 4, below config.model.num_ns_tokens=8'),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
  proc = _launch(*args, workdir=str(tmp_path))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  import re
  assert re.search(message, proc.stderr), proc.stderr[-2000:]


def test_bad_experiment_files_and_workdirs_are_one_clear_line(tmp_path):
  (tmp_path / 'syntax.py').write_text('def get_config(:\n')
  (tmp_path / 'empty.py').write_text('x = 1\n')
  (tmp_path / 'a_file').write_text('x')
  cases = [([f'--config={tmp_path}/syntax.py'], rf'{tmp_path}/syntax.py, line 1: .*syntax',
            str(tmp_path / 'w')),
           ([f'--config={tmp_path}/empty.py'], r'defines no get_config\(\); it must define',
            str(tmp_path / 'w')),
           ([f'--config={tmp_path}'], 'cannot load the experiment given by --config',
            str(tmp_path / 'w')),
           ([], r'workdir: cannot create --workdir .*a_file/run', str(tmp_path / 'a_file' / 'run'))]
  for args, message, workdir in cases:
    proc = _launch(*args, workdir=workdir)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
  assert not (tmp_path / 'w').exists()


def test_good_run_prints_table_and_resumes(tmp_path):
  """Trained by `onetrans train` naming a built-in experiment, resumed by launch.py with the path
  the experiment had before it moved into the package: one program, old commands still run."""
  args = ['--config', 'pooled_mlp.py', *SMALL[1:]]
  proc = _launch(*args, workdir=str(tmp_path), entry=('-m', 'onetrans_jax.cli', 'train'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  builtin = os.path.join(ROOT, 'onetrans_jax', 'experiments', 'pooled_mlp.py')
  assert f'--config pooled_mlp.py: using the built-in experiment {builtin}' in proc.stderr
  assert 'step 4/4' in proc.stdout and 'oracle AUC' in proc.stdout
  assert (tmp_path / 'final_metrics.json').exists()
  # Same workdir, more steps: resumes from step 4 instead of starting over.
  proc = _launch('--config=experiments/pooled_mlp.py', *SMALL[1:-3], '--config.train.log_every=2',
                 '--config.model.hidden=(16,)', '--config.train.total_steps=6',
                 workdir=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'using the built-in experiment' in proc.stderr
  assert 'resumed from' in proc.stdout and 'at step 4' in proc.stdout
  assert 'step 6/6' in proc.stdout and 'step 2/6' not in proc.stdout
  assert ('the config differs from the one saved in' in proc.stdout and
          "config.json (train.total_steps 4 -> 6); resuming with the new one" in proc.stdout)


def test_the_default_job_is_onetrans(tmp_path):
  """``python launch.py`` with no --config: OneTrans (onetrans_s:small) on the synthetic world,
  the hold-out scored along the way and at the end beside the oracle, and a learning-curve PNG
  (here on a shrunken world and 4 steps)."""
  proc = _launch(*DATA, '--config.eval.every_steps=2', '--config.train.checkpoint_every=2',
                 workdir=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'model onetrans:' in proc.stdout and 'pyramid' in proc.stdout
  assert 'eval at step 2: click AUC' in proc.stdout and 'oracle AUC' in proc.stdout
  assert (tmp_path / 'learning_curves.png').read_bytes()[:4] == b'\x89PNG'
  assert f'learning curves: {tmp_path}/learning_curves.png' in proc.stdout
