"""Learning-rate schedules of the seeds, built from optax schedules.

* Linear scaling rule (Goyal et al. 2017; seed 000: LARS lr 3.2 at batch 4096):
  ``lr = learning_rate * batch_size / base_batch_size``.
* Linear warmup from 0 over ``warmup_epochs`` (seed 000: 5 epochs).
* ``constant``; ``cosine`` (seed 003 eq. (17): η_t = η·(1 + cos(π t / T)) / 2 after warmup, t and
  T counted from the end of the warmup);
  ``step`` (seed 002: multiply by ``lr_decay`` every ``lr_decay_epoch`` epochs);
  ``multistep`` (multiply by ``lr_decay`` at each epoch in ``milestones``).

``lr_decay_epoch`` and ``milestones`` are epochs of the whole run, warmup included: the drop for
epoch ``e`` lands at step ``ceil(e · steps_per_epoch)``, the first update after ``e`` epochs of
examples (`milestone_step`), with or without a warmup. During a warmup of ``W`` steps the
learning rate of ``step``/``multistep``/``constant`` is ``(t / W) · lr(t)`` (a milestone inside
the warmup already counts).

Weight decay (``build_weight_decay``): the optimizer's ``weight_decay`` until
``schedule.weight_decay_off_fraction`` of training, then 0 (seed 003: off after 75% of epochs,
following Gontijo-Lopes et al. 2020).

Noise annealing (``build_annealed``, for ``config.noise`` and ``config.smoothout``): the scale
``s`` over training, ``none`` (constant), ``exponential`` (s·r^(t/T)), ``linear`` (s → s·r) or
``cosine`` (s·(r + (1 − r)(1 + cos(πt/T))/2)), with r = ``final_ratio`` and T the total steps.

Configs give epochs; `steps_per_epoch` (float, N / global batch) converts them once here.
"""

from collections.abc import Callable
import math

import jax.numpy as jnp
import ml_collections
import optax

from lbjax.errors import ConfigError
from lbjax.errors import check_choice


def scaled_learning_rate(learning_rate: float, batch_size: int, base_batch_size) -> float:
  """The linear scaling rule; ``base_batch_size=None`` leaves ``learning_rate`` as is."""
  if base_batch_size is None:
    return learning_rate
  return learning_rate * batch_size / base_batch_size


def milestone_step(epoch: float, steps_per_epoch: float) -> int:
  """The first step after ``epoch`` epochs: ``ceil(epoch · steps_per_epoch)``.

  The product is rounded to 9 digits first, so an epoch that is a whole number of steps in exact
  arithmetic (e.g. 0.1 · 30) is not pushed one step late by float rounding.
  """
  return math.ceil(round(epoch * steps_per_epoch, 9))


def _drops(base: float, factor: float, boundaries: list[int]) -> optax.Schedule:
  """``base · factor^n(t)``, ``n(t)`` = the number of ``boundaries`` <= t (repeats count twice)."""
  bounds = jnp.asarray(sorted(boundaries) or [0], jnp.int32)
  active = len(boundaries) > 0

  def schedule(count):
    n = jnp.sum(jnp.asarray(count) >= bounds) if active else 0
    return base * jnp.asarray(factor, jnp.float32) ** n

  return schedule


def _constant(base, total_steps, steps_per_epoch, cfg):
  del total_steps, steps_per_epoch, cfg
  return optax.constant_schedule(base)


def _cosine(base, decay_steps, steps_per_epoch, cfg):
  del steps_per_epoch, cfg
  return optax.cosine_decay_schedule(base, decay_steps=max(decay_steps, 1))


def _step(base, total_steps, steps_per_epoch, cfg):
  every = cfg.lr_decay_epoch
  if not every > 0:
    raise ConfigError("config.schedule.lr_decay_epoch", f"must be > 0, got {cfg.lr_decay_epoch}")
  epochs = [k * every for k in range(1, int(total_steps / (every * steps_per_epoch)) + 2)]
  return _drops(base, cfg.lr_decay, [milestone_step(e, steps_per_epoch) for e in epochs])


def _multistep(base, total_steps, steps_per_epoch, cfg):
  del total_steps
  return _drops(base, cfg.lr_decay, [milestone_step(e, steps_per_epoch) for e in cfg.milestones])


SCHEDULES: dict[str, Callable] = {
    "constant": _constant,
    "cosine": _cosine,
    "step": _step,
    "multistep": _multistep,
}
# Schedules of the step of the whole run (warmup included); the others start after the warmup.
COUNTED_FROM_START = ("constant", "step", "multistep")


def build_learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: float,
                        total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of ``config.schedule`` times ``config.optimizer.learning_rate``.

  The schedule counts optimizer updates of the global batch, from 0 at the first update.
  ``step``/``multistep`` milestones are epochs of the whole run (see the module docstring).
  """
  cfg = config.schedule
  check_choice("config.schedule.name", cfg.name, SCHEDULES)
  base = scaled_learning_rate(config.optimizer.learning_rate, config.batch_size,
                              cfg.base_batch_size)
  warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
  if cfg.name in COUNTED_FROM_START:
    main = SCHEDULES[cfg.name](base, total_steps, steps_per_epoch, cfg)
    if warmup_steps <= 0:
      return main
    return lambda count: jnp.minimum(count / warmup_steps, 1.0) * main(count)
  main = SCHEDULES[cfg.name](base, total_steps - warmup_steps, steps_per_epoch, cfg)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def build_weight_decay(config: ml_collections.ConfigDict, total_steps: int,
                       weight_decay: float) -> optax.Schedule | None:
  """``weight_decay`` switched off after ``config.schedule.weight_decay_off_fraction`` of training.

  Returns None when the key is unset (the optimizer keeps its constant ``weight_decay``). The
  switch happens at step ``round(fraction · total_steps)``: seed 003 turns weight decay off
  once 75% of the epochs have passed.
  """
  fraction = config.schedule.get("weight_decay_off_fraction")
  if fraction is None:
    return None
  off_step = round(fraction * total_steps)
  return optax.piecewise_constant_schedule(weight_decay, {off_step: 0.0})


def _anneal_none(scale, final_ratio, total_steps):
  del final_ratio, total_steps
  return optax.constant_schedule(scale)


def _anneal_exponential(scale, final_ratio, total_steps):
  return optax.exponential_decay(scale, transition_steps=max(total_steps, 1),
                                 decay_rate=final_ratio)


def _anneal_linear(scale, final_ratio, total_steps):
  return optax.linear_schedule(scale, scale * final_ratio, max(total_steps, 1))


def _anneal_cosine(scale, final_ratio, total_steps):
  return optax.cosine_decay_schedule(scale, max(total_steps, 1), alpha=final_ratio)


ANNEALING: dict[str, Callable] = {
    "none": _anneal_none,
    "exponential": _anneal_exponential,
    "linear": _anneal_linear,
    "cosine": _anneal_cosine,
}


def validate_annealed(block: ml_collections.ConfigDict, key: str) -> None:
  """Checks a ``{scale, annealing, final_ratio}`` block (``config.noise``, ``config.smoothout``)."""
  scale = block.scale
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
    raise ConfigError(f"{key}.scale", f"must be a number >= 0 (0: off), got {scale!r}")
  check_choice(f"{key}.annealing", block.annealing, ANNEALING)
  ratio = block.final_ratio
  if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
    raise ConfigError(f"{key}.final_ratio", f"must be in [0, 1], got {ratio!r}")
  if block.annealing == "exponential" and ratio <= 0:
    raise ConfigError(f"{key}.final_ratio",
                      "exponential annealing s·r^(t/T) needs final_ratio > 0 (e.g. 0.01)")


def build_annealed(block: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The scale of ``block`` (``config.noise`` or ``config.smoothout``) as a schedule of the step."""
  return ANNEALING[block.annealing](float(block.scale), float(block.final_ratio), total_steps)
