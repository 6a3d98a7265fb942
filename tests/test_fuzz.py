"""Property-based bad input: whatever bytes a corpus file or a question holds, ragqa either works or says
one line; no other exception (which the CLI would turn into a generic error) ever escapes."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragqa.answer import clean_question
from ragqa.corpus import load_corpus
from ragqa.errors import RagqaError

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


def test_huge_question_is_capped():
    assert len(clean_question("itch " * 20_000)) == 2000
