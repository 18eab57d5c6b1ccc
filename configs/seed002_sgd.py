r"""Seed 002, momentum SGD rows of Table 1: LeNet5 on CIFAR-10 at batch 128 / 512 / 2048.

Momentum SGD as seed 002 eqs. (1)–(2) write it (``lr_in_buffer=True``, lbjax/optim/baselines.py);
batch 256 and 1024 (experiment 2) take a Table 1 row's hyperparameters (``row=``).

The seed's tuned validation accuracies: 0.8538 (128), 0.8500 (512), 0.8343 (2048); see
``configs/seed002_common.py`` for what the paper leaves open.

    python -m lbjax.main --config=configs/seed002_sgd.py:bs=512 --workdir=runs/seed002_sgd_512 \
        --config.data_dir=DIR
"""

from configs import seed002_common

# Table 1, Momentum SGD: weight decay, lr, lr-decay, lr-decay-epoch, momentum.
TABLE1 = {
    128: {"val_acc": 0.853837, "weight_decay": 9.45528e-4, "learning_rate": 7.02133e-3,
              "lr_decay": 0.380818, "lr_decay_epoch": 70, "momentum": 0.851752},
    512: {"val_acc": 0.849977, "weight_decay": 8.59781e-4, "learning_rate": 1.22424e-2,
              "lr_decay": 0.317370, "lr_decay_epoch": 60, "momentum": 0.865659},
    2048: {"val_acc": 0.834328, "weight_decay": 7.13765e-4, "learning_rate": 1.13121e-2,
               "lr_decay": 0.689114, "lr_decay_epoch": 50, "momentum": 0.945714},
}

# TPE search space over Table 1's columns (lbjax/hpo/space.py; ranges contain every Table 1 value).
SEARCH_SPACE = {
    "weight_decay": seed002_common.log_uniform("optimizer.weight_decay", 1e-5, 1e-2,
                                               "weight decay"),
    "lr": seed002_common.log_uniform("optimizer.learning_rate", 1e-4, 1e-1, "lr"),
    **seed002_common.step_decay_space(),
    "momentum": seed002_common.uniform("optimizer.momentum", 0.5, 0.99, "momentum"),
}


def get_config(arg=None):
  options = seed002_common.options_of(arg)
  # Seed 002 eqs. (1)–(2): m ← αm − ε∇L, the learning rate inside the momentum buffer.
  row = {"name": "sgd", "lr_in_buffer": True, **TABLE1[options["row"]]}
  return seed002_common.base(options["bs"], row, SEARCH_SPACE, options["data"])
