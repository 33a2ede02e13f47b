"""Resume-state hygiene: a training step resumes only from state that the same job wrote."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from proda.files import digest

STAMP = "job.json"


def file_identity(path: str | os.PathLike) -> list[Any]:
    """A file's absolute path, size and modification time: changes whenever it is rewritten."""
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def job_fingerprint(view: Mapping[str, Any], inputs: Iterable[str | os.PathLike]) -> str:
    """Digest of a step's config view and the identity of every input file."""
    return digest([view, [file_identity(p) for p in inputs if p is not None]], 32)


def prepare_state_dir(state_dir: str | os.PathLike, fingerprint: str) -> bool:
    """Keep ``state_dir`` (resume checkpoints, train.csv) only if a job with the same fingerprint
    wrote it; otherwise empty it. Returns True when the kept state may be resumed.

    A rerun after a crash, time-out or pre-emption resumes; a rerun after a change of the config
    view or of any input file (recomputed, replaced, corrupted and touched) starts afresh.
    """
    path = Path(state_dir)
    stamp = path / STAMP
    same = stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    if not same:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return same
