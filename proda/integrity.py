"""Damaged artifacts: one exception class and the checks that find damage before data is used.

A damaged file (a CRC or checksum failure, a truncation, random bytes) is never used: every
reader raises :class:`DamagedArtifactError`, one line naming the file, what is wrong and what to
do. It is a ``ValueError``, which the command line reports in one line.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

PathLike = str | os.PathLike
ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of every file torch.save writes (zip format)
ADVICE = "delete it and rerun the step that wrote it"


class DamagedArtifactError(ValueError):
    """An artifact file whose bytes are damaged: checksum failure, truncation, not the format."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (whitespace runs collapsed), or its class name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def damaged(path: PathLike, detail: str, what: str = "file",
            cls: type[DamagedArtifactError] = DamagedArtifactError,
            advice: str = ADVICE) -> DamagedArtifactError:
    """The one-line error for a damaged ``path`` (``cls``: a subclass for a module's own errors)."""
    return cls(f"{what} {path} is damaged ({detail}); {advice}")


def is_zip_archive(path: PathLike) -> bool:
    """Whether ``path`` starts like a zip archive (torch.save's format; legacy pickles do not)."""
    with open(path, "rb") as fh:
        return fh.read(len(ZIP_MAGIC)) == ZIP_MAGIC


def zip_damage(path: PathLike) -> str | None:
    """What is wrong with the zip archive ``path`` (None: every member's CRC-32 checks out).

    Reads every member once (``ZipFile.testzip``); a truncated archive, a damaged directory or
    header and a member whose bytes fail their CRC are all reported in a few words.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        return f"truncated or not a zip archive: {one_line(exc)}"
    except Exception as exc:  # noqa: BLE001 - random bytes can break the reader in many ways
        return f"unreadable zip archive: {one_line(exc)}"
    return None if bad is None else f"CRC check failed for member {bad!r}"


def archive_damage(path: PathLike) -> str | None:
    """What is wrong with the torch file ``path``: None for an intact zip archive and for a file
    that is not one (an official legacy pickle cannot be checked); an empty file is damaged."""
    if Path(path).stat().st_size == 0:
        return "empty file"
    return zip_damage(path) if is_zip_archive(path) else None


def verify_archive(path: PathLike, what: str = "file",
                   cls: type[DamagedArtifactError] = DamagedArtifactError,
                   advice: str = ADVICE) -> None:
    """Raise ``cls`` (one line naming ``path``) when :func:`archive_damage` finds damage."""
    problem = archive_damage(path)
    if problem is not None:
        raise damaged(path, problem, what, cls, advice)
