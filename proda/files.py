"""Writing and identifying files: the one atomic-write helper and the one digest helper.

Every artifact is written through :func:`atomic_path`: the caller writes a temporary file beside
the target and it is renamed into place only when the block ends without an error, so a failed or
killed step never leaves a half-written file under the artifact's name.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The parent folder is created. On an exception the temporary file is removed and ``path`` keeps
    whatever it held before.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def digest(value: Any, length: int = 12) -> str:
    """Short SHA-256 hex digest of a JSON-able value (keys sorted, so dict order never matters)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Full SHA-256 hex digest of a file's bytes, read in ``chunk_size`` pieces."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            sha.update(block)
    return sha.hexdigest()
