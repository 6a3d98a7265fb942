"""Q&A files: the one loader behind `ragqa train --data`, `ragqa eval --questions` and `eval --retrieval-only`.

A Q&A file is JSONL (one object a line), a .json list of objects, CSV or Parquet, with the fields `question`,
`answer` (see below), `id` (optional: FILE-STEM:N otherwise) and `gold_passage_ids` (optional: a list of
document ids, or one id). Anything else is one line naming the file, the line or row, the field and the fix
(ragqa.errors.RagqaError), never a partial load. Parsing goes through ragqa.corpus.read_records, the reader
corpus files use, so both give the same errors for the same damage.

The `answer` rule depends on the caller (load_qa's `need_answer`):
    True (training)          every row has a non-empty answer;
    ALL_OR_NONE (ragqa eval) every row has one (reference metrics) or none has (real user questions, scored on
                             the reference-free metrics only); a file mixing both is refused, naming the first
                             row without one, because a report that scores some rows against references and
                             others not would average two different things;
    False (retrieval-only)   answers are not read.
A blank answer (empty or only spaces, e.g. an empty CSV cell or a Parquet null) counts as no answer.

This module sits outside ragqa.train so that evaluation, which must not depend on training code, can use it.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragqa.corpus import clean_id, read_records
from ragqa.errors import RagqaError
from ragqa.files import sha256_file
from ragqa.passage import Passage

MAX_QUESTION_CHARS = 2000
"""Default of ask.max_question_chars: a question is a sentence or two, not a pasted document."""
ALL_OR_NONE = "all-or-none"
"""load_qa(need_answer=ALL_OR_NONE): answers in every row or in none (see the module docstring)."""
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
LABEL = "Q&A file"


@dataclass
class QARow:
    id: str
    question: str
    answer: str
    gold_ids: list[str] = field(default_factory=list)
    """Document ids of the passages the answer comes from (may be empty)."""
    group: str | None = None
    """The source document the question belongs to (MedQuAD `doc_id`: one condition), if the file says; the
    unit of the document-disjoint split (train.split_by)."""


def normalize_question(question: str) -> str:
    """Control characters become spaces, runs of space one space, no surrounding space."""
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in question)
    return re.sub(r"\s+", " ", text).strip()


def too_long(length: int, limit: int) -> str:
    return f"the question is {length} characters; the limit is {limit} (ask.max_question_chars): shorten it"


def clean_question(question: str, limit: int = MAX_QUESTION_CHARS) -> str:
    """The normalized question; an empty or over-long one is refused.

    Over-long questions are refused rather than cut: a cut question is a different question, answered as if
    it were the one asked.
    """
    text = normalize_question(question)
    if not text:
        raise RagqaError("the question is empty: type a question, e.g. ragqa ask \"What causes acne?\"")
    if len(text) > limit:
        raise RagqaError(too_long(len(text), limit))
    return text


def load_qa(paths: Sequence[str | Path], *, option: str = "train.data", need_answer: bool | str = True,
            max_question_chars: int = MAX_QUESTION_CHARS) -> tuple[list[QARow], dict[str, str]]:
    """Read and check every row of the Q&A files; returns the rows and each file's sha256.

    `option` names the setting the paths came from (in the not-found message); need_answer is True (every row
    needs an answer), False (rows may leave out `answer`: retrieval-only evaluation) or ALL_OR_NONE (all rows
    have an answer or none has; rows without one get answer ""). Ids must be unique across all files.
    """
    if need_answer not in (True, False, ALL_OR_NONE):
        raise ValueError(f"need_answer must be True, False or {ALL_OR_NONE!r}, not {need_answer!r}")
    rows: list[QARow] = []
    hashes: dict[str, str] = {}
    seen: dict[str, str] = {}
    with_answer: str | None = None
    """Where the first row with an answer is (ALL_OR_NONE)."""
    without: list[str] = []
    """Where the rows without an answer are (ALL_OR_NONE)."""
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise RagqaError(f"{option}: Q&A file {path} not found (give a .jsonl with question and answer fields)")
        if path.suffix.lower() not in SUFFIXES:
            raise RagqaError(f"{LABEL} {path}: unsupported file type '{path.suffix}' "
                             "(use .jsonl, .json, .csv or .parquet)")
        hashes[str(path)] = sha256_file(path)
        for n, (where, record) in enumerate(_records(path, need_answer is True), start=1):
            row = _row(record, path, where, f"{path.stem}:{n}", need_answer, max_question_chars)
            if row.id in seen:
                raise RagqaError(f"{LABEL} {path} {where}: id {row.id!r} is already used by {seen[row.id]}; "
                                 "give every question its own id")
            seen[row.id] = f"{path} {where}"
            rows.append(row)
            if row.answer:
                with_answer = with_answer or f"{path} {where}"
            else:
                without.append(f"{path} {where}")
    if need_answer == ALL_OR_NONE and with_answer and without:
        raise RagqaError(f"{LABEL} {without[0]}: no 'answer', but {with_answer} has one ({len(without)} of "
                         f"{len(rows)} rows have none); give every row an answer, or leave 'answer' out of every "
                         "row to score on the reference-free metrics only")
    return rows, hashes


def _records(path: Path, need_answer: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """('line N' / 'row N' / 'item N', record) for each record of the file."""
    columns = ["question", "answer"] if need_answer else ["question"]
    expect = "an object with question and answer fields"
    if path.suffix.lower() == ".json":
        yield from _read_json_list(path, expect)
        return
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    for n, record in read_records(path, label=LABEL, columns=columns, expect=expect,
                                  hint=f"a Q&A table needs the columns {' and '.join(columns)}"):
        yield f"{unit} {n}", record


def _read_json_list(path: Path, expect: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RagqaError(f"{LABEL} {path}: byte {exc.start} is not valid UTF-8; convert the file to UTF-8") from None
    except json.JSONDecodeError as exc:
        hint = " (one object a line is JSONL: name the file .jsonl)" if exc.msg == "Extra data" else ""
        raise RagqaError(f"{LABEL} {path}: line {exc.lineno} column {exc.colno} is not valid JSON ({exc.msg}); "
                         f"fix it{hint}") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise RagqaError(f"{LABEL} {path}: JSON nested too deeply; a .json Q&A file is one list of objects") \
            from None
    if not isinstance(data, list):
        raise RagqaError(f"{LABEL} {path}: the file holds a JSON {type(data).__name__}; a .json Q&A file is one "
                         f"list of {{question, answer}} objects")
    for n, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise RagqaError(f"{LABEL} {path}: item {n} of the list is a JSON {type(record).__name__}, "
                             f"expected {expect}")
        yield f"item {n}", record


def _text(record: dict[str, Any], key: str, path: Path, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else "empty" if isinstance(value, str) else f"a {type(value).__name__}"
        raise RagqaError(f"{LABEL} {path} {where}: '{key}' must be non-empty text ({got}); fix or remove the row")
    return value.strip()


def _row(record: dict[str, Any], path: Path, where: str, default_id: str, need_answer: bool | str,
         limit: int) -> QARow:
    """One checked row; `default_id` (FILE-STEM:N, N counting records) stands in for a missing id."""
    question = _text(record, "question", path, where)
    value = record.get("answer")
    # None: no field, a Parquet null; NaN: pandas' missing value; "": an empty CSV cell.
    blank = (value is None or isinstance(value, float) and math.isnan(value)
             or isinstance(value, str) and not value.strip())
    if need_answer is True or need_answer == ALL_OR_NONE and not blank:
        answer = _text(record, "answer", path, where)
    elif need_answer == ALL_OR_NONE:  # no answer: load_qa checks that no other row has one
        answer = ""
    else:  # retrieval-only evaluation never reads it
        answer = record["answer"].strip() if isinstance(record.get("answer"), str) else ""
    raw_id = record.get("id")
    if raw_id is None or raw_id == "":
        rid = default_id
    elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and clean_id(raw_id):
        rid = clean_id(raw_id)  # ids are printed in reports: no control characters
    else:
        raise RagqaError(f"{LABEL} {path} {where}: 'id' must be text or a whole number (got {raw_id!r:.40}); "
                         "fix it or leave it out")
    cleaned = normalize_question(question)  # what `ask` and `eval` will see
    if not cleaned:
        raise RagqaError(f"{LABEL} {path} {where} (id {rid}): the question has no visible text; fix or remove it")
    if len(cleaned) > limit:
        raise RagqaError(f"{LABEL} {path} {where} (id {rid}): {too_long(len(cleaned), limit)}")
    gold = record.get("gold_passage_ids")
    if gold is None or gold == "":
        gold = []
    elif isinstance(gold, str | int) and not isinstance(gold, bool):
        gold = [gold]
    if not isinstance(gold, list) or not all(isinstance(g, str | int) and not isinstance(g, bool) for g in gold):
        raise RagqaError(f"{LABEL} {path} {where} (id {rid}): 'gold_passage_ids' must be a list of document ids "
                         f"(got {gold!r:.60}); fix it or leave it out")
    group = record.get("doc_id")
    group = clean_id(group) if isinstance(group, str | int) and not isinstance(group, bool) else ""
    return QARow(rid, question, answer, [g for g in map(clean_id, gold) if g], group or None)


# ---------------------------------------------------------------- training rows: split and gold passage
# (shared by ragqa.train, ragqa.rerank and ragqa.query_tuning; here so that none of them imports another's code)


def load_train_qa(paths: Sequence[str],
                  max_question_chars: int = MAX_QUESTION_CHARS) -> tuple[list[QARow], dict[str, str]]:
    """The training Q&A rows (load_qa, the loader eval uses too) and each file's sha256; at least two rows."""
    rows, hashes = load_qa(paths, option="train.data", max_question_chars=max_question_chars)
    if len(rows) < 2:
        raise RagqaError(f"train.data: need at least 2 Q&A pairs, found {len(rows)} in {', '.join(paths)}")
    return rows, hashes


def split_rows(rows: list[QARow], val_fraction: float, seed: int,
               by: str = "question") -> tuple[list[QARow], list[QARow]]:
    """Deterministic train/val split: the same rows, fraction and seed always give the same split.

    by="document" splits whole groups (`QARow.group`): every question of a document lands on the same side,
    so the validation questions ask about conditions whose passages were never training answers. Groups are
    taken in seeded order until the validation side holds `val_fraction` of the questions. "auto" means
    "document" when every row has a group.
    """
    if by == "auto":
        by = "document" if rows and all(r.group for r in rows) else "question"
    n_val = min(len(rows) - 1, max(1, round(len(rows) * val_fraction)))
    if by == "question":
        ordered = sorted(rows, key=lambda r: r.id)
        random.Random(seed).shuffle(ordered)
        return ordered[n_val:], ordered[:n_val]
    if not all(r.group for r in rows):
        missing = next(r.id for r in rows if not r.group)
        raise RagqaError(f"train.split_by=document: Q&A row {missing} has no doc_id; add one to every row "
                         "or use --set train.split_by=question")
    groups: dict[str, list[QARow]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        groups.setdefault(row.group, []).append(row)
    if len(groups) < 2:
        raise RagqaError("train.split_by=document needs questions from at least 2 documents (doc_id); "
                         "use --set train.split_by=question")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    val: list[QARow] = []
    taken = 0
    while taken < len(names) - 1 and len(val) < n_val:
        val.extend(groups[names[taken]])
        taken += 1
    train = [r for name in names[taken:] for r in groups[name]]
    return train, val


_WORD_RE = re.compile(r"[a-z0-9]+")


def _overlap(a: str, b: str) -> int:
    return len(set(_WORD_RE.findall(a.lower())) & set(_WORD_RE.findall(b.lower())))


def gold_passage(retriever, row: QARow, mode: str) -> Passage | None:
    """The best chunk of the row's gold document(s); without gold ids, the top chunk retrieved by the answer.

    Among a gold document's chunks, the one sharing most words with the answer is taken (the Retriever
    has no API to score a given set of chunks, and word overlap is what makes a chunk support the answer).
    """
    chunks = [c for doc_id in row.gold_ids for c in retriever.chunks_of(doc_id)]
    if chunks:
        return max(chunks, key=lambda c: (_overlap(c.text, row.answer), -c.position))
    hits = retriever.retrieve(row.answer, k=1, mode=mode)
    return hits[0] if hits else None


def gold_siblings(rows: list[QARow], retriever, mode: str) -> dict[str, list[Passage]]:
    """Per document (`QARow.group`): the gold passages of all its questions, for same-document negatives."""
    found: dict[str, dict[str, Passage]] = {}
    for row in rows:
        if row.group and row.gold_ids:
            gold = gold_passage(retriever, row, mode)
            if gold is not None:
                found.setdefault(row.group, {})[gold.chunk_id] = gold
    return {group: list(passages.values()) for group, passages in found.items()}
