"""A workflow job's output: everything it prints goes to its log file (the Snakemake rule's
``log:``), and a known error ends it in one line, as the CLI reports it."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from proda.config import ConfigError


def redirect_output(log_path: str | os.PathLike) -> None:
    """Append everything this process prints to ``log_path``: Python's stdout/stderr, C extensions
    and child processes alike (file descriptors 1 and 2 are redirected, not just ``sys.stdout``).

    Progress bars then write at most one line every 30 s (``TQDM_MININTERVAL``), which keeps logs
    of long runs readable.
    """
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


@contextmanager
def logged_job(log: str | os.PathLike | None, name: str = "") -> Iterator[None]:
    """A workflow job: output to ``log``, and a known error as one line (``proda <name>: error: ...``)
    with exit status 2, as the CLI reports it."""
    if log is not None:
        redirect_output(log)
    try:
        yield
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"proda{' ' + name if name else ''}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
