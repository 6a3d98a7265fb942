"""Small file helpers shared by every command: content hashes, JSONL reading, and atomic writes, with one-line
errors (a full disk, a read-only folder or a file in the way names the path and the fix)."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError
from ragqa.terminal import printable

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_IN_THE_WAY = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_utf8(data: bytes, path: str | Path, line: int | None = None, label: str = "") -> str:
    """`data` (the file `path`, or its line `line`) as text; bad UTF-8 is a one-line error naming `label PATH`
    and the line or byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"line {line}" if line is not None else f"byte {exc.start}"
        raise RagqaError(f"{_named(path, label)}: {where} is not valid UTF-8 ({exc.reason}); convert the file to "
                         "UTF-8") from None


def iter_jsonl(path: str | Path, label: str = "", expect: str = "an object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file: the one JSONL reader (corpora and Q&A files
    through ragqa.corpus.read_records, judge data, index chunks, attack sets).

    Bad UTF-8, invalid or too deeply nested JSON and a line that is not an object (`expect` says what was
    expected) are one-line errors naming `label PATH` and the line.
    """
    named = _named(path, label)
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            line = decode_utf8(raw, path, n, label).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RagqaError(f"{named}: line {n} is not valid JSON ({exc.msg}); fix or remove it") from None
            except RecursionError:  # json.loads recurses once per nesting level
                raise RagqaError(f"{named}: line {n} is nested too deeply; fix or remove it") from None
            if not isinstance(record, dict):
                raise RagqaError(f"{named}: line {n} is a JSON {type(record).__name__}, expected {expect}")
            yield n, record


def _named(path: str | Path, label: str) -> str:
    return f"{label} {path}" if label else str(path)


# ------------------------------------------------------------------------------------ write errors


def write_errno(exc: BaseException, written: Path | None = None) -> int | None:
    """The errno behind a failed write, or None if `exc` does not look like one.

    OSError carries it; safetensors and faiss name it in their message; torch does neither, so a full disk or
    an exceeded file-size limit (ulimit -f) is also recognised by looking at the disk and the files in the
    directory `written`.
    """
    for e in (exc, exc.__cause__):
        if isinstance(e, OSError) and e.errno:
            return e.errno
    text = str(exc)
    found = re.search(r"os error (\d+)|\[Errno (\d+)\]", text)
    if found:
        return int(found.group(1) or found.group(2))
    for code in (*_NO_SPACE, errno.EROFS, errno.EACCES):
        if os.strerror(code) in text:
            return code
    if written is None or not isinstance(exc, OSError | RuntimeError):
        return None
    with contextlib.suppress(OSError):
        if os.statvfs(written).f_bavail == 0:
            return errno.ENOSPC
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and any(f.is_file() and f.stat().st_size >= limit for f in written.rglob("*")):
        return errno.EFBIG
    return None


def write_error(path: str | Path, code: int | None, option: str, *, reason: str | None = None,
                action: str | None = None, kept: str | None = None) -> RagqaError:
    """One-line error for a failed write of `path`: what happened and the fix (`option` names the flag to change)."""
    path = Path(path)
    if code in _NO_SPACE:
        fix = f"free space or choose another {option}"
    elif code in _READ_ONLY:
        fix = f"make {_existing_ancestor(path.parent)} writable or choose another {option}"
    elif code in _IN_THE_WAY:
        fix = f"a file is in the way: remove it or choose another {option}"
    else:
        fix = f"choose another {option}"
    reason = reason or (os.strerror(code) if code else "write failed")
    note = f"; the previous {kept} is unchanged" if kept else ""
    return RagqaError(f"{action or f'cannot write {path}'}: {reason}{note}; {fix}")


def check_writable_dir(target: str | Path, option: str = "--output") -> None:
    """Fail early when directory `target` cannot be written: it, or a folder above it, is a file, or its parent
    cannot be created or written (probed with a temp directory, removed again)."""
    target = Path(target)
    _check_not_a_file(target, option)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}-probe-", dir=target.parent))
    except OSError as exc:
        raise write_error(target, exc.errno, option) from None


def check_output_dir(target: str | Path, what: str, markers: tuple[str, ...], *, option: str = "--output",
                     overwrite: bool = False, recover_backup: bool = True) -> None:
    """The one rule for every command that replaces a folder: call it before any expensive work.

    A file in the way, or a read-only parent, fails at once. A replace that a killed run left half done is
    finished first (see `recover`). An existing, non-empty `target` is replaced only if it is a ragqa `what`
    folder, i.e. holds one of the `markers` (its card or manifest), or with `overwrite` (the user's --overwrite):
    a folder of someone else's files, or another kind of ragqa output, is never swapped out and deleted.
    """
    target = Path(target)
    _check_not_a_file(target, option)
    if recover_backup:
        recover(target)
    if overwrite and target.is_dir():
        # --overwrite deletes the folder: never the one this command runs in, one above it, or the home folder.
        here, resolved = Path.cwd().resolve(), target.resolve()
        if resolved in (here, *here.parents, Path.home().resolve()):
            raise RagqaError(f"{target} holds the current folder or is the home folder: --overwrite will not "
                             f"replace it; choose another {option}")
    if not overwrite and target.is_dir() and not any((target / m).is_file() for m in markers):
        try:
            empty = not any(target.iterdir())
        except OSError:  # unreadable: cannot tell what it holds, so it is not ours to replace
            empty = False
        if not empty:
            raise RagqaError(f"{target} is not a ragqa {what} folder (no {' or '.join(markers)}) and is not empty: "
                             f"choose another {option}, or pass --overwrite to replace it and everything in it")
    check_writable_dir(target, option)


def make_dir(target: str | Path, option: str = "--output") -> None:
    """Create directory `target` (and its parents) for outputs written into it one file at a time; a file in
    the way, a read-only folder or a full disk is a one-line error naming `option`."""
    target = Path(target)
    _check_not_a_file(target, option)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc.errno, option) from None


def _check_not_a_file(target: Path, option: str) -> None:
    for p in (target, *target.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "it exists and is a file" if p == target else f"{p} is a file"
                raise RagqaError(f"cannot write {target}: {what}; remove it or choose another {option}")
            break


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ------------------------------------------------------------------------------------ atomic writes


def _ordinary_mode(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp make private entries; outputs get the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files_atomic(files: dict[Path, bytes], *, option: str = "--output") -> None:
    """Write each file to a temp file beside it and fsync; only then rename them all into place, so a full disk
    or a read-only folder changes none of them. Nothing is left behind on failure."""
    temps: list[Path] = []
    current = next(iter(files))
    try:
        for current, data in files.items():
            fd, name = tempfile.mkstemp(prefix=f".{current.name}-", dir=current.parent)
            temps.append(Path(name))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            _ordinary_mode(temps[-1], 0o666)
            if current.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(current))
        for tmp, current in zip(temps, files, strict=True):
            os.replace(tmp, current)
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(current, exc.errno, option) from None
        raise


def write_text_atomic(path: str | Path, text: str, *, option: str = "--output") -> None:
    """Write UTF-8 text to a temp file beside `path`, fsync, rename into place (see write_files_atomic)."""
    write_files_atomic({Path(path): text.encode("utf-8")}, option=option)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = None, sort_keys: bool = False,
                      option: str = "--output") -> None:
    """Write `obj` as JSON atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys), option=option)


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, option: str = "--output", prefix: str | None = None,
               backup: Path | None = None, replace: bool = True, action: str | None = None,
               kept: str | None = None) -> Iterator[Path]:
    """Yield a temp directory beside `target`; on success it becomes `target`, on any failure it is removed.

    An existing `target` is swapped out with two renames (to `backup`, default `.NAME.old-PID`; the new one in;
    the old one removed), so the previous result survives until the new one is complete; a kill between the
    two renames is undone by `recover` on the next run. The temp directory is `.NAME.tmp-PID-*` by default.
    With replace=False an existing target wins and the new directory is dropped (another process finished
    first). Write failures (full disk, read-only folder, a file in the way) become one RagqaError naming
    `target` and the fix; `action` and `kept` (what is unchanged) shape its wording.
    """
    target = Path(target)
    _check_not_a_file(target, option)
    # Both names carry the writer's PID so that `recover` can tell a live writer's entries from a killed one's.
    backup = backup or target.with_name(f".{target.name}{_BACKUP}-{os.getpid()}")
    kept = kept or ("one" if target.exists() else None)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix or temp_prefix(target), dir=target.parent))
    except OSError as exc:
        raise write_error(target, exc.errno, option, action=action, kept=kept) from None
    try:
        _ordinary_mode(tmp, 0o777)
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if target.exists() and not replace:
            shutil.rmtree(tmp)
            return
        _swap(tmp, target, backup, option)
    except BaseException as exc:
        code = write_errno(exc, tmp) if isinstance(exc, Exception) and not isinstance(exc, RagqaError) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if code is None:
            raise
        raise write_error(target, code, option, action=action, kept=kept) from None


def _swap(tmp: Path, target: Path, backup: Path, option: str) -> None:
    _check_not_a_file(target, option)
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except BaseException:
        if backup.exists() and not target.exists():
            os.rename(backup, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(backup, ignore_errors=True)


# ------------------------------------------------------------------------------------ recovery after a kill

_BACKUP = ".old"
_TEMP = ".tmp"


def temp_prefix(target: str | Path) -> str:
    """Prefix of the temp entries a writer of `target` makes beside it: `.NAME.tmp-PID-` (see `recover`)."""
    return f".{Path(target).name}{_TEMP}-{os.getpid()}-"


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[tuple[Path, int | None]]:
    """(entry, PID of the writer that made it) for `.NAME.old[-PID]` (kind _BACKUP) or `.NAME.tmp-PID-*`
    (kind _TEMP) beside `target`. A backup without a PID (the index's fixed `.NAME.old`, made under its lock)
    gives None."""
    head = f".{target.name}{kind}"
    found = []
    for entry in target.parent.glob(glob.escape(head) + "*"):
        rest = entry.name[len(head):]
        pid = rest[1:].split("-", 1)[0] if rest.startswith("-") else ""
        if kind == _BACKUP and rest == "":
            found.append((entry, None))
        elif pid.isdigit() and (kind == _TEMP or rest == f"-{pid}"):
            found.append((entry, int(pid)))
    return found


def find_backup(target: str | Path, marker: str) -> Path | None:
    """The backup holding `target`'s previous version when `target` itself is missing (a writer was killed,
    or is right now, between the two renames of atomic_dir); for loaders that read it without moving it."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return None
    held = [entry for entry, _ in _leftovers(target, _BACKUP) if (entry / marker).is_file()]
    return max(held, key=lambda p: p.stat().st_mtime, default=None)


def recover(target: str | Path) -> None:
    """Finish what a killed writer of `target` left: its backup is renamed back if `target` is missing (the kill
    fell between the two renames of atomic_dir), otherwise removed, and its temp directories go.

    Entries of writers that are still running are left alone (the PID in their name says whose they are).
    Best effort: a folder this process cannot change is left as it is (the write that follows names it).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    with contextlib.suppress(OSError):
        stale = [entry for entry, pid in _leftovers(target, _BACKUP) if pid is None or not _owner_alive(pid)]
        stale.sort(key=lambda p: p.stat().st_mtime)
        if stale and not (target.exists() or target.is_symlink()):
            newest = stale.pop()
            os.rename(newest, target)
            _fsync_dir(target.parent)
            print(printable(f"restored {target} from {newest.name} (a run that was replacing it was killed)"),
                  file=sys.stderr)
        for entry in stale:
            shutil.rmtree(entry, ignore_errors=True)
        for entry, pid in _leftovers(target, _TEMP):
            if not _owner_alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
