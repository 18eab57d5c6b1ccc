r"""Seed 002, Adam rows of Table 1: LeNet5 on CIFAR-10 at batch 128 / 512 / 2048.

The seed's tuned validation accuracies: 0.8188 (128), 0.8193 (512), 0.7952 (2048). Table 1's α is
the learning rate, "α-decay"/"α-decay-epoch" its step decay, and Chainer's ``eta`` = 1.0 (a
multiplier of α) is implied; weight decay is 0 in every row. See ``configs/seed002_common.py``.

    python -m lbjax.main --config=configs/seed002_adam.py:bs=512 --workdir=runs/seed002_adam_512 \
        --config.data_dir=DIR
"""

from configs import seed002_common

# Table 1, Adam: weight decay, α, α-decay, α-decay-epoch, β1, β2, eps (eta = 1.0).
TABLE1 = {
    128: {"val_acc": 0.818829, "weight_decay": 0.0, "learning_rate": 1.33886e-3, "lr_decay": 0.397648,
              "lr_decay_epoch": 60, "b1": 0.872596, "b2": 0.999, "eps": 1.0e-8},
    512: {"val_acc": 0.819347, "weight_decay": 0.0, "learning_rate": 1.22052e-3, "lr_decay": 0.261723,
              "lr_decay_epoch": 100, "b1": 0.874545, "b2": 0.999, "eps": 1.0e-8},
    2048: {"val_acc": 0.795179, "weight_decay": 0.0, "learning_rate": 1.26235e-3, "lr_decay": 0.183551,
               "lr_decay_epoch": 100, "b1": 0.869701, "b2": 0.999, "eps": 1.0e-8},
}

# TPE search space (lbjax/hpo/space.py): α, its step decay and β1; weight decay, β2 and eps stay at
# Table 1's fixed values.
SEARCH_SPACE = {
    "alpha": seed002_common.log_uniform("optimizer.learning_rate", 1e-5, 1e-2, "α"),
    **seed002_common.step_decay_space("alpha", "α"),
    "beta1": seed002_common.uniform("optimizer.b1", 0.5, 0.99, "β1"),
}


def get_config(arg=None):
  options = seed002_common.options_of(arg)
  return seed002_common.base(options["bs"], {"name": "adam", **TABLE1[options["row"]]},
                             SEARCH_SPACE, options["data"])
