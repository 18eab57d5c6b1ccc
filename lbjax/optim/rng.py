"""The random streams of lbjax's optimizers, in one place so they cannot collide.

The train step derives its per-step key as ``step_key = fold_in(PRNGKey(seed), step)`` and each
example's augmentation key as ``fold_in(step_key, position)`` (position in the global batch).
Every other random draw of a run is kept apart from those keys by a constant of its own:

* ``NOISE_STREAM``: the update noise of seed 001 eq. (1) (`lbjax.optim.noise`) starts from
  ``fold_in(PRNGKey(seed), NOISE_STREAM)``, a step no run reaches, and then splits its key once
  per step. A chain starting at ``PRNGKey(seed)`` itself would replay the augmentation keys of
  steps 0 and 1 (``jax.random.split(k)`` is ``fold_in(k, 0)``, ``fold_in(k, 1)``).
* ``SMOOTHOUT_STREAM``: SmoothOut's perturbation of ``step`` (`lbjax.optim.smoothout`) is
  ``fold_in(step_key, SMOOTHOUT_STREAM)``, a position no example has.
* ``KFAC_SAMPLE_SALT``: K-FAC's sampled Fisher (`lbjax.optim.kfac_capture`) draws example n's
  label with ``fold_in(key_n, KFAC_SAMPLE_SALT)`` from that example's augmentation key ``key_n``,
  so the label draw and the augmentation use different keys.
"""

NOISE_STREAM = 2**32 - 2
SMOOTHOUT_STREAM = 2**32 - 1
KFAC_SAMPLE_SALT = 0x6B666163  # "kfac" in ASCII

STREAMS = {"noise": NOISE_STREAM, "smoothout": SMOOTHOUT_STREAM,
           "kfac_sample": KFAC_SAMPLE_SALT}
