r"""SWAP on the embedded digits, CPU-sized: large-batch only vs large batch + SWAP (seed 000 §3.1).

Phase 1 trains a ResNet-tiny with LARS (seed 000 Alg. 1) at batch 512 (a third of the 1437
training images) for 30 epochs, 5 of warmup, cosine decay; phase 2 trains 4 replicas from its
weights with momentum SGD at batch 32 for 4 epochs each (run as `config.swap.execution` says);
phase 3 averages them and recomputes BatchNorm. Printed at the end: each replica's test accuracy,
their mean, the large-batch (phase 1) test accuracy and the averaged model's (the last line).

Measured (one CPU device, 33 s wall on 2 shared cores, 2026-11-26): large batch alone (phase 1)
0.8250; replicas 0.9639 / 0.9750 / 0.9722 / 0.9667, mean 0.9694; averaged model 0.9750.

    python -m lbjax.main --config=configs/swap_digits.py --workdir=runs/swap_digits

`sweep()` gives the comparison: large batch alone for the same 30 epochs (= phase 1), large batch
alone for 34 epochs (as many as phase 1 + a replica's phase 2), and SWAP.
"""

from configs import digits_study
from configs import sweeps
from lbjax.optim import registry


def get_config():
  c = digits_study.digits()

  # Phase 1: large batch, LARS with warmup (seed 000).
  c.batch_size = 512
  c.num_epochs = 30.0
  c.optimizer = registry.config_block("lars", learning_rate=0.05, momentum=0.9,
                                      weight_decay=5e-4)
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 5.0

  # Phases 2 and 3: 4 small-batch SGD replicas, then their average.
  c.swap.enabled = True
  c.swap.num_replicas = 4
  c.swap.batch_size = 32
  c.swap.num_epochs = 4.0
  c.swap.optimizer = registry.config_block("sgd", learning_rate=0.02, momentum=0.9,
                                           weight_decay=5e-4)
  c.swap.schedule.name = "cosine"
  c.swap.schedule.warmup_epochs = 0.0

  c.eval_every_epochs = 10.0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  return c


def sweep(arg=None):
  """Large batch alone (30 and 34 epochs) against large batch + SWAP."""
  del arg
  return [{sweeps.RUN_NAME: "large_batch", "swap.enabled": False},
          {sweeps.RUN_NAME: "large_batch_34_epochs", "swap.enabled": False, "num_epochs": 34.0},
          {sweeps.RUN_NAME: "swap", "swap.enabled": True}]
