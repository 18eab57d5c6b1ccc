"""The seed configs run the readings the seeds leave open (issue 18 items 1, 2, 4, 5)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import seed001_noise
from configs import seed002_adam
from configs import seed002_common
from configs import seed002_kfac
from configs import seed002_sgd
from configs import seed003_ablation
from configs import seed003_table2
from configs import seed003_table3
from configs import sweeps
from lbjax import config_lib
from lbjax.optim import registry

SEED002 = {"sgd": seed002_sgd, "adam": seed002_adam, "kfac": seed002_kfac}


@pytest.mark.parametrize("name", sorted(SEED002))
@pytest.mark.parametrize("batch_size", seed002_common.EXPERIMENT2_BATCH_SIZES)
def test_seed002_configs_build_at_every_batch_size_of_experiment_2(name, batch_size):
  c = SEED002[name].get_config(f"bs={batch_size},data=digits")
  assert c.batch_size == batch_size and c.optimizer.name == name
  config_lib.validate(c, device_count=1)
  row = max(b for b in seed002_common.BATCH_SIZES if b <= batch_size)
  assert c.optimizer.learning_rate == SEED002[name].TABLE1[row]["learning_rate"]
  tx = registry.from_config(c, optax.constant_schedule(c.optimizer.learning_rate), 10)
  params = {"w": jnp.ones((2, 2))}
  tx.init(params)


def test_seed002_row_option_and_refusals():
  c = seed002_sgd.get_config("bs=1024,row=2048")
  assert c.batch_size == 1024
  assert c.optimizer.learning_rate == seed002_sgd.TABLE1[2048]["learning_rate"]
  for bad in ("bs=300", "bs=256,row=256", "bs=abc"):
    with pytest.raises(ValueError):
      seed002_sgd.get_config(bad)


def test_seed002_sgd_is_the_seeds_form():
  """Seed 002 eqs. (1)–(2): the learning rate inside the buffer; m ← αm − ε(g + λw)."""
  c = seed002_sgd.get_config("bs=128,data=digits")
  assert c.optimizer.lr_in_buffer is True
  lr = optax.piecewise_constant_schedule(0.1, {1: 0.5})
  c.optimizer.weight_decay, c.optimizer.momentum = 0.0, 0.5
  tx = registry.from_config(c, lr, 10)
  params = {"w": jnp.zeros((2, 2))}
  state = tx.init(params)
  g = {"w": jnp.ones((2, 2))}
  u1, state = tx.update(g, state, params)
  u2, state = tx.update(g, state, params)
  # m1 = −0.1, m2 = 0.5·(−0.1) − 0.05 = −0.1 (optax's form: −0.05·(0.5 + 1) = −0.075).
  np.testing.assert_allclose(u1["w"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(u2["w"], -0.1, rtol=1e-6)


def test_seed003_nag_reading_is_a_config_argument():
  assert seed003_ablation.get_config("baseline").optimizer.damped is True
  assert seed003_ablation.get_config("baseline,nag=undamped").optimizer.damped is False
  assert seed003_ablation.get_config("nag=undamped").optimizer.damped is False
  assert all(run["optimizer.damped"] is False
             for run in seed003_ablation.sweep("nag=undamped"))
  c = seed003_table2.get_config("nag,nag=undamped")
  assert c.optimizer.name == "nag" and c.optimizer.damped is False
  with pytest.raises(ValueError):
    seed003_ablation.get_config("baseline,nag=pytorch")
  registry.validate_config(seed003_ablation.get_config("wd_off,nag=undamped"))


def test_seed003_hybrid_eps_is_a_config_argument():
  assert seed003_table3.get_config().optimizer.eps == 1e-8
  assert seed003_table3.get_config("eps=1e-16").optimizer.eps == 1e-16
  assert seed003_table2.get_config("hybrid,eps=0.0").optimizer.eps == 0.0
  hybrid_runs = [r for r in seed003_table2.sweep("eps=1e-12") if r["optimizer"]["name"] == "hybrid"]
  assert hybrid_runs and all(r["optimizer"]["eps"] == 1e-12 for r in hybrid_runs)


def test_seed001_runs_li_et_al_form_with_two_overrides():
  """Li et al. (2018)'s form: the two overrides give Nesterov momentum and weight decay on every
  tensor (biases too), the rest of the recipe unchanged; the optimizer the config builds is
  optax's Nesterov SGD with L2 decay of every tensor, step for step."""
  default = seed001_noise.get_config()
  c = sweeps.apply_overrides(default, {"optimizer.nesterov": True, "optimizer.mask": "all"},
                             where="test")
  registry.validate_config(c)
  assert (c.optimizer.nesterov, c.optimizer.mask) == (True, "all")
  assert c.optimizer.name == "sgd" and not c.optimizer.lr_in_buffer
  assert (c.optimizer.learning_rate, c.optimizer.momentum, c.optimizer.weight_decay) == (
      0.1, 0.9, 5e-4)
  assert c.noise.scale == 0.0 and c.smoothout.scale == 0.0

  lr = 0.1
  reference = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(lr, 0.9, nesterov=True))
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,))}}
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
           for _ in range(3)]

  def trajectory(tx):
    p, state = params, tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, p)
      p = optax.apply_updates(p, updates)
    return p

  want = trajectory(reference)
  got = trajectory(registry.from_config(c, optax.constant_schedule(lr), 10))
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
  # The seed's default (plain momentum, kernels only) is a different optimizer.
  plain = trajectory(registry.from_config(default, optax.constant_schedule(lr), 10))
  for leaf in ("kernel", "bias"):
    assert np.max(np.abs(plain["conv"][leaf] - want["conv"][leaf])) > 1e-4, leaf
