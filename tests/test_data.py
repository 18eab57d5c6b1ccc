"""Tests of lbjax.data: datasets, the global example stream, eval batches and augmentation."""

import functools
import os

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from lbjax import config_lib
from lbjax import mesh as mesh_lib
from lbjax.data import augment
from lbjax.data import datasets
from lbjax.data import pipeline
from lbjax.errors import ConfigError

# ----------------------------------------------------------------------------- datasets


def test_digits_shapes_dtypes_and_split_sizes():
  data = datasets.load("digits")
  assert data.train["image"].shape == (1437, 8, 8, 1)
  assert data.test["image"].shape == (360, 8, 8, 1)
  assert data.validation is None
  for split in (data.train, data.test):
    assert split["image"].dtype == np.uint8 and split["label"].dtype == np.int32
    assert np.array_equal(np.unique(split["label"]), np.arange(10))  # stratified: all classes
  assert data.num_classes == 10
  assert data.train["image"].min() == 0 and data.train["image"].max() == 255
  assert data.mean.dtype == np.float32 and data.mean.shape == (1,) and data.std.shape == (1,)
  x = data.train["image"].astype(np.float64) / 255
  np.testing.assert_allclose(data.mean, [x.mean()], rtol=1e-6)
  np.testing.assert_allclose(data.std, [x.std()], rtol=1e-5)


def test_digits_split_is_fixed():
  first = datasets.load("digits")
  datasets._load_digits.cache_clear()
  datasets._resized.cache_clear()
  second = datasets.load("digits", seed=123)  # the seed only drives the validation split
  for name in ("train", "test"):
    for key in ("image", "label"):
      np.testing.assert_array_equal(getattr(first, name)[key], getattr(second, name)[key])


def _fresh_digits():
  datasets._load_digits.cache_clear()
  return datasets._load_digits(None)


def test_digits_cache_holds_scikit_learns_split_and_recovers(tmp_path, monkeypatch):
  """The cached split is scikit-learn's stratified split; a later load reads it without
  scikit-learn; a malformed file is computed again; an unwritable cache costs nothing else."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  path = datasets.digits_cache_path()
  assert path.startswith(str(tmp_path / "cache" / "lbjax")) and not os.path.exists(path)
  reference = datasets._split_digits()
  assert reference["train_x"].shape == (1437, 8, 8, 1)
  train, test, _ = _fresh_digits()
  assert os.path.exists(path)
  for split, x, y in ((train, "train_x", "train_y"), (test, "test_x", "test_y")):
    np.testing.assert_array_equal(split["image"], reference[x])
    np.testing.assert_array_equal(split["label"], reference[y])

  def no_sklearn():
    raise AssertionError("computed again although the cache holds the split")

  with monkeypatch.context() as m:
    m.setattr(datasets, "_split_digits", no_sklearn)
    np.testing.assert_array_equal(_fresh_digits()[0]["image"], reference["train_x"])

  for bad in (b"not an npz", None):  # garbage; a valid npz of the wrong shapes
    if bad is None:
      np.savez(path, train_x=np.zeros((3, 8, 8, 1), np.uint8), train_y=np.zeros(3),
               test_x=np.zeros((1, 8, 8, 1), np.uint8), test_y=np.zeros(1))
    else:
      with open(path, "wb") as f:
        f.write(bad)
    np.testing.assert_array_equal(_fresh_digits()[1]["label"], reference["test_y"])
    with np.load(path) as f:  # rewritten
      np.testing.assert_array_equal(f["test_x"], reference["test_x"])

  blocked = tmp_path / "blocked"
  blocked.write_text("a file where the cache directory would be")
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
  np.testing.assert_array_equal(_fresh_digits()[0]["label"], reference["train_y"])
  datasets._load_digits.cache_clear()


def test_digits_resize():
  native = datasets.load("digits")
  data = datasets.load("digits", image_size=32)
  assert data.train["image"].shape == (1437, 32, 32, 1) and data.train["image"].dtype == np.uint8
  assert data.test["image"].shape == (360, 32, 32, 1)
  np.testing.assert_array_equal(data.train["label"], native.train["label"])
  # Bilinear upsampling keeps each image's mean brightness.
  np.testing.assert_allclose(data.train["image"].mean((1, 2, 3)),
                             native.train["image"].mean((1, 2, 3)), atol=12)


def _rows(split):
  return sorted(map(bytes, split["image"].reshape(len(split["image"]), -1)))


def test_validation_split_is_seeded_and_disjoint():
  full = datasets.load("digits")
  data = datasets.load("digits", validation_fraction=0.1, seed=3)
  assert len(data.validation["label"]) == round(0.1 * 1437) == 144
  assert len(data.train["label"]) == 1437 - 144
  # Together exactly the original train split (as a multiset of images).
  assert _rows(full.train) == sorted(_rows(data.train) + _rows(data.validation))
  again = datasets.load("digits", validation_fraction=0.1, seed=3)
  np.testing.assert_array_equal(again.validation["image"], data.validation["image"])
  other = datasets.load("digits", validation_fraction=0.1, seed=4)
  assert not np.array_equal(other.validation["image"], data.validation["image"])


@pytest.mark.parametrize("kwargs, key", [
    ({"name": "imagenet"}, "config.dataset"),
    ({"name": "digits", "image_size": 0}, "config.image_size"),
    ({"name": "digits", "validation_fraction": 1.0}, "config.validation_fraction"),
])
def test_load_errors_name_the_key(kwargs, key):
  with pytest.raises(ConfigError, match=key) as e:
    datasets.load(**kwargs)
  assert e.value.key == key
  if key == "config.dataset":
    assert "cifar10" in str(e.value) and "digits" in str(e.value)


def _write_cifar10_metadata(data_dir):
  """The dataset_info.json TFDS reads for the split sizes (``batch_size=-1`` needs them)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("cifar10", data_dir=data_dir)
  splits = []
  for name, n in (("train", 20), ("test", 20)):
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name="cifar10",
                                             split=name, filetype_suffix="tfrecord")
    splits.append(tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def test_cifar10_through_tfds(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path)
  _write_cifar10_metadata(data_dir)
  with tfds.testing.mock_data(num_examples=20, data_dir=data_dir):
    data = datasets.load("cifar10", data_dir=data_dir, validation_fraction=0.25)
  assert data.num_classes == 10
  assert data.train["image"].shape == (15, 32, 32, 3) and data.train["image"].dtype == np.uint8
  assert data.validation["image"].shape == (5, 32, 32, 3)
  assert data.test["image"].shape == (20, 32, 32, 3)
  for split in (data.train, data.test, data.validation):
    assert split["label"].dtype == np.int32
    assert split["label"].min() >= 0 and split["label"].max() < 10
  assert data.mean.shape == data.std.shape == (3,)
  assert np.all((data.mean > 0) & (data.mean < 1) & (data.std > 0))


def test_cifar10_needs_data_dir(tmp_path):
  with pytest.raises(ConfigError, match="config.data_dir") as e:
    datasets.load("cifar10")
  assert "tfds build cifar10" in str(e.value)
  with pytest.raises(ConfigError, match="config.data_dir") as e:
    datasets.load("cifar10", data_dir=str(tmp_path))  # exists, but nothing prepared in it
  assert str(tmp_path) in str(e.value)


# ----------------------------------------------------------------------------- stream


def _split(n, size=2):
  """A split whose example i has label i and every pixel i (so images identify examples)."""
  return {"image": np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                                   (n, size, size, 1)).copy(),
          "label": np.arange(n, dtype=np.int32)}


def test_steps_per_epoch():
  assert config_lib.steps_per_epoch(1000, 100) == 10
  assert config_lib.steps_per_epoch(100, 400) == 0.25


@pytest.mark.parametrize("n, b", [(12, 4), (10, 4), (7, 3)])
def test_every_example_once_per_epoch(n, b):
  steps = 3 * n  # at least 3 epochs of positions
  stream = np.concatenate([pipeline.global_batch_indices(s, b, n, seed=0) for s in range(steps)])
  assert stream.dtype == np.int64
  epochs = [stream[e * n:(e + 1) * n] for e in range(len(stream) // n)]
  for e, perm in enumerate(epochs):
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    np.testing.assert_array_equal(perm, np.random.default_rng([0, e]).permutation(n))
  assert not np.array_equal(epochs[0], epochs[1])


def test_batch_larger_than_dataset():
  n, b = 10, 25
  batch = pipeline.global_batch_indices(0, b, n, seed=1)
  assert batch.shape == (25,)
  np.testing.assert_array_equal(np.bincount(batch[:20], minlength=n), np.full(n, 2))
  step1 = pipeline.global_batch_indices(1, b, n, seed=1)  # positions 25..49: epochs 2..4
  np.testing.assert_array_equal(step1[5:15], np.random.default_rng([1, 3]).permutation(n))


def test_batch_is_a_pure_function_of_seed_and_step():
  a = pipeline.global_batch_indices(17, 8, 50, seed=5)
  pipeline._permutation.cache_clear()
  np.testing.assert_array_equal(a, pipeline.global_batch_indices(17, 8, 50, seed=5))
  assert not np.array_equal(a, pipeline.global_batch_indices(17, 8, 50, seed=6))
  assert not np.array_equal(a, pipeline.global_batch_indices(18, 8, 50, seed=5))


def test_host_shards_and_device_reshape_match_one_process():
  split = _split(10)
  kwargs = {"batch_size": 8, "seed": 2}
  for step in (0, 1, 5):
    whole = pipeline.train_batch(split, step, **kwargs)
    assert whole["image"].shape == (1, 8, 2, 2, 1) and whole["image"].dtype == np.uint8
    assert whole["label"].dtype == np.int32 and whole["position"].dtype == np.int32
    np.testing.assert_array_equal(whole["label"][0],
                                  pipeline.global_batch_indices(step, 8, 10, seed=2))
    np.testing.assert_array_equal(whole["position"][0], np.arange(8))
    np.testing.assert_array_equal(whole["image"][0, :, 0, 0, 0], whole["label"][0])

    hosts = [pipeline.train_batch(split, step, process_index=p, process_count=2,
                                  local_device_count=2, **kwargs) for p in range(2)]
    for key in ("image", "label", "position"):
      assert hosts[0][key].shape[:2] == (2, 2)
      joined = np.concatenate([h[key].reshape(-1, *h[key].shape[2:]) for h in hosts])
      np.testing.assert_array_equal(joined, whole[key][0])
    np.testing.assert_array_equal(hosts[1]["position"], [[4, 5], [6, 7]])

    devices = pipeline.train_batch(split, step, local_device_count=4, **kwargs)
    np.testing.assert_array_equal(devices["label"], whole["label"].reshape(4, 2))


def test_batch_size_must_divide_over_devices():
  with pytest.raises(ConfigError, match="config.batch_size") as e:
    pipeline.train_batch(_split(10), 0, batch_size=6, seed=0, local_device_count=4)
  assert "4 devices" in str(e.value)
  with pytest.raises(ConfigError, match="config.eval_batch_size"):
    next(pipeline.eval_batches(_split(10), batch_size=6, process_count=2, local_device_count=2))


def test_eval_batches_cover_every_example_once():
  n, b = 10, 8
  split = _split(n)
  per_host = [list(pipeline.eval_batches(split, batch_size=b, process_index=p, process_count=2,
                                         local_device_count=2)) for p in range(2)]
  assert len(per_host[0]) == len(per_host[1]) == 2  # same count on every host
  seen, padding = [], 0
  for batches in per_host:
    for batch in batches:
      assert batch["mask"].shape == batch["label"].shape == (2, 2)
      assert batch["mask"].dtype == np.float32 and batch["image"].shape == (2, 2, 2, 2, 1)
      real = batch["mask"] == 1
      seen.extend(batch["label"][real])
      np.testing.assert_array_equal(batch["image"][..., 0, 0, 0][real], batch["label"][real])
      assert np.all(batch["image"][~real] == 0)
      padding += int(np.sum(~real))
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  assert padding == 2 * b - n
  one_host = list(pipeline.eval_batches(split, batch_size=b))
  np.testing.assert_array_equal(np.concatenate([x["label"][0] for x in one_host])[:n],
                                np.arange(n))


def test_put_batches_feeds_a_data_parallel_program():
  mesh = mesh_lib.data_mesh(jax.local_devices())
  d = mesh_lib.local_device_count(mesh)
  batches = [pipeline.train_batch(_split(10), s, batch_size=2 * d, seed=0, local_device_count=d)
             for s in range(3)]
  rows = P(mesh_lib.AXIS)
  step = mesh_lib.data_parallel(lambda b: b["label"] * 10 + b["position"], mesh,
                                in_specs=(rows,), out_specs=rows)
  out = [step(b) for b in mesh_lib.put_batches(iter(batches), mesh, size=2)]
  assert len(out) == 3
  for got, batch in zip(out, batches):
    expected = batch["label"] * 10 + batch["position"]  # [devices, 2]
    np.testing.assert_array_equal(np.asarray(got), expected.reshape(-1))
    for shard in got.addressable_shards:  # device i holds its host rows [2i, 2i + 2)
      i = list(mesh.devices.flat).index(shard.device)
      np.testing.assert_array_equal(np.asarray(shard.data), expected[i])


# ----------------------------------------------------------------------------- augment


def _images(b=16, h=6, w=5, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, c), dtype=np.uint8)


def _pixels(x):
  """Float images in [0, 1] back to uint8 (exact: XLA's /255 may differ from NumPy's by 1 ulp)."""
  return np.round(np.asarray(x) * 255).astype(np.uint8)


def _apply(images, mode, train=True, seed=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
  batch = {"image": images, "label": np.arange(len(images), dtype=np.int32) % 10}
  keys = jax.random.split(jax.random.PRNGKey(seed), len(images))
  out, targets = _jit_apply(batch, keys, np.float32(mean), np.float32(std), mode=mode,
                            train=train)
  return np.asarray(out), np.asarray(targets)


@functools.partial(jax.jit, static_argnames=("mode", "train"))
def _jit_apply(batch, keys, mean, std, *, mode, train):
  return augment.apply(batch, keys, mode=mode, num_classes=10, mean=mean, std=std, train=train)


def test_crop_is_a_window_of_the_zero_padded_image():
  images = _images()
  out, targets = _apply(images, "crop")
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_array_equal(targets, np.eye(10, dtype=np.float32)[np.arange(16) % 10])
  p = augment.CROP_PADDING
  padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  out = _pixels(out)
  offsets = set()
  for i in range(len(images)):
    matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
               if np.array_equal(out[i], padded[i, dy:dy + 6, dx:dx + 5])]
    assert len(matches) == 1, i
    offsets.add(matches[0])
  assert len(offsets) > 3  # the offsets are random


def test_flip_is_np_flip_or_identity():
  images = _images()
  out = _pixels(_apply(images, "flip")[0])
  flipped = [bool(np.array_equal(out[i], np.flip(images[i], axis=1))) for i in range(16)]
  kept = [bool(np.array_equal(out[i], images[i])) for i in range(16)]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 0 < sum(flipped) < 16


@pytest.mark.parametrize("train", [True, False])
def test_normalize_matches_numpy(train):
  images = _images()
  mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
  out, _ = _apply(images, "normalize", train=train, mean=mean, std=std)
  expected = (images / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
  none, _ = _apply(images, "none", train=train)
  np.testing.assert_allclose(none, images / 255.0, atol=1e-7, rtol=0)


def test_same_key_same_output_and_eval_is_deterministic():
  images = _images()
  a, _ = _apply(images, "standard", seed=1)
  np.testing.assert_array_equal(a, _apply(images, "standard", seed=1)[0])
  assert not np.array_equal(a, _apply(images, "standard", seed=2)[0])
  # standard == crop, then flip, then normalize, each with its own token's randomness.
  cropped = _pixels(_apply(images, "crop", seed=1)[0])
  flipped = np.any(_pixels(_apply(images, "flip", seed=1)[0]) != images, axis=(1, 2, 3))
  expected = np.where(flipped[:, None, None, None], np.flip(cropped, axis=2), cropped)
  np.testing.assert_array_equal(_pixels(_apply(images, "crop+flip", seed=1)[0]), expected)
  mean, std = np.float32([0.4, 0.5, 0.6]), np.float32([0.2, 0.3, 0.25])
  np.testing.assert_allclose(_apply(images, "standard", seed=1, mean=mean, std=std)[0],
                             (expected / 255.0 - mean) / std, atol=1e-5)
  evals = [_apply(images, "standard", train=False, seed=s)[0] for s in (1, 2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  np.testing.assert_array_equal(evals[0], _apply(images, "normalize", train=False)[0])


def test_same_result_on_one_and_four_devices():
  d = jax.local_device_count()
  images = _images(b=2 * d)
  labels = np.arange(2 * d, dtype=np.int32)
  positions = np.arange(2 * d, dtype=np.int32)
  kw = {"mode": "standard", "num_classes": 10, "mean": np.full(3, 0.5, np.float32),
            "std": np.full(3, 0.25, np.float32), "train": True}

  def step(image, label, position):
    step_key = jax.random.fold_in(jax.random.PRNGKey(0), 7)
    keys = jax.vmap(lambda q: jax.random.fold_in(step_key, q))(position)
    return augment.apply({"image": image, "label": label}, keys, **kw)[0]

  one = jax.jit(step)(images, labels, positions)
  mesh = mesh_lib.data_mesh(jax.local_devices())
  rows = P(mesh_lib.AXIS)
  many = mesh_lib.data_parallel(step, mesh, in_specs=(rows, rows, rows), out_specs=rows)(
      *mesh_lib.put_batch((images.reshape(d, 2, 6, 5, 3), labels.reshape(d, 2),
                           positions.reshape(d, 2)), mesh))
  assert many.shape == one.shape
  np.testing.assert_array_equal(np.asarray(many), one)


def test_validate_mode():
  assert augment.validate_mode("standard") == ("crop", "flip", "normalize")
  assert augment.validate_mode("crop + flip") == ("crop", "flip")
  assert augment.validate_mode("none") == ("none",)
  for bad in ("crop+blur", "", "crop+"):
    with pytest.raises(ConfigError, match="config.augment") as e:
      augment.validate_mode(bad)
    assert "standard" in str(e.value) and "normalize" in str(e.value)
  with pytest.raises(ConfigError, match="config.augment"):
    _apply(_images(b=2), "cutout")
