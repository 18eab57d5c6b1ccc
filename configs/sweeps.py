"""Helpers for the ``sweep()`` beside a config (run by ``experiments/run.py``).

A sweep is a list of override dicts, one per run: dotted config keys → values, a dict value
replaces a whole block (`apply_overrides`), and the reserved key ``"run_name"`` names the run's
directory (else the name is made from the overrides; a ``seed`` override is appended either way).
A config built here keeps every typed placeholder of the one it starts from (`lbjax.dotted.copy`,
`lbjax.dotted.block_like`), so each key of ``configs/default.py`` stays settable from the command
line.
"""

from collections.abc import Iterable
from typing import Any

import ml_collections

from lbjax import dotted
from lbjax.errors import ConfigError
from lbjax.optim import registry

RUN_NAME = "run_name"


def options(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
  """Parses a config argument ``"key=value,key=value"``; values take the type of the default.

  Raises:
    ValueError: a key not in ``defaults`` or a value of the wrong type (ml_collections shows it
      as the config argument's error).
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument: expected key=value with key in "
                       f"{sorted(defaults)}, got {item!r}")
    kind = type(defaults[key])
    try:
      out[key] = value if kind is str else kind(value)
    except ValueError:
      raise ValueError(f"config argument {key}: expected {kind.__name__}, got {value!r}") from None
  return out


def with_seeds(entries: Iterable[dict], num_seeds: int) -> list[dict]:
  """Each entry repeated with ``seed`` = 0 … num_seeds − 1 (unchanged when ``num_seeds`` is 1)."""
  entries = list(entries)
  if num_seeds <= 1:
    return entries
  return [{**entry, "seed": s} for entry in entries for s in range(num_seeds)]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict,
                    where: str = "sweep") -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``overrides`` (dotted keys; a dict value replaces the block).

  A dotted ``"optimizer.name"`` (or ``"swap.optimizer.name"``) override switches the block as
  the launcher's ``--config.optimizer.name`` does (`registry.switch_blocks`): the new optimizer's
  defaults, the block's learning rate and the block's other dotted keys of the same override.
  """
  c = dotted.copy(config)  # typed placeholders stay settable from the command line
  c.unlock()
  registry.switch_blocks(c, overrides)
  for key, value in overrides.items():
    try:
      target, last = dotted.parent(c, key)
    except KeyError as e:
      raise ConfigError(f"{where}.{key}",
                        f"config has no block {e.args[0].rsplit('.', 1)[-1]!r}") from None
    if isinstance(value, dict):  # the new block keeps the old one's placeholder types
      target[last] = dotted.block_like(value, target.get(last))
      continue
    if last not in target:
      raise ConfigError(f"{where}.{key}", "unknown config key (configs/default.py lists every key)")
    try:
      target[last] = value
    except TypeError as e:
      raise ConfigError(f"{where}.{key}", str(e)) from None
  return c
