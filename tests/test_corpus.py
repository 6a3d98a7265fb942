"""Corpus loaders: every input format, field names, and bad input as one-line errors or counted skips."""

from __future__ import annotations

import csv
import json
import os

import pytest

from ragqa.corpus import Fields, fingerprint, load_corpus, resolve_path
from ragqa.errors import RagqaError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "title": "Acne", "text": "Acne is common.", "url": "http://x/a", "source": "S"},
    {"id": "b", "title": "Burns", "text": "Cool a burn with water."},
]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_jsonl(tmp_path):
    corpus = load_corpus([str(write_jsonl(tmp_path / "c.jsonl", ROWS))])
    docs = corpus.documents
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "Acne", "Acne is common."),
                                                      ("b", "Burns", "Cool a burn with water.")]
    assert docs[0].url == "http://x/a" and docs[0].source == "S" and docs[1].source == "c.jsonl"
    src = corpus.sources[0]
    assert src["documents"] == 2 and len(src["sha256"]) == 64 and src["bytes"] > 0


def test_csv_and_parquet_with_custom_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"key": "q1", "question": "What is acne?", "answer": "A skin condition."},
            {"key": "q2", "question": "What is a burn?", "answer": "Heat damage to skin."}]
    with open(tmp_path / "qa.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["key", "question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    fields = Fields(text="answer", id="key", title="question")
    for name in ("qa.csv", "qa.parquet"):
        docs = load_corpus([str(tmp_path / name)], fields).documents
        assert [(d.id, d.title, d.text) for d in docs] == [("q1", "What is acne?", "A skin condition."),
                                                          ("q2", "What is a burn?", "Heat damage to skin.")]


def test_folder_of_md_and_txt(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "acne.md").write_text("# Acne basics\n\nAcne is common.", encoding="utf-8")
    (folder / "sub" / "burn_care.txt").write_text("Cool a burn with water.", encoding="utf-8")
    (folder / "ignored.csv").write_text("x", encoding="utf-8")
    (folder / ".hidden.md").write_text("secret", encoding="utf-8")
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    outside = tmp_path / "outside.md"
    outside.write_text("outside the folder", encoding="utf-8")
    os.symlink(outside, folder / "link.md")
    corpus = load_corpus([str(folder)])
    assert [(d.id, d.title) for d in corpus.documents] == [("acne.md", "Acne basics"),
                                                         ("sub/burn_care.txt", "burn care")]
    skipped = corpus.sources[0]["skipped"]
    assert skipped == {"link(s) pointing outside the folder": 1, "empty file": 1}
    assert len(corpus.warnings) == 2


def test_several_inputs_make_one_corpus_and_ids_stay_unique(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)
    b = write_jsonl(tmp_path / "b.jsonl", [ROWS[0], {"id": "b", "text": "A different text for b."},
                                           {"id": "c", "text": "Third."}])
    corpus = load_corpus([str(a), str(b)])
    assert [d.id for d in corpus.documents] == ["a", "b", "b~2", "c"]
    assert corpus.sources[1]["skipped"] == {"exact duplicate (same id and text)": 1,
                                            "duplicate id with different text, renamed ID~N (kept)": 1}


def test_default_starter_corpus_found_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve_path("corpora/starter/passages.jsonl")
    assert path.is_file()
    assert len(load_corpus(["corpora/starter/passages.jsonl"]).documents) == 51


def test_shared_data_passages_and_qa_answers_load(shared_data):
    passages = load_corpus([str(shared_data / "medquad-passages.jsonl")])
    assert len(passages.documents) == 16407  # 34 reused ids with different text are renamed, not dropped
    assert passages.sources[0]["skipped"] == {"duplicate id with different text, renamed ID~N (kept)": 34}
    qa = load_corpus([str(shared_data / "mreeb-dermatology-qa.jsonl")], Fields(text="answer"))
    assert len(qa.documents) == 1351 and qa.documents[0].id == "mreeb:0"


# ----------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(RagqaError) as exc:
        load_corpus([str(tmp_path / "nope.jsonl")])
    assert "nope.jsonl" in one_line(exc) and "no such file" in one_line(exc)


@pytest.mark.parametrize("content", ["", "\n\n", json.dumps({"id": "x", "text": "  "}) + "\n"])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RagqaError) as exc:
        load_corpus([str(path)])
    assert "empty.jsonl" in one_line(exc) and "no usable documents" in one_line(exc)


def test_wrong_column_name(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"id": "1", "question": "q", "answer": "a"}])
    with pytest.raises(RagqaError) as exc:
        load_corpus([str(path)])
    msg = one_line(exc)
    assert "qa.jsonl" in msg and "'text'" in msg and "answer" in msg and "--text-field" in msg
    (tmp_path / "qa.csv").write_text("id,answer\n1,a\n", encoding="utf-8")
    with pytest.raises(RagqaError, match=r"qa\.csv: no column 'text' \(columns: id, answer\)"):
        load_corpus([str(tmp_path / "qa.csv")])


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "1", "text": "fine"}\n{"id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(RagqaError) as exc:
        load_corpus([str(path)])
    assert "latin1.jsonl: line 2 is not valid UTF-8" in one_line(exc)
    txt = tmp_path / "notes"
    txt.mkdir()
    (txt / "a.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(RagqaError, match=r"a\.txt: byte 0 is not valid UTF-8"):
        load_corpus([str(txt)])


def test_invalid_json_and_non_object_lines(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "ok"}\n{"id": 2, "text": \n', encoding="utf-8")
    with pytest.raises(RagqaError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_corpus([str(bad)])
    arr = tmp_path / "arr.jsonl"
    arr.write_text('["a", "b"]\n', encoding="utf-8")
    with pytest.raises(RagqaError, match=r"arr\.jsonl: line 1 is a JSON list"):
        load_corpus([str(arr)])


def test_huge_single_line_is_skipped_with_a_count(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "big", "text": "x" * 50_000_000}) + "\n")
        fh.write(json.dumps({"id": "ok", "text": "A normal passage."}) + "\n")
    corpus = load_corpus([str(path)])
    assert [d.id for d in corpus.documents] == ["ok"]
    assert corpus.sources[0]["skipped"] == {"longer than index.max_doc_chars=1000000": 1}
    assert any("huge.jsonl: 1 record(s) longer than" in w for w in corpus.warnings)


def test_wrong_types_and_empty_fields_are_counted(tmp_path):
    rows = [{"id": "1", "text": {"nested": "json"}}, {"id": "2", "text": 42}, {"id": "3", "text": None},
            {"id": "4", "text": ""}, {"id": None, "text": "no id"}, {"id": ["x"], "title": 7, "text": "odd id"},
            {"id": "5", "text": "good"}]
    corpus = load_corpus([str(write_jsonl(tmp_path / "mixed.jsonl", rows))])
    assert [(d.id, d.title) for d in corpus.documents] == [("mixed:5", ""), ("mixed:6", ""), ("5", "")]
    assert corpus.sources[0]["skipped"] == {"with a non-text 'text' (dict)": 1, "with a non-text 'text' (int)": 1,
                                            "with a non-text 'text' (NoneType)": 1, "with empty 'text'": 1}


def test_ids_are_data_not_paths(tmp_path):
    rows = [{"id": "../../etc/passwd", "text": "one"}, {"id": "a\nb\x00c", "text": "two"}]
    docs = load_corpus([str(write_jsonl(tmp_path / "ids.jsonl", rows))]).documents
    assert [d.id for d in docs] == ["../../etc/passwd", "a b c"]  # kept verbatim, control characters removed


def test_unsupported_suffix_and_hf_without_network(tmp_path, monkeypatch):
    (tmp_path / "c.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(RagqaError, match="unsupported file type '.xml'"):
        load_corpus([str(tmp_path / "c.xml")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RagqaError) as exc:
        load_corpus(["hf:nobody/no-such-dataset-ragqa"])
    assert "hf:nobody/no-such-dataset-ragqa" in one_line(exc) and "network" in one_line(exc)


def test_fingerprint_changes_with_content(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    first = fingerprint(str(path))["sha256"]
    write_jsonl(path, ROWS[:1])
    assert fingerprint(str(path))["sha256"] != first
