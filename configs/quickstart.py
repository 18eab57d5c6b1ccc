"""Quickstart: LeNet-5 on the embedded scikit-learn digits (1437 train / 360 test images).

Expected: test accuracy >= 0.90 (typically ~0.97) in well under 2 minutes on 2 CPU cores.

    python -m lbjax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "digits"
  c.image_size = 32
  c.augment = "crop+normalize"   # no flips: digits are not mirror-symmetric
  c.model.name = "lenet5"
  c.batch_size = 128
  c.num_epochs = 15.0
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 1.0
  c.log_every_steps = 50
  c.eval_every_epochs = 5.0
  return c
