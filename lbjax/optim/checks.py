"""Argument checks shared by the optimizer factories.

A bad argument raises :class:`InvalidArgument`, a ``ValueError`` that also carries the argument's
keyword name, so ``lbjax.optim.registry`` can report it as ``config.optimizer.<name>`` without
parsing the message. The factories stay plain optax: they check what they can see. A value
injected by ``optax.inject_hyperparams`` is an array, traced inside ``jit``; it is checked when it
is concrete and skipped when it is traced, and a schedule (a callable) is not checked.
"""

from collections.abc import Callable
from typing import Any

import jax


class InvalidArgument(ValueError):
  """A bad optimizer argument: ``argument`` is its keyword name, ``message`` the reason."""

  def __init__(self, argument: str, message: str):
    super().__init__(f"{argument}: {message}")
    self.argument = argument
    self.message = message


def concrete(value: Any) -> float | None:
  """``float(value)`` for a number or a concrete scalar array; None for a schedule or a tracer."""
  if callable(value) or isinstance(value, bool):
    return None
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check(argument: str, value: Any, ok: Callable[[float], bool], requirement: str) -> None:
  """Raises InvalidArgument unless ``ok(value)`` (checked only where ``value`` is concrete)."""
  if isinstance(value, (str, bytes)):
    raise InvalidArgument(argument, f"must be a number, got {value!r}")
  number = concrete(value)
  if number is not None and not ok(number):
    raise InvalidArgument(argument, f"must be {requirement}, got {value!r}")


def in_unit_interval(argument: str, value: Any) -> None:
  """``value`` in [0, 1): momentum and moment decay rates."""
  check(argument, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def non_negative(argument: str, value: Any) -> None:
  check(argument, value, lambda v: v >= 0.0, ">= 0")


def positive(argument: str, value: Any) -> None:
  check(argument, value, lambda v: v > 0.0, "> 0")


def boolean(argument: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise InvalidArgument(argument, f"must be True or False, got {value!r}")
