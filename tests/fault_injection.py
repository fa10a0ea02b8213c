r"""Fault injection: kill a training run at random moments, resume it, and check that it ends
bit-identical to an uninterrupted run.

  python -m tests.fault_injection --kills 10 --signal KILL   # SIGKILL, some during a save
  python -m tests.fault_injection --kills 10 --signal TERM   # SIGTERM: the run must save first

Each round starts ``launch.py`` on the same workdir (a tiny synthetic run, a checkpoint every 2
steps), waits for a random training step or for a checkpoint write in progress (orbax's temporary
directory), sends the signal, and starts again; after ``--kills`` rounds the run is left to
finish. Its final metrics must equal, exactly, those of the same run never interrupted. With
SIGTERM, every round must also exit with 128 + 15 after saving the step it stopped at. Prints
the tally; exit status 1 on any mismatch. tests/test_reliability.py runs it (marked slow).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 80
ARGS = ['--config=onetrans_jax/experiments/pooled_mlp.py', '--config.data.num_users=200',
        '--config.data.num_items=300',
        '--config.data.click_len=8', '--config.data.cart_len=4', '--config.data.order_len=2',
        '--config.data.num_candidates=4', '--config.data.min_candidates=2',
        '--config.data.num_eval_requests=64', '--config.data.batch_size=8',
        f'--config.train.total_steps={TOTAL_STEPS}', '--config.train.log_every=1',
        '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=3',
        '--config.model.hidden=(16,)']
STEP_LINE = re.compile(r'^step (\d+)/')


def _start(workdir: str) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  return subprocess.Popen([sys.executable, 'launch.py', f'--workdir={workdir}', *ARGS], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _final(workdir: str) -> dict:
  with open(os.path.join(workdir, 'final_metrics.json'), encoding='utf-8') as f:
    return json.load(f)['metrics']


def _saving(workdir: str) -> bool:
  """Whether orbax is writing a checkpoint now (its temporary step directory exists)."""
  try:
    return any('tmp' in d for d in os.listdir(os.path.join(workdir, 'checkpoints')))
  except FileNotFoundError:
    return False


def _one_round(workdir: str, sig: int, rng: random.Random, tally: dict) -> None:
  """Start, wait for a random moment, signal; account what happened."""
  proc = _start(workdir)
  steps: list[int] = []
  reader = threading.Thread(target=lambda: [steps.append(int(m.group(1))) for line in proc.stdout
                                            if (m := STEP_LINE.match(line))], daemon=True)
  reader.start()
  at_save = rng.random() < 0.5
  target = rng.randint(1, 5)  # steps after this start's first one
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if steps and steps[-1] >= steps[0] + target and (not at_save or _saving(workdir)):
      break
    if steps and steps[-1] >= steps[0] + target + 4:  # no save caught in time: kill anyway
      break
    time.sleep(0.001)
  if proc.poll() is not None:  # finished before the signal: nothing to count
    reader.join()
    tally['finished_early'] += 1
    return
  during_save = _saving(workdir)
  proc.send_signal(sig)
  code = proc.wait()
  reader.join()
  err = proc.stderr.read()
  tally['signals'] += 1
  tally['during_save'] += during_save
  if sig == signal.SIGTERM:
    m = re.search(r'interrupted by SIGTERM at step (\d+): checkpoint saved', err)
    saved = m and os.path.isdir(os.path.join(workdir, 'checkpoints', m.group(1)))
    if code == 128 + signal.SIGTERM and saved:
      tally['saved_on_term'] += 1
    else:
      tally['failures'].append(f'SIGTERM round exited {code} without its save: {err[-500:]}')


def inject(kills: int, sig: int, seed: int = 0, base: str | None = None) -> dict:
  """Runs the experiment; returns the tally (``ok``: the final metrics are bit-identical)."""
  base = base or tempfile.mkdtemp(prefix='fault_injection_')
  straight = os.path.join(base, 'straight')
  proc = _start(straight)
  _, err = proc.communicate(timeout=600)
  if proc.returncode:
    raise RuntimeError(f'the uninterrupted run failed: {err[-2000:]}')
  rng = random.Random(seed)
  faulty = os.path.join(base, 'faulty')
  tally = {'signal': signal.Signals(sig).name, 'signals': 0, 'during_save': 0,
           'saved_on_term': 0, 'finished_early': 0, 'restarts': 0, 'failures': []}
  while tally['signals'] < kills and tally['finished_early'] == 0:
    _one_round(faulty, sig, rng, tally)
    tally['restarts'] += 1
  proc = _start(faulty)
  _, err = proc.communicate(timeout=600)
  if proc.returncode:
    tally['failures'].append(f'the final resume failed: {err[-2000:]}')
  else:
    tally['identical'] = _final(faulty) == _final(straight)
    if not tally['identical']:
      tally['failures'].append('final metrics differ from the uninterrupted run')
  tally['ok'] = not tally['failures'] and tally['signals'] >= kills
  return tally


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--kills', type=int, default=10)
  p.add_argument('--signal', choices=('KILL', 'TERM'), default='KILL')
  p.add_argument('--seed', type=int, default=0)
  a = p.parse_args()
  t0 = time.time()
  tally = inject(a.kills, getattr(signal, f'SIG{a.signal}'), a.seed)
  print(f'SIG{a.signal}: {tally["signals"]} signals ({tally["during_save"]} during a checkpoint '
        f'write), {tally["restarts"] + 1} starts, SIGTERM saves {tally["saved_on_term"]}; final '
        f'metrics bit-identical to the uninterrupted run: {tally.get("identical")}; '
        f'{time.time() - t0:.0f} s')
  for f in tally['failures']:
    print('FAILURE:', f)
  sys.exit(0 if tally['ok'] else 1)


if __name__ == '__main__':
  main()
