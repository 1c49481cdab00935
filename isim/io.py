"""Crash-safe file writes: everything is written to a temporary sibling and renamed into place."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The file gets the permissions the umask gives a new file (mkstemp's 0600 would make a label store shared on
    a cluster unreadable to the rest of the lab), and it is flushed to disk before the rename and the rename
    after it, so a crash or power loss leaves the old file or the new one, never an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON: a non-finite float (e.g. the IoU of a class absent from a split) is written as null, since
    jq, JavaScript and most JSON parsers refuse Python's bare NaN / Infinity."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


def write_csv(path: str | Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A header of ``columns``, then one line per row (keys missing from a row are left empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def write_png(path: str | Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a uint8 image; with ``palette`` a single-channel array becomes a palette PNG."""
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)  # turns the "L" image into a "P" image with the same indices
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
