"""User-facing errors. launch.py turns these into one clear line instead of a traceback."""


class ConfigError(ValueError):
  """A config value that cannot work. The message names the field (``config.x.y``) and the fix."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss; the message names the first step where it happened."""


class WorkdirError(RuntimeError):
  """The run directory cannot be used as asked: in use by another run, not writable, or holding
  a run this config cannot resume. The message names the directory and the fix."""


class Interrupted(RuntimeError):
  """SIGTERM / SIGINT ended training after saving a checkpoint; the same command resumes."""

  def __init__(self, signum: int, step: int, where: str):
    import signal
    self.signum, self.step = signum, step
    super().__init__(f'interrupted by {signal.Signals(signum).name} at step {step}: checkpoint '
                     f'saved in {where}; rerun the same command to resume')
