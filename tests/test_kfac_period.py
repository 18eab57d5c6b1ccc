"""K-FAC with statistics every τ steps (``config.optimizer.factor_update_period``, issue 25).

Against NumPy: after n steps with τ = 3 the factors are the bias-corrected moving average of the
statistics of steps 0, 3, 6, … (``lbjax/optim/kfac.py``'s weights), the inverses are those of
the steps ``n % inverse_update_period == 0`` and the steps between are preconditioned with the
inverses in use; τ = 1 is bit-identical to the update before the period existed (frozen below).
Through the train step: the two programs (with and without the capture), chosen by the step, on
1 and 4 devices, with micro-batches in both accumulation modes, in SWAP's phase 2 (vmap and
loop), and a resumed run bit-identical to an uninterrupted one.
"""

import os
import shutil

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from configs import seed002_kfac
from configs import sweeps
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax import swap
from lbjax import train
from lbjax.errors import ConfigError
from lbjax.optim import registry
from lbjax.optim.kfac import ScaleByKFACState
from lbjax.optim.kfac import covered_layers
from lbjax.optim.kfac import damped_inverses
from lbjax.optim.kfac import kfac
from lbjax.optim.kfac import precondition
from lbjax.optim.kfac import scale_by_kfac
from tests.test_kfac import np_inverses
from tests.test_optim_common import synthetic_kfac_stats

TAU = 3
RHO, DAMPING = 0.8, 0.05


# --------------------------------------------------------------------------- the transformation


def _update_before_issue_25(cov_ema_decay, damping, inverse_update_period):
  """``scale_by_kfac``'s update as it was before ``factor_update_period`` (commit 80ab2ca),
  frozen: the reference of the bit-identity of τ = 1."""
  def update_fn(updates, state, kfac_stats):
    layers = covered_layers(updates)
    factors, inverses = dict(state.factors), state.inverses
    for name, stats in kfac_stats.items():
      factors[name] = {k: cov_ema_decay * factors[name][k] + (1.0 - cov_ema_decay) * stats[k]
                       for k in ("a", "g")}
    count = state.count + 1
    correction = 1.0 - jnp.float32(cov_ema_decay) ** count.astype(jnp.float32)

    def refresh():
      new = dict(inverses)
      for name in kfac_stats:
        a_inv, g_inv = damped_inverses(factors[name]["a"] / correction,
                                                factors[name]["g"] / correction, damping)
        new[name] = {"a": a_inv, "g": g_inv}
      return new

    inverses = lax.cond(state.count % inverse_update_period == 0, refresh,
                        lambda: dict(inverses))
    leaves, treedef = jax.tree.flatten(updates)
    leaves = list(leaves)
    for name, layer in layers.items():
      bias = None if layer.bias is None else leaves[layer.bias]
      kernel, bias = precondition(leaves[layer.kernel], bias, inverses[name]["a"],
                                           inverses[name]["g"])
      leaves[layer.kernel] = kernel
      if layer.bias is not None:
        leaves[layer.bias] = bias
    return (jax.tree.unflatten(treedef, leaves),
            ScaleByKFACState(count=count, factors=factors, inverses=inverses))

  return update_fn


def _params():
  rng = np.random.default_rng(0)
  return {"fc1": {"kernel": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
                  "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)},
          "out": {"kernel": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)},
          "bn": {"scale": jnp.ones((2,), jnp.float32)}}


def _grads(params, steps):
  rng = np.random.default_rng(1)
  return [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
          for _ in range(steps)]


def _stats(params, steps):
  return [synthetic_kfac_stats(params, seed=10 + s) for s in range(steps)]


@pytest.mark.parametrize("inverse_update_period", [1, 2])
def test_period_one_is_bit_identical_to_the_update_before_it(inverse_update_period):
  params = _params()
  grads, stats = _grads(params, 6), _stats(params, 6)
  tx = scale_by_kfac(RHO, DAMPING, inverse_update_period)  # factor_update_period=1
  new = jax.jit(lambda g, s, st: tx.update(g, s, kfac_stats=st))
  old = jax.jit(_update_before_issue_25(RHO, DAMPING, inverse_update_period))
  state_new = state_old = tx.init(params)
  for g, st in zip(grads, stats):
    u_new, state_new = new(g, state_new, st)
    u_old, state_old = old(g, state_old, st)
    for a, b in zip(jax.tree.leaves((u_new, state_new)), jax.tree.leaves((u_old, state_old))):
      np.testing.assert_array_equal(a, b)


def _run_period(tx, params, grads, stats, every_step):
  """Updates with τ's statistics steps: ``stats[n]`` at ``n % TAU == 0`` (or at every step,
  ``every_step``: the capture program on every step), None otherwise."""
  update = jax.jit(lambda g, s, st: tx.update(g, s, kfac_stats=st))
  plain = jax.jit(lambda g, s: tx.update(g, s))
  state, out = tx.init(params), []
  for n, (g, st) in enumerate(zip(grads, stats)):
    if n % TAU == 0 or every_step:
      u, state = update(g, state, st)
    else:
      u, state = plain(g, state)
    out.append((u, state))
  return out


def test_factors_are_the_moving_average_of_the_statistics_steps():
  """τ = 3, inverses every 6 steps, 8 updates: NumPy reference of the module doc's weights."""
  params, steps = _params(), 8
  grads, stats = _grads(params, steps), _stats(params, steps)
  tx = scale_by_kfac(RHO, DAMPING, inverse_update_period=2 * TAU,
                              factor_update_period=TAU)
  got = _run_period(tx, params, grads, stats, every_step=False)
  assert int(got[-1][1].count) == steps  # every update counted

  f64 = lambda x: np.asarray(x, np.float64)
  layers = covered_layers(params)
  for n in range(steps):
    updates, state = got[n]
    refresh_steps = list(range(0, n + 1, TAU))  # 0, 3, 6: the statistics so far
    k = len(refresh_steps)
    for name in layers:
      for f in ("a", "g"):
        # S_k = Σ_j (1 − ρ) ρ^{k−j} A_{(j−1)τ}; the state keeps S_k (before bias correction).
        want = sum((1 - RHO) * RHO ** (k - j) * f64(stats[s][name][f])
                   for j, s in enumerate(refresh_steps, start=1))
        np.testing.assert_allclose(state.factors[name][f], want, rtol=1e-6, atol=1e-7)
      # Inverses of the bias-corrected factors of the last inverse step (0 or 6) in use.
      last = max(s for s in range(0, n + 1, 2 * TAU))
      k_last = last // TAU + 1
      s_last = {f: sum((1 - RHO) * RHO ** (k_last - j) * f64(stats[s][name][f])
                       for j, s in enumerate(range(0, last + 1, TAU), start=1)) / (1 - RHO ** k_last)
                for f in ("a", "g")}
      a_inv, g_inv = np_inverses(s_last["a"], s_last["g"], DAMPING)
      np.testing.assert_allclose(state.inverses[name]["a"], a_inv, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(state.inverses[name]["g"], g_inv, rtol=1e-4, atol=1e-5)
      # Every step, statistics or not, is preconditioned with the inverses in use.
      layer = layers[name]
      kernel = f64(grads[n][name]["kernel"])
      block = kernel if layer.bias is None else np.concatenate(
          [kernel, f64(grads[n][name]["bias"])[None]])
      want = a_inv @ block @ g_inv
      np.testing.assert_allclose(updates[name]["kernel"], want[:kernel.shape[0]], rtol=1e-4,
                                 atol=1e-5)
    np.testing.assert_array_equal(updates["bn"]["scale"], grads[n]["bn"]["scale"])


def test_statistics_on_other_steps_are_not_folded_in():
  """The capture program on every step (statistics every step) = the pair of programs."""
  params, steps = _params(), 7
  grads, stats = _grads(params, steps), _stats(params, steps)
  tx = scale_by_kfac(RHO, DAMPING, inverse_update_period=TAU, factor_update_period=TAU)
  pair = _run_period(tx, params, grads, stats, every_step=False)
  capture_only = _run_period(tx, params, grads, stats, every_step=True)
  for a, b in zip(jax.tree.leaves(pair), jax.tree.leaves(capture_only)):
    np.testing.assert_array_equal(a, b)


def test_missing_statistics_are_never_a_silent_fallback():
  params = _params()
  g = _grads(params, 1)[0]
  every = scale_by_kfac(RHO, DAMPING)
  with pytest.raises(ValueError, match="factor_update_period"):
    every.update(g, every.init(params))
  # τ > 1: fine between statistics steps, NaN at one (a run then stops as diverged).
  tx = scale_by_kfac(RHO, DAMPING, inverse_update_period=TAU, factor_update_period=TAU)
  plain = jax.jit(lambda g, s: tx.update(g, s))
  updates, _ = plain(g, tx.init(params))  # step 0 is a statistics step
  assert all(np.isnan(x).all() for x in jax.tree.leaves(updates))
  state = tx.init(params)._replace(count=jnp.asarray(1, jnp.int32))
  updates, state = plain(g, state)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(updates)) and int(state.count) == 2


@pytest.mark.parametrize("kwargs,argument", [
    ({"factor_update_period": 0}, "factor_update_period"),
    ({"factor_update_period": True}, "factor_update_period"),
    ({"factor_update_period": 10, "inverse_update_period": 15}, "inverse_update_period"),
])
def test_bad_periods_name_their_config_key(kwargs, argument):
  with pytest.raises(ValueError) as e:
    kfac(0.1, **kwargs)
  assert e.value.argument == argument
  with pytest.raises(ConfigError) as e:
    registry.validate(registry.config_block("kfac", learning_rate=0.1, **kwargs))
  assert e.value.key == f"config.optimizer.{argument}"
  with pytest.raises(ConfigError) as e:  # a K-FAC key on an optimizer without statistics
    registry.validate(registry.config_block("sgd", learning_rate=0.1, factor_update_period=10))
  assert e.value.key == "config.optimizer.factor_update_period"


# --------------------------------------------------------------------------- the train step


def kfac_config(period=TAU, **overrides):
  """LeNet-5 at 8x8 on digits, batch 32, K-FAC with statistics every ``period`` steps and the
  inverses every ``2·period``."""
  c = quickstart.get_config("kfac")
  values = {"image_size": 8, "batch_size": 32, "num_epochs": 0.25, "progress_bar": False,
            "schedule.warmup_epochs": 0.0, "log_every_steps": 3, "eval_every_epochs": 10.0,
            "checkpoint_every_steps": 4,
            "optimizer": registry.config_block(
                "kfac", **{**quickstart.OPTIMIZERS["kfac"], "learning_rate": 0.02,
                           "damping": 0.01, "cov_ema_decay": 0.9, "factor_update_period": period,
                           "inverse_update_period": 2 * period}),
            **overrides}
  return sweeps.apply_overrides(c, values, where="test")


def run_steps(config, num_devices, steps, *, capture_every_step=False, record=()):
  """``steps`` steps of `lbjax.train.Run` (the runner's choice of program per step) on a mesh
  of ``num_devices`` devices; with ``capture_every_step`` the capture program on every step.
  Returns the final host state and the host states before the steps in ``record``."""
  exp = step_lib.build(config)
  run = train.Run(exp, exp.init_state(), mesh_lib.data_mesh(jax.devices()[:num_devices]))
  if capture_every_step:
    run.exp = exp._replace(plain_parts=None)  # statistics_at: every step
  before = {}
  for s in range(steps):
    if s in record:
      before[s] = run.host_state()
    metrics = run.step(s)
  assert np.isfinite(mesh_lib.to_host(metrics["loss"])).all()
  return run.host_state(), before


def kfac_state(state):
  return state.opt_state[0]


def test_the_step_picks_the_program_by_the_step():
  exp = step_lib.build(kfac_config())
  assert [s for s in range(10) if exp.statistics_at(s)] == [0, 3, 6, 9]
  assert exp.plain_parts is not None
  one = step_lib.build(kfac_config(period=1))
  assert one.plain_parts is None and all(one.statistics_at(s) for s in range(5))
  with pytest.raises(ValueError, match="one train program"):
    one.train_program(statistics=False)
  sgd = step_lib.build(kfac_config(optimizer=registry.config_block("sgd", learning_rate=0.1)))
  assert sgd.plain_parts is None and sgd.statistics_at(1)


def test_train_step_factors_are_the_moving_average_of_steps_0_3_6():
  """The real step on 4 devices, 8 steps: the factors equal the NumPy moving average of the
  statistics of the batches of steps 0, 3, 6 at the weights of those steps (the capture's
  ``terms`` on one device over the whole global batch)."""
  config = kfac_config()
  steps, record = 8, (0, 3, 6)
  final, before = run_steps(config, 4, steps, record=record)
  exp = step_lib.build(config)
  one = mesh_lib.data_mesh(jax.devices()[:1])
  terms = mesh_lib.data_parallel(exp.train_parts.terms, one, in_specs=(mesh_lib.P(),
                                                                       mesh_lib.P("batch")),
                                 out_specs=mesh_lib.P())
  stats = [mesh_lib.to_host(terms(mesh_lib.put_replicated(before[s], one),
                                  exp.put_train_batch(s, one)))["kfac_stats"] for s in record]
  rho = config.optimizer.cov_ema_decay
  state = kfac_state(final)
  assert int(state.count) == steps
  for name, factors in state.factors.items():
    for f in ("a", "g"):
      want = sum((1 - rho) * rho ** (len(record) - j) * np.asarray(st[name][f], np.float64)
                 for j, st in enumerate(stats, start=1))
      np.testing.assert_allclose(factors[f], want, rtol=2e-4,
                                 atol=2e-5 * np.abs(want).max(), err_msg=f"{name}/{f}")


@pytest.fixture(scope="module")
def reference():
  """8 steps on one device, no micro-batches: the reference of the layouts below."""
  return run_steps(kfac_config(), 1, 8)[0]


def _close(a, b, tol=2e-5):
  """Within ``tol`` of each leaf's scale (K-FAC's factors are sums of ~10^3 products)."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(1.0, float(np.abs(y).max(initial=0.0)))
    assert np.abs(x - y).max(initial=0.0) <= tol * scale, jax.tree_util.keystr(path)


@pytest.mark.parametrize("devices,overrides", [
    (4, {}),
    (4, {"micro_batch_size": 4, "accumulation": "scan"}),
    (4, {"micro_batch_size": 2, "accumulation": "host"}),
    (1, {"capture_every_step": True}),
], ids=["4_devices", "4_devices_scan", "4_devices_host", "capture_every_step"])
def test_layouts_and_accumulation_train_as_one_device(reference, devices, overrides):
  overrides = dict(overrides)
  capture_every_step = overrides.pop("capture_every_step", False)
  got, _ = run_steps(kfac_config(**overrides), devices, 8, capture_every_step=capture_every_step)
  assert int(kfac_state(got).count) == int(got.step) == 8
  _close(got, reference)


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_swap_phase2_replicas_are_normal_runs(execution):
  """SWAP's phase 2 with τ = 3, 4 replicas, 4 steps on 4 devices: replica k == the normal
  one-device run (`lbjax.train.Run`) of ``phase2_config(config, k)`` from the same weights."""
  from tests.test_swap import tiny_config  # pylint: disable=g-import-not-at-top

  config = tiny_config(**{"swap.optimizer": registry.config_block(
      "kfac", learning_rate=0.02, damping=0.01, factor_update_period=TAU,
      inverse_update_period=TAU)})
  data = step_lib.load_data(config)
  state1 = jax.device_get(step_lib.build(swap.phase1_config(config), data).init_state())
  exp = step_lib.build(swap.phase2_config(config), data)
  replicas = swap.Replicas(exp, swap.init_replicas(config, data, state1), execution)
  for s in range(4):
    replicas.step(s)
  got = replicas.host_states()
  for k in range(4):
    exp_k = step_lib.build(swap.phase2_config(config, k), data)
    start = exp_k.init_state().replace(params=state1.params, batch_stats=state1.batch_stats,
                                       opt_state=exp_k.tx.init(state1.params))
    run = train.Run(exp_k, start, mesh_lib.data_mesh(jax.devices()[:1]))
    for s in range(4):
      run.step(s)
    want = run.host_state()
    mine = jax.tree.map(lambda x, k=k: np.asarray(x)[k], got)
    assert int(kfac_state(mine).count) == 4
    _close(mine, want)


def test_resume_is_bit_identical(tmp_path):
  """11-12 steps on 4 devices, checkpoints every 4: resumed from step 8 (between statistics steps
  6 and 9) the run ends bit-identical to the uninterrupted one."""
  from lbjax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  config = kfac_config()
  workdir = str(tmp_path / "run")
  exp = step_lib.build(config)
  total = exp.total_steps
  assert total in (11, 12)  # a checkpoint at 8 and at the end, statistics at 0, 3, 6, 9
  assert train.train_and_evaluate(config, workdir)["step"] == total
  ckpt_dir = os.path.join(workdir, "checkpoints")

  def final():
    ckpt = checkpoint_lib.Checkpointer(ckpt_dir)
    state = ckpt.restore(ckpt.latest_step(), exp.init_state())
    ckpt.close()
    return jax.device_get(state)

  straight = final()
  assert int(kfac_state(straight).count) == total
  shutil.rmtree(os.path.join(ckpt_dir, str(total)))
  assert train.train_and_evaluate(config, workdir)["step"] == total
  resumed = final()
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_seed002_config_states_its_period():
  config = seed002_kfac.get_config("data=digits")
  assert config.optimizer.factor_update_period == seed002_kfac.FACTOR_UPDATE_PERIOD
  assert config.optimizer.inverse_update_period % config.optimizer.factor_update_period == 0
