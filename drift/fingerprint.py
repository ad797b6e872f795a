"""The one way drift names "what this is": ``fingerprint(value)``, a sha256 over a canonical encoding.

Every identity in the project goes through it: a stage's inputs and settings (drift.stages), a
checkpoint's weight files and a model's tensors (the sampler's and the reference cache's
fingerprints), a token sequence (the reference cache's key), a prompt file, the held-out
evaluation's settings. Two values that are equal as data get the same fingerprint, whatever their
container: dict keys are sorted, tuples and lists read the same, a tensor is its dtype, shape and
bytes (a CPU copy), a file is its name, size and bytes (``FileContents``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the hex digits a fingerprint keeps by default: 128 bits, collision-free for our purposes
DEFAULT_LENGTH = 32
_CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class FileContents:
    """A file taken by its contents (name, size and bytes), not by its path."""

    path: Path


def fingerprint(value, *, length: int = DEFAULT_LENGTH) -> str:
    """Hex sha256 (the first ``length`` digits) of ``value``: JSON-like data (dicts, lists, tuples,
    strings, numbers, booleans, None), dataclasses, bytes, numpy arrays, torch tensors and
    ``FileContents``, nested in any way."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()[:length]


def _feed(digest, value) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        digest.update(b"j" + json.dumps(value).encode() + b";")
    elif isinstance(value, dict):
        digest.update(b"{%d;" % len(value))
        for key in sorted(value, key=str):
            _feed(digest, str(key))
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(b"[%d;" % len(value))
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        digest.update(b"b%d;" % len(data) + data)
    elif isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        digest.update(f"a{data.dtype.str}{data.shape};".encode())
        digest.update(data.tobytes())
    elif isinstance(value, FileContents):
        path = Path(value.path)
        digest.update(f"f{path.name}:{os.path.getsize(path)};".encode())
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                digest.update(chunk)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _feed(digest, {"__type__": type(value).__name__, **dataclasses.asdict(value)})
    elif _is_tensor(value):
        import torch

        data = value.detach().contiguous().cpu()
        digest.update(f"t{data.dtype}{tuple(data.shape)};".encode())
        # numpy has no bfloat16: the same bits as int16
        _feed(digest, (data.view(torch.int16) if data.dtype == torch.bfloat16 else data).numpy())
    else:
        raise TypeError(f"fingerprint() cannot take a {type(value).__name__}; give plain data, bytes, an array, "
                        "a tensor or FileContents")


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    return torch is not None and isinstance(value, torch.Tensor)
