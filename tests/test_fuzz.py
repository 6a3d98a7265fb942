"""Property-based bad input: whatever bytes a corpus file or a question holds, ragqa either works or says
one line; no other exception (which the CLI would turn into a generic error) ever escapes."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragqa.answer import clean_question
from ragqa.corpus import load_corpus
from ragqa.errors import RagqaError
from ragqa.qa import load_qa

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
rows = st.dictionaries(st.sampled_from(["id", "text", "title", "url", "other"]), json_values, max_size=5)


def _load_or_refuse(path):
    try:
        corpus = load_corpus([str(path)])
    except RagqaError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return None
    for doc in corpus.documents:
        assert isinstance(doc.text, str) and doc.text.strip() and isinstance(doc.id, str) and doc.id
    return corpus


@SETTINGS
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".jsonl", ".csv", ".md", ".txt", ".parquet"]))
def test_random_bytes_in_any_format(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"corpus{suffix}"
    path.write_bytes(data)
    _load_or_refuse(path if suffix in (".jsonl", ".csv", ".parquet") else path.parent)


@SETTINGS
@given(lines=st.lists(st.one_of(rows, json_values), max_size=8), blank=st.booleans())
def test_jsonl_with_wrong_types_nesting_and_empty_fields(tmp_path_factory, lines, blank):
    path = tmp_path_factory.mktemp("fuzz") / "corpus.jsonl"
    body = "\n".join(json.dumps(line) for line in lines)
    path.write_text(body + ("\n\n" if blank else ""), encoding="utf-8")
    _load_or_refuse(path)


@SETTINGS
@given(question=st.text(max_size=300) | st.text(alphabet=st.characters(categories=["Cc", "Zs"]), max_size=50))
def test_questions_are_cleaned_or_refused(question):
    try:
        cleaned = clean_question(question)
    except RagqaError as exc:
        assert "empty" in str(exc)
        assert not "".join(ch for ch in question if ch.isprintable()).strip()
        return
    assert cleaned and cleaned == cleaned.strip() and len(cleaned) <= 2000
    assert all(ch.isprintable() for ch in cleaned)


def test_huge_question_is_refused_not_cut():
    # A cut question is a different question: say so instead (issue #22).
    assert len(clean_question("itch " * 399 + "itch")) == 1999
    with pytest.raises(RagqaError, match=r"^the question is 99999 characters; the limit is 2000 "
                                         r"\(ask.max_question_chars\)"):
        clean_question("itch " * 20_000)
    assert clean_question("itch " * 20_000, limit=200_000).startswith("itch itch")


# ---------------------------------------------------------------- Q&A files (ragqa.qa, used by train and eval)

texts = st.text(max_size=40) | st.text(min_size=1990, max_size=2010, alphabet="ab \x00")  # around the limit
qa_rows = st.fixed_dictionaries(  # mostly well-formed rows, with odd ids, gold ids, texts and extra fields
    {"question": texts, "answer": texts},
    optional={"id": json_values, "gold_passage_ids": json_values | st.lists(st.text(max_size=5)), "x": json_values},
) | st.dictionaries(st.sampled_from(["id", "question", "answer", "gold_passage_ids"]), json_values | texts,
                    max_size=4)


def _load_qa_or_refuse(path, need_answer=True):
    try:
        rows, hashes = load_qa([path], need_answer=need_answer)
    except RagqaError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
        return None
    assert list(hashes) == [str(path)]
    ids = [r.id for r in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        # Ids are printed in one-line reports; questions must pass `ask`'s cleaning and length limit.
        assert isinstance(row.id, str) and row.id and row.id.isprintable() and row.id == row.id.strip()
        assert isinstance(row.question, str) and len(clean_question(row.question)) <= 2000
        assert isinstance(row.answer, str) and (row.answer.strip() or not need_answer)
        assert all(isinstance(g, str) and g and g.isprintable() for g in row.gold_ids)
    return rows


@SETTINGS
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_qa_random_bytes_in_any_format(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"qa{suffix}"
    path.write_bytes(data)
    _load_qa_or_refuse(path)


@SETTINGS
@given(items=st.lists(st.one_of(qa_rows, json_values), max_size=6), as_list=st.booleans(),
       need_answer=st.booleans())
def test_qa_json_with_wrong_types_nesting_missing_fields_and_huge_strings(tmp_path_factory, items, as_list,
                                                                           need_answer):
    folder = tmp_path_factory.mktemp("fuzz")
    if as_list:
        path = folder / "qa.json"
        path.write_text(json.dumps(items), encoding="utf-8")
    else:
        path = folder / "qa.jsonl"
        path.write_text("\n".join(json.dumps(item) for item in items), encoding="utf-8")
    _load_qa_or_refuse(path, need_answer)


@SETTINGS
@given(items=st.lists(qa_rows, max_size=5), suffix=st.sampled_from([".csv", ".parquet"]))
def test_qa_tables_with_any_cell_values(tmp_path_factory, items, suffix):
    import pandas as pd

    path = tmp_path_factory.mktemp("fuzz") / f"qa{suffix}"
    # Cells as text (CSV) or as JSON text (Parquet, whose columns need one type): mixed columns still write.
    frame = pd.DataFrame([{k: v if isinstance(v, str) else json.dumps(v) for k, v in item.items()} for item in items])
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    _load_qa_or_refuse(path)


def test_qa_nesting_deeper_than_the_json_parser_recurses(tmp_path):
    for name, body in (("qa.json", "[" * 100_000), ("qa.jsonl", '{"question": ' + "[" * 100_000)):
        (tmp_path / name).write_text(body, encoding="utf-8")
        assert _load_qa_or_refuse(tmp_path / name) is None
