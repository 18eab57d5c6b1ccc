"""Base config every lbjax config starts from.

Durations are in epochs (fractions allowed); `lbjax.config_lib` converts them to optimizer steps
of the global batch once. Variants call `get_config()` and change a few fields.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data (lbjax/data).
  c.dataset = "digits"          # digits | cifar10
  c.data_dir = config_dict.placeholder(str)  # TFDS data_dir (cifar10)
  c.image_size = config_dict.placeholder(int)  # resize at load time
  c.validation_fraction = 0.0   # carve a validation split out of train (HPO objective)
  c.augment = "standard"        # '+'-joined tokens: none, normalize, crop, flip, standard, ...

  # Model (lbjax/models): every field but `name` is passed to the model.
  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet5"

  # Batch and length.
  c.batch_size = 128            # global batch over all devices and hosts
  c.eval_batch_size = 512
  c.num_epochs = 10.0

  # Optimizer (lbjax/optim/registry.py): every field but `name` is a keyword of the factory.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4

  # Learning-rate schedule (lbjax/schedules.py), multiplies optimizer.learning_rate.
  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "constant"  # constant | cosine | step | multistep
  c.schedule.warmup_epochs = 0.0
  # Linear scaling rule: lr = learning_rate * batch_size / base_batch_size (None: off).
  c.schedule.base_batch_size = config_dict.placeholder(int)
  c.schedule.lr_decay = 0.1          # step: multiply by this ...
  c.schedule.lr_decay_epoch = 30.0   # ... every this many epochs (seed 002)
  c.schedule.milestones = ()         # multistep: epochs at which lr is multiplied by lr_decay

  # Logging, evaluation, checkpoints.
  c.log_every_steps = 20
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.progress_bar = True
  return c
