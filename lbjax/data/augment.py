"""On-device augmentation, run inside the pmapped train step.

``apply(batch, keys, mode=...)`` turns a uint8 batch into float32 images in [0, 1] (``/255``)
and one-hot float32 targets, then applies the ``'+'``-joined tokens of ``mode`` left to right:

=============  ==========================================================================
``none``       nothing beyond ``/255`` (seed 001 trains without preprocessing)
``normalize``  per-channel ``(x - mean) / std`` with the training set's statistics
``crop``       zero-pad 4 pixels on each side, then a random HxW window (the CIFAR recipe
               of He et al. 2016, torchvision ``RandomCrop(32, padding=4)``; before
               ``normalize`` the padding is black, after it the padding is the mean)
``flip``       horizontal flip with probability 1/2
``standard``   ``crop+flip+normalize``
=============  ==========================================================================

Seed 003's recipe adds ``trivialaugment`` (TrivialAugment Wide, one random op per image,
`lbjax.data.trivialaugment`) and ``cutmix`` (CutMix with probability 1 and λ ~ Beta(1, 1),
partners in aligned row pairs, `lbjax.data.cutmix`).

Ops that need pixel values (``pixel_values``: ``trivialaugment``) run before ``normalize`` even
when written after it, so ``standard+trivialaugment+cutmix`` is crop, flip, TrivialAugment,
normalize, CutMix (torchvision's CIFAR order; CutMix commutes with ``normalize``).

In evaluation (``train=False``) random tokens are skipped and only ``normalize`` applies.

Randomness comes only from each example's own key (``keys[i]``, which the train step derives
from the example's row in the global batch), so a batch gives identical results on 1 and N
devices. Each token folds a fixed salt (its name) into the key, so ``crop`` draws the same
offsets alone and inside ``standard``.

Extending: one entry in ``AUGMENTATIONS``. An op maps ``(images [b,H,W,C] float32, targets
[b,K] float32, keys [b], Context) -> (images, targets)``; a mixing op such as CutMix may change
the targets. A mixing op pairs examples only inside aligned groups of ``group_size`` rows of the
global batch, which never straddle a device when the per-device batch is a multiple of it
(`validate_batch`), so it too is independent of the device count.
"""

from collections.abc import Callable
import functools
from typing import Any, NamedTuple
import zlib

import jax
from jax import lax
import jax.numpy as jnp

from lbjax.data import cutmix
from lbjax.data import trivialaugment
from lbjax.errors import ConfigError

CROP_PADDING = 4


class Context(NamedTuple):
  """What ops may need besides the batch."""
  mean: jnp.ndarray  # float32 [C], [0, 1] units
  std: jnp.ndarray   # float32 [C]
  num_classes: int


class Augmentation(NamedTuple):
  fn: Callable[..., tuple[jnp.ndarray, jnp.ndarray]]  # (images, targets, keys, ctx)
  train_only: bool  # random ops are skipped in evaluation
  pixel_values: bool = False  # needs [0, 1] pixels: runs before ``normalize``
  group_size: int = 1  # mixes examples within aligned groups of this many global-batch rows


def _per_example(fn: Callable[[jnp.ndarray, Any], jnp.ndarray]) -> Callable:
  """Lifts ``fn(image [H,W,C], key) -> image`` to an op over the batch (targets unchanged)."""

  def op(images, targets, keys, ctx):
    del ctx
    return jax.vmap(fn)(images, keys), targets

  return op


def random_crop(image: jnp.ndarray, key, padding: int = CROP_PADDING) -> jnp.ndarray:
  """Zero-pads ``padding`` pixels per side and takes a uniformly random HxW window."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def random_flip(image: jnp.ndarray, key) -> jnp.ndarray:
  """Mirrors the width axis with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def _identity(images, targets, keys, ctx):
  del keys, ctx
  return images, targets


def _normalize(images, targets, keys, ctx):
  del keys
  return (images - ctx.mean) / ctx.std, targets


AUGMENTATIONS: dict[str, Augmentation] = {
    "none": Augmentation(_identity, train_only=False),
    "normalize": Augmentation(_normalize, train_only=False),
    "crop": Augmentation(_per_example(random_crop), train_only=True),
    "flip": Augmentation(_per_example(random_flip), train_only=True),
    "trivialaugment": Augmentation(trivialaugment.augment_batch, train_only=True,
                                   pixel_values=True),
    "cutmix": Augmentation(cutmix.cutmix, train_only=True, group_size=cutmix.GROUP_SIZE),
}

# Names that expand to several tokens.
ALIASES: dict[str, tuple[str, ...]] = {
    "standard": ("crop", "flip", "normalize"),
}


@functools.cache
def validate_mode(mode: str) -> tuple[str, ...]:
  """Checks ``config.augment`` and returns its tokens with aliases expanded, in the order they
  run (``pixel_values`` ops moved before ``normalize``).

  Raises:
    ConfigError: ``mode`` is not a ``'+'``-joined string of known tokens.
  """
  allowed = ", ".join(sorted([*AUGMENTATIONS, *ALIASES]))
  if not isinstance(mode, str) or not mode.strip():
    raise ConfigError("config.augment",
                      f"must be '+'-joined tokens, got {mode!r}; allowed tokens: {allowed}")
  tokens = []
  for token in (t.strip() for t in mode.split("+")):
    if token in ALIASES:
      tokens.extend(ALIASES[token])
    elif token in AUGMENTATIONS:
      tokens.append(token)
    else:
      raise ConfigError("config.augment",
                        f"unknown token {token!r} in {mode!r}; allowed tokens: {allowed}")
  if "normalize" in tokens:  # Pixel-value ops move to just before the first normalize.
    first = tokens.index("normalize")
    later = tokens[first:]
    tokens = (tokens[:first] + [t for t in later if AUGMENTATIONS[t].pixel_values]
              + [t for t in later if not AUGMENTATIONS[t].pixel_values])
  return tuple(tokens)


def straddling(mode: str, rows: int) -> tuple[str, int] | None:
  """``(token, group_size)`` of the first op of ``mode`` whose aligned groups of rows would
  straddle pieces of ``rows`` rows (a device's batch, a micro-batch, a half), else None."""
  for token in validate_mode(mode):
    group = AUGMENTATIONS[token].group_size
    if rows % group:
      return token, group
  return None


def validate_batch(mode: str, per_device_batch: int) -> None:
  """Checks that the per-device batch holds whole groups of every mixing op in ``mode``.

  Raises:
    ConfigError: (``config.batch_size``) it is not a multiple of an op's ``group_size``.
  """
  bad = straddling(mode, per_device_batch)
  if bad is not None:
    token, group = bad
    raise ConfigError("config.batch_size",
                      f"augment token {token!r} mixes examples within groups of {group} rows "
                      f"that must not straddle a device, so the per-device batch must be a "
                      f"multiple of {group}; got {per_device_batch} per device")


def _salt(token: str, occurrence: int) -> int:
  """A stable 31-bit salt per (token, n-th occurrence of it in the mode)."""
  return zlib.crc32(f"{token}/{occurrence}".encode()) & 0x7FFFFFFF


def apply(batch: dict[str, jnp.ndarray], keys, *, mode: str, num_classes: int, mean, std,
          train: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Augments one per-device batch.

  Args:
    batch: ``image`` uint8 [b, H, W, C] and ``label`` int [b].
    keys: per-example PRNG keys [b] (typed keys, or raw uint32 [b, 2]).
    mode: ``'+'``-joined tokens of ``AUGMENTATIONS`` / ``ALIASES`` (``config.augment``).
    num_classes: width of the one-hot targets.
    mean: per-channel mean [C] in [0, 1] units (``Dataset.mean``).
    std: per-channel standard deviation [C] (``Dataset.std``).
    train: False skips the random tokens (evaluation).

  Returns:
    ``(images float32 [b, H, W, C], targets float32 [b, num_classes])``.
  """
  tokens = validate_mode(mode)
  images = batch["image"].astype(jnp.float32) / 255.0
  targets = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
  ctx = Context(mean=jnp.asarray(mean, jnp.float32), std=jnp.asarray(std, jnp.float32),
                num_classes=num_classes)
  seen: dict[str, int] = {}
  for token in tokens:
    occurrence = seen[token] = seen.get(token, -1) + 1
    augmentation = AUGMENTATIONS[token]
    if augmentation.train_only and not train:
      continue
    salt = _salt(token, occurrence)
    op_keys = jax.vmap(lambda k, s=salt: jax.random.fold_in(k, s))(keys)
    images, targets = augmentation.fn(images, targets, op_keys, ctx)
  return images, targets
