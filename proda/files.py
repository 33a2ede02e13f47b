"""Writing and identifying files: the one atomic-write helper, the job lock and the digest helpers.

Every artifact is written through :func:`atomic_path`: the caller writes a temporary file beside
the target and it is renamed into place only when the block ends without an error, so a failed or
killed step never leaves a half-written file under the artifact's name. A full disk is reported
in one line (:class:`NoSpaceLeftError`).

A job holds :func:`job_lock` on its artifact while it writes it, so that nothing (``proda
prune``, a second run of the same job) deletes or rewrites work in progress (:func:`is_locked`).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike
LOCK_SUFFIX = ".lock"
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE = 64 << 20  # bytes: below this, an opaque write failure (torch, HDF5) is a full disk
_NO_SPACE_TEXT = ("no space left on device", "errno = 28", "disk quota exceeded")
_WRITE_TEXT = ("write", "enforce fail", "unexpected pos")  # torch's and HDF5's failed writes


class NoSpaceLeftError(OSError, ValueError):
    """Writing an artifact failed because its file system is full (an ``OSError`` with errno
    ``ENOSPC``, and a ``ValueError``, so that the command line reports it in one line)."""

    def __init__(self, path: PathLike):
        super().__init__(errno.ENOSPC, f"no space left on device writing {path}")
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


class LockedError(ValueError):
    """An artifact that another running job holds (:func:`job_lock`)."""


def _is_no_space(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, means the file system is full.

    An ``OSError`` says so by its errno (or, from HDF5, in its text). torch's writer raises an
    opaque ``RuntimeError`` ("enforce fail ... file write failed"): then the free space decides.
    """
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    text = str(exc).lower()
    if any(words in text for words in _NO_SPACE_TEXT):
        return True
    if not any(words in text for words in _WRITE_TEXT):  # not a failed write (e.g. a model error)
        return False
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE
    except OSError:
        return False


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The parent folder is created. On an exception the temporary file is removed and ``path`` keeps
    whatever it held before; a write that failed for want of space raises :class:`NoSpaceLeftError`
    (one line naming ``path``) instead.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:
        no_space = _is_no_space(exc, target.parent)
        tmp.unlink(missing_ok=True)
        if no_space:
            raise NoSpaceLeftError(target) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def reporting_full_disk(path: PathLike) -> Iterator[None]:
    """Raise :class:`NoSpaceLeftError` naming ``path`` when a write in the block fails for want of
    space (for files appended to in place, such as a training log; artifacts use
    :func:`atomic_path`, which does this too)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if _is_no_space(exc, Path(path).parent):
            raise NoSpaceLeftError(path) from exc
        raise


def lock_path(path: PathLike) -> Path:
    """The lock file of an artifact: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def _holder(fd: int) -> str:
    """The pid written into a lock file, or "unknown"."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


@contextmanager
def job_lock(path: PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (an artifact file or folder) for the block.

    An ``fcntl.flock`` on ``<path>.lock`` (created, parent folders too; it holds the holder's pid
    and stays behind afterwards), taken without waiting: when another process holds it, raise
    :class:`LockedError` "<path> is being written by another run (pid N)". The lock goes with the
    process, so a killed job never leaves a held lock. Yields the lock file's path.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{path} is being written by another run (pid {_holder(fd)})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock


def lock_holder(path: PathLike) -> str | None:
    """The pid (as text, or "unknown") of the process holding :func:`job_lock` on ``path``; None
    when nobody does. Creates no lock file."""
    try:
        fd = os.open(lock_path(path), os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # also releases the probe's own shared lock
    return None


def is_locked(path: PathLike) -> bool:
    """Whether a running job holds :func:`job_lock` on ``path``."""
    return lock_holder(path) is not None


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
