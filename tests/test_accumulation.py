"""Gradient accumulation (lbjax/accumulate.py): micro-batches make exactly the full-batch update.

The references are independent of the accumulation code: NumPy means, and the unaccumulated
train step on the whole batch (whose equality on 1 and 4 devices tests/test_train.py checks).
Ghost BN against NumPy and flax's BatchNorm is tested in tests/test_models.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbjax import accumulate
from lbjax import checkpoint as checkpoint_lib
from lbjax import config_lib
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import step as step_lib
from lbjax import train
from lbjax.errors import ConfigError
from tests.test_train import small_config

ATOL = 1e-5


def tiny_config(**overrides):
  """Digits at 8x8, batch 32: one update = 8 micro-batches of 4 on one device."""
  base = {"image_size": 8, "batch_size": 32, "augment": "crop+normalize",
          "schedule.warmup_epochs": 0.0, "schedule.name": "constant"}
  return small_config(**{**base, **overrides})


_RUNS = {}


def run(config, num_devices=1, steps=2):
  """``steps`` updates through ``Experiment.train_program`` on a mesh of the first
  ``num_devices`` devices; (init params, final state, last metrics) on the host. Memoised:
  tests share their references."""
  key = (config.to_json(), num_devices, steps)
  if key not in _RUNS:
    exp = step_lib.build(config)
    mesh = mesh_lib.data_mesh(jax.devices()[:num_devices])
    program = exp.train_program(mesh)
    init = exp.init_state()
    state = mesh_lib.put_replicated(init, mesh)
    for step in range(steps):
      state, metrics = program(state, exp.put_train_batch(step, mesh))
    _RUNS[key] = jax.device_get(init.params), mesh_lib.to_host(state), mesh_lib.to_host(metrics)
  return _RUNS[key]


def assert_same(a, b, atol=ATOL, relative=False):
  """Leaves equal within ``atol``, or with ``relative`` within ``atol`` times the leaf's largest
  magnitude (for matrices such as K-FAC's factors, whose float32 sums carry a few ulps of it)."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    tol = atol * max(1.0, np.abs(y).max(initial=0.0)) if relative else atol
    np.testing.assert_allclose(x, y, rtol=0, atol=tol)


def test_accumulate_is_the_mean_over_micro_batches():
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(12, 3)).astype(np.float32), "w": rng.random(12, np.float32)}
  # Means over examples, one a weighted squared error's gradient in `theta`.
  theta = jnp.asarray([0.5, -1.0, 2.0])
  fn = lambda b: {"mean": b["x"].mean(0),
                  "grad": jax.grad(lambda t: jnp.mean(b["w"] * (b["x"] @ t) ** 2))(theta)}
  x, w = batch["x"].astype(np.float64), batch["w"].astype(np.float64)
  expected = {"mean": x.mean(0), "grad": 2 * (w * (x @ np.asarray(theta))) @ x / len(w)}
  for micro in (None, 12, 6, 3, 1):
    out = jax.jit(accumulate.accumulate(fn, micro))(batch)
    assert_same(out, expected, atol=1e-6)
  with pytest.raises(ConfigError, match=r"config\.micro_batch_size"):
    accumulate.accumulate(fn, 5)(batch)


OPTIMIZERS = {  # name -> its config overrides
    "sgd": {},
    "lars": {"optimizer.nesterov": None},
    "hybrid": {"optimizer.momentum": None, "optimizer.nesterov": None},
    "kfac": {"optimizer.nesterov": None, "optimizer.fisher": "empirical"},
}


def optimizer_config(name, **overrides):
  return tiny_config(**{"optimizer.name": name, **OPTIMIZERS[name], **overrides})


def test_eight_micro_batches_give_the_full_batch_update_of_every_optimizer():
  """No BatchNorm (LeNet5), one device. The train step's terms along K-FAC's capture path
  (gradients, the factors A and G of every layer, loss, accuracy) from 8 micro-batches of 4 in
  the scan equal the full batch's of 32 — CutMix's row pairs mix within micro-batches, so the
  augmented batch is the same —, and fed to SGD, LARS, the hybrid and K-FAC for two updates
  they give the full-batch updates and optimizer states. (The whole train step and the host
  loop: the tests below.)"""
  config = optimizer_config("kfac", augment="crop+normalize+cutmix")
  exp = step_lib.build(config)
  state = exp.init_state()
  batch = jax.tree.map(lambda x: x[0], exp.train_batch(0, local_device_count=1))
  terms = exp.train_parts.terms
  full = jax.jit(terms)(state, batch)
  acc = jax.jit(lambda s, b: accumulate.accumulate(lambda m: terms(s, m), 4)(b))(state, batch)
  assert set(full["kfac_stats"]) == {"conv1", "conv2", "fc1", "fc2", "logits"}
  assert_same(acc["kfac_stats"], full["kfac_stats"], relative=True)
  for key in ("grads", "loss", "accuracy"):
    assert_same(acc[key], full[key])

  for name in OPTIMIZERS:
    tx = step_lib.build(optimizer_config(name), data=exp.data).tx
    extra = (lambda t: {"kfac_stats": t["kfac_stats"]}) if name == "kfac" else (lambda t: {})
    update = jax.jit(lambda t, o, p, tx=tx, extra=extra: tx.update(t["grads"], o, p, **extra(t)))
    results = []
    for t in (full, acc):
      params, opt_state = state.params, tx.init(state.params)
      for _ in range(2):
        updates, opt_state = update(t, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
      results.append((params, opt_state))
    moved = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(state.params),
                                                    jax.tree.leaves(results[0][0])))
    assert moved > 1e-3, name  # the updates are not trivially equal
    assert_same(results[1][0], results[0][0])
    # Optimizer state relative to its size (K-FAC's factors reach ~300).
    assert_same(results[1][1], results[0][1], relative=True)


@pytest.fixture(scope="module")
def ghost_full():
  """ResNet-tiny with Ghost BN of 4, no accumulation, one device: the reference."""
  return run(tiny_config(**{"model.name": "resnet_tiny", "model.ghost_batch_size": 4}))


def test_accumulation_with_ghost_bn_composes_with_data_parallelism(ghost_full):
  """Ghost batches inside micro-batches: on 4 devices with 2 micro-batches each, the same
  normalisation, update and running averages as the unaccumulated step on one device."""
  _, full, _ = ghost_full
  _, acc, _ = run(tiny_config(**{"model.name": "resnet_tiny", "model.ghost_batch_size": 4,
                                 "micro_batch_size": 4, "accumulation": "scan"}), 4)
  assert_same(acc.params, full.params)
  assert_same(acc.batch_stats, full.batch_stats)


def test_plain_batchnorm_under_accumulation_is_ghost_bn_of_the_micro_batch(ghost_full):
  """Each micro-batch is normalised with its own moments; one momentum step of the running
  averages with their mean (the documented rule) — i.e. Ghost BN with ghost = micro-batch.
  Through the host loop, 8 micro-batches on one device."""
  _, full, _ = ghost_full
  _, acc, _ = run(tiny_config(**{"model.name": "resnet_tiny", "micro_batch_size": 4,
                                 "accumulation": "host"}))
  assert_same(acc.params, full.params)
  assert_same(acc.batch_stats, full.batch_stats)


def test_train_and_evaluate_counts_optimizer_updates(tmp_path):
  """LARS through the training loop (host mode on CPU, 4 devices, 2 micro-batches each): steps,
  schedules and checkpoints count updates of the global batch, and the result is the full
  step's on one device."""
  reference = optimizer_config("lars")  # constant learning rate: num_epochs does not matter
  config = optimizer_config("lars", micro_batch_size=4, num_epochs=0.04, log_every_steps=1)
  assert accumulate.resolve_mode(config.accumulation) == "host"
  summary = train.train_and_evaluate(config, str(tmp_path))
  total = config_lib.total_steps(config.num_epochs, 1437, 32)
  assert summary["status"] == "completed" and summary["step"] == total == 2
  steps = [r["step"] for r in metrics_lib.read_metrics(str(tmp_path)) if "train_loss" in r]
  assert steps == [1, 2]
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == total
  final = ckpt.restore(total, step_lib.build(config).init_state())
  ckpt.close()
  _, full, _ = run(reference, num_devices=1, steps=total)  # 1 device = 4 devices (test_train)
  assert_same(final.params, full.params)
  assert_same(final.opt_state, full.opt_state)


def test_resolve_mode_by_backend():
  assert accumulate.resolve_mode("auto", "cpu") == "host"
  assert accumulate.resolve_mode("auto", "gpu") == "scan"
  assert accumulate.resolve_mode("auto", "tpu") == "scan"
  assert accumulate.resolve_mode("host", "gpu") == "host"
  with pytest.raises(ConfigError, match=r"config\.accumulation"):
    accumulate.resolve_mode("loop")


@pytest.mark.parametrize("overrides,key", [
    ({"micro_batch_size": 3}, "config.micro_batch_size"),        # 8 per device
    ({"micro_batch_size": 16}, "config.micro_batch_size"),       # larger than 8 per device
    ({"micro_batch_size": 0}, "config.micro_batch_size"),
    ({"micro_batch_size": -4}, "config.micro_batch_size"),
    ({"micro_batch_size": True}, "config.micro_batch_size"),
    ({"micro_batch_size": 1, "augment": "cutmix"}, "config.micro_batch_size"),  # splits pairs
    ({"micro_batch_size": 4, "model.ghost_batch_size": 8}, "config.model.ghost_batch_size"),
    ({"micro_batch_size": 4, "model.ghost_batch_size": 3}, "config.model.ghost_batch_size"),
    ({"accumulation": "loop"}, "config.accumulation"),
])
def test_bad_values_name_their_key(overrides, key):
  config = tiny_config(**overrides)
  with pytest.raises(ConfigError) as e:
    config_lib.validate(config, device_count=4)
  assert e.value.key == key
  assert str(e.value).startswith(key)


def test_good_values_validate():
  for overrides in ({"micro_batch_size": 8}, {"micro_batch_size": 2, "augment": "cutmix"},
                    {"micro_batch_size": 4, "model.ghost_batch_size": 2}):
    config_lib.validate(tiny_config(**overrides), device_count=4)
  assert accumulate.forward_batch(tiny_config(micro_batch_size=4), 4)[0] == 4
  assert accumulate.forward_batch(tiny_config(), 4)[0] == 8
