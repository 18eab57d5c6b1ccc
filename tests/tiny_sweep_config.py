"""Tiny digits runs for the tests of `experiments/` and `lbjax/analysis` (LeNet-5, 8x8, 12 steps).

``sweep()`` is two seeds; ``sweep("report")`` adds a run that diverges (lr 1e8).
"""

from configs import quickstart


def get_config(arg=None):
  del arg
  c = quickstart.get_config()
  c.image_size = 8
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 0.5
  c.schedule.warmup_epochs = 0.0
  c.log_every_steps = 4
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 1000
  c.progress_bar = False
  return c


def sweep(arg=None):
  runs = [{"seed": 0}, {"seed": 1}]
  if arg == "report":
    runs.append({"optimizer.learning_rate": 1e8, "schedule.name": "constant"})
  return runs
