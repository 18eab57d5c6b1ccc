"""SWA (seed 000 eq. (1)) and the BatchNorm recompute, against NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lbjax import evaluation
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax import swa
from lbjax import train
from lbjax.errors import ConfigError
from lbjax.models import layers
from tests.test_train import small_config


def test_running_average_is_eq_1():
  rng = np.random.default_rng(0)
  ws = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(5)]
  average, count = {"w": jnp.zeros((3, 2))}, jnp.zeros([], jnp.int32)
  for n, w in enumerate(ws):
    expected = (np.asarray(average["w"], np.float64) * n + w) / (n + 1)  # eq. (1), literally
    average, count = swa.running_average(average, count, {"w": jnp.asarray(w)})
    np.testing.assert_allclose(average["w"], expected, rtol=1e-6)
  assert int(count) == 5
  np.testing.assert_allclose(average["w"], np.mean(ws, axis=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("start,period", [(1, 1), (3, 2), (4, 5)])
def test_swa_transform_averages_the_iterates_it_is_told_to(start, period):
  rng = np.random.default_rng(1)
  params = {"a": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
            "b": {"c": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}}
  tx = swa.swa(optax.sgd(0.1, momentum=0.9), start_step=start, period=period)
  state = tx.init(params)
  iterates = []
  update = jax.jit(tx.update)
  for _ in range(12):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    iterates.append(params)
  taken = [iterates[t - 1] for t in range(start, 13, period)]  # W_t after update t
  expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs).astype(np.float64), 0), *taken)
  assert int(state.count) == len(taken)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, state.average, expected)
  # The updates are the wrapped optimizer's, unchanged.
  g = jax.tree.map(jnp.ones_like, params)
  jax.tree.map(close, tx.update(g, state, params)[0],
               optax.sgd(0.1, momentum=0.9).update(g, state.inner_state, params)[0])


class _TwoNorms(nn.Module):
  """dense → norm → relu → dense → norm: the second layer's moments depend on the first's."""
  ghost_batch_size: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = layers.norm(train, ghost_batch_size=self.ghost_batch_size, name="bn1")(
        layers.dense(5, name="fc1")(x))
    x = layers.dense(3, name="fc2")(nn.relu(x))
    return layers.norm(train, ghost_batch_size=self.ghost_batch_size, name="bn2")(x)


def _numpy_moments(p, x, ghost):
  """Per layer, the mean over ghost batches of (batch mean, biased batch variance)."""
  x = np.asarray(x, np.float64)
  g = ghost or len(x)

  def bn(h, q):
    groups = h.reshape(len(h) // g, g, -1)
    mean, var = groups.mean(1, keepdims=True), groups.var(1, keepdims=True)
    y = ((groups - mean) / np.sqrt(var + layers.EPSILON) * q["scale"] + q["bias"]).reshape(h.shape)
    return y, {"mean": mean.mean(0)[0], "var": var.mean(0)[0]}

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  h, s1 = bn(x @ p["fc1"]["kernel"] + p["fc1"]["bias"], p["bn1"])
  _, s2 = bn(np.maximum(h, 0) @ p["fc2"]["kernel"] + p["fc2"]["bias"], p["bn2"])
  return {"bn1": s1, "bn2": s2}


@pytest.mark.parametrize("ghost", [None, 2])
def test_recomputed_batch_stats_equal_numpy(ghost):
  model = _TwoNorms(ghost_batch_size=ghost)
  rng = np.random.default_rng(2)
  batches = [rng.normal(1.5, 2.0, size=(8, 4)).astype(np.float32) for _ in range(3)]
  variables = model.init(jax.random.PRNGKey(0), batches[0], train=False)
  params = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32),
                        variables["params"])  # non-trivial BN scale and bias
  stale = jax.tree.map(lambda s: s + 7.0, variables["batch_stats"])  # must not leak in
  moments = jax.jit(lambda p, s, x: evaluation.batch_moments(model, p, s, x))
  got = evaluation.recompute_batch_stats(moments, params, stale, batches)
  per_batch = [_numpy_moments(params, x, ghost) for x in batches]
  expected = jax.tree.map(lambda *xs: np.mean(xs, 0), *per_batch)  # torch update_bn, momentum=None
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, expected)


def _swa_config(**overrides):
  """A one-block ResNet (BatchNorm, residual) at 8x8, 12 steps of batch 128."""
  config = small_config(**{"model.name": "resnet_tiny", "image_size": 8, "num_epochs": 1.0,
                           "batch_size": 128, "swa.enabled": True, "swa.start_epoch": 0.3,
                           "swa.period": 3, "schedule.warmup_epochs": 0.0,
                           "eval_every_epochs": 1.0, **overrides})
  with config.unlocked():
    config.model.stage_sizes, config.model.widths = (1,), (4,)
  return config


def test_swa_in_the_train_step_averages_the_trained_weights():
  config = _swa_config()
  exp = step_lib.build(config)
  start = swa.start_step(config, exp.steps_per_epoch)
  assert start == round(0.3 * exp.steps_per_epoch) == 3
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  taken = []
  for step in range(start + 7):
    state, _ = program(state, exp.put_train_batch(step, mesh))
    if step + 1 >= start and (step + 1 - start) % 3 == 0:
      taken.append(mesh_lib.to_host(state.params))
  average, count = mesh_lib.to_host(swa.averaged_params(state.opt_state))
  assert int(count) == len(taken) == 3
  expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs).astype(np.float64), 0), *taken)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), average,
               expected)


def test_recompute_on_train_data_is_device_count_invariant():
  config = _swa_config()
  exp = step_lib.build(config)
  init = exp.init_state()
  results = []
  for n in (1, 4):
    mesh = mesh_lib.data_mesh(jax.devices()[:n])
    stats = evaluation.recompute_on_train_data(
        exp, mesh_lib.put_replicated(init.params, mesh),
        mesh_lib.put_replicated(init.batch_stats, mesh), batch_size=96, mesh=mesh)
    results.append(mesh_lib.to_host(stats))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)
  # Recomputed, not copied: the initial statistics are mean 0 / var 1, the data's are not.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), results[0], jax.device_get(
      init.batch_stats))
  assert max(jax.tree.leaves(moved)) > 1e-2


def test_train_and_evaluate_reports_the_swa_model(tmp_path):
  config = _swa_config()
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["status"] == "completed"
  exp = step_lib.build(config)
  total, start = exp.total_steps, swa.start_step(config, exp.steps_per_epoch)
  assert summary["swa_models"] == len(range(start, total + 1, 3))
  assert 0.0 <= summary["swa_test_accuracy"] <= 1.0
  assert summary["swa_test_accuracy"] != summary["test_accuracy"] or \
      summary["swa_test_loss"] != summary["test_loss"]
  # The run's result is the SWA model (lbjax.runners' summary contract).
  assert summary["result_test_accuracy"] == summary["swa_test_accuracy"]


def test_bad_swa_config_names_the_key():
  from lbjax import config_lib  # pylint: disable=g-import-not-at-top
  for key, value, name in [("swa.period", 0, "config.swa.period"),
                           ("swa.start_epoch", 5.0, "config.swa.start_epoch")]:
    with pytest.raises(ConfigError) as e:
      config_lib.validate(_swa_config(**{key: value}), device_count=1)
    assert e.value.key == name
