"""Datasets as in-memory uint8 arrays.

A loader returns every split of a dataset as NumPy arrays
``{"image": uint8 [N, H, W, C], "label": int32 [N]}`` held in host memory; the
pipeline (`lbjax.data.pipeline`) gathers batches from them by index and the
augmentation (`lbjax.data.augment`) turns them into floats on device. Keeping
the raw uint8 pixels on the host is what makes the batch at any step a pure
function of ``(seed, step)``: no iterator state, no shuffle buffer.

Registry ``DATASETS``: name -> loader ``(data_dir) -> (train, test, num_classes)``.
`load` adds what is common to all of them: optional resizing, a seeded
validation split carved from train, and the per-channel mean/std.

* ``digits``: scikit-learn's embedded 1,797 real 8x8 handwritten digits (no
  download). Values 0..16 are scaled to 0..255. Fixed stratified split:
  1,437 train / 360 test (``train_test_split(test_size=360, stratify=y,
  random_state=0)``), the same on every machine; computed once per scikit-learn version and
  kept in ``~/.cache/lbjax`` (``$XDG_CACHE_HOME``), so a run does not import scikit-learn.
* ``cifar10``: TFDS ``cifar10`` (50,000 train / 10,000 test, 32x32x3) read from
  ``data_dir`` with ``download=False``; prepare it once with
  ``tfds build cifar10 --data_dir=DIR`` on a machine with internet access.
"""

from collections.abc import Callable
import functools
import os
import tempfile
from typing import NamedTuple

import numpy as np

from lbjax.errors import ConfigError

Split = dict[str, np.ndarray]


class Dataset(NamedTuple):
  """All splits of a dataset in host memory.

  Attributes:
    train: ``{"image": uint8 [N, H, W, C], "label": int32 [N]}``.
    test: as ``train``.
    validation: as ``train``, or None when ``validation_fraction == 0``.
    num_classes: number of labels; labels are in ``[0, num_classes)``.
    mean: float32 [C], per-channel mean of ``train`` in [0, 1] pixel units.
    std: float32 [C], per-channel standard deviation of ``train``, same units.
  """
  train: Split
  test: Split
  validation: Split | None
  num_classes: int
  mean: np.ndarray
  std: np.ndarray


def _split(image: np.ndarray, label: np.ndarray) -> Split:
  split = {"image": np.ascontiguousarray(image, np.uint8),
           "label": np.ascontiguousarray(label, np.int32)}
  for array in split.values():
    # Loaders are cached, so the arrays are shared between callers: freeze them.
    array.setflags(write=False)
  return split


# Fixed split of scikit-learn's digits: documented above, never change it (results depend on it).
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
_DIGITS_TRAIN_SIZE = 1797 - DIGITS_TEST_SIZE  # scikit-learn's 1797 images
_DIGITS_SHAPES = {"train_x": (_DIGITS_TRAIN_SIZE, 8, 8, 1), "train_y": (_DIGITS_TRAIN_SIZE,),
                  "test_x": (DIGITS_TEST_SIZE, 8, 8, 1), "test_y": (DIGITS_TEST_SIZE,)}


def digits_cache_path() -> str:
  """Where `_load_digits` keeps the split it computed: ``$XDG_CACHE_HOME/lbjax`` (else
  ``~/.cache/lbjax``), one file per scikit-learn version and split."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lbjax", f"digits-sklearn{metadata.version('scikit-learn')}"
                      f"-test{DIGITS_TEST_SIZE}-seed{DIGITS_SPLIT_SEED}.npz")


def _split_digits() -> dict[str, np.ndarray]:
  # pylint: disable=g-import-not-at-top
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection
  # pylint: enable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, digits.target, test_size=DIGITS_TEST_SIZE, stratify=digits.target,
      random_state=DIGITS_SPLIT_SEED)
  return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _cached_digits() -> dict[str, np.ndarray] | None:
  try:
    with np.load(digits_cache_path()) as f:
      arrays = {key: f[key] for key in _DIGITS_SHAPES}
  except (OSError, KeyError, ValueError, EOFError):  # missing, unreadable or truncated
    return None
  if any(arrays[key].shape != shape for key, shape in _DIGITS_SHAPES.items()):
    return None
  return arrays


@functools.cache
def _load_digits(data_dir: str | None) -> tuple[Split, Split, int]:
  """scikit-learn digits: 1,437 train / 360 test, 8x8x1, 10 classes.

  Importing scikit-learn (with SciPy) takes ~2.5 s, most of a short run's start-up, so the
  split is computed once per scikit-learn version and kept in `digits_cache_path` (written
  atomically; a missing, unreadable or malformed file is computed again; a cache directory that
  cannot be written only costs the import next time).
  """
  del data_dir  # Embedded in scikit-learn.
  arrays = _cached_digits()
  if arrays is None:
    arrays = _split_digits()
    path = digits_cache_path()
    temporary = None
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".npz",
                                       delete=False) as f:
        temporary = f.name
        np.savez(f, **arrays)
      os.replace(temporary, path)
    except OSError:
      if temporary is not None and os.path.exists(temporary):  # a full disk: leave no partial file
        os.unlink(temporary)
  return (_split(arrays["train_x"], arrays["train_y"]), _split(arrays["test_x"], arrays["test_y"]),
          10)


def _missing_cifar10(data_dir: str | None, detail: str = "") -> ConfigError:
  where = f"no prepared TFDS cifar10 in {data_dir!r}" if data_dir else "it is not set"
  return ConfigError(
      "config.data_dir",
      f"CIFAR-10 needs a TFDS data_dir, and {where}. Run `tfds build cifar10 --data_dir=DIR` on a "
      f"machine with internet access, copy DIR here and pass --config.data_dir=DIR"
      + (f" ({detail})" if detail else ""))


@functools.cache
def _load_cifar10(data_dir: str | None) -> tuple[Split, Split, int]:
  """TFDS cifar10 from ``data_dir`` (never downloads): 50,000 / 10,000, 32x32x3."""
  if not data_dir:
    raise _missing_cifar10(data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not (tfds.core.Path(data_dir) / "cifar10").exists():
    # Said before TFDS looks: for a directory without cifar10 it logs a warning line of its own
    # ("Variant folder ... has no dataset_info.json") before failing; this error is the one line.
    raise _missing_cifar10(data_dir)
  try:
    train, test = tfds.as_numpy(tfds.load(
        "cifar10", split=["train", "test"], data_dir=data_dir, batch_size=-1,
        as_supervised=False, download=False))
  except (AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError) as e:
    # TFDS reports a missing prepared dataset with an AssertionError ("could not find data").
    raise _missing_cifar10(data_dir, str(e).splitlines()[0] if str(e) else type(e).__name__
                           ) from e
  return _split(train["image"], train["label"]), _split(test["image"], test["label"]), 10


DATASETS: dict[str, Callable[[str | None], tuple[Split, Split, int]]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar10,
}


def resize(images: np.ndarray, image_size: int, chunk: int = 4096) -> np.ndarray:
  """Bilinear resize of uint8 [N, H, W, C] to [N, S, S, C] (antialiased when shrinking)."""
  import jax  # pylint: disable=g-import-not-at-top
  n, _, _, c = images.shape
  shape = (image_size, image_size, c)

  @jax.jit
  def _resize(x):
    y = jax.image.resize(x.astype(np.float32), (x.shape[0], *shape), method="bilinear")
    return jax.numpy.clip(jax.numpy.round(y), 0, 255).astype(np.uint8)

  out = np.empty((n, *shape), np.uint8)
  for start in range(0, n, chunk):  # Bounded float32 memory for large datasets.
    out[start:start + chunk] = np.asarray(_resize(images[start:start + chunk]))
  return out


@functools.lru_cache(maxsize=8)
def _resized(name: str, data_dir: str | None, image_size: int | None
             ) -> tuple[Split, Split, int]:
  train, test, num_classes = DATASETS[name](data_dir)
  if image_size is None or image_size == train["image"].shape[1] == train["image"].shape[2]:
    return train, test, num_classes
  return (_split(resize(train["image"], image_size), train["label"]),
          _split(resize(test["image"], image_size), test["label"]), num_classes)


def mean_std(images: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of uint8 NHWC images, in [0, 1] units."""
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  for start in range(0, len(images), chunk):  # float64 copies of one chunk at a time.
    x = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
    total += x.sum(0)
    total_sq += np.square(x).sum(0)
  count = images.size // channels
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return (mean / 255.0).astype(np.float32), (std / 255.0).astype(np.float32)


def _take(split: Split, indices: np.ndarray) -> Split:
  return _split(split["image"][indices], split["label"][indices])


def load(name: str, *, data_dir: str | None = None, image_size: int | None = None,
         validation_fraction: float = 0.0, seed: int = 0) -> Dataset:
  """Loads dataset ``name`` into host memory.

  Args:
    name: a key of ``DATASETS`` (``config.dataset``).
    data_dir: TFDS data directory (``config.data_dir``); required by ``cifar10``.
    image_size: None keeps the native resolution; an int resizes every split once to
      ``image_size x image_size`` with bilinear interpolation (``config.image_size``).
    validation_fraction: ``f`` in [0, 1). With ``f > 0`` the last ``round(f * N)`` examples of
      ``np.random.default_rng(seed).permutation(N)`` of the train split become ``validation``
      and are removed from ``train`` (deterministic in ``seed``, disjoint).
    seed: seeds the validation split.

  Returns:
    A `Dataset`; ``mean``/``std`` are computed from the returned ``train`` split.

  Raises:
    ConfigError: unknown ``name`` (``config.dataset``), bad ``image_size`` or
      ``validation_fraction``, or CIFAR-10 not found in ``data_dir`` (``config.data_dir``).
  """
  if name not in DATASETS:
    raise ConfigError("config.dataset",
                      f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
  if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                 or image_size <= 0):
    raise ConfigError("config.image_size", f"must be None or a positive int, got {image_size!r}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ConfigError("config.validation_fraction",
                      f"must be in [0, 1), got {validation_fraction!r}")
  train, test, num_classes = _resized(name, data_dir, image_size)

  validation = None
  num_validation = round(validation_fraction * len(train["label"]))
  if num_validation > 0:
    if num_validation >= len(train["label"]):
      raise ConfigError("config.validation_fraction",
                        f"{validation_fraction} leaves no training examples")
    order = np.random.default_rng(seed).permutation(len(train["label"]))
    validation = _take(train, np.sort(order[-num_validation:]))
    train = _take(train, np.sort(order[:-num_validation]))

  mean, std = mean_std(train["image"])
  return Dataset(train=train, test=test, validation=validation, num_classes=num_classes,
                 mean=mean, std=std)
