"""CutMix: pasted area = label weight exactly, boxes inside the image and equal to Yun et al.'s
``rand_bbox`` (NumPy), p = 1 always mixes, partners, the train-accuracy metric on mixed labels,
and the seed-003 augmentation (TrivialAugment + CutMix) identical on 1 and 4 devices."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from lbjax import config_lib
from lbjax import mesh as mesh_lib
from lbjax import step as step_lib
from lbjax.data import augment
from lbjax.data import cutmix
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.errors import ConfigError
from tests.test_train import small_config

H = W = 32


B = 16  # one batch shape for every jitted call below (each new shape is a new compilation)


def _keys(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


def rand_bbox(lam, cy, cx, height, width):
  """Yun et al.'s ``rand_bbox`` (github.com/clovaai/CutMix-PyTorch, train.py) given its draws."""
  cut_rat = np.sqrt(1. - lam)
  cut_w, cut_h = int(width * cut_rat), int(height * cut_rat)
  x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
  y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
  return y1, y2, x1, x2


@jax.jit
def _draws(keys):
  """The (λ, cy, cx) that ``draw_box`` draws from each key (its key layout)."""

  def one(key):
    _, lam_key, y_key, x_key = jax.random.split(key, 4)
    return (jax.random.uniform(lam_key), jax.random.randint(y_key, (), 0, H),
            jax.random.randint(x_key, (), 0, W))

  return jax.vmap(one)(keys)


@jax.jit
def _boxes(keys, probability):
  return jax.vmap(lambda k: cutmix.draw_box(k, H, W, probability=probability))(keys)


_cutmix = jax.jit(cutmix.cutmix)


def test_boxes_are_yun_et_als_and_inside_the_image():
  keys = _keys(4096)
  top, bottom, left, right = (np.asarray(a) for a in _boxes(keys, 1.))
  lam, cy, cx = (np.asarray(a) for a in _draws(keys))
  for i in range(len(keys)):
    expected = rand_bbox(float(lam[i]), int(cy[i]), int(cx[i]), H, W)
    assert (top[i], bottom[i], left[i], right[i]) == expected, i
  assert np.all((0 <= top) & (top <= bottom) & (bottom <= H))
  assert np.all((0 <= left) & (left <= right) & (right <= W))
  # λ ~ Beta(1, 1) = U(0, 1): mean 1/2, variance 1/12.
  assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 1 / 12) < 0.005
  # The clipped area really differs from the unclipped (1 − λ)·H·W often.
  half_h, half_w = np.floor(H * np.sqrt(1 - lam)) // 2, np.floor(W * np.sqrt(1 - lam)) // 2
  assert np.mean((bottom - top) * (right - left) < 4 * half_h * half_w) > 0.2


def test_probability_one_always_mixes():
  """p = 1: no example skips the paste; the only empty boxes are those Yun et al.'s formula
  makes empty (⌊W·√(1−λ)⌋ < 2, i.e. λ > 1 − 4/W², 0.4 % at 32x32). p = 1/2 skips about
  half."""
  keys = _keys(4096, seed=1)
  lam = np.asarray(_draws(keys)[0])
  formula_empty = np.floor(W * np.sqrt(1 - lam)) < 2  # H == W
  empty = np.asarray(_boxes(keys, 1.).area()) == 0
  np.testing.assert_array_equal(empty, formula_empty)
  assert empty.mean() < 0.01
  assert abs(np.mean(np.asarray(_boxes(keys, .5).area()) == 0) - 0.5) < 0.05


def test_label_weight_equals_the_pasted_area_exactly():
  # Marker images: every pixel of image i is i + 1, so pasted pixels are identifiable.
  images = jnp.broadcast_to(jnp.arange(1., B + 1.)[:, None, None, None], (B, H, W, 1))
  labels = jnp.arange(B) % 10  # partners (2k, 2k+1) have different labels
  targets = jax.nn.one_hot(labels, 10)
  mixed_some = 0
  for seed in range(4):
    out, mixed = (np.asarray(a) for a in _cutmix(images, targets, _keys(B, seed)))
    for i in range(B):
      j = i ^ 1
      from_partner = out[i, :, :, 0] == j + 1
      assert np.all(from_partner | (out[i, :, :, 0] == i + 1))
      area = np.float32(from_partner.sum()) / np.float32(H * W)
      assert mixed[i, labels[j]] == area  # exactly
      assert mixed[i, labels[i]] == np.float32(1.) - area
      assert np.count_nonzero(mixed[i]) == (2 if 0 < area < 1 else 1)
      if from_partner.any():  # the pasted region is one axis-aligned rectangle
        mixed_some += 1
        rows, cols = np.flatnonzero(from_partner.any(1)), np.flatnonzero(from_partner.any(0))
        assert from_partner.sum() == len(rows) * len(cols)
        assert from_partner[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
  assert mixed_some > 0.8 * 4 * B


def test_real_digits_box_comes_from_the_partner_and_the_rest_is_kept():
  digits = datasets.load("digits", image_size=W).train
  images = jnp.asarray(digits["image"][:B], jnp.float32) / 255.
  targets = jax.nn.one_hot(digits["label"][:B], 10)
  keys = _keys(B, seed=5)
  out, mixed = (np.asarray(a) for a in _cutmix(images, targets, keys))
  boxes = [np.asarray(a) for a in _boxes(keys, 1.)]
  images, targets = np.asarray(images), np.asarray(targets)
  for i in range(B):
    top, bottom, left, right = (int(a[i]) for a in boxes)
    inside = np.zeros((H, W), bool)
    inside[top:bottom, left:right] = True
    np.testing.assert_array_equal(out[i][inside], images[i ^ 1][inside])
    np.testing.assert_array_equal(out[i][~inside], images[i][~inside])
    weight = inside.sum() / (H * W)
    expected = (1 - weight) * targets[i] + weight * targets[i ^ 1]
    np.testing.assert_allclose(mixed[i], expected, atol=1e-7)
  top, bottom, left, right = boxes
  assert np.mean((top < bottom) & (left < right)) > 0.8  # not vacuous: most boxes are non-empty


def test_odd_per_device_batch_is_a_config_error():
  config = small_config(augment="crop+cutmix+normalize", batch_size=36)
  with pytest.raises(ConfigError, match="config.batch_size"):
    config_lib.validate(config, device_count=4)  # 9 per device: pairs would straddle devices
  config_lib.validate(config, device_count=2)  # 18 per device
  config_lib.validate(small_config(augment="crop+normalize", batch_size=36), device_count=4)


@functools.cache
def _augment_program(mode, num_devices):
  """The mesh of the first ``num_devices`` devices and its data-parallel ``(batch, seed, step)
  -> (images, targets)``, exactly as the train step augments (each device its rows)."""
  data = datasets.load("digits", image_size=W)

  def fn(batch, seed, step):
    keys = step_lib.step_keys(seed, step, batch["position"])
    return augment.apply(batch, keys, mode=mode, num_classes=10, mean=data.mean, std=data.std,
                         train=True)

  mesh = mesh_lib.data_mesh(jax.devices()[:num_devices])
  rows = P(mesh_lib.AXIS)
  return mesh, mesh_lib.data_parallel(fn, mesh, in_specs=(rows, P(), P()), out_specs=rows)


def _augmented(mode, num_devices, seed, step, batch_size=32):
  data = datasets.load("digits", image_size=W)
  batch = pipeline.train_batch(data.train, step, batch_size=batch_size, seed=seed,
                               local_device_count=num_devices)
  mesh, program = _augment_program(mode, num_devices)
  images, targets = program(mesh_lib.put_batch(batch, mesh), seed, step)
  assert images.shape[0] == targets.shape[0] == batch_size
  return np.asarray(images), np.asarray(targets)


def test_seed003_augmentation_same_on_1_and_4_devices_and_deterministic():
  assert jax.device_count() >= 4, "tests/conftest.py must simulate 4 CPU devices"
  mode = "crop+trivialaugment+cutmix+normalize"
  one = _augmented(mode, 1, seed=0, step=3)
  four = _augmented(mode, 4, seed=0, step=3)
  for a, b in zip(one, four):
    np.testing.assert_array_equal(a, b)
  again = _augmented(mode, 1, seed=0, step=3)
  for a, b in zip(one, again):
    np.testing.assert_array_equal(a, b)
  other_seed = _augmented(mode, 1, seed=1, step=3)
  other_step = _augmented(mode, 1, seed=0, step=4)
  assert not np.array_equal(one[0], other_seed[0]) and not np.array_equal(one[0], other_step[0])
  # CutMix really mixed: most targets carry two labels, and each row still sums to 1.
  assert np.mean(np.count_nonzero(one[1], axis=1) == 2) > 0.7
  np.testing.assert_allclose(one[1].sum(1), 1., atol=1e-6)


def test_train_accuracy_metric_on_mixed_labels():
  """``step_lib.soft_accuracy`` (the train step's ``accuracy``) = mean_i targets_i[argmax
  logits_i]: 0/1 accuracy for one-hot targets, the predicted label's share for CutMix's."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 64)
  one_hot = np.eye(10, dtype=np.float32)[labels]
  np.testing.assert_allclose(step_lib.soft_accuracy(logits, one_hot),
                             np.mean(logits.argmax(-1) == labels), rtol=1e-6)
  zeros = jnp.zeros((B, H, W, 1))
  mixed = np.concatenate([np.asarray(_cutmix(zeros, one_hot[k:k + B], _keys(B, k))[1])
                          for k in range(0, 64, B)])
  assert np.mean(np.count_nonzero(mixed, axis=1) == 2) > 0.5  # labels really are mixed
  expected = np.mean(mixed[np.arange(64), logits.argmax(-1)])
  np.testing.assert_allclose(step_lib.soft_accuracy(logits, mixed), expected, rtol=1e-6)
  # Predicting each example's own label earns its own share 1 − area/(H·W).
  own = np.eye(10, dtype=np.float32)[labels] * 10.
  np.testing.assert_allclose(step_lib.soft_accuracy(own, mixed),
                             np.mean(mixed[np.arange(64), labels]), rtol=1e-6)
