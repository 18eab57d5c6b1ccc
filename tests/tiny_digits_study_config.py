"""`configs/digits_study.py` shrunk for `tests/test_experiments.py`: two of its methods on the
tiny LeNet-5 digits runs of `tests/tiny_sweep_config.py`, two seeds, a small Hessian measurement."""

from configs import digits_study as study
from configs import sweeps
from tests import tiny_sweep_config

NUM_SEEDS = 2
REFERENCE, LB_REFERENCE = study.REFERENCE, study.LB_REFERENCE
SHARPNESS = {"batches": 1, "batch_size": 64, "tol": 1e-3, "trace_samples": 4}
RUNS = {
    "1_sb_sgd": {"batch_size": 32},
    "2_lb_sgd": {"batch_size": 128, "optimizer.learning_rate": 0.2},
}
LABELS = {name: study.LABELS[name] for name in RUNS}


def get_config(arg=None):
  c = tiny_sweep_config.get_config()
  c.num_epochs = 0.25
  c.log_noise_scale = True  # the table's B_simple column
  return sweeps.apply_overrides(c, RUNS[arg or "1_sb_sgd"])


def sweep():
  return sweeps.with_seeds([{"run_name": n, **o} for n, o in RUNS.items()], NUM_SEEDS)
