"""Every optimizer factory works under ``optax.inject_hyperparams`` (issue 15 item 8).

``inject_hyperparams`` passes every numeric argument as an array, traced inside ``jit``; each
factory must build from such values and give the same updates as with Python numbers (the
numbers rounded to float32, the dtype the wrapper injects them in).
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optim_reference import mask_of
from optim_reference import random_tree
import pytest
from test_optim_common import synthetic_kfac_stats

from lbjax import optim
from lbjax.optim.hybrid import scale_by_hybrid
from lbjax.optim.kfac import scale_by_kfac
from lbjax.optim.lars import scale_by_lars

# id -> (factory, numeric and boolean arguments); a mask is added where the factory takes one.
CASES = {
    "sgd": (optim.sgd, {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    "sgd_nesterov_seed002": (optim.sgd, {"learning_rate": 0.05, "momentum": 0.8, "nesterov": True,
                                             "lr_in_buffer": True, "weight_decay": 1e-3}),
    "sgd_no_momentum": (optim.sgd, {"learning_rate": 0.05, "momentum": 0.0}),
    "nag": (optim.nag, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    "nag_undamped": (optim.nag, {"learning_rate": 0.05, "momentum": 0.9, "damped": False}),
    "adam": (optim.adam, {"learning_rate": 0.01, "b1": 0.8, "weight_decay": 1e-3}),
    "adamw": (optim.adamw, {"learning_rate": 0.01, "weight_decay": 1e-2}),
    "radam": (optim.radam, {"learning_rate": 0.01, "b2": 0.9, "threshold": 4.5}),
    "adabelief": (optim.adabelief, {"learning_rate": 0.01, "eps_root": 1e-12}),
    "lars": (optim.lars, {"learning_rate": 0.1, "weight_decay": 5e-4, "trust_coefficient": 0.5}),
    "hybrid": (optim.hybrid, {"learning_rate": 0.01, "b2": 0.9, "threshold": 4.0, "eps": 1e-8}),
    "lamb": (optim.lamb, {"learning_rate": 0.01, "weight_decay": 1e-2}),
    "kfac": (optim.kfac, {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3,
                              "cov_ema_decay": 0.9, "damping": 1e-2, "inverse_update_period": 2}),
    "scale_by_lars": (scale_by_lars, {"weight_decay": 1e-3, "trust_coefficient": 0.5}),
    "scale_by_hybrid": (scale_by_hybrid, {"b1": 0.9, "b2": 0.95, "eps": 1e-8, "threshold": 4.0}),
    "scale_by_kfac": (scale_by_kfac, {"cov_ema_decay": 0.9, "damping": 1e-2}),
    "add_uniform_noise": (optim.add_uniform_noise, {"scale": 1e-2, "seed": 3}),
}


def test_every_registered_optimizer_is_covered():
  covered = {factory for factory, _ in CASES.values()}
  assert set(optim.OPTIMIZERS.values()) <= covered


def _rounded(kwargs):
  """The arguments as inject_hyperparams injects them: floats rounded to float32."""
  return {k: (float(np.float32(v)) if isinstance(v, float) else v) for k, v in kwargs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inject_hyperparams_gives_the_plain_updates(case):
  factory, kwargs = CASES[case]
  params = random_tree(30)
  if "mask" in inspect.signature(factory).parameters:
    kwargs = {**kwargs, "mask": mask_of(params)}
  extra = {"kfac_stats": synthetic_kfac_stats(params)} if "kfac" in case else {}
  injected = optax.inject_hyperparams(factory)(**kwargs)
  plain = factory(**_rounded(kwargs))
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
           for _ in range(6)]

  def trajectory(tx):
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
    state, p, out = tx.init(params), params, []
    for g in grads:
      updates, state = step(g, state, p)
      p = optax.apply_updates(p, updates)
      out.append(p)
    return out

  for a, b in zip(trajectory(injected), trajectory(plain)):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


def test_a_hyperparameter_changed_in_the_state_takes_effect():
  """The point of inject_hyperparams: hybrid's threshold (compared with ρ_t) is live state."""
  params = {"w": jnp.ones((3,))}
  tx = optax.inject_hyperparams(optim.hybrid)(learning_rate=1e-2, b2=0.9)
  state = tx.init(params)
  g = {"w": jnp.array([0.1, -0.2, 0.3])}
  steps = []
  for threshold in (4.0, 100.0):  # ρ_t < 100 always for β₂ = 0.9: never rectified
    s = state
    s.hyperparams["threshold"] = jnp.asarray(threshold)
    out = None
    for _ in range(8):
      out, s = jax.jit(tx.update)(g, s, params)
    steps.append(out["w"])
  plain_unrectified = np.asarray(steps[1])
  assert not np.allclose(steps[0], plain_unrectified)
  # Unrectified: the update is −η(m̂ + λθ) with m̂ = g for a constant gradient.
  np.testing.assert_allclose(plain_unrectified, -1e-2 * (np.array([0.1, -0.2, 0.3]) + 0.01),
                             rtol=1e-5)
