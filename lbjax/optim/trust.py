r"""The layer-wise factor of the last update, read back from an optimizer's state.

LARS (seed 000 Alg. 1) scales each tensor's decayed gradient by its local rate
:math:`\lambda_l = \eta \lVert w_l \rVert / (\lVert g_l \rVert + \beta \lVert w_l \rVert +
\epsilon)`; LAMB (You et al. 2019 Alg. 2) its Adam direction plus decay by
:math:`\lVert w_l \rVert / \lVert r_l + \lambda w_l \rVert`. Both keep the factor they applied in
their state (`lbjax.optim.lars.ScaleByLarsState`, `lbjax.optim.lamb.ScaleByTrustRatioState`);
`trust_ratios` finds it in any state that wraps them (``optax.chain``, ``inject_hyperparams``,
``masked``, SWA's `lbjax.swa.SwaState`, ...), as optax exposes a wrapper's extra result through an
accessor (``contrib.schedule_free_eval_params``).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lbjax.optim.lamb import ScaleByTrustRatioState
from lbjax.optim.lars import ScaleByLarsState

# The states that keep a per-tensor trust ratio in their ``trust_ratio`` field.
STATES = (ScaleByLarsState, ScaleByTrustRatioState)
PREFIX = "trust_ratio/"


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def trust_ratios(opt_state: Any) -> Any:
  r"""Per tensor, the layer-wise factor the last update applied.

  LARS's :math:`\lambda_l` (1 where :math:`\lVert w_l \rVert` or :math:`\lVert g_l \rVert` is 0),
  LAMB's :math:`\lVert w_l \rVert / \lVert r_l + \lambda w_l \rVert` (1 where a norm is 0); 1.0
  for a tensor that gets no layer-wise factor (outside LARS's ``mask``; LAMB's mask gates only
  the decay, so every LAMB tensor has its ratio). Before the first update every factor is 1.

  Args:
    opt_state: the state of an optimizer containing LARS or LAMB, however wrapped (per device,
      or with leading axes such as SWAP's replicas: each factor then has those axes).

  Returns:
    A tree shaped like the parameters with one float32 factor per tensor.

  Raises:
    ValueError: the state holds no trust ratios (an optimizer without a layer-wise factor), or
      several (two layer-wise pieces in one chain: which one is meant is ambiguous).
  """
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, STATES))
           if isinstance(s, STATES)]
  if not found:
    raise ValueError("the optimizer state holds no trust ratios: only LARS (lbjax.optim.lars) "
                     "and LAMB (lbjax.optim.lamb) apply a layer-wise factor")
  if len(found) > 1:
    raise ValueError(f"the optimizer state holds {len(found)} sets of trust ratios; expected one")
  ratios = found[0].trust_ratio
  present = jax.tree.leaves(ratios)
  one = jnp.ones_like(present[0]) if present else jnp.ones([], jnp.float32)
  return jax.tree.map(lambda r: one if _is_masked(r) else r, ratios, is_leaf=_is_masked)


def trust_ratio_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """`trust_ratios` as flat metrics named ``trust_ratio/<parameter path>``, the path's keys
  ``/``-joined (``trust_ratio/Conv_0/kernel``): what the train step logs with
  ``config.log_trust_ratios``."""
  flat = jax.tree_util.tree_flatten_with_path(trust_ratios(opt_state))[0]
  return {PREFIX + jax.tree_util.keystr(path, simple=True, separator="/"): value
          for path, value in flat}


def has_trust_ratios(tx: optax.GradientTransformation) -> bool:
  """Whether ``tx``'s state keeps trust ratios (`trust_ratios` of its state would succeed);
  traced abstractly on a one-kernel tree, nothing is computed."""
  params = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((2, 2), jnp.float32),
                        "bias": jax.ShapeDtypeStruct((2,), jnp.float32)}}
  state = jax.eval_shape(tx.init, params)
  return any(isinstance(s, STATES)
             for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, STATES)))
