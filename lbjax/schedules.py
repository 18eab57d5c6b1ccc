"""Learning-rate schedules of the seeds, built from optax schedules.

* Linear scaling rule (Goyal et al. 2017; seed 000: LARS lr 3.2 at batch 4096):
  ``lr = learning_rate * batch_size / base_batch_size``.
* Linear warmup from 0 over ``warmup_epochs`` (seed 000: 5 epochs).
* ``constant``; ``cosine`` (seed 003 eq. (17): η_t = η·(1 + cos(π t / T)) / 2 after warmup);
  ``step`` (seed 002: multiply by ``lr_decay`` every ``lr_decay_epoch`` epochs);
  ``multistep`` (multiply by ``lr_decay`` at each epoch in ``milestones``).

Configs give epochs; `steps_per_epoch` (float, N / global batch) converts them once here.
"""

from typing import Callable

import ml_collections
import optax

from lbjax.errors import ConfigError, check_choice


def scaled_learning_rate(learning_rate: float, batch_size: int, base_batch_size) -> float:
  """The linear scaling rule; ``base_batch_size=None`` leaves ``learning_rate`` as is."""
  if base_batch_size is None:
    return learning_rate
  return learning_rate * batch_size / base_batch_size


def _constant(base, decay_steps, steps_per_epoch, cfg):
  del decay_steps, steps_per_epoch, cfg
  return optax.constant_schedule(base)


def _cosine(base, decay_steps, steps_per_epoch, cfg):
  del steps_per_epoch, cfg
  return optax.cosine_decay_schedule(base, decay_steps=max(decay_steps, 1))


def _step(base, decay_steps, steps_per_epoch, cfg):
  del decay_steps
  every = cfg.lr_decay_epoch * steps_per_epoch
  if every <= 0:
    raise ConfigError("config.schedule.lr_decay_epoch", f"must be > 0, got {cfg.lr_decay_epoch}")
  return optax.exponential_decay(base, transition_steps=every, decay_rate=cfg.lr_decay,
                                 staircase=True)


def _multistep(base, decay_steps, steps_per_epoch, cfg):
  del decay_steps
  boundaries = {int(round(e * steps_per_epoch)): cfg.lr_decay for e in cfg.milestones}
  return optax.piecewise_constant_schedule(base, boundaries)


SCHEDULES: dict[str, Callable] = {
    "constant": _constant,
    "cosine": _cosine,
    "step": _step,
    "multistep": _multistep,
}


def build_learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: float,
                        total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of ``config.schedule`` applied to ``config.optimizer.learning_rate``.

  The schedule counts optimizer updates of the global batch.
  """
  cfg = config.schedule
  check_choice("config.schedule.name", cfg.name, SCHEDULES)
  base = scaled_learning_rate(config.optimizer.learning_rate, config.batch_size,
                              cfg.base_batch_size)
  warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
  main = SCHEDULES[cfg.name](base, total_steps - warmup_steps, steps_per_epoch, cfg)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])
