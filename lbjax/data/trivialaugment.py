"""TrivialAugment Wide (Müller & Hutter 2021) on device, as torchvision's ``TrivialAugmentWide``.

Seed 003 §2.3/§3 adds TrivialAugment to the CIFAR-10 recipe (Table 1: 93.99 → 94.51 % with
ResNet-56) because it has no hyperparameters to tune. For every image independently:

  op ~ U(OPS),  bin ~ U{0, ..., 30},  s ~ U{-1, +1} (signed ops only),
  image ← op(image, s · OPS[op].magnitudes[bin]).

The op set, the 31 magnitude bins and each op's semantics are torchvision's
(``transforms/autoaugment.py:TrivialAugmentWide`` on PIL images, nearest resampling, fill 0):

==============  ========================  ===================================================
op              magnitudes (31 bins)      PIL reference
==============  ========================  ===================================================
Identity        —                         —
ShearX/Y        ±linspace(0, 0.99)        ``transform(AFFINE)``: x ← x + m·y  /  y ← m·x + y
TranslateX/Y    ±linspace(0, 32) pixels   ``transform(AFFINE)``: x ← x − int(m)  /  y ← y − int(m)
Rotate          ±linspace(0, 135) degrees ``rotate(m, NEAREST)`` about the image centre
Brightness      ±linspace(0, 0.99)        ``ImageEnhance.Brightness(img).enhance(1 + m)``
Color           ±linspace(0, 0.99)        ``ImageEnhance.Color``  (blend with the ``L`` image)
Contrast        ±linspace(0, 0.99)        ``ImageEnhance.Contrast`` (blend with the mean of ``L``)
Sharpness       ±linspace(0, 0.99)        ``ImageEnhance.Sharpness`` (blend with ``SMOOTH``)
Posterize       8 − round(bin / 5) bits   ``ImageOps.posterize``
Solarize        linspace(255, 0)          ``ImageOps.solarize``
AutoContrast    —                         ``ImageOps.autocontrast``
Equalize        —                         ``ImageOps.equalize``
==============  ========================  ===================================================

Pixel convention: an op maps one image, float32 [H, W, C] (C = 1 or 3) holding integers in
0..255, to the same; every op ends in PIL's own rounding (``floor`` for blends and ``int()``,
round-to-nearest for the ``SMOOTH`` filter), so the result stays on the uint8 grid and the next
op in a pipeline sees what PIL would. ``augment_batch`` adapts this to ``lbjax.data.augment``'s
[0, 1] images. Under ``vmap`` the ``lax.switch`` over ops evaluates every op and selects, which
is cheap for small images and keeps the whole thing one fused, shape-static computation.

The geometric ops share one warp, ``dm_pix.affine_transform(order=0, mode="constant")``, with
PIL's convention that output pixel (x, y) samples input ``floor(A · (x + ½, y + ½) + t)``.
What dm-pix has no PIL-exact equivalent for (its brightness is additive, contrast per-channel,
saturation through HSV) is written here in a few lines each.

Agreement with PIL on real digits (``tests/test_trivialaugment.py``): posterize, solarize,
equalize exact; geometry exact except where a sample point lies within 1e-4 px of a pixel edge
(float32 here, float64 there); blends at most 1 level off on at most 0.1 % of pixels (XLA fuses
the blend's multiply-add, PIL rounds twice); autocontrast is the exact integer floor, which PIL's
float64 arithmetic misses by one now and then.

References:
  Müller & Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation",
  ICCV 2021, arXiv:2103.10158.
"""

from collections.abc import Callable
from typing import NamedTuple

import dm_pix as pix
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 31


def _linspace(start: float, end: float) -> np.ndarray:
  """torchvision's ``torch.linspace(start, end, 31)`` bins, float32."""
  return np.linspace(start, end, NUM_BINS).astype(np.float32)


# ----------------------------------------------------------------------------- geometry


def _affine(image: jnp.ndarray, a, b, c, d, e, f) -> jnp.ndarray:
  """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST, fillcolor=0)``.

  Output pixel (x, y) takes input pixel ``(floor(a·(x+½) + b·(y+½) + c), floor(d·(x+½) +
  e·(y+½) + f))`` (0 outside). dm-pix's nearest sampling rounds ``coordinate`` half away from
  zero, so it is handed ``coordinate − ½``; both then pick the same pixel except for a sample
  landing exactly on the input's top or left edge (coordinate exactly 0), which PIL keeps and
  ``map_coordinates`` drops.
  """
  # dm-pix indexes (row, column, channel) = (y, x, c).
  matrix = jnp.array([[e, d, 0.], [b, a, 0.], [0., 0., 1.]], jnp.float32)
  offset = jnp.stack([0.5 * (d + e) + f - 0.5, 0.5 * (a + b) + c - 0.5, 0.])
  return pix.affine_transform(image, matrix, offset=offset, order=0, mode="constant", cval=0.)


def shear_x(image, magnitude):
  """torchvision ``affine(shear=(degrees(atan(m)), 0), center=(0, 0))``: x_in = x + m·y."""
  return _affine(image, 1., magnitude, 0., 0., 1., 0.)


def shear_y(image, magnitude):
  """torchvision ``affine(shear=(0, degrees(atan(m))), center=(0, 0))``: y_in = m·x + y."""
  return _affine(image, 1., 0., 0., magnitude, 1., 0.)


def translate_x(image, magnitude):
  """Shift right by ``int(m)`` pixels (torchvision truncates the magnitude)."""
  return _affine(image, 1., 0., -jnp.trunc(magnitude), 0., 1., 0.)


def translate_y(image, magnitude):
  """Shift down by ``int(m)`` pixels."""
  return _affine(image, 1., 0., 0., 0., 1., -jnp.trunc(magnitude))


def rotate(image, degrees):
  """PIL ``Image.rotate(degrees, NEAREST)``: counter-clockwise about ``(W/2, H/2)``."""
  h, w = image.shape[:2]
  theta = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = w / 2, h / 2
  return _affine(image, cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


# ----------------------------------------------------------------------------- colour


def _gray(image: jnp.ndarray) -> jnp.ndarray:
  """PIL ``convert("L")`` as [H, W, 1]: ITU-R 601-2 luma in 16-bit fixed point, rounded."""
  if image.shape[-1] == 1:
    return image
  if image.shape[-1] != 3:
    raise ValueError(f"TrivialAugment needs 1 or 3 channels, got {image.shape[-1]}")
  r, g, b = jnp.moveaxis(image.astype(jnp.int32), -1, 0)
  return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(image.dtype)[..., None]


def _blend(degenerate, image, factor):
  """PIL ``Image.blend(degenerate, image, factor)`` on uint8: clip to [0, 255], then truncate."""
  return jnp.floor(jnp.clip(degenerate + factor * (image - degenerate), 0., 255.))


def brightness(image, magnitude):
  """``ImageEnhance.Brightness``: blend with black, factor 1 + m."""
  return _blend(jnp.zeros_like(image), image, 1. + magnitude)


def color(image, magnitude):
  """``ImageEnhance.Color`` (saturation): blend with the image's ``L`` version."""
  return _blend(_gray(image), image, 1. + magnitude)


def contrast(image, magnitude):
  """``ImageEnhance.Contrast``: blend with the constant ``int(mean(L) + ½)``."""
  gray = _gray(image).astype(jnp.int32)
  count = gray.size
  mean = (2 * jnp.sum(gray) + count) // (2 * count)  # int(sum / count + 0.5), exactly
  return _blend(mean.astype(image.dtype), image, 1. + magnitude)


def _smooth(image):
  """PIL ``ImageFilter.SMOOTH``: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded; the
  one-pixel border is copied unchanged."""
  h, w = image.shape[:2]
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)))
  total = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) + 4 * image
  smooth = jnp.floor(total / 13. + 0.5)
  rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return jnp.where(inner, smooth, image)


def sharpness(image, magnitude):
  """``ImageEnhance.Sharpness``: blend with the ``SMOOTH``-filtered image."""
  return _blend(_smooth(image), image, 1. + magnitude)


# ----------------------------------------------------------------------------- lookup tables


def posterize(image, bits):
  """``ImageOps.posterize``: keep the top ``bits`` bits of every value."""
  mask = 256 - jnp.left_shift(1, 8 - jnp.asarray(bits).astype(jnp.int32))
  return jnp.bitwise_and(image.astype(jnp.int32), mask).astype(image.dtype)


def solarize(image, threshold):
  """``ImageOps.solarize``: invert every value at or above ``threshold``."""
  return jnp.where(image < threshold, image, 255. - image)


def autocontrast(image, magnitude=None):
  """``ImageOps.autocontrast`` (cutoff 0): per channel, stretch [lo, hi] to [0, 255] as
  ``⌊(v − lo) · 255 / (hi − lo)⌋`` in exact integers; a constant channel is left alone.

  PIL evaluates ``int(v · s − lo · s)`` with ``s = 255 / (hi − lo)`` in float64, which lands
  just below the exact value now and then when that value is an integer, and then gives one
  less; the exact floor is the intended map.
  """
  del magnitude
  values = image.astype(jnp.int32)
  lo = jnp.min(values, axis=(0, 1))
  hi = jnp.max(values, axis=(0, 1))
  stretched = (values - lo) * 255 // jnp.maximum(hi - lo, 1)
  return jnp.where(hi > lo, stretched, values).astype(image.dtype)


def _equalize_channel(channel):
  """``ImageOps.equalize`` of one channel [H, W] (PIL's integer recipe)."""
  values = channel.astype(jnp.int32)
  histogram = jnp.bincount(values.ravel(), length=256)
  # PIL: step = (N − count of the largest value present) // 255; lut[i] = (step // 2 +
  # sum(histogram[:i])) // step; identity when step is 0 or only one value is present.
  count_of_max = histogram[jnp.max(values)]
  step = (values.size - count_of_max) // 255
  below = jnp.cumsum(histogram) - histogram
  lut = (jnp.maximum(step, 1) // 2 + below) // jnp.maximum(step, 1)
  equalized = jnp.clip(lut[values], 0, 255)
  return jnp.where(step > 0, equalized, values).astype(channel.dtype)


def equalize(image, magnitude=None):
  """``ImageOps.equalize``: per channel, map values through the normalised cumulative
  histogram."""
  del magnitude
  return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(image)


def identity(image, magnitude=None):
  del magnitude
  return image


# ----------------------------------------------------------------------------- the policy


class Op(NamedTuple):
  fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # (image 0..255 [H,W,C], magnitude)
  magnitudes: np.ndarray  # float32 [NUM_BINS]
  signed: bool  # the magnitude's sign is flipped with probability 1/2


_NONE = np.zeros(NUM_BINS, np.float32)
_UNIT = _linspace(0., 0.99)

# torchvision's TrivialAugmentWide._augmentation_space(31), in its order.
OPS: dict[str, Op] = {
    "Identity": Op(identity, _NONE, False),
    "ShearX": Op(shear_x, _UNIT, True),
    "ShearY": Op(shear_y, _UNIT, True),
    "TranslateX": Op(translate_x, _linspace(0., 32.), True),
    "TranslateY": Op(translate_y, _linspace(0., 32.), True),
    "Rotate": Op(rotate, _linspace(0., 135.), True),
    "Brightness": Op(brightness, _UNIT, True),
    "Color": Op(color, _UNIT, True),
    "Contrast": Op(contrast, _UNIT, True),
    "Sharpness": Op(sharpness, _UNIT, True),
    "Posterize": Op(posterize, (8 - np.round(np.arange(NUM_BINS) / ((NUM_BINS - 1) / 6))
                                ).astype(np.float32), False),
    "Solarize": Op(solarize, _linspace(255., 0.), False),
    "AutoContrast": Op(autocontrast, _NONE, False),
    "Equalize": Op(equalize, _NONE, False),
}

_MAGNITUDES = np.stack([op.magnitudes for op in OPS.values()])  # [ops, bins]
_SIGNED = np.array([op.signed for op in OPS.values()])


class Draw(NamedTuple):
  op: jnp.ndarray         # int32 index into OPS
  magnitude: jnp.ndarray  # float32, signed


def draw(key) -> Draw:
  """One op uniformly, one of the 31 bins uniformly, and a random sign for signed ops."""
  op_key, bin_key, sign_key = jax.random.split(key, 3)
  op = jax.random.randint(op_key, (), 0, len(OPS))
  magnitude = jnp.asarray(_MAGNITUDES)[op, jax.random.randint(bin_key, (), 0, NUM_BINS)]
  negate = jax.random.bernoulli(sign_key) & jnp.asarray(_SIGNED)[op]
  return Draw(op, jnp.where(negate, -magnitude, magnitude))


def trivial_augment(image: jnp.ndarray, key) -> jnp.ndarray:
  """One TrivialAugment Wide draw applied to one image, float32 [H, W, C] in 0..255."""
  d = draw(key)
  return lax.switch(d.op, [op.fn for op in OPS.values()], image, d.magnitude)


def augment_batch(images, targets, keys, ctx):
  """``lbjax.data.augment`` op: images in [0, 1] (multiples of 1/255) → TrivialAugment → [0, 1].

  Must see pixel values, not normalised ones (``augment.Augmentation.pixel_values``).
  """
  del ctx
  pixels = jnp.clip(jnp.round(images * 255.), 0., 255.)
  return jax.vmap(trivial_augment)(pixels, keys) / 255., targets

