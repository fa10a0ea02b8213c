"""User-facing errors. launch.py turns these into one clear line instead of a traceback."""


class ConfigError(ValueError):
  """A config value that cannot work. The message names the field (``config.x.y``) and the fix."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss; the message names the first step where it happened."""


class WorkdirError(RuntimeError):
  """The run directory cannot be used as asked: in use by another run, not writable, or holding
  a run this config cannot resume. The message names the directory and the fix."""
