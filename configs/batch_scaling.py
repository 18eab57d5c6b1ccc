r"""Steps to a target accuracy against the batch size (Shallue et al. 2018), on the digits.

The training run of `experiments/batch_scaling.py`: LeNet-5 on scikit-learn's digits at 16x16
(no padding to 32: ``model.min_size = 16``), 20% of the training images held out as the validation
split whose accuracy is the target, a constant learning rate (no warmup, no decay: each batch
size gets its own tuned rate, Shallue et al.'s protocol), and the gradient noise scale B_simple
logged every logging window (``log_noise_scale``, McCandlish et al. 2018).

The driver sets, per run, ``batch_size``, ``optimizer.learning_rate``, ``seed`` (which also
draws the validation split), ``num_epochs`` (the step budget), ``eval_every_epochs`` and
``log_every_steps`` (the evaluation cadence); see `experiments.batch_scaling` and `run_config`.

    python -m experiments.batch_scaling --root=runs/batch_scaling

One run alone (batch 64, learning rate 0.02, until the budget)::

    python -m lbjax.main --config=configs/batch_scaling.py:sgd \
        --config.batch_size=64 --config.micro_batch_size=32 \
        --config.optimizer.learning_rate=0.02 --workdir=runs/bs64

The argument picks the optimizer (a key of ``OPTIMIZERS``; default ``sgd``).

One device per run (runs of a study go in parallel processes, one core each), the batch
measured in two halves: on one device lbjax estimates B_simple from the two halves of the batch
(``B_small = B/2``, ``B_big = B``). Here the halves are micro-batches run one after the other by
the host (``micro_batch_size = B/2``, ``accumulation = "host"``): the same update as the whole
batch (LeNet has no BatchNorm) and the same two squared norms as the in-program halves, at the
host-loop speed XLA:CPU prefers for small batches (`lbjax.accumulate`).
"""

import math

from configs import default
from configs import quickstart
from lbjax.optim import registry

# The study's defaults (the driver's flags; experiments/results/batch_scaling.md has their
# output and time).
OPTIMIZER = "sgd"
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
TARGET = 0.95  # validation accuracy
TRIALS = 3     # learning rates per batch size
SEEDS = 2

VALIDATION_FRACTION = 0.2
NUM_TRAIN = 1150  # digits' 1437 training images minus the validation split: round(0.2 * 1437)

# Learning rates: every optimizer's hyperparameters are the quickstart's (`configs/quickstart.py`,
# tuned for LeNet-5 on the digits at batch 128). The search is centred on the quickstart's
# learning rate scaled from batch LR_REFERENCE_BATCH as LR_CENTER[name] · (B / 128)^LR_EXPONENT
# (square-root scaling: the optimum for SGD at 16, 64 and 256 in a 5-point grid lay within ×1.2 of
# it); the grid steps by a factor LR_GRID_RATIO around it, the TPE search draws log-uniformly from
# centre / LR_RANGE to centre · LR_RANGE.
LR_REFERENCE_BATCH = 128
LR_CENTER = {name: hyper["learning_rate"] for name, hyper in quickstart.OPTIMIZERS.items()}
LR_EXPONENT = {name: 0.5 for name in LR_CENTER}
LR_GRID_RATIO = 2.0
LR_RANGE = 8.0

# A guess of the steps to the default target, S(B) = S_min (1 + B_noise / B) (the fit of a first
# SGD run), that sets each batch size's evaluation cadence (every ⌊RESOLUTION · S(B)⌋ steps, at
# least 1) and its step budget (BUDGET_FACTOR · S(B)). The table reports the cadence against the
# steps measured.
STEPS_GUESS = (40.0, 100.0)  # (S_min, B_noise)
BUDGET_FACTOR = 4.0
RESOLUTION = 0.03


def steps_guess(batch_size: int) -> float:
  s_min, b_noise = STEPS_GUESS
  return s_min * (1.0 + b_noise / batch_size)


def learning_rate_center(optimizer: str, batch_size: int) -> float:
  return LR_CENTER[optimizer] * (batch_size / LR_REFERENCE_BATCH) ** LR_EXPONENT[optimizer]


def get_config(optimizer: str | None = None):
  """The base run of ``optimizer`` (a key of ``OPTIMIZERS``; None or "": ``sgd``)."""
  optimizer = optimizer or OPTIMIZER
  if optimizer not in LR_CENTER:
    raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(LR_CENTER)}")
  c = default.get_config()
  c.dataset = "digits"
  c.image_size = 16
  c.validation_fraction = VALIDATION_FRACTION
  c.augment = "normalize"
  c.model.name = "lenet5"
  c.model.min_size = 16  # the 16x16 images as they are: 4x fewer pixels than LeNet's 32x32
  c.batch_size = 64
  c.micro_batch_size = 32  # the two halves of the noise scale (module doc)
  c.accumulation = "host"
  c.num_epochs = 10.0
  hyper = dict(quickstart.OPTIMIZERS[optimizer],
               learning_rate=learning_rate_center(optimizer, c.batch_size))
  c.optimizer = registry.config_block(optimizer, **hyper)
  c.schedule.name = "constant"
  c.schedule.warmup_epochs = 0.0
  c.log_noise_scale = True
  c.noise_scale_decay = 0.9  # the logged EMA; the study's B_simple is its own window (driver)
  c.eval_batch_size = 128
  c.eval_every_epochs = 5 * c.batch_size / NUM_TRAIN
  c.log_every_steps = 5
  c.checkpoint_every_steps = 100_000  # only at the end (the target or the budget)
  c.keep_checkpoints = 1
  c.progress_bar = False
  return c


def run_config(optimizer: str, batch_size: int, learning_rate: float, seed: int,
               eval_every: int, max_steps: int):
  """The run of one point of the study: ``max_steps`` steps at most, an evaluation (and a
  logging window) every ``eval_every`` steps."""
  c = get_config(optimizer)
  c.batch_size = batch_size
  c.micro_batch_size = batch_size // 2
  c.optimizer.learning_rate = learning_rate
  c.seed = seed
  # Epochs are what the config holds: these convert back to exactly these step counts
  # (`lbjax.config_lib.total_steps` takes the ceiling, `lbjax.loop.Cadence` rounds), whatever
  # the floating-point rounding.
  c.num_epochs = (max_steps - 0.5) * batch_size / NUM_TRAIN
  c.eval_every_epochs = eval_every * batch_size / NUM_TRAIN
  c.log_every_steps = eval_every
  return c


def cadence(batch_size: int, resolution: float = RESOLUTION,
            budget_factor: float = BUDGET_FACTOR) -> tuple[int, int]:
  """``(eval_every, max_steps)`` of ``batch_size`` from `steps_guess`."""
  guess = steps_guess(batch_size)
  return max(1, math.floor(resolution * guess)), math.ceil(budget_factor * guess)
