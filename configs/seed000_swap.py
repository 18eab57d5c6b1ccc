r"""Seed 000 Table 1: SWAP with LARS or SGD in the large-batch phase, ResNet-18 on CIFAR-10.

Seed 000 (LARS + SWAP for large-batch training) trains ResNet-18 on CIFAR-10 with SWAP
(Gupta, Serrano & DeCoste, ICLR 2020; `lbjax/swap.py`): ~150 epochs of large-batch training
(phase 1) with SGD or LARS (Alg. 1, `lbjax/optim/lars.py`), then small-batch SGD replicas from
those weights (phase 2), then their average (phase 3, seed 000 eq. (1) with BatchNorm recomputed).
Training warms up over its first 5 epochs (seed: "学習の始めの 5epoch で Warmup"); the LARS
learning rate is 3.2 at batch 4096, scaled linearly with the batch (`schedule.base_batch_size`).

Table 1, test accuracy (%) of the averaged model, mean of 10 runs:

  ==========  ======  ======  =======
  phase 1     BS4096  BS8192  BS16384
  ==========  ======  ======  =======
  SGD         93.22   92.48   85.79
  LARS        94.60   94.07   91.67
  ==========  ======  ======  =======

Assumptions (the seed does not state them; its Fig. 1 shows the learning-rate curve without
numbers):

* phase 1: 150 epochs, linear warmup for 5 epochs then cosine decay, momentum 0.9, weight decay
  5e-4 on kernels; SGD at lr 0.1 per 256 examples (Goyal et al.'s linear scaling: 1.6 at 4096);
  LARS with You et al.'s trust coefficient η = 0.001 — Alg. 1 has no η (η = 1), which with
  γ = 3.2 would move every layer by 3.2·‖w‖ per step (`--config.optimizer.trust_coefficient=1.0`
  runs Alg. 1 literally);
* phase 2: 8 replicas (one per GPU of an 8-GPU node, as in the SWAP paper) of batch 256, 20
  epochs each, momentum SGD at lr 0.05 with weight decay 5e-4, cosine decay to 0, no warmup;
* standard CIFAR augmentation (pad-4 crop, flip, per-channel normalisation).

One run (the argument picks the table cell: ``bs`` in 4096/8192/16384, ``opt`` in sgd/lars)::

    python -m lbjax.main --config=configs/seed000_swap.py:bs=8192,opt=lars \
        --workdir=runs/seed000/lars_bs8192 --config.data_dir=/data/tfds

The whole table (``seeds=10`` repeats every cell over 10 seeds, as the seed does)::

    python -m experiments.run --config=configs/seed000_swap.py:seeds=10 --root=runs/seed000 \
        --data_dir=/data/tfds
"""

from configs import default
from configs import sweeps
from lbjax.optim import registry

BATCH_SIZES = (4096, 8192, 16384)
PHASE1_OPTIMIZERS = ("sgd", "lars")
OPTIONS = {"bs": 4096, "opt": "lars", "seeds": 1}

# Seed 000 Table 1: test accuracy (%) per (phase-1 optimizer, batch size).
SEED_TABLE = {("sgd", 4096): 93.22, ("sgd", 8192): 92.48, ("sgd", 16384): 85.79,
              ("lars", 4096): 94.60, ("lars", 8192): 94.07, ("lars", 16384): 91.67}


def _phase1_optimizer(name: str):
  """(optimizer block, base batch size of its learning rate) of a phase-1 optimizer."""
  if name == "lars":  # seed 000: lr 3.2 at batch 4096
    return registry.config_block("lars", learning_rate=3.2, momentum=0.9, weight_decay=5e-4,
                                 trust_coefficient=0.001), 4096
  return registry.config_block("sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4), 256


def get_config(arg=None):
  opts = sweeps.options(arg, OPTIONS)
  if opts["bs"] not in BATCH_SIZES or opts["opt"] not in PHASE1_OPTIMIZERS:
    raise ValueError(f"config argument: bs in {BATCH_SIZES} and opt in {PHASE1_OPTIMIZERS}, "
                     f"got {arg!r}")
  c = default.get_config()
  c.dataset = "cifar10"
  c.augment = "standard"
  c.model.name = "resnet18"

  # Phase 1: large batch.
  c.batch_size = opts["bs"]
  c.num_epochs = 150.0
  c.optimizer, c.schedule.base_batch_size = _phase1_optimizer(opts["opt"])
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 5.0

  # Phase 2: small-batch SGD replicas; phase 3: their average.
  c.swap.enabled = True
  c.swap.num_replicas = 8
  c.swap.batch_size = 256
  c.swap.num_epochs = 20.0
  c.swap.optimizer = registry.config_block("sgd", learning_rate=0.05, momentum=0.9,
                                           weight_decay=5e-4)
  c.swap.schedule.name = "cosine"
  c.swap.schedule.warmup_epochs = 0.0
  c.swap.schedule.base_batch_size = None

  c.eval_batch_size = 1000
  c.eval_every_epochs = 10.0
  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
  return c


def sweep(arg=None):
  """Table 1: {SGD, LARS} in phase 1 × BS {4096, 8192, 16384} (× seeds)."""
  opts = sweeps.options(arg, OPTIONS)
  runs = []
  for name in PHASE1_OPTIMIZERS:
    optimizer, base = _phase1_optimizer(name)
    for batch_size in BATCH_SIZES:
      runs.append({sweeps.RUN_NAME: f"{name}_bs{batch_size}", "batch_size": batch_size,
                   "optimizer": optimizer.to_dict(), "schedule.base_batch_size": base})
  return sweeps.with_seeds(runs, opts["seeds"])
