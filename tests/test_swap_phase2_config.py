"""`lbjax.swap.phase2_config` carries every phase-2 key of ``config.swap`` into replica k's normal
run (a phase2_config that kept phase 1's optimizer, batch or schedule would pass an equivalence
test whose reference is built by phase2_config itself)."""

import pytest

from configs import swap_digits
from configs import sweeps
from lbjax import swap
from lbjax.optim import registry

PHASE2 = {
    "swap.optimizer": registry.config_block("adam", learning_rate=0.003),
    "swap.batch_size": 16, "swap.micro_batch_size": 8, "swap.num_epochs": 0.5,
    "swap.noise.scale": 1e-3, "swap.noise.annealing": "linear",
    "swap.smoothout.scale": 0.01, "swap.smoothout.adaptive": True,
    "swap.schedule.name": "step", "swap.schedule.warmup_epochs": 0.1,
    "swap.schedule.base_batch_size": 32,
}


@pytest.mark.parametrize("replica", [0, 3])
def test_phase2_config_carries_every_swap_key(replica):
  config = sweeps.apply_overrides(swap_digits.get_config(), PHASE2, where="test")
  c = swap.phase2_config(config, replica)
  p1 = swap.phase1_config(config)
  assert c.seed == config.seed + 1 + replica != p1.seed
  assert (c.batch_size, c.micro_batch_size, c.num_epochs) == (16, 8, 0.5)
  assert (p1.batch_size, p1.num_epochs) != (16, 0.5)
  assert c.optimizer.name == "adam" and c.optimizer.learning_rate == 0.003
  assert p1.optimizer.name != "adam"
  assert c.optimizer.to_dict() == config.swap.optimizer.to_dict()
  assert (c.noise.scale, c.noise.annealing) == (1e-3, "linear")
  assert (c.smoothout.scale, c.smoothout.adaptive) == (0.01, True)
  assert (c.schedule.name, c.schedule.warmup_epochs, c.schedule.base_batch_size) == (
      "step", 0.1, 32)
  assert p1.schedule.name != "step"
  assert not c.swap.enabled and not swap.enabled(c)
  # Everything else is phase 1's (the model, the data, the augmentation).
  for key in ("model", "dataset", "augment", "image_size"):
    assert c[key] == p1[key]
