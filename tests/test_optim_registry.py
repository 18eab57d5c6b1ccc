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
from lbjax import dotted
from lbjax.errors import ConfigError
from lbjax.optim import registry
from lbjax.optim.noise import AddUniformNoiseState

ISSUE_4 = ["sgd", "nag", "adam", "adamw", "radam", "adabelief", "lars", "hybrid"]


def config(name, **overrides):
  c = default.get_config()
  c.optimizer = ml_collections.ConfigDict({"name": name, "learning_rate": 0.1})
  for key, value in overrides.items():
    dotted.assign(c, key, value)
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
    registry.validate_config(config("shampoo"))
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


MASKED = [name for name in registry.OPTIMIZERS
          if "mask" in inspect.signature(registry.OPTIMIZERS[name]).parameters]


@pytest.mark.parametrize("name", MASKED)
def test_mask_all_adapts_and_decays_every_tensor_default_only_kernels(name):
  """Issue 18 item 3: config.optimizer.mask = all (seed 000 Alg. 1 for LARS) vs kernels."""
  params = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3),
                      "bias": jnp.array([0.5, -0.25, 1.0])}}

  def step(tx):
    """Three updates with gradients 0.1, 0.2, 0.3 (varying, so Adam's ratio is not ±1)."""
    p, state = params, tx.init(params)
    extra = {"kfac_stats": {}} if name == "kfac" else {}  # K-FAC: no layer's statistics
    for t in range(3):
      g = jax.tree.map(lambda x, s=0.1 * (t + 1): s * jnp.ones_like(x), p)
      updates, state = tx.update(g, state, p, **extra)
      p = optax.apply_updates(p, updates)
    return p

  c = config(name, **{"optimizer.weight_decay": 0.1})
  default_updates = step(registry.from_config(c, optax.constant_schedule(0.1), 10))
  c.optimizer.mask = "all"
  all_updates = step(registry.from_config(c, optax.constant_schedule(0.1), 10))
  factory = registry.OPTIMIZERS[name]
  expected_default = step(factory(0.1, weight_decay=0.1, mask=registry.decay_mask))
  expected_all = step(factory(0.1, weight_decay=0.1, mask=None))
  for got, want in ((default_updates, expected_default), (all_updates, expected_all)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  # Kernels: the same under both masks; the bias: only `all` decays (and adapts) it.
  np.testing.assert_allclose(all_updates["dense"]["kernel"], default_updates["dense"]["kernel"],
                             rtol=1e-6)
  assert not np.allclose(all_updates["dense"]["bias"], default_updates["dense"]["bias"])


def test_unknown_mask_names_its_key():
  with pytest.raises(ConfigError) as e:
    registry.validate_config(config("lars", **{"optimizer.mask": "biases"}))
  assert e.value.key == "config.optimizer.mask" and "kernels" in str(e.value)


# (optimizer, bad argument, value): every factory refuses it with a ValueError that names the
# argument, and the registry turns it into config.optimizer.<argument>.
BAD_ARGUMENTS = [
    ("sgd", "momentum", 1.0), ("sgd", "weight_decay", -1e-4), ("sgd", "nesterov", 1),
    ("sgd", "lr_in_buffer", "yes"), ("sgd", "momentum", "0.9"),
    ("nag", "momentum", -0.5), ("nag", "damped", 0),
    ("adam", "b1", 1.0), ("adam", "b2", -0.1), ("adam", "eps", -1e-8),
    ("adamw", "weight_decay", -0.01), ("radam", "threshold", 3.0),
    ("adabelief", "eps_root", -1.0),
    ("lars", "trust_coefficient", 0.0), ("lars", "eps", -1.0), ("lars", "momentum", 1.5),
    ("hybrid", "threshold", 3.5), ("hybrid", "b2", 0.0), ("hybrid", "eps", -1e-8),
    ("kfac", "damping", -1e-3), ("kfac", "cov_ema_decay", 1.0),
    ("kfac", "inverse_update_period", 0),
]


@pytest.mark.parametrize("name,argument,value", BAD_ARGUMENTS)
def test_bad_argument_is_a_value_error_and_a_one_line_config_error(name, argument, value):
  with pytest.raises(ValueError) as e:
    registry.OPTIMIZERS[name](0.1, **{argument: value})
  assert e.value.argument == argument
  c = config(name, **{f"optimizer.{argument}": value})
  with pytest.raises(ConfigError) as e:
    registry.validate_config(c)
  assert e.value.key == f"config.optimizer.{argument}"
  assert "\n" not in str(e.value)


def test_new_keys_are_in_every_config_block():
  block = default.get_config().optimizer
  for key in ("mask", "damped", "lr_in_buffer", "fisher"):
    assert key in block and block[key] is None  # None: the factory's / registry's default
  block = registry.config_block("nag", learning_rate=0.1, damped=False, mask="all")
  tx = registry.build(block, 0.1)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  updates, _ = tx.update(params, tx.init(params), params)
  # damped=False, one step from zero momentum: −η(g + μg) = −0.1 · 1.9 on every tensor.
  np.testing.assert_allclose(updates["b"], -0.19, rtol=1e-6)
