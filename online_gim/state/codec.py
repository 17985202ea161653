"""A learner state tree as named tensors plus a JSON skeleton, and back, without pickle.

``learner.state_dict()`` mixes tensors, numpy arrays (memory tags, FAISS index bytes), Python
numbers (RNG states are 128-bit integers), strings, ``None``, lists, tuples and dicts with integer
keys (optimiser states). :func:`encode` moves every tensor and array into a flat ``{name: tensor}``
dict (what safetensors stores) and leaves a JSON-able skeleton that refers to them by name;
:func:`decode` rebuilds the same tree. Everything round-trips exactly: dtypes and shapes of tensors
and arrays, integer sizes, float bits (JSON writes the shortest repr that reads back to the same
double), NaN and infinities, tuple vs. list, integer vs. string keys.

Skeleton tags (a one-key object whose key starts with ``$``)::

    {"$tensor": "7"}     a torch tensor, entry "7" of the tensors
    {"$ndarray": "8"}    a numpy array, entry "8" (stored as a tensor of the same dtype)
    {"$tuple": [...]}    a tuple
    {"$map": [[k, v]]}   a dict whose keys are not all plain strings (e.g. optimiser state ids)
    {"$float": "nan"}    a non-finite float ("nan", "inf", "-inf")

Example:
    >>> import numpy as np, torch
    >>> tensors, skeleton = encode({"w": torch.ones(2), "ids": np.arange(3), "state": {0: (1.5, None)}})
    >>> skeleton
    {'w': {'$tensor': '0'}, 'ids': {'$ndarray': '1'}, 'state': {'$map': [[0, {'$tuple': [1.5, None]}]]}}
    >>> decode(skeleton, tensors)["state"]
    {0: (1.5, None)}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

TENSOR, NDARRAY, TUPLE, MAP, FLOAT = "$tensor", "$ndarray", "$tuple", "$map", "$float"
_TAGS = (TENSOR, NDARRAY, TUPLE, MAP, FLOAT)


def encode(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Splits a state tree into ``(tensors, skeleton)``.

    Tensors are detached and moved to the CPU, not copied: serialise the result before the learner
    steps on (a checkpoint of a large learner is hundreds of MB; a copy would double that).

    Raises:
        TypeError: a value of another type (the message gives its path in the tree), or a numpy
            array of objects.
    """
    tensors: dict[str, torch.Tensor] = {}

    def store(tensor: torch.Tensor) -> str:
        name = str(len(tensors))
        tensors[name] = tensor.detach().cpu().contiguous()
        return name

    def walk(value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {FLOAT: repr(value)}
        if isinstance(value, torch.Tensor):
            return {TENSOR: store(value)}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"cannot store a numpy array of Python objects at {path or '/'}")
            return {NDARRAY: store(torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, list):
            return [walk(item, f"{path}/{i}") for i, item in enumerate(value)]
        if isinstance(value, tuple):
            return {TUPLE: [walk(item, f"{path}/{i}") for i, item in enumerate(value)]}
        if isinstance(value, dict):
            if all(isinstance(key, str) and not key.startswith("$") for key in value):
                return {key: walk(item, f"{path}/{key}") for key, item in value.items()}
            return {MAP: [[walk(key, f"{path}/<key>"), walk(item, f"{path}/{key}")] for key, item in value.items()]}
        raise TypeError(f"cannot store a {type(value).__name__} at {path or '/'}")

    return tensors, walk(tree, "")


def decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuilds the tree that :func:`encode` split.

    Raises:
        ValueError: the skeleton refers to a tensor that is missing, or has a malformed tag.
    """

    def tensor(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise ValueError(f"the state refers to a missing tensor {name!r}")
        return tensors[name]

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1 and next(iter(value)) in _TAGS:
            tag, body = next(iter(value.items()))
            if tag == TENSOR:
                return tensor(body)
            if tag == NDARRAY:
                return tensor(body).numpy()
            if tag == TUPLE:
                return tuple(walk(item) for item in body)
            if tag == MAP:
                return {walk(key): walk(item) for key, item in body}
            if body not in ("nan", "inf", "-inf"):
                raise ValueError(f"malformed float tag {body!r}")
            return float(body)
        return {key: walk(item) for key, item in value.items()}

    return walk(skeleton)
