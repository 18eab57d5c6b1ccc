r"""The large-batch story on the embedded digits, CPU-sized: the README's main command.

ResNet-tiny (BatchNorm) on scikit-learn's digits at 16x16 (1437 training / 360 test images), every
run 20 epochs, so each sees the same number of examples; the large batch is 256 (8x the small one,
8x fewer steps). Learning rates follow the linear scaling rule from batch 32
(``schedule.base_batch_size``), with a 2-epoch warmup at the large batch (seed 000):

=======================  ========================================================================
``1_sb_sgd``             small batch (32), momentum SGD, lr 0.05, cosine: the reference
``2_lb_sgd``             large batch (256), the same SGD, lr scaled to 0.4, warmup
``3_lb_lars``            large batch, LARS (seed 000 Alg. 1), lr 0.1 scaled to 0.8, warmup
``4_lb_lars_swap``       3 + SWAP (seed 000 §3.1): 4 small-batch SGD replicas for 2 epochs, averaged
``5_lb_sgd_smoothout``   2 + SmoothOut noise (seed 001: gradient at θ + δ, δ ~ U(-s, s) scaled by
                         each tensor's RMS, s = 0.01 annealed linearly to 0)
``6_lb_hybrid``          large batch, the hybrid AdamW + RAdam + AdaBelief (seed 003 §3), lr 0.1
=======================  ========================================================================

    python -m experiments.digits_study --root=runs/digits_study

runs the six with ``config.seed`` 0, 1 and 2 (``NUM_SEEDS``; the sweep's 18 runs are
``ROOT/<run>,seed=<k>``, two at a time in two processes), measures each run's Hessian (top
eigenvalue and trace of the training loss, ``SHARPNESS``) and logs its gradient noise scale
(``config.log_noise_scale``), prints one table of mean ± std over the seeds, which differences
exceed the seed-to-seed spread, and writes ``ROOT/interpolation.png``: the linear interpolation
between the small- and large-batch SGD solutions of seed 0 (seed 001 Fig. 3), BatchNorm
recomputed at every α. The methods, epochs and sizes are those of the one-seed study before it.
The measured output and its timing are in ``experiments/results/digits_study.md``. One run
alone::

    python -m lbjax.main --config=configs/digits_study.py:3_lb_lars --workdir=runs/lb_lars
"""

from configs import default
from configs import sweeps
from lbjax.optim import registry

SMALL_BATCH = 32
LARGE_BATCH = 256
NUM_SEEDS = 3  # config.seed = 0, 1, 2 for every run
REFERENCE = "1_sb_sgd"  # the small-batch reference; large-batch methods are compared with it
LB_REFERENCE = "2_lb_sgd"  # and with plain large-batch SGD
# The Hessian of each run's training loss (`lbjax.analysis.sharpness`, BatchNorm in evaluation
# mode): over the first `batches` training batches of `batch_size` of the run's stream; the top
# eigenvalue by ARPACK Lanczos to relative accuracy `tol`; the trace by Hutchinson with
# `trace_samples` Rademacher probes (its standard error is printed). Each measurement is a few
# seconds on one CPU core.
SHARPNESS = {"batches": 1, "batch_size": 256, "tol": 1e-3, "trace_samples": 30}


def digits():
  """The CPU-sized digits setup every digits config shares (this study, `configs/swap_digits.py`):
  scikit-learn's digits at 16x16, crop+normalize, ResNet-tiny (BatchNorm)."""
  c = default.get_config()
  c.dataset = "digits"
  c.image_size = 16
  c.augment = "crop+normalize"   # no flips: digits are not mirror-symmetric
  c.model.name = "resnet_tiny"
  return c


def base():
  c = digits()
  c.num_epochs = 20.0
  c.batch_size = SMALL_BATCH
  c.optimizer = registry.config_block("sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 0.0
  c.schedule.base_batch_size = SMALL_BATCH  # lr = learning_rate * batch_size / 32
  c.eval_every_epochs = 5.0
  c.log_every_steps = 10
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  c.log_noise_scale = True  # B_simple (McCandlish et al. 2018) in metrics.jsonl
  return c


LB_SGD = {"batch_size": LARGE_BATCH, "schedule.warmup_epochs": 2.0}
LB_LARS = {**LB_SGD, "optimizer": registry.config_block(
    "lars", learning_rate=0.1, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.01).to_dict()}

RUNS = {
    "1_sb_sgd": {},
    "2_lb_sgd": LB_SGD,
    "3_lb_lars": LB_LARS,
    "4_lb_lars_swap": {**LB_LARS, "swap.enabled": True, "swap.num_replicas": 4,
                       "swap.batch_size": SMALL_BATCH, "swap.num_epochs": 2.0,
                       "swap.optimizer": registry.config_block(
                           "sgd", learning_rate=0.02, momentum=0.9, weight_decay=5e-4).to_dict(),
                       "swap.schedule.name": "cosine", "swap.schedule.warmup_epochs": 0.0,
                       "swap.schedule.base_batch_size": None},
    "5_lb_sgd_smoothout": {**LB_SGD, "smoothout.scale": 0.01, "smoothout.adaptive": True,
                           "smoothout.annealing": "linear"},
    "6_lb_hybrid": {"batch_size": LARGE_BATCH, "schedule.warmup_epochs": 1.0,
                    "schedule.base_batch_size": None,  # adaptive: no scaling
                    "optimizer": registry.config_block("hybrid", learning_rate=0.1,
                                                       weight_decay=0.01).to_dict()},
}
LABELS = {
    "1_sb_sgd": f"small batch ({SMALL_BATCH}) SGD",
    "2_lb_sgd": f"large batch ({LARGE_BATCH}) SGD",
    "3_lb_lars": "large batch LARS",
    "4_lb_lars_swap": "large batch LARS + SWAP",
    "5_lb_sgd_smoothout": "large batch SGD + SmoothOut noise",
    "6_lb_hybrid": "large batch hybrid (AdamW+RAdam+AdaBelief)",
}


def get_config(arg=None):
  """The run ``arg`` (a key of ``RUNS``; default the small-batch reference)."""
  name = arg or "1_sb_sgd"
  if name not in RUNS:
    raise ValueError(f"config argument: one of {sorted(RUNS)}, got {name!r}")
  return sweeps.apply_overrides(base(), RUNS[name], where="configs/digits_study.py")


def sweep():
  """Every run of ``RUNS`` with ``config.seed`` 0 … NUM_SEEDS − 1 (``ROOT/<run>,seed=<k>``)."""
  return sweeps.with_seeds([{"run_name": name, **overrides} for name, overrides in RUNS.items()],
                           NUM_SEEDS)
