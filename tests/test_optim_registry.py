"""Choosing issue 4's optimizers from a config: names, hyperparameters, noise, WD switch-off."""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from lbjax import config_lib
from lbjax.errors import ConfigError
from lbjax.optim import registry
from lbjax.optim.noise import AddUniformNoiseState

ISSUE_4 = ["sgd", "nag", "adam", "adamw", "radam", "adabelief", "lars", "hybrid"]


def config(name, **overrides):
  c = default.get_config()
  c.optimizer = ml_collections.ConfigDict({"name": name, "learning_rate": 0.1})
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


@pytest.mark.parametrize("name", ISSUE_4)
def test_every_name_builds_from_a_config_with_its_hyperparameters(name):
  c = config(name)
  for key in registry.hyperparameters(name):
    if key != "learning_rate":
      c.optimizer[key] = inspect.signature(registry.OPTIMIZERS[name]).parameters[key].default
  tx = registry.from_config(c, optax.constant_schedule(0.1), total_steps=10)
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}
  updates, _ = tx.update(params, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_unknown_name_or_hyperparameter_is_a_clear_error():
  with pytest.raises(ConfigError) as e:
    registry.validate_config(config("lamb"))
  assert e.value.key == "config.optimizer.name" and "hybrid" in str(e.value)
  with pytest.raises(ConfigError) as e:
    registry.validate_config(config("lars", **{"optimizer.nesterov": True}))
  assert e.value.key == "config.optimizer.nesterov" and "trust_coefficient" in str(e.value)


@pytest.mark.parametrize("overrides,key", [
    ({"noise.scale": -0.1}, "config.noise.scale"),
    ({"noise.scale": 0.1, "noise.annealing": "exponential"}, "config.noise.final_ratio"),
    ({"smoothout.annealing": "step"}, "config.smoothout.annealing"),
    ({"smoothout.scale": 0.1, "smoothout.final_ratio": -1.0}, "config.smoothout.final_ratio"),
    ({"schedule.weight_decay_off_fraction": 1.5}, "config.schedule.weight_decay_off_fraction"),
])
def test_bad_noise_smoothout_or_switch_off_is_caught_by_config_validation(overrides, key):
  c = config("hybrid", **overrides)
  c.model.name = "lenet5"
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c, device_count=1)
  assert e.value.key == key


def test_noise_block_appends_uniform_noise():
  params = {"w": jnp.zeros((4, 4))}
  quiet = registry.from_config(config("sgd"), optax.constant_schedule(0.1), 10)
  noisy = registry.from_config(config("sgd", **{"noise.scale": 0.01}),
                               optax.constant_schedule(0.1), 10)
  is_state = lambda x: isinstance(x, tuple)
  assert not any(isinstance(s, AddUniformNoiseState)
                 for s in jax.tree.leaves(quiet.init(params), is_leaf=is_state))
  state = noisy.init(params)
  assert isinstance(state[-1], AddUniformNoiseState)
  updates, _ = noisy.update(params, state, params)
  assert 0 < float(jnp.abs(updates["w"]).max()) <= 0.01


@pytest.mark.parametrize("name", ["sgd", "nag", "adamw", "radam", "adabelief", "hybrid", "lars"])
def test_weight_decay_switches_off_at_the_fraction(name):
  """Zero gradients: the kernels shrink by the decay until 75% of the steps, then stop."""
  c = config(name, **{"optimizer.weight_decay": 0.1, "schedule.weight_decay_off_fraction": 0.75})
  if "momentum" in registry.hyperparameters(name):
    c.optimizer.momentum = 0.0
  tx = registry.from_config(c, optax.constant_schedule(0.1), total_steps=20)
  params = {"w": jnp.ones((2, 3))}
  state = tx.init(params)
  history = [params["w"]]
  for _ in range(20):
    updates, state = tx.update({"w": jnp.zeros((2, 3))}, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params["w"])
  history = np.array(history)[:, 0, 0]
  assert np.all(np.diff(history[:16]) < 0)  # steps 0..14 decay
  np.testing.assert_array_equal(history[15:], history[15])  # from step 15 = 0.75·20 on: none
