"""Hostile text (corpus titles, URLs, ids, model output) reaches the terminal literally: no markup, no escapes."""

import json
import re

import pytest

from conftest import run_cli

ESC = "\x1b"
# Closes styles rich never opened (MarkupError), a rich link, an OSC-8 hyperlink, a colour change.
TITLE = f"x [/b] [/dim] [link=http://evil]y[/link] {ESC}]8;;http://evil{ESC}\\z{ESC}[31mred"
SHOWN = r"x [/b] [/dim] [link=http://evil]y[/link] \x1b]8;;http://evil\x1b\z\x1b[31mred"
URL = f"http://ok/[link=http://evil]u[/link]{ESC}[2J"


def _corpus(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": "d1[/b]", "title": TITLE, "url": URL, "source": "src[/dim]",
         "text": "Scabies is an itchy skin infestation caused by the mite Sarcoptes scabiei. "
                 "Scabies is treated with permethrin 5% cream applied to the whole body."},
        {"id": "d2", "title": "[/b]Acne", "text": f"Acne is a common skin condition.{ESC}[2J"},
        {"id": "d3", "title": "no text"},  # skipped: its warning names the corpus file
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_printable_escapes_controls_visibly():
    from ragqa.terminal import markup_safe, plain, printable

    assert printable(TITLE) == SHOWN
    assert printable("a\tb\nc\r\x07\x9b\u202e") == r"a\x09b\x0ac\x0d\x07\x9b\u202e"
    assert printable("line 1\n\tline 2\r", newlines=True) == "line 1\n\tline 2\\x0d"
    assert printable("Acne [1] is common.") == "Acne [1] is common."  # ordinary text unchanged
    assert ESC not in markup_safe(TITLE) and plain(TITLE).plain == SHOWN


def _render(console, renderable) -> str:
    with console.capture() as cap:
        console.print(renderable)
    return cap.get()


def test_markup_safe_and_plain_render_literally():
    from rich.console import Console

    from ragqa.terminal import markup_safe, plain

    # A real colour terminal: rich's own styles are SGR sequences; anything else would come from the text.
    console = Console(force_terminal=True, color_system="truecolor", width=300, highlight=False)
    for shown in (_render(console, f"[dim]{markup_safe(TITLE)}[/dim]"), _render(console, plain(TITLE))):
        assert "http://evil" in shown and "\x1b]8" not in shown  # no hyperlink, neither OSC-8 nor [link]
        text = re.sub("\x1b\\[[0-9;]*m", "", shown)
        assert ESC not in text and SHOWN in text
    # A trailing backslash must not escape the closing tag that follows it.
    ending = markup_safe("end \\")
    assert re.sub("\x1b\\[[0-9;]*m", "", _render(console, f"[dim]{ending}[/dim]")) == "end \\\n"


def _answer(passages, text="Treat it with permethrin [1]."):
    from ragqa.answer import Answer

    return Answer("How is scabies treated?", text, passages, [1], 0, False, "hybrid", None,
                  {"retrieve_s": 0.1, "ttft_s": 0.2, "tokens_per_s": 10.0})


def _hostile_passage():
    from ragqa.passage import Passage

    return Passage(chunk_id="d1[/b]#0", doc_id="d1[/b]", text="Scabies.", title=TITLE, source="src[/dim]",
                   url=URL, scores={"dense": 0.8})


def test_sources_show_titles_urls_and_ids_literally():
    from ragqa import ask

    with ask.out.capture() as cap:
        ask.print_sources(_answer([_hostile_passage()]))
    shown = cap.get()
    assert ESC not in shown
    assert SHOWN in shown and "src[/dim]" in shown and "d1[/b]#0" in shown
    assert r"http://ok/[link=http://evil]u[/link]\x1b[2J" in shown


class _StreamingPipe:
    """Stands in for Pipeline: streams model output that carries markup and an escape split across pieces."""

    PIECES = ["Use [/b] permethrin ", f"{ESC}]8;;http://evil", f"{ESC}\\link{ESC}", "[31m [link=x]y[/link] [1]."]

    def answer(self, question, retrieval, k, on_token):
        for piece in self.PIECES:
            on_token(piece)
        return _answer([_hostile_passage()], text="".join(self.PIECES))


def test_streamed_tokens_and_answers_are_shown_literally():
    from ragqa import ask

    with ask.out.capture() as cap:
        ask.answer_one(_StreamingPipe(), "How is scabies treated?", "hybrid", 1, as_json=False)
    with ask.out.capture() as whole:
        ask._show(_answer([_hostile_passage()], text="".join(_StreamingPipe.PIECES)), False, streamed=False)
    for shown in (cap.get(), whole.get()):
        assert ESC not in shown
        assert r"Use [/b] permethrin \x1b]8;;http://evil\x1b\link\x1b[31m [link=x]y[/link] [1]." in shown


def test_stats_show_hostile_paths_literally(tmp_path, embedder, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that rich folds no path across lines
    from ragqa.config import load_config
    from ragqa.index import ingest, print_stats

    # "[/dim]" and "[/b]" inside paths: a folder "x[" holding "dim]..." (a name cannot hold "/").
    index = tmp_path / "idx[" / f"dim]{ESC}[31m"
    index.parent.mkdir()
    corpus = _corpus(tmp_path / "c[" / "b].jsonl")
    overrides = [f"index.name={json.dumps(str(index))}", f"index.corpus={json.dumps([str(corpus)])}"]
    ingest(load_config(None, overrides), embedder=embedder)
    capsys.readouterr()
    print_stats(str(index))
    shown = capsys.readouterr().out
    assert ESC not in shown
    assert r"idx[/dim]\x1b[31m" in shown
    assert "c[/b].jsonl: 2 documents, 1 skipped" in shown


@pytest.mark.slow
def test_cli_ingest_stats_and_ask_with_a_hostile_corpus(tmp_path):
    """The CLI end to end: ingest (progress, warning, summary), ingest --stats and a streamed ask."""
    index = tmp_path / "idx[" / "b]"
    index.parent.mkdir()
    corpus = _corpus(tmp_path / "c[" / "dim].jsonl")
    res = run_cli("ingest", "--corpus", str(corpus), "--index", str(index))
    assert res.returncode == 0, res.stderr
    assert ESC not in res.stdout + res.stderr and "idx[/b]: 2 documents" in res.stderr
    assert "c[/dim].jsonl: 1 record(s)" in res.stderr
    res = run_cli("ingest", "--stats", "--index", str(index), env={"COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    assert ESC not in res.stdout and "c[/dim].jsonl: 2 documents" in res.stdout
    res = run_cli("ask", "How is scabies treated with permethrin?", "--index", str(index), "--k", "1",
                  "--max-new-tokens", "8", env={"COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    assert ESC not in res.stdout + res.stderr
    assert SHOWN in res.stdout and r"[link=http://evil]u[/link]\x1b[2J" in res.stdout


def test_error_lines_escape_control_characters(tmp_path):
    """Error messages quote paths and corpus values: one line, escapes visible (click strips only CSI codes)."""
    missing = tmp_path / f"no{ESC}]8;;evil.example{ESC}\\idx[/b]"
    res = run_cli("ask", "What is acne?", "--index", str(missing))
    assert res.returncode == 2 and ESC not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert r"no\x1b]8;;evil.example\x1b\idx[/b]" in res.stderr
