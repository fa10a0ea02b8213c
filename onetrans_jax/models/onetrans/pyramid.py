"""Pyramid schedules (SPEC A.5): how many tail tokens emit queries in each layer.

Layer i's queries are the last ``schedule[i]`` tokens of its input; its keys/values are the whole
input, whose length is ``schedule[i-1]`` (the full token count for layer 0). Only the queries'
outputs are kept, so the S tokens dropped are always the oldest and the NS tokens (at the tail)
always survive. Schedules are tuples of Python ints: every layer has static shapes under jit.
"""

from __future__ import annotations

from collections.abc import Sequence

from onetrans_jax.errors import ConfigError


def linear_schedule(total_tokens: int, num_ns_tokens: int, num_layers: int,
                    multiple: int = 32, start: int | None = None) -> tuple[int, ...]:
  """Linear from ``start`` queries in layer 0 (None: ``total_tokens``, no pruning there) down to
  ``num_ns_tokens`` (last layer).

  Intermediate counts are rounded to the nearest multiple of ``multiple`` and clipped into
  [num_ns_tokens, previous count]. linear_schedule(1190, 12, 6) == (1190, 960, 704, 480, 256, 12),
  OneTrans_S's schedule; linear_schedule(1500, 16, 8) gives OneTrans_L's. With ``start`` below the
  token count, layer 0 already keeps only the latest ``start`` tokens' outputs (its keys are still
  every token): linear_schedule(1670, 12, 6, start=1190) is OneTrans_S's schedule over a
  1670-token input, the reading that gives the paper's 3.06x pyramid saving (SPEC A.10).
  """
  if num_layers < 1:
    raise ConfigError(f'config.model.num_layers must be >= 1, got {num_layers}')
  if multiple < 1:
    raise ConfigError(f'config.model.pyramid_multiple must be >= 1, got {multiple}')
  if total_tokens < num_ns_tokens:
    raise ConfigError(f'total token count {total_tokens} is below num_ns_tokens {num_ns_tokens}')
  first = total_tokens if start is None else int(start)
  if not num_ns_tokens <= first <= total_tokens:
    raise ConfigError(
        f'config.model.pyramid_start={first}: must lie in [config.model.num_ns_tokens='
        f'{num_ns_tokens}, {total_tokens}] (the S + NS token count); lengthen the sequences or '
        'lower it')
  if num_layers == 1:
    return (num_ns_tokens,) if first == num_ns_tokens else (first,)
  out = [first]
  step = (first - num_ns_tokens) / (num_layers - 1)
  for i in range(1, num_layers - 1):
    raw = first - i * step
    rounded = int(round(raw / multiple)) * multiple
    out.append(max(num_ns_tokens, min(out[-1], rounded)))
  out.append(num_ns_tokens)
  return tuple(out)


def check_schedule(schedule: Sequence[int], total_tokens: int, num_ns_tokens: int,
                   num_layers: int) -> tuple[int, ...]:
  """Validate an explicit schedule; the messages name the config field."""
  sched = tuple(int(q) for q in schedule)
  if len(sched) != num_layers:
    raise ConfigError(f'config.model.pyramid_schedule has {len(sched)} entries for '
                      f'config.model.num_layers={num_layers}')
  if sched[0] > total_tokens:
    raise ConfigError(
        f'config.model.pyramid_schedule starts at {sched[0]} queries but the token list has only '
        f'{total_tokens} tokens (S + NS); lengthen the sequences or lower the schedule')
  if any(b > a for a, b in zip(sched, sched[1:])):
    raise ConfigError(f'config.model.pyramid_schedule must not increase, got {sched}')
  if min(sched) < num_ns_tokens:
    raise ConfigError(f'config.model.pyramid_schedule goes down to {min(sched)}, below '
                      f'config.model.num_ns_tokens={num_ns_tokens}: NS tokens must survive '
                      'every layer')
  return sched
