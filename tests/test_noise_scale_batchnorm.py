"""The gradient noise scale of a BatchNorm model on 4 simulated devices (issue: B_simple came
out negative there, since the per-device gradients of a loss with cross-device moments are not
independent small-batch gradients).

Reference, as for LeNet-5 in test_noise_scale_train.py but with pieces for examples: with
BatchNorm a gradient exists only for a batch (its moments), so the unit of the population is a
piece of b examples normalised with its own moments — what each device's measurement pass sees
(`lbjax.step.make_step_parts`'s ``own_model``). At fixed weights (learning rate 1e-30) the
gradients of many random b-pieces of the training set give G (their mean) and their covariance
C; a piece drawn without replacement has covariance tr(Σ)/b · (N−b)/(N−1) with tr(Σ) = the
per-example-equivalent trace, and App. A.1's estimators then have the expectations of
test_noise_scale_train.py's reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax.analysis import noise_scale as analysis_noise_scale
from lbjax.data import augment

BATCH, DEVICES = 256, 4


def _config(fixed=True, **overrides):
  c = default.get_config()
  c.model.name = "resnet_tiny"
  c.image_size = 8
  c.augment = "normalize"
  c.batch_size = BATCH
  if fixed:
    c.optimizer.learning_rate = 1e-30
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
  c.log_noise_scale = True
  c.progress_bar = False
  c.update(overrides)
  return c


def _train(exp, devices, steps, seed=0):
  """The real train program on ``devices``: the two squared norms per step, the final state."""
  mesh = mesh_lib.data_mesh(devices)
  program = exp.train_program(mesh)
  state = mesh_lib.put_replicated(exp.init_state(), mesh)
  small, big = [], []
  for s in range(steps):
    state, metrics = program(state, exp.put_train_batch(s, mesh, seed=seed))
    small.append(metrics["grad_sq_small"])
    big.append(metrics["grad_sq_big"])
  return np.asarray(mesh_lib.to_host(small)), np.asarray(mesh_lib.to_host(big)), mesh_lib.to_host(
      state)


def _piece_reference(exp, b, pieces=400, seed=0):
  """B_simple of the population of own-moment b-piece gradients (module doc)."""
  data, state = exp.data, exp.init_state()
  own = step_lib.create_model(exp.config, data.num_classes, axis_name=None)
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)

  def loss(params, images, labels):
    x, targets = augment.apply({"image": images, "label": labels},
                               jax.random.split(jax.random.PRNGKey(0), images.shape[0]),
                               mode="normalize", num_classes=data.num_classes, mean=mean,
                               std=std, train=True)
    logits, _ = own.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                          mutable=["batch_stats"])
    return step_lib.cross_entropy(logits, targets)

  @jax.jit
  def grads(images, labels):  # [pieces, P]
    g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(state.params, images, labels)
    return jnp.concatenate([x.reshape(x.shape[0], -1) for x in jax.tree.leaves(g)], axis=1)

  n = len(data.train["label"])
  rng = np.random.default_rng(seed)
  idx = np.stack([rng.choice(n, b, replace=False) for _ in range(pieces)])
  g = np.concatenate([np.asarray(grads(data.train["image"][i], data.train["label"][i]),
                                 np.float64) for i in np.array_split(idx, 8)])
  g_mean = g.mean(0)
  g_sq = float(g_mean @ g_mean)
  piece_var = float(np.sum((g - g_mean) ** 2)) / (pieces - 1)
  trace = b * piece_var * (n - 1) / (n - b)  # tr Σ of the per-example-equivalent population
  return trace * n / (n - 1) / (g_sq - trace / (n - 1)), trace / g_sq


def test_b_simple_with_batchnorm_on_4_devices_matches_the_pieces_population():
  exp = step_lib.build(_config())
  assert exp.noise_scale_batches(DEVICES) == (BATCH // DEVICES, BATCH)
  small, big, final = _train(exp, jax.devices()[:DEVICES], steps=120, seed=1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-28), final.params,
               jax.device_get(exp.init_state().params))  # the weights did not move
  _, _, b_simple = analysis_noise_scale.simple_noise_scale(small.mean(), big.mean(),
                                                           BATCH // DEVICES, BATCH)
  reference, _ = _piece_reference(exp, BATCH // DEVICES)
  assert reference > 0
  assert b_simple == pytest.approx(reference, rel=0.15), (b_simple, reference)


def test_b_simple_of_resnet_tiny_on_4_devices_is_positive_and_within_the_1_device_spread():
  """Training (momentum SGD), logged B_simple over the run: 4 devices (pieces with their own
  moments) against 1 device (micro-batches of the same size), seeds 0, 1, 2 on each."""

  def b_simple(devices, seed):
    # The same pieces on both layouts: with BatchNorm the piece's own moments are part of what
    # is measured (4 devices: pieces of B/4; 1 device: micro-batches of B/4, not its halves).
    exp = step_lib.build(_config(fixed=False, seed=seed, image_size=16,
                                 micro_batch_size=None if devices > 1 else BATCH // DEVICES))
    small, big, _ = _train(exp, jax.devices()[:devices], steps=40, seed=seed)
    b_small, b_big = exp.noise_scale_batches(devices)
    # Over the second half of the run (the first steps are the initialisation's transient).
    return analysis_noise_scale.simple_noise_scale(small[20:].mean(), big[20:].mean(), b_small,
                                                   b_big)[2]

  one = np.array([b_simple(1, seed) for seed in (0, 1, 2)])
  four = np.array([b_simple(DEVICES, seed) for seed in (0, 1, 2)])
  assert np.all(one > 0) and np.all(four > 0), (one, four)
  # The project's rule for "within the seed-to-seed spread" (experiments/digits_study.py,
  # `compare`): |Δ mean| ≤ 2·sqrt(s₁²/3 + s₂²/3), seeds 0, 1, 2 a side.
  spread = 2 * np.sqrt(one.var(ddof=1) / 3 + four.var(ddof=1) / 3)
  assert abs(four.mean() - one.mean()) <= spread, (four, one, spread)
