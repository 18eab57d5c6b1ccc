"""The gradient noise scale while training (``config.log_noise_scale``; McCandlish et al. 2018
App. A.1): the train step's ``grad_sq_small`` / ``grad_sq_big`` and the loop's
``train_noise_scale``.

The reference problem is the real step on LeNet-5 (no BatchNorm, no dropout) and digits with
augmentation ``normalize`` (deterministic) at a learning rate of 1e-30 without momentum or weight
decay: the weights move by at most ~1e-30 (asserted), so the per-example gradients over the N
training examples are a fixed population, computed exactly with ``jax.vmap(jax.grad)``: G = their
mean, Σ = their population covariance, B_simple = tr(Σ)/|G|².

Batches are drawn without replacement within an epoch (`lbjax.data.pipeline`), so
E|G_b|² = |G|² + tr(Σ)/b · (N−b)/(N−1), not tr(Σ)/b. This finite-population factor is accounted
for exactly: the estimators of App. A.1 then have expectations tr(Σ)·N/(N−1) and
|G|² − tr(Σ)/(N−1), and their ratio (≈ 9% above tr(Σ)/|G|² here) is the reference. Batches
straddling an epoch boundary (256/1437 ≈ 18% of them) are two such samples, nearer sampling with
replacement; their pull toward tr(Σ)/|G|² is below 0.18 × 9% ≈ 1.6%, inside the tolerance.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from lbjax import loop
from lbjax import mesh as mesh_lib
from lbjax import metrics as metrics_lib
from lbjax import noise_scale
from lbjax import step as step_lib
from lbjax.analysis import noise_scale as analysis_noise_scale
from lbjax.data import augment
from lbjax.data import pipeline
from tests import xla
from tests.hang import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 256


def _config(fixed=True, model="lenet5", **overrides):
  """The reference problem's config (``fixed``: weights that do not move), or with the default
  optimizer (SGD, momentum, weight decay) and ``model``."""
  c = default.get_config()
  c.augment = "normalize"
  c.batch_size = BATCH
  c.model.name = model
  if fixed:
    c.optimizer.learning_rate = 1e-30  # > 0 is required; the weights stay put (see the doc)
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
  c.log_noise_scale = True
  c.progress_bar = False
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def lenet():
  """The experiment, its initial state and the exact per-example gradient statistics."""
  exp = step_lib.build(_config())
  state = exp.init_state()
  data = exp.data
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)

  def loss(params, image, label):  # one example, exactly as the train step sees it
    images, targets = augment.apply({"image": image[None], "label": label[None]},
                                    jax.random.split(jax.random.PRNGKey(0), 1), mode="normalize",
                                    num_classes=data.num_classes, mean=mean, std=std, train=True)
    logits = exp.model.apply({"params": params, "batch_stats": {}}, images, train=True)
    return step_lib.cross_entropy(logits, targets)

  @jax.jit
  def flat_grads(images, labels):  # [n, P] per-example gradients
    g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(state.params, images, labels)
    return jnp.concatenate([x.reshape(x.shape[0], -1) for x in jax.tree.leaves(g)], axis=1)

  images, labels = data.train["image"], data.train["label"]
  n = len(labels)
  total, total_sq = 0.0, 0.0
  for chunk in np.array_split(np.arange(n), 3):
    g = np.asarray(flat_grads(images[chunk], labels[chunk]), np.float64)
    total = total + g.sum(0)
    total_sq += float(np.sum(g**2))
  g_mean = total / n
  g_sq = float(g_mean @ g_mean)
  trace = total_sq / n - g_sq  # tr Σ, population covariance
  reference = trace * n / (n - 1) / (g_sq - trace / (n - 1))  # sampling without replacement
  return {"exp": exp, "state": state, "flat_grads": flat_grads, "n": n,
          "exact": trace / g_sq, "reference": reference}


def _each_device(x):
  """Every device's own copy of a replicated global array: ``[devices, ...]``."""
  return np.stack([np.asarray(shard.data) for shard in x.addressable_shards])


def _train(exp, state, devices, steps, seed=0):
  """``steps`` steps of the real train program on a mesh of ``devices``; the two squared norms
  per step and the final host state."""
  mesh = mesh_lib.data_mesh(devices)
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(state, mesh)
  small, big = [], []
  for s in range(steps):
    batch = pipeline.train_batch(exp.data.train, s, batch_size=BATCH, seed=seed,
                                 local_device_count=len(devices))
    state, metrics = program(state, mesh_lib.put_batch(batch, mesh))
    small.append(_each_device(metrics["grad_sq_small"]))
    big.append(_each_device(metrics["grad_sq_big"]))
  small, big = np.asarray(small), np.asarray(big)  # [steps, devices]
  assert small.shape == big.shape == (steps, len(devices))
  assert np.all(small == small[:, :1]) and np.all(big == big[:, :1])  # pmean'd: identical
  return small[:, 0], big[:, 0], mesh_lib.to_host(state)


def _piece_reference(lenet, step, seed, b_small):
  """NumPy: |G_b|² of each ``b_small`` rows of global batch ``step`` in order (device by device,
  micro-batch by micro-batch), averaged, and of the whole batch."""
  data = lenet["exp"].data.train
  idx = pipeline.global_batch_indices(step, BATCH, lenet["n"], seed)
  g = np.asarray(lenet["flat_grads"](data["image"][idx], data["label"][idx]), np.float64)
  pieces = g.reshape(BATCH // b_small, b_small, -1).mean(1)
  return np.mean(np.sum(pieces**2, -1)), float(np.sum(g.mean(0) ** 2))


CASES = {  # name: (devices, micro_batch_size, steps, expected (b_small, b_big))
    "4-devices": (4, None, 120, (64, 256)),
    "1-device-micro-batches": (1, 64, 120, (64, 256)),
    "1-device-halves": (1, None, 240, (128, 256)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_b_simple_over_many_steps_is_within_ten_percent_of_the_exact_one(lenet, name, optimized):
  devices, micro, steps, batches = CASES[name]
  exp = lenet["exp"]
  if micro is not None:
    exp = step_lib.build(_config(micro_batch_size=micro), exp.data)
  assert exp.noise_scale_batches(devices) == batches
  b_small, b_big = batches
  seed = 1 + list(CASES).index(name)
  small, big, final = _train(exp, lenet["state"], jax.devices()[:devices], steps, seed=seed)
  # The weights moved by at most 1e-30 · |g| (zero-initialised biases by ~1e-30, the rest not at
  # all in float32), so every step samples the same gradient population.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-28), final.params,
               jax.device_get(lenet["state"].params))
  # Step 0's two norms are those of the exact per-example gradients of its rows.
  ref_small, ref_big = _piece_reference(lenet, 0, seed, b_small)
  np.testing.assert_allclose([small[0], big[0]], [ref_small, ref_big], rtol=2e-4)
  _, _, b_simple = analysis_noise_scale.simple_noise_scale(small.mean(), big.mean(), b_small,
                                                           b_big)
  assert b_simple == pytest.approx(lenet["reference"], rel=0.1), (b_simple, lenet)
  assert lenet["reference"] > 1.05 * lenet["exact"]  # the finite-population factor matters


def _metrics_and_state(config, data, devices, steps=2):
  exp = step_lib.build(config, data)
  mesh = mesh_lib.data_mesh(devices)
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  out = []
  for s in range(steps):
    state, metrics = program(state, exp.put_train_batch(s, mesh))
    out.append(mesh_lib.to_host(metrics))
  return out, mesh_lib.to_host(state)


MAX_ULP = 1


def _within_ulp(x, y):
  """Floats within ``MAX_ULP`` units in the last place of the array's largest magnitude (values
  near 0 have finer ulps than the sums they come from); integers and booleans equal."""
  x, y = np.asarray(x), np.asarray(y)
  if np.issubdtype(x.dtype, np.floating):
    scale = np.spacing(np.abs(y).max(initial=0.0))
    np.testing.assert_allclose(x, y, rtol=0, atol=MAX_ULP * scale)
  else:
    np.testing.assert_array_equal(x, y)


ORIGINAL_METRICS = {"loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "update_norm",
                    "update_ratio", "finite"}


@pytest.mark.parametrize("devices,micro,accumulation", [(4, None, "auto"), (1, 32, "scan"),
                                                        (1, 32, "host")])
def test_logging_costs_the_metrics_only(lenet, devices, micro, accumulation):
  """Off: the step's metrics are the original ones (and no key at all gives the same bits). On,
  wherever the pieces exist already (devices, micro-batches): the same state bit for bit and
  the same metrics plus the two squared norms."""
  data = lenet["exp"].data
  base = {"micro_batch_size": micro, "accumulation": accumulation, "augment": "standard",
          "fixed": False}
  runs = {}
  for log in (None, False, True):
    config = _config(**base)
    if log is None:
      del config["log_noise_scale"]
    else:
      config.log_noise_scale = log
    runs[log] = _metrics_and_state(config, data, jax.devices()[:devices])
  for log in (None, False):
    assert all(set(m) == ORIGINAL_METRICS for m in runs[log][0])
  # Off, with or without the key: one program, the same bits. On: another program (two more
  # outputs), which XLA:CPU may fuse differently, so the update's float32 rounding may differ by
  # an ulp (measured: 1 ulp on 40 of LeNet-5's 2400 conv2 weights after 2 micro-batched steps
  # with the legacy kernel emitter of `tests/xla.py`, 0 with the new one); a changed gradient,
  # batch or key moves them by far more.
  jax.tree.map(np.testing.assert_array_equal, runs[None][1], runs[False][1])
  for ma, mb in zip(runs[None][0], runs[False][0]):
    for key in ORIGINAL_METRICS:
      np.testing.assert_array_equal(ma[key], mb[key])
  jax.tree.map(_within_ulp, runs[False][1], runs[True][1])
  for ma, mb in zip(runs[False][0], runs[True][0]):
    for key in ORIGINAL_METRICS:
      _within_ulp(ma[key], mb[key])
  on = runs[True][0][-1]
  assert set(on) == ORIGINAL_METRICS | {"grad_sq_small", "grad_sq_big"}
  np.testing.assert_allclose(on["grad_sq_big"], on["grad_norm"] ** 2, rtol=1e-5)
  assert np.all(on["grad_sq_small"] > on["grad_sq_big"])  # smaller batches, noisier gradients


def test_halves_on_one_device_are_micro_batches_of_half_the_batch():
  """With BatchNorm, logging on one device without micro-batches trains as micro-batches of
  b/2 (each half normalised with its own statistics): the documented cost of the split."""
  base = {"model": "resnet_tiny", "batch_size": 32, "augment": "standard", "fixed": False,
          "accumulation": "scan"}
  logged = _config(**base)
  halves = _config(**base, micro_batch_size=16)
  halves.log_noise_scale = False
  full = _config(**base)
  full.log_noise_scale = False
  devices = jax.devices()[:1]
  (m_log, s_log), (m_half, s_half), (_, s_full) = (_metrics_and_state(c, None, devices)
                                                   for c in (logged, halves, full))
  gap = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b)))
  # Same arithmetic as micro-batches of 16 up to float32 rounding (an unrolled vs a rolled scan,
  # amplified by BatchNorm), and far from the full batch's BatchNorm.
  assert gap(s_log.params, s_half.params) < 0.1 * gap(s_log.params, s_full.params)
  np.testing.assert_allclose(m_log[-1]["loss"], m_half[-1]["loss"], rtol=1e-5)


class _Scripted:
  """A `lbjax.loop.Trainer` of 2 replicas × 2 copies: step s (1-based) gives grad_sq_small
  3 + sin(s), grad_sq_big 1 + sin(s)/4."""
  examples_per_step, num_replicas, noise_scale = 8, 2, (16, 64)

  def step(self, step):
    s = step + 1
    full = lambda v: np.full((2, 2), v)
    return {"loss": full(1.0), "accuracy": full(0.5), "finite": full(True),
            "grad_sq_small": full(3.0 + np.sin(s)), "grad_sq_big": full(1.0 + np.sin(s) / 4)}

  def host_state(self):
    return {"x": np.zeros((), np.int32)}

  def evaluate(self, step):
    del step
    return {}


def _loop(workdir, total, stop=None):
  config = ml_collections.ConfigDict({"log_every_steps": 2, "eval_every_epochs": 100.0,
                                      "checkpoint_every_steps": 4, "progress_bar": False,
                                      "noise_scale_decay": 0.5})
  rec = loop.Recorder(str(workdir), keep=10, every=config.checkpoint_every_steps,
                      async_save=False)
  start, _ = rec.restore({"x": np.zeros((), np.int32)})
  start = start or 0
  end = stop or total
  loop.run(rec, _Scripted(), start=start, total_steps=end,
           cadence=loop.Cadence.from_config(config, steps_per_epoch=10.0))
  rec.close()
  return metrics_lib.read_metrics(str(workdir))


def test_loop_writes_the_moving_average_and_a_resumed_run_continues_it(tmp_path):
  whole = _loop(tmp_path / "a", 12)
  windows = [r for r in whole if "train_noise_scale" in r]
  assert [r["step"] for r in windows] == [2, 4, 6, 8, 10, 12]
  ema = noise_scale.NoiseScaleEMA()
  for r in windows:  # the window means, then the moving average of McCandlish et al.
    s = np.arange(r["step"] - 1, r["step"] + 1)
    assert r["train_grad_sq_small"] == pytest.approx(np.mean(3 + np.sin(s)))
    assert r["train_grad_sq_big"] == pytest.approx(np.mean(1 + np.sin(s) / 4))
    ema = ema.update(r["train_grad_sq_small"], r["train_grad_sq_big"], 16, 64, decay=0.5)
    assert r["train_noise_scale"] == pytest.approx(ema.b_simple, rel=1e-12)
    # The window's own unbiased estimates (McCandlish et al. A.2-A.3), written beside it.
    small, big = np.mean(3 + np.sin(s)), np.mean(1 + np.sin(s) / 4)
    assert r["train_noise_g_sq"] == pytest.approx((64 * big - 16 * small) / 48, rel=1e-9)
    assert r["train_noise_trace_sigma"] == pytest.approx((small - big) / (1 / 16 - 1 / 64),
                                                         rel=1e-9)
  # Killed after its checkpoint at step 8, leaving a later window (which the resumed run drops
  # and writes again), then resumed: the same values as the uninterrupted run.
  _loop(tmp_path / "b", 12, stop=8)
  with open(tmp_path / "b" / metrics_lib.METRICS_FILE, "a") as f:
    f.write(json.dumps({"step": 10, "train_grad_sq_small": 100.0, "train_grad_sq_big": 1.0,
                        "train_noise_scale": 5.0}) + "\n")
  resumed = _loop(tmp_path / "b", 12)
  assert [r["step"] for r in resumed if "train_noise_scale" in r] == [2, 4, 6, 8, 10, 12]
  assert ([r["train_noise_scale"] for r in resumed if "train_noise_scale" in r]
          == pytest.approx([r["train_noise_scale"] for r in windows], rel=1e-12))


def test_launcher_writes_the_noise_scale_to_metrics_and_tensorboard(tmp_path):
  workdir = tmp_path / "run"
  env = xla.process_env(4)
  cmd = [sys.executable, "-m", "lbjax.main", "--config=configs/default.py", f"--workdir={workdir}",
         "--config.num_epochs=0.18", "--config.log_every_steps=1", "--config.progress_bar=False",
         "--config.log_noise_scale=True", "--config.noise_scale_decay=0.5"]
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_SECONDS,
                       check=False)
  assert run.returncode == 0, run.stdout + run.stderr
  records = [r for r in metrics_lib.read_metrics(str(workdir)) if "train_loss" in r]
  assert len(records) == 3  # ceil(0.18 * 1437 / 128) steps, one window each
  ema = noise_scale.NoiseScaleEMA()
  for r in records:
    assert r["train_grad_sq_small"] > r["train_grad_sq_big"] > 0
    ema = ema.update(r["train_grad_sq_small"], r["train_grad_sq_big"], 32, 128, decay=0.5)
    assert r["train_noise_scale"] == pytest.approx(ema.b_simple, rel=1e-12)
  events = ""
  for root, _, files in os.walk(workdir / "tensorboard"):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        events += f.read().decode("latin-1")
  for tag in ("train_grad_sq_small", "train_grad_sq_big", "train_noise_scale"):
    assert tag in events
  assert json.loads((workdir / "config.json").read_text())["log_noise_scale"] is True
