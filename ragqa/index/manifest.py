"""The index folder: its name, the manifest (what was built and how, with file checksums), the chunk store,
the writer lock and crash recovery."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError
from ragqa.files import find_backup, iter_jsonl, recover, sha256_file
from ragqa.terminal import markup_safe, say

FORMAT = 1
CHUNKS_FILE = "chunks.jsonl"
MANIFEST = "manifest.json"


def index_dir(name: str) -> Path:
    """A bare name means indexes/NAME (relative to the working directory); a value with '/' is the directory."""
    if "/" in name or os.sep in name:
        return Path(name).expanduser()
    if not name or name in (".", ".."):
        raise RagqaError(f"index name {name!r} is not usable: give a name like 'default' or a directory path")
    return Path("indexes") / name


def manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def reingest_hint(path: Path) -> str:
    name = path.name if path.parent == Path("indexes") else str(path)
    return f"re-run `ragqa ingest --index {name}` to rebuild it"


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest, after checking that it parses and that its own checksum matches."""
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RagqaError(f"index {path} has no {MANIFEST} (not a ragqa index, or damaged): "
                         f"{reingest_hint(path)}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RagqaError(f"index {path}: {MANIFEST} is corrupted (not valid JSON): {reingest_hint(path)}") from None
    if not isinstance(manifest, dict) or manifest.get("checksum") != manifest_checksum(manifest):
        raise RagqaError(f"index {path}: {MANIFEST} was modified or is corrupted (checksum mismatch): "
                         f"{reingest_hint(path)}")
    if manifest.get("format") != FORMAT:
        raise RagqaError(f"index {path} has format {manifest.get('format')}, this ragqa reads {FORMAT}: "
                         f"{reingest_hint(path)}")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any], checksums: bool = True) -> None:
    """Every file listed in the manifest exists with the recorded size (and sha256)."""
    for rel, meta in manifest["files"].items():
        file = path / rel
        if not file.is_file() or file.stat().st_size != meta["bytes"]:
            raise RagqaError(f"index {path}: {rel} is missing or truncated: {reingest_hint(path)}")
        if checksums and sha256_file(file) != meta["sha256"]:
            raise RagqaError(f"index {path}: {rel} does not match its checksum (corrupted): {reingest_hint(path)}")


def read_chunks(path: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = [chunk for _, chunk in iter_jsonl(path / CHUNKS_FILE, "index", "a chunk object")]
    if len(chunks) != manifest["counts"]["chunks"]:
        raise RagqaError(f"index {path}: {CHUNKS_FILE} has {len(chunks)} chunks, the manifest says "
                         f"{manifest['counts']['chunks']}: {reingest_hint(path)}")
    return chunks


def existing_index(path: Path) -> Path | None:
    """The directory that holds the current index: PATH, or its backup when a crash hit the final swap."""
    if (path / MANIFEST).is_file():
        return path
    return find_backup(path, MANIFEST)


def find_index(index: str | Path, alternative: str = "") -> Path:
    """The directory every reader of index NAME (or a directory) reads: existing_index's, so an index whose swap
    was interrupted is read from its backup. None there is a RagqaError that says to run `ragqa ingest`
    (`alternative` is appended to that advice)."""
    path = index if isinstance(index, Path) else index_dir(index)
    where = existing_index(path)
    if where is None:
        shown = path.name if path.parent == Path("indexes") else str(path)
        flag = "" if shown == "default" else f" --index {shown}"
        raise RagqaError(f"no index at {path}: run `ragqa ingest{flag}` first{alternative}")
    return where


# ----------------------------------------------------------------------------- locking, recovery


def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def index_lock(path: Path) -> Iterator[None]:
    """Exclusive writer lock on an index (flock on .NAME.lock next to it).

    The kernel drops the lock when its holder dies, even by SIGKILL, so a lock file left behind by a dead
    process is stale by construction and simply taken over. The file stays (removing it would race).
    """
    import fcntl

    lock = lock_file(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RagqaError(f"index {path} is being written by PID {holder} (lock {lock}); wait for it to "
                             "finish, or run with another --index") from None
        stale = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if stale:
            say(f"[dim]recovered a stale lock left by PID {markup_safe(stale)} (process gone)[/dim]")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def recover_index(path: Path) -> None:
    """Under the lock: undo an interrupted swap (files.recover, the rule of every writer) and remove the temp
    dirs of killed runs (under the lock, no temp dir of this index can belong to a live writer)."""
    recover(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
