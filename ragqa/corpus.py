"""Corpus loaders: JSONL / CSV / Parquet files, folders of .md/.txt, and `hf:owner/name[:split]` datasets.

Every input becomes a list of `Document`s with an id, text, title, source and url. Bad input is either a
one-line `RagqaError` naming the file, line and field (when the result would be wrong) or a counted,
reported skip (empty text, over-long records, exact duplicates). Ids are data, never paths: they are
cleaned of control characters and kept verbatim otherwise (MedQuAD ids contain '/').
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragqa.errors import RagqaError, first_line
from ragqa.files import decode_utf8, iter_jsonl, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
TABULAR_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv", ".parquet"}
TEXT_SUFFIXES = {".md", ".txt"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass
class Document:
    """One source record (a corpus row or a text file) before chunking."""

    id: str
    text: str
    title: str = ""
    source: str = ""
    url: str = ""

    @property
    def hash(self) -> str:
        """Content hash: chunks and their vectors are reused across ingests while it is unchanged."""
        return hashlib.sha256(f"{self.title}\x00{self.text}".encode()).hexdigest()


@dataclass
class Corpus:
    documents: list[Document]
    sources: list[dict[str, Any]]
    """One entry per input: spec, path, sha256, bytes, documents, skipped counts (goes into the manifest)."""
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str = "id"
    title: str = "title"


def resolve_path(spec: str) -> Path:
    """A corpus path as given, or relative to the repository root (so the default starter corpus is found
    from any working directory)."""
    path = Path(spec).expanduser()
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def fingerprint(spec: str) -> dict[str, Any]:
    """Cheap identity of an input (sha256 + size) without parsing it: the incremental no-op check."""
    if spec.startswith("hf:"):
        return {"spec": spec, "sha256": None}
    path = resolve_path(spec)
    if path.is_file():
        return {"spec": spec, "path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.is_dir():
        digest = hashlib.sha256()
        size = 0
        for file in _folder_files(path, Counter()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\x00" + sha256_file(file).encode())
            size += file.stat().st_size
        return {"spec": spec, "path": str(path), "sha256": digest.hexdigest(), "bytes": size}
    raise RagqaError(f"corpus {spec}: no such file or folder (give a JSONL/CSV/Parquet file, a folder of "
                     f".md/.txt files, or hf:owner/name[:split])")


def load_corpus(specs: Iterable[str], fields: Fields = Fields(), max_doc_chars: int = 1_000_000) -> Corpus:
    """Load and merge several inputs into one list of documents with unique ids."""
    documents: list[Document] = []
    sources: list[dict[str, Any]] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}  # id -> content hash
    for spec in specs:
        info = fingerprint(spec)
        skipped: Counter = Counter()
        count = 0
        for doc in _read(spec, fields, skipped):
            if len(doc.text) > max_doc_chars:
                skipped[f"longer than index.max_doc_chars={max_doc_chars}"] += 1
                continue
            previous = seen.get(doc.id)
            if previous is not None:
                if previous == doc.hash:
                    skipped["exact duplicate (same id and text)"] += 1
                    continue
                base, n = doc.id, 2
                while f"{base}~{n}" in seen:
                    n += 1
                doc.id = f"{base}~{n}"
                skipped["duplicate id with different text, renamed ID~N (kept)"] += 1
            seen[doc.id] = doc.hash
            documents.append(doc)
            count += 1
        if count == 0:
            detail = "; ".join(f"{n} {why}" for why, n in skipped.items()) or "it is empty"
            raise RagqaError(f"corpus {spec}: no usable documents ({detail}); check the file and --text-field")
        info.update(documents=count, skipped=dict(skipped))
        sources.append(info)
        for why, n in skipped.items():
            warnings.append(f"{spec}: {n} record(s) {why}")
    if not documents:
        raise RagqaError("no corpus given: pass --corpus PATH (JSONL/CSV/Parquet, a folder, or hf:owner/name)")
    return Corpus(documents, sources, warnings)


def clean_id(value: Any) -> str:
    """Ids are printed in one-line citations: each run of unprintable characters (C0 and C1 controls, which
    terminals may read as escape sequences, line and paragraph separators, ...) becomes one space; no
    surrounding space."""
    text = "".join(ch if ch.isprintable() else "\x00" for ch in str(value))
    return _CONTROL.sub(" ", text).strip()


def _read(spec: str, fields: Fields, skipped: Counter) -> Iterator[Document]:
    if spec.startswith("hf:"):
        yield from _records_to_docs(_read_hf(spec), spec, spec, fields, skipped)
        return
    path = resolve_path(spec)
    if path.is_dir():
        yield from _read_folder(path, skipped)
        return
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = decode_utf8(path.read_bytes(), path, label="corpus")
        if text.strip():
            yield Document(id=clean_id(path.name), text=text, title=_md_title(text, path), source=path.name)
        else:
            skipped["empty file"] += 1
        return
    if suffix not in TABULAR_SUFFIXES:
        raise RagqaError(f"corpus {path}: unsupported file type '{suffix}' (use .jsonl, .csv, .parquet, "
                         ".md, .txt or a folder)")
    records = read_records(path, label="corpus", columns=[fields.text], expect="an object with a text field",
                           hint="set --text-field (index.text_field)")
    yield from _records_to_docs(records, path.name, str(path), fields, skipped)


def read_records(path: Path, *, label: str, columns: list[str], expect: str, hint: str) -> Iterator[tuple[int, dict]]:
    """(line or row number, record) of a JSONL (.jsonl/.json/.ndjson: one object a line), CSV or Parquet file.

    Shared by corpus and Q&A loading (ragqa.qa), so both give the same one-line errors: `label PATH: line N
    ...` for bad UTF-8, bad JSON, a non-object line, bad CSV or an unreadable Parquet file; a table without
    one of `columns` is refused with its column names and `hint`. Values are not checked here.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, columns, label, hint)
    if suffix == ".parquet":
        return _read_parquet(path, columns, label, hint)
    return iter_jsonl(path, label, expect)


def _records_to_docs(records: Iterable[tuple[int, dict]], source: str, where: str, fields: Fields,
                     skipped: Counter) -> Iterator[Document]:
    stem = Path(source).stem or source
    seen_fields: set[str] = set()
    any_text_field = False
    for row, record in records:
        if fields.text not in record:
            seen_fields.update(record)
            skipped[f"without field '{fields.text}'"] += 1
            continue
        any_text_field = True
        text = record[fields.text]
        if not isinstance(text, str):
            skipped[f"with a non-text '{fields.text}' ({type(text).__name__})"] += 1
            continue
        if not text.strip():
            skipped[f"with empty '{fields.text}'"] += 1
            continue
        raw_id = record.get(fields.id)
        doc_id = clean_id(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else ""
        title = record.get(fields.title)
        src, url = record.get("source"), record.get("url")
        yield Document(
            id=doc_id or f"{stem}:{row}",
            text=text,
            title=title.strip() if isinstance(title, str) else "",
            source=src if isinstance(src, str) and src else source,
            url=url if isinstance(url, str) else "",
        )
    if not any_text_field and seen_fields:
        known = ", ".join(sorted(seen_fields)[:12])
        raise RagqaError(f"corpus {where}: no field '{fields.text}' in any record (fields: {known}); "
                         f"set --text-field (index.text_field)")


def _missing_column(path: Path, columns: list[str], have: list[str], label: str, hint: str) -> None:
    missing = [c for c in columns if c not in have]
    if missing:
        raise RagqaError(f"{label} {path}: no column '{missing[0]}' (columns: {', '.join(map(str, have))}); {hint}")


def _read_csv(path: Path, columns: list[str], label: str, hint: str) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(2**31 - 1)  # long passages are legal; over-long ones are skipped by max_doc_chars
    text = decode_utf8(path.read_bytes(), path, label=label)
    reader = csv.DictReader(text.splitlines(keepends=True))
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise RagqaError(f"{label} {path}: line 1 is not valid CSV ({exc})") from None
    if fieldnames is None:
        return
    _missing_column(path, columns, list(fieldnames), label, hint)
    try:
        for n, record in enumerate(reader, start=2):
            yield n, {k: v for k, v in record.items() if k is not None}
    except csv.Error as exc:
        raise RagqaError(f"{label} {path}: line {reader.line_num} is not valid CSV ({exc})") from None


def _read_parquet(path: Path, columns: list[str], label: str, hint: str) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise RagqaError(f"{label} {path}: not a readable Parquet file ({type(exc).__name__}); "
                         "re-export it") from None
    _missing_column(path, columns, table.column_names, label, hint)
    yield from enumerate(table.to_pylist(), start=1)


def _read_hf(spec: str) -> Iterator[tuple[int, dict]]:
    name, _, split = spec[3:].partition(":")
    try:
        import datasets

        data = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - network, missing dataset, bad split: one line for the user
        first = first_line(exc)
        raise RagqaError(f"corpus {spec}: could not load the dataset ({first}); it needs network access "
                         "(HF_HUB_OFFLINE=0)") from None
    yield from enumerate(data, start=1)


def _folder_files(folder: Path, skipped: Counter) -> list[Path]:
    root = folder.resolve()
    files = []
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or file.suffix.lower() not in TEXT_SUFFIXES:
            continue
        if not file.is_file():
            continue
        if not file.resolve().is_relative_to(root):
            skipped["link(s) pointing outside the folder"] += 1
            continue
        files.append(file)
    return files


def _read_folder(folder: Path, skipped: Counter) -> Iterator[Document]:
    for file in _folder_files(folder, skipped):
        text = decode_utf8(file.read_bytes(), file, label="corpus")
        if not text.strip():
            skipped["empty file"] += 1
            continue
        rel = file.relative_to(folder).as_posix()
        yield Document(id=clean_id(rel), text=text, title=_md_title(text, file), source=rel)


def _md_title(text: str, path: Path) -> str:
    """First Markdown heading, else the file name without suffix."""
    if path.suffix.lower() == ".md":
        for line in text.splitlines()[:20]:
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return path.stem.replace("_", " ").replace("-", " ")
