"""Faults a user meets (issue 23): a busy workdir, a refused start or resume, a corrupt latest
checkpoint, records duplicated by a resume, NaN in the final metrics, step numbering."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from onetrans_jax import checkpointing
from onetrans_jax import workdir as workdir_lib
from onetrans_jax.errors import ConfigError, WorkdirError
from onetrans_jax.train import TrainState, make_train_step, train_and_evaluate


def _lock(tmp_path, **holder):
  (tmp_path / workdir_lib.LOCK_FILE).write_text(json.dumps(holder))


# ------------------------------------------------------------------------------- the workdir lock
def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def test_a_second_run_on_a_busy_workdir_refuses(config, tmp_path):
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    started = _now()   # as the holder writes it: after its own start
    _lock(tmp_path, pid=sleeper.pid, host=socket.gethostname(), started=started)
    with pytest.raises(WorkdirError, match=rf'in use by another run \(pid {sleeper.pid}, since '
                                           rf'{re.escape(started)}\); wait for it'):
      train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / 'config.json').exists()    # refused before writing anything
    assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())['pid'] == sleeper.pid
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_lock_of_another_host_refuses_and_says_how_to_clear_it(config, tmp_path):
  _lock(tmp_path, pid=1, host='elsewhere-node-7', started='2026-01-01T00:00:00')
  with pytest.raises(WorkdirError, match='in use by pid 1 on host elsewhere-node-7.*delete '
                                         f'{tmp_path}/{workdir_lib.LOCK_FILE}'):
    train_and_evaluate(config, str(tmp_path))


def test_a_stale_lock_is_taken_over_and_released(config, tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _lock(tmp_path, pid=dead.pid, host=socket.gethostname(), started='2026-01-01T00:00:00')
  out = train_and_evaluate(config, str(tmp_path))
  assert out['step'] == config.train.total_steps
  assert f'taking over the stale lock {tmp_path}/{workdir_lib.LOCK_FILE} (pid {dead.pid} no ' \
         'longer runs)' in capsys.readouterr().out
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()   # released at the end


def test_a_lock_whose_pid_now_belongs_to_a_later_process_is_taken_over(tmp_path, capsys):
  """A run killed while compiling leaves its lock; once its pid is given to another process
  (started after the lock was written), the lock is stale although that pid is alive."""
  later = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _lock(tmp_path, pid=later.pid, host=socket.gethostname(), started='2026-01-01T00:00:00+00:00')
    lock = workdir_lib.WorkdirLock(str(tmp_path))
    with lock:
      assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())['pid'] == os.getpid()
    assert (f'taking over the stale lock {tmp_path}/{workdir_lib.LOCK_FILE} (pid {later.pid} is '
            'a process started after it)') in capsys.readouterr().out
  finally:
    later.kill()
    later.wait()


def test_a_process_start_time_is_read_from_proc():
  t = workdir_lib._start_time(os.getpid())   # pylint: disable=protected-access
  if t is None:
    pytest.skip('no /proc here')
  assert 0 <= time.time() - t < 24 * 3600   # this test process started before now, today


def test_the_lock_is_held_while_training(config, tmp_path):
  seen = []
  lock = workdir_lib.WorkdirLock(str(tmp_path))
  with lock:
    seen.append(json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text()))
    with pytest.raises(WorkdirError, match='in use by another run'):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  assert seen[0]['pid'] == os.getpid() and seen[0]['host'] == socket.gethostname()
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


# ------------------------------------------------------------------------- refused starts
def test_a_refused_start_leaves_no_empty_workdir(config, tmp_path):
  config.data.batch_size = 0
  target = tmp_path / 'new' / 'run'
  with pytest.raises(ConfigError, match='config.data.batch_size=0'):
    train_and_evaluate(config, str(target))
  assert not (tmp_path / 'new').exists()


def test_an_impossible_workdir_is_one_clear_error(config, tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(WorkdirError, match=r'--workdir .*file is a file, not a directory'):
    train_and_evaluate(config, str(tmp_path / 'file'))
  with pytest.raises(WorkdirError, match=r'cannot create --workdir .*file/run: Not a directory'):
    train_and_evaluate(config, str(tmp_path / 'file' / 'run'))
  if os.geteuid() != 0:  # root writes anywhere
    ro = tmp_path / 'ro'
    ro.mkdir(mode=0o500)
    with pytest.raises(WorkdirError, match='is not writable'):
      train_and_evaluate(config, str(ro))


def test_a_refused_resume_names_the_change_and_writes_nothing(config, tmp_path, monkeypatch):
  train_and_evaluate(config, str(tmp_path))
  saved = (tmp_path / 'config.json').read_text()
  listing = sorted(os.listdir(tmp_path / 'checkpoints'))
  config.model.hidden = (48,)
  config.train.total_steps = 12

  def no_read(*args, **kwargs):
    raise AssertionError('the misfit is refused from the metadata, before any array is read')
  monkeypatch.setattr(checkpointing.Checkpointer, 'restore', no_read)
  with pytest.raises(WorkdirError, match=r'cannot resume .*checkpoints \(step 8\) with this '
                                         r'config: it changes model.hidden \[32\] -> \[48\].*'
                                         r'params/mlp_0/bias: \[32\] saved, \[48\] here; .*'
                                         r'Use a new --workdir'):
    train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / 'config.json').read_text() == saved
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == listing
  assert not (tmp_path / 'config.previous.json').exists()


def test_the_metadata_check_names_each_misfit_and_defers_when_names_do_not_line_up(tmp_path):
  """Only the 'state' item is saved here: the check reads that item's metadata alone."""
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'ckpt'), keep=1)
  state = {'params': {'a': jnp.ones((2, 8)), 'b': jnp.zeros((3,))}, 'step': jnp.int32(4)}
  ckpt.manager.save(4, args=checkpointing.ocp.args.Composite(
      state=checkpointing.ocp.args.StandardSave(state)))
  ckpt.wait()
  like = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  assert ckpt.mismatch(4, like(state)) is None
  wider = dict(state, params={'a': jnp.ones((2, 9)), 'b': jnp.zeros((3,), jnp.bfloat16)})
  assert ckpt.mismatch(4, like(wider)) == ('params/a: [2, 8] saved, [2, 9] here; '
                                           'params/b: [3] float32 saved, [3] bfloat16 here')
  grown = dict(state, params=dict(state['params'], c=jnp.ones(2)))
  assert ckpt.mismatch(4, like(grown)) == 'params/c: not in the checkpoint'
  # Names that do not line up at all (another layout of the tree) are the restore's to judge.
  assert ckpt.mismatch(4, like({'x': state['params'], 'y': state['step']})) is None
  ckpt.close()


# ---------------------------------------------------------------------- a corrupt checkpoint
def _corrupt(step_dir):
  for root, _, files in os.walk(step_dir / 'state'):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'\x00garbage')


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_step(config, tmp_path, capsys):
  config.train.total_steps = 12
  straight = train_and_evaluate(config, str(tmp_path / 'straight'))
  work = tmp_path / 'run'
  train_and_evaluate(config, str(work), stop_at_step=8)          # saves steps 4 and 8
  _corrupt(work / 'checkpoints' / '8')
  resumed = train_and_evaluate(config, str(work))
  out = capsys.readouterr().out
  assert 'warning: checkpoint step 8 in' in out and 'resuming from step 4' in out
  assert (work / 'checkpoints.corrupt' / '8').is_dir()          # set aside, not deleted
  assert resumed['final'] == straight['final']                  # the same run, replayed from 4
  steps = [(r['step'], r['split']) for r in map(json.loads, open(work / 'metrics.jsonl'))]
  assert len(steps) == len(set(steps)), 'a step logged twice after the resume'


def test_no_intact_checkpoint_is_a_clear_error(config, tmp_path):
  train_and_evaluate(config, str(tmp_path), stop_at_step=8)
  for step in ('4', '8'):
    _corrupt(tmp_path / 'checkpoints' / step)
  with pytest.raises(WorkdirError, match='no intact checkpoint in .*every kept step failed'):
    train_and_evaluate(config, str(tmp_path))


# ---------------------------------------------------------------------------- records
def test_a_resume_logs_every_step_once(config, tmp_path):
  config.train.total_steps = 12
  config.train.log_every = 2
  config.train.checkpoint_every = 4
  train_and_evaluate(config, str(tmp_path), stop_at_step=10)      # last save at step 10
  # A kill after step 10's save but past more logging: fake the records a killed run leaves.
  with open(tmp_path / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.write(json.dumps({'step': 12, 'split': 'train', 'loss': 1.0}) + '\n')
    f.write('{"step": 13, "spl')                                  # torn by the kill
  train_and_evaluate(config, str(tmp_path))
  recs = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_steps = [r['step'] for r in recs if r['split'] == 'train']
  assert train_steps == [2, 4, 6, 8, 10, 12]
  assert [r['split'] for r in recs].count('final') == 1
  again = train_and_evaluate(config, str(tmp_path))               # a finished run re-invoked
  recs = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['split'] for r in recs].count('final') == 1 and again['step'] == 12


def test_final_metrics_is_strict_json_with_nan(tmp_path):
  workdir_lib.write_json(str(tmp_path / 'm.json'), {'a': {'auc': float('nan'), 'n': 3},
                                                    'b': [float('inf'), np.float32(0.5)]})
  text = (tmp_path / 'm.json').read_text()
  assert json.loads(text) == {'a': {'auc': None, 'n': 3}, 'b': [None, 0.5]}
  assert 'NaN' not in text and not (tmp_path / 'm.json.tmp').exists()


def test_the_first_step_is_step_one_in_a_nan_error():
  """The logs count steps from 1; so does the NaN record (the step from state.step = 0 is 1)."""
  loss_fn = lambda p, b: (p['w'] * jnp.nan, {'task': jnp.zeros((1,)), 'bce': jnp.zeros((1,))})
  tx = optax.sgd(0.1)
  params = {'w': jnp.ones(())}
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jnp.full((), -1, jnp.int32))
  state, _ = make_train_step(loss_fn, tx, ('click',))(state, None)
  assert int(state.step) == 1 and int(state.nonfinite_step) == 1
  state, _ = make_train_step(loss_fn, tx, ('click',))(state, None)
  assert int(jax.device_get(state.nonfinite_step)) == 1        # the first bad step is kept


# ------------------------------------------------------------------------- grain workers
_PARENT = r'''
import os, sys, time
sys.path.insert(0, {root!r})
from absl import flags
flags.FLAGS(sys.argv[:1])   # grain's workers read absl flags, as under launch.py
from tests.helpers import small_config
from onetrans_jax.data import pipeline
if __name__ == '__main__':  # grain spawns its workers: they import this file again
  c = small_config()
  ds = pipeline.build_dataset(c.data)
  it = pipeline.make_iterator(ds, ds.train_range, global_batch_size=4, shuffle=False, seed=0,
                              repeat=True, num_threads=1, worker_count=2)
  next(it)
  print('ready', flush=True)
  time.sleep(120)
'''


def _readline(stream, seconds: float) -> str:
  """One line of ``stream``, or '' after ``seconds`` (a child holding the pipe never hangs us)."""
  import select
  ready, _, _ = select.select([stream], [], [], seconds)
  return stream.readline() if ready else ''


def _children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat', encoding='utf-8') as f:
          fields = f.read().rsplit(')', 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid and fields[0] != 'Z':
        out.append(int(entry))
  return out


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='needs /proc (Linux)')
def test_grain_workers_exit_when_their_parent_is_killed(tmp_path):
  from tests.helpers import ROOT
  import signal
  import time
  script = tmp_path / 'parent.py'
  script.write_text(_PARENT.format(root=ROOT))
  parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
  try:
    assert _readline(parent.stdout, 120).strip() == 'ready'
    workers = _children(parent.pid)
    assert workers, 'no grain worker processes found'
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f'/proc/{w}') and
                                         _state(w) != 'Z' for w in workers):
      time.sleep(0.2)
    alive = [w for w in workers if os.path.exists(f'/proc/{w}') and _state(w) != 'Z']
    assert not alive, f'grain workers {alive} outlived their SIGKILLed parent'
  finally:
    if parent.poll() is None:
      parent.kill()


def _state(pid: int) -> str:
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      return f.read().rsplit(')', 1)[1].split()[0]
  except OSError:
    return 'Z'


# ------------------------------------------------------------------ preemption and failed saves
def test_sigterm_saves_the_step_it_stopped_at_and_the_resume_is_exact(config, tmp_path,
                                                                      monkeypatch):
  import signal
  from onetrans_jax import train as train_lib
  from onetrans_jax.errors import Interrupted
  config.train.total_steps = 12
  config.train.checkpoint_every = 4
  straight = train_and_evaluate(config, str(tmp_path / 'straight'))
  original = train_lib._one_step

  def one_step(*args, **kwargs):
    state, step, seen = original(*args, **kwargs)
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)  # preemption, mid-way between two saves
    return state, step, seen

  monkeypatch.setattr(train_lib, '_one_step', one_step)
  with pytest.raises(Interrupted, match=r'interrupted by SIGTERM at step 6: checkpoint saved in '
                                        r'.*checkpoints; rerun the same command'):
    train_and_evaluate(config, str(tmp_path / 'run'))
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['4', '6']
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is removed again
  monkeypatch.setattr(train_lib, '_one_step', original)
  resumed = train_and_evaluate(config, str(tmp_path / 'run'))
  assert resumed['final'] == straight['final']


def test_a_failed_save_fails_at_its_step_naming_the_path(config, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  save = ocp.CheckpointManager.save

  def failing(self, step, *args, **kwargs):
    if step == 8 and str(self.directory).endswith('checkpoints'):
      raise OSError(28, 'No space left on device')
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', failing)
  config.train.total_steps = 12
  with pytest.raises(WorkdirError, match=r'saving the checkpoint of step 8 in .*checkpoints '
                                         r'failed \(OSError: \[Errno 28\] No space left on device'
                                         r'\); free disk space.*resumes from step 4'):
    train_and_evaluate(config, str(tmp_path))
  recs = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert max(r['step'] for r in recs) == 8                      # it stopped at step 8


@pytest.mark.slow
@pytest.mark.parametrize('sig', ['KILL', 'TERM'])
def test_fault_injection_resumes_bit_identical(sig, tmp_path):
  """tests/fault_injection.py: 10 signals at random steps, some during checkpoint writes."""
  import signal
  from tests import fault_injection
  tally = fault_injection.inject(10, getattr(signal, f'SIG{sig}'), seed=0, base=str(tmp_path))
  assert tally['ok'], tally
  assert tally['signals'] >= 10 and tally['identical']
  assert tally['during_save'] >= 1, tally
  if sig == 'TERM':
    assert tally['saved_on_term'] == tally['signals']


# ------------------------------------------------------------------------------- fuzzing
def test_fuzzed_reader_inputs_load_or_name_the_file(tmp_path):
  """tests/fuzz_readers.py: 1,000 generated corruptions over the four readers."""
  from tests import fuzz_readers
  tally, failures = fuzz_readers.fuzz(1000, base=str(tmp_path))
  assert not failures, failures[:5]
  assert sum(tally.values()) == 1000
  for name in ('ml-100k', 'ml-1m', 'taobao', 'kuairand'):   # both outcomes are exercised
    assert tally[f'{name}: loaded'] > 20 and tally[f'{name}: named error'] > 20, tally


def test_the_fuzzer_reports_crashes_hangs_and_anonymous_errors(tmp_path, monkeypatch):
  import collections
  import time
  from tests import fuzz_readers
  monkeypatch.setattr(fuzz_readers, 'TIMEOUT_S', 1)
  (tmp_path / 'f.csv').write_bytes(b'1,2\n')

  def crash(d):
    raise IndexError('boom')

  def hang(d):
    time.sleep(5)

  def anonymous(d):
    raise ConfigError('something is wrong')

  datasets = {'crash': (str(tmp_path), crash), 'hang': (str(tmp_path), hang),
              'anonymous': (str(tmp_path), anonymous)}
  tally, failures = collections.Counter(), []
  for name in datasets:
    fuzz_readers.run_case(datasets, name, 0.0, [('flip', 0.0, 65)], tally, failures)
  assert not tally and len(failures) == 3
  assert 'IndexError' in failures[0] and 'no result in 1 s' in failures[1]
  assert 'error naming no file' in failures[2]
  assert (tmp_path / 'f.csv').read_bytes() == b'1,2\n'          # the file is restored


@pytest.mark.slow
def test_fuzz_script_with_a_memory_cap():
  from tests.helpers import ROOT
  proc = subprocess.run([sys.executable, '-m', 'tests.fuzz_readers', '--cases', '3000'],
                        cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert '3000 corruptions' in proc.stdout and 'failures 0' in proc.stdout
