"""Dotted keys (``"swap.optimizer.name"``) into nested configs: the one helper for every layer.

The launcher, config validation, the optimizer registry, sweeps and the HPO search space all
address config values by dotted key; they walk the nesting here. `copy` is the one way a config
is copied: ml_collections' own copy turns the typed placeholders into plain ``None`` fields that
no ``--config.<key>`` flag can set any more.
"""

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

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


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with its references resolved, in which a typed placeholder stays one.

  ``config.copy_and_resolve_references()`` replaces each `FieldReference` by its value, so an unset
  ``config_dict.placeholder(int)`` becomes a plain ``None``, a field of type ``NoneType``: a later
  ``--config.<key>=32`` is then refused ("Type NoneType of field ... is not supported for
  overriding"), and a set placeholder becomes a plain value that loses its type once set to
  None. Here each reference becomes a new, unshared placeholder of the same type holding the
  resolved value (so it keeps its type through None and through further copies); blocks are
  copied the same way, plain values as they are. The copy is locked where ``config`` is.
  """
  out = ml_collections.ConfigDict(type_safe=config.is_type_safe,
                                  convert_dict=config.convert_dict,
                                  allow_dotted_keys=config.allow_dotted_keys)
  for key, field in config.items(preserve_field_references=True):
    if isinstance(field, config_dict.FieldReference):
      value = field.get()
      field = (copy(value) if isinstance(value, ml_collections.ConfigDict)
               else config_dict.FieldReference(value, field_type=field.get_type()))
    elif isinstance(field, ml_collections.ConfigDict):
      field = copy(field)
    out[key] = field
  if config.is_locked:
    out.lock()
  return out


def block_like(values: Mapping[str, Any], like: Any) -> ml_collections.ConfigDict:
  """``values`` as a config block that replaces the block ``like``, keeping ``like``'s types.

  A key that is a typed placeholder in ``like`` (an optimizer block made by
  ``registry.config_block`` holds one for every registered hyperparameter) is a placeholder of
  that type in the new block, so ``{"b1": None}`` stays settable as a float; nested mappings
  are blocks likewise; other keys are plain values.
  """
  out = ml_collections.ConfigDict()
  fields = (dict(like.items(preserve_field_references=True))
            if isinstance(like, ml_collections.ConfigDict) else {})
  for key, value in values.items():
    old = fields.get(key)
    if isinstance(value, BLOCK_TYPES):
      value = block_like(value, old)
    elif isinstance(old, config_dict.FieldReference):
      value = config_dict.FieldReference(value, field_type=old.get_type())
    out[key] = value
  return out
