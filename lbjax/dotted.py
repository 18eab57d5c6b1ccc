"""Dotted keys (``"swap.optimizer.name"``) into nested configs: the one helper for every layer.

The launcher, config validation, the optimizer registry, sweeps and the HPO search space all
address config values by dotted key; they walk the nesting here.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections

BLOCK_TYPES = (Mapping, ml_collections.ConfigDict)


def parent(tree: Any, key: str) -> tuple[Any, str]:
  """``(the mapping that holds key's last part, that part)``.

  Raises:
    KeyError: a block on the way is missing or is not a mapping; its ``args[0]`` is the
      missing block's dotted path (for an error message that names it).
  """
  *path, last = key.split(".")
  node = tree
  for i, part in enumerate(path):
    if not isinstance(node, BLOCK_TYPES) or part not in node:
      raise KeyError(".".join(path[:i + 1]))
    node = node[part]
  if not isinstance(node, BLOCK_TYPES):
    raise KeyError(".".join(path))
  return node, last


def get(tree: Any, key: str) -> Any:
  """``tree[a][b][c]`` for ``key = "a.b.c"`` (KeyError naming the first missing part)."""
  node, last = parent(tree, key)
  if last not in node:
    raise KeyError(key)
  return node[last]


def assign(tree: Any, key: str, value: Any) -> None:
  """``tree[a][b][c] = value`` for ``key = "a.b.c"`` (the blocks on the way must exist)."""
  node, last = parent(tree, key)
  node[last] = value
