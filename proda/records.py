"""Provenance records: what made an artifact, readable on disk, and the check before it is used.

Every artifact gets a small YAML record, written atomically right after it: the step, the config
view that named it, its input artifacts with their SHA-256 digests and the digest of every file it
wrote. A model folder keeps it inside (``<folder>/record.yaml``); a stand-alone file or the toy
benchmark's folder keeps it beside (``soft_labels-<h>.h5`` -> ``soft_labels-<h>.record.yaml``).

:func:`verify` checks a file against its record before a step reads it, so damaged bytes stop the
run with one line naming the file; :func:`show` and :func:`differences` answer "which settings made
this folder" and "what differs between these two" (``proda show``).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from proda.files import atomic_path, file_sha256
from proda.integrity import DamagedArtifactError, damaged

PathLike = str | os.PathLike
RECORD = "record.yaml"


def record_path(artifact: PathLike) -> Path:
    """The record of ``artifact``: a model folder (or a file in it) -> ``<folder>/record.yaml``; any
    other file or folder ``X.ext`` / ``X`` -> ``X.record.yaml`` beside it; a record -> itself."""
    path = Path(artifact)
    if path.name == RECORD or path.name.endswith(f".{RECORD}"):
        return path
    if path.is_dir() and (path / RECORD).is_file():
        return path / RECORD
    if path.is_file() and (path.parent / RECORD).is_file() and not path.with_suffix(f".{RECORD}").exists():
        return path.parent / RECORD
    return path.parent / f"{path.stem if path.suffix else path.name}.{RECORD}"


def tree_sha256(folder: PathLike) -> str:
    """SHA-256 over every file of ``folder``: relative paths and contents, in sorted order
    (Snakemake's own ``.snakemake_timestamp`` marker left out)."""
    root, sha = Path(folder), hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"):
        sha.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return sha.hexdigest()


def content_sha256(path: PathLike) -> str:
    """SHA-256 of a file, or of a folder's tree."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)


def read(artifact: PathLike) -> dict[str, Any]:
    """The record of ``artifact`` (one-line errors naming the file)."""
    path = record_path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"no provenance record for {artifact} (expected {path})")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise damaged(path, f"not a readable record: {' '.join(str(err).split())[:120]}", "record") from None
    if not isinstance(data, Mapping) or "outputs" not in data:
        raise damaged(path, "not a provenance record", "record")
    return dict(data)


def write(step: str, outputs: Mapping[str, PathLike], view: Mapping[str, Any],
          inputs: Mapping[str, Mapping[str, str]], record: PathLike) -> Path:
    """Write the record of the artifact whose files are ``outputs`` (name -> path).

    ``inputs``: role -> {"path", "sha256"} of each input artifact. Returns the record's path."""
    import torch

    from proda import __version__

    files = {Path(p).name: {"sha256": content_sha256(p), "bytes": _size(p)} for p in outputs.values()}
    body = {"step": step, "settings": json.loads(json.dumps(view, default=str)), "inputs": {k: dict(v) for k, v in inputs.items()},
            "outputs": files, "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"proda": __version__, "torch": str(torch.__version__)}}
    with atomic_path(record) as tmp:
        tmp.write_text(yaml.safe_dump(body, sort_keys=False))
    return Path(record)


def _size(path: PathLike) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def verify(path: PathLike) -> dict[str, str]:
    """Check ``path`` against its record before it is used; returns {"path", "sha256"} for the
    record of the artifact that reads it. A file without a record (a user's weights, an external
    dataset) is only digested; a file whose bytes differ from its record raises
    :class:`~proda.integrity.DamagedArtifactError`."""
    sha = content_sha256(path)
    where = record_path(path)
    if where.is_file():
        expected = read(path)["outputs"].get(Path(path).name, {}).get("sha256")
        if expected is not None and expected != sha:
            raise damaged(path, f"its bytes differ from those recorded in {where.name} when it was written",
                          cls=DamagedArtifactError)
    return {"path": str(path), "sha256": sha}


# ------------------------------------------------------------------------------ reading records
def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``("section.key", value)`` for every leaf of a nested mapping."""
    if isinstance(value, Mapping) and value:
        for key in value:
            yield from flatten(value[key], f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


def _inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def show(artifact: PathLike) -> str:
    """What made ``artifact``: its step, every setting of its view, its inputs and outputs."""
    rec = read(artifact)
    lines = [f"{record_path(artifact)}", f"step: {rec.get('step')}    written: {rec.get('written')}", "settings:"]
    lines += [f"  {key}: {_inline(value)}" for key, value in flatten(rec.get("settings", {}))]
    lines.append("inputs:" if rec.get("inputs") else "inputs: none")
    lines += [f"  {role}: {entry['path']}  sha256 {entry['sha256'][:16]}" for role, entry in rec.get("inputs", {}).items()]
    lines.append("outputs:")
    lines += [f"  {name}: sha256 {entry['sha256'][:16]}, {entry['bytes']} bytes"
              for name, entry in rec["outputs"].items()]
    return "\n".join(lines)


def differences(a: PathLike, b: PathLike) -> str:
    """The settings and inputs that differ between the artifacts ``a`` and ``b``."""
    ra, rb = read(a), read(b)
    left = {**{f"settings {k}": v for k, v in flatten(ra.get("settings", {}))},
            **{f"input {k}": v["sha256"] for k, v in ra.get("inputs", {}).items()}}
    right = {**{f"settings {k}": v for k, v in flatten(rb.get("settings", {}))},
             **{f"input {k}": v["sha256"] for k, v in rb.get("inputs", {}).items()}}
    lines = [f"A: {record_path(a)} ({ra.get('step')})", f"B: {record_path(b)} ({rb.get('step')})"]
    for key in sorted(set(left) | set(right)):
        va, vb = left.get(key, "(absent)"), right.get(key, "(absent)")
        if va != vb:
            lines.append(f"  {key.split(' ', 1)[1]}: {_short(va)} -> {_short(vb)}"
                         + ("  (input)" if key.startswith("input") else ""))
    if len(lines) == 2:
        lines.append("  same settings and inputs")
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = _inline(value)
    return text[:16] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
