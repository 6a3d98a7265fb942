"""`ragqa ask`: the terminal front-end of the answer pipeline (one-shot, interactive, or JSON lines)."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.text import Text

from ragqa.adapters import AdapterSpec
from ragqa.answer import CLOSED_BOOK_NOTE, Pipeline, clean_question
from ragqa.config import Config
from ragqa.errors import RagqaError
from ragqa.passage import RETRIEVAL_MODES
from ragqa.terminal import markup_safe, plain

HELP = (f":k N  passages to retrieve | :mode {'|'.join(RETRIEVAL_MODES)} | :adapter NAME|off  answer with another "
        "adapter, or the base | :sources  last answer's passages | :quit")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def _check_index(cfg: Config) -> None:
    """Fail fast, before the model loads, when retrieval needs an index that is not there or whose manifest is
    damaged. The index is found as the retriever finds it (index.manifest.find_index), so one that a killed
    writer left in its backup is accepted here as it is read there."""
    if cfg.retrieval.mode == "none":
        return
    from ragqa.index.manifest import find_index, read_manifest

    read_manifest(find_index(cfg.index.name, alternative=" (or use --retrieval none)"))


def print_sources(answer, only_cited: bool = True) -> None:
    numbers = answer.citations if (only_cited and answer.citations) else range(1, len(answer.passages) + 1)
    if only_cited and answer.citations:
        label = "Sources cited"
    else:
        label = "Nearest sources" if answer.abstained else "Sources retrieved (none cited)"
    if not answer.passages:
        return
    out.print(f"\n[bold]{label}[/bold]")
    for n in numbers:
        p = answer.passages[n - 1]
        # Titles, sources, URLs and ids come from the corpus: shown literally, never as markup or escapes.
        where = " · ".join(markup_safe(x) for x in (p.source, p.url) if x)
        cosine = p.scores.get("dense")
        sim = f" (similarity {cosine:.2f})" if cosine is not None else ""
        out.print(f"  \\[{n}] {markup_safe(p.title or p.doc_id)}{sim}\n"
                  f"      [dim]{where} · {markup_safe(p.chunk_id)}[/dim]")


NOT_CHECKED_NOTE = "Not checked: a closed-book answer has no passages to check it against."


def print_check(answer, streamed: bool) -> None:
    """After a checked answer: the sentences removed (dim, marked) and which scorer checked it.

    Sentences are model output: printed as plain Text, never as rich markup."""
    if answer.checked_by is None:
        if answer.retrieval == "none" and not answer.abstained:
            out.print(Text(NOT_CHECKED_NOTE, style="dim"))
        return
    sentences = answer.sentences or []
    if answer.withdrawn:
        where = "above " if streamed else ""
        out.print(Text(f"No sentence of the answer {where}is both supported by the passages and informative "
                       f"(checked by {answer.checked_by}): it is withdrawn.", style="yellow"))
        if not streamed:
            from ragqa.judge.check import dropped_because

            for s in sentences:
                out.print(Text.assemble((f"  removed ({dropped_because(s['label'])}): ", "dim"),
                                        (s["text"], "dim strike")))
        return
    from ragqa.judge.check import dropped_because

    removed = [s for s in sentences if not s["supported"]]
    for s in removed:
        out.print(Text.assemble((f"removed ({dropped_because(s['label'])}): ", "dim"), (s["text"], "dim strike")))
    if streamed:  # the streamed text carries the model's own markers; say which ones the check set
        for s in sentences:
            if s["supported"] and s.get("citation", "model") != "model":
                out.print(Text.assemble((f"citation {s['citation']} (supported by [{s['passage']}]): ", "dim"),
                                        (s["text"], "dim")))
    kept = len(sentences) - len(removed)
    out.print(Text(f"checked by {answer.checked_by}: {kept} of {len(sentences)} sentence(s) supported", style="dim"))


def _show(answer, as_json: bool, streamed: bool) -> None:
    if as_json:
        print(json.dumps(answer.to_dict()), flush=True)
        return
    if answer.withdrawn:
        out.print()
        print_check(answer, streamed)
    if answer.abstained:
        out.print(plain(answer.answer, style="yellow", newlines=True))
        print_sources(answer, only_cited=False)
    else:
        if not streamed:
            out.print(plain(answer.answer, newlines=True))
        else:
            out.print()
        if answer.removed_citations:
            out.print(f"[dim]({answer.removed_citations} citation marker(s) pointing at no passage removed)[/dim]")
        print_check(answer, streamed)
        if answer.retrieval == "none":  # said once, where the sources would be listed
            out.print(f"[dim]{CLOSED_BOOK_NOTE}[/dim]")
        else:
            print_sources(answer)
    t = answer.timings
    out.print(f"[dim]retrieval {t.get('retrieve_s', 0):.2f}s · first token {t.get('ttft_s', 0):.2f}s · "
              f"{t.get('tokens_per_s', 0):.1f} tok/s"
              + (f" · check {t['verify_s']:.2f}s" if "verify_s" in t else "") + "[/dim]")
    if answer.disclaimer:
        out.print(f"[dim italic]{answer.disclaimer}[/dim italic]")


def answer_one(pipe, question: str, mode: str, k: int, as_json: bool):
    """Answer and display one question, streaming tokens unless JSON is asked for."""
    # Model output is untrusted: each piece is shown literally (an ESC split across pieces is still replaced).
    stream = None if as_json else (lambda piece: out.print(plain(piece, newlines=True), end=""))
    answer = pipe.answer(question, retrieval=mode, k=k, on_token=stream)
    _show(answer, as_json, streamed=stream is not None and (not answer.abstained or answer.withdrawn))
    return answer


def _session(pipe, cfg: Config, as_json: bool) -> None:
    """Read questions until EOF or :quit; ':' commands change k and mode between questions."""
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_history()
        out.print(f"[bold]ragqa[/bold] interactive session. {HELP}")
    mode, k, last = cfg.retrieval.mode, cfg.retrieval.k, None
    while True:
        try:
            line = input("ragqa> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith(":"):
            cmd, _, arg = line[1:].partition(" ")
            if cmd in ("q", "quit", "exit"):
                break
            if cmd == "k" and arg.strip().isdigit() and int(arg) > 0:
                k = int(arg)
            elif cmd == "mode" and arg.strip() in RETRIEVAL_MODES:
                mode = arg.strip()
            elif cmd == "sources" and last is not None:
                print_sources(last, only_cited=False)
            elif cmd == "adapter" and arg.strip():
                try:
                    active = pipe.switch_adapter(arg)
                except RagqaError as exc:  # a mistyped name must not end the session either
                    err.print(plain(f"error: {exc}"), soft_wrap=True)
                    continue
                err.print(plain(f"answering with adapter {active}" if active else "answering with the base model "
                                "(adapter off)"), soft_wrap=True)
            else:
                err.print(HELP)
            continue
        try:
            last = answer_one(pipe, line, mode, k, as_json)
        except RagqaError as exc:  # one bad question must not end the session
            # One line, as the CLI prints it: no wrapping at the terminal width, and no markup (the message
            # quotes file names and text that are not ragqa's).
            err.print(plain(f"error: {exc}"), soft_wrap=True)


def _enable_history() -> None:
    try:
        import readline

        from ragqa.models import cache_dir

        history = cache_dir() / "ask_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
        import atexit

        atexit.register(readline.write_history_file, history)
    except (ImportError, OSError):
        pass


def run(cfg: Config, question: str | None, adapter: str | AdapterSpec | None, as_json: bool) -> None:
    """Entry point of `ragqa ask`."""
    if question is not None:
        question = clean_question(question, cfg.ask.max_question_chars)  # refused before the model loads
    _check_index(cfg)
    spec = AdapterSpec.of(adapter)
    if spec:
        from ragqa.adapters import check_adapters

        check_adapters(spec, cfg.model.base)  # a refused adapter fails before the model loads
    with err.status("loading model and index ...", spinner="dots"):
        pipe = Pipeline(cfg, adapter=spec)
    if question is not None:
        answer_one(pipe, question, cfg.retrieval.mode, cfg.retrieval.k, as_json)
    else:
        _session(pipe, cfg, as_json)
