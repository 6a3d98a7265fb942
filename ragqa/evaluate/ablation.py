"""The ablation matrix: every question x configuration (base / lora / rag / rag+lora ...), resumable.

Each finished (question, configuration) pair is appended to results.jsonl as one line (flushed and
fsynced) with its answer, passages, timings and scores, so a killed run keeps everything so far and the
next run continues where it stopped without duplicates. The report is rebuilt from results.jsonl into a new
folder (with results.jsonl, run.json and whatever else the folder holds, hard-linked) that replaces the old
one in one rename: the report and its results always change together.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragqa.adapters import ADAPTER_WEIGHTS, AdapterSpec, read_card
from ragqa.config import Config
from ragqa.errors import RagqaError
from ragqa.files import (atomic_dir, check_output_dir, make_dir, recover, sha256_file, write_error,
                         write_json_atomic)
from ragqa.passage import SEARCH_MODES, Passage, search_mode
from ragqa.qa import ALL_OR_NONE, MAX_QUESTION_CHARS, load_qa

STARTER_QA = "corpora/starter/qa.jsonl"
DEFAULT_CONFIGS = "base,lora,rag,rag+lora"
RESULTS = "results.jsonl"
RUN_META = "run.json"
RETRIEVAL_FILES = ("retrieval.json", "retrieval.md")
MARKERS = (RUN_META, "summary.json", "retrieval.json")
"""Files only `ragqa eval` writes: a folder holding one is an eval report that a new run may replace."""


@dataclass(frozen=True)
class MatrixRow:
    """One row of the matrix: a name given to `ragqa eval --configs` (base, rag+lora, ...). Not a recipe: the
    config of the run (`--config`, ragqa.config.Config, its `eval` section EvalSettings) is the same for all rows."""

    name: str
    retrieval: str
    """A retrieval mode (ragqa.passage.RETRIEVAL_MODES): none, or the search mode of a rag row."""
    use_adapter: bool


def parse_configs(text: str, default_mode: str) -> list[MatrixRow]:
    """'base,lora,rag,rag+lora' (+ extra rows for each search mode: dense, bm25, hybrid, each optionally '+lora')."""
    rag_mode = search_mode(default_mode)
    out: list[MatrixRow] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        head, _, tail = name.partition("+")
        if tail not in ("", "lora") or head not in ("base", "lora", "rag", *SEARCH_MODES):
            raise RagqaError(f"--configs: unknown configuration '{raw.strip()}' (use base, lora, rag, rag+lora, "
                             f"or {' / '.join(SEARCH_MODES)} with optional +lora)")
        if head in ("base", "lora") and tail:
            raise RagqaError(f"--configs: '{name}' is not a configuration (did you mean rag+lora?)")
        mode = {"base": "none", "lora": "none", "rag": rag_mode}.get(head, head)
        config = MatrixRow(name, mode, head == "lora" or tail == "lora")
        if config.name not in {c.name for c in out}:
            out.append(config)
    if not out:
        raise RagqaError("--configs: give at least one configuration, e.g. --configs base,rag")
    return out


def load_questions(path: str | Path, max_question_chars: int = MAX_QUESTION_CHARS) -> list[dict[str, Any]]:
    """Q&A rows {id, question, answer, gold_passage_ids} from JSONL/JSON/CSV/Parquet (ragqa.qa, as training).

    Answers are in every row or in none (ragqa.qa.ALL_OR_NONE): a file of real user questions without reference
    answers (answer "") is scored on the reference-free metrics only; a file mixing both is refused."""
    rows, _ = load_qa([path], option="--questions", need_answer=ALL_OR_NONE, max_question_chars=max_question_chars)
    if not rows:
        raise RagqaError(f"--questions {path}: no questions in the file")
    return [{"id": r.id, "question": r.question, "answer": r.answer, "gold_passage_ids": r.gold_ids} for r in rows]


def adapter_split(adapter: str | None) -> dict[str, list[str]] | None:
    """The {'train': ids, 'val': ids} split saved in the adapter's ragqa_card.json (None without one)."""
    if not adapter:
        return None
    card = read_card(adapter)
    split = (card or {}).get("split")
    if not isinstance(split, dict):
        return None
    return {key: [str(i) for i in split.get(key) or []] for key in ("train", "val")}


def _trained_file(adapter: str) -> str | None:
    data = (((read_card(adapter) or {}).get("config") or {}).get("train") or {}).get("data")
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], str) and Path(data[0]).is_file():
        return data[0]
    return None


def trained_questions(adapter: str | AdapterSpec | None) -> str | None:
    """The Q&A file an adapter was trained on (all of a combination's adapters), when it was one file that is still
    there: its held-out split is the natural default question set (the starter Q&A otherwise)."""
    spec = AdapterSpec.of(adapter)
    files = {_trained_file(p) for p in spec.paths} if spec else {None}
    return files.pop() if len(files) == 1 else None


def select_questions(rows: list[dict], adapter: str | AdapterSpec | None, *, default_set: bool,
                     exclude_trained: bool, limit: int | None, sample: int | None = None,
                     seed: int = 0) -> tuple[list[dict], dict[str, Any]]:
    """Apply the training-split guard, the held-out default, --sample (N at random, seeded, in file order)
    and --limit; returns (rows, notes). A combination of adapters guards against every adapter's training
    questions, and its default set is the questions all of them held out."""
    spec = AdapterSpec.of(adapter)
    splits = {p: adapter_split(p) for p in (spec.paths if spec else ())}
    notes: dict[str, Any] = {"excluded_trained": 0}
    unknown = [p for p, split in splits.items() if split is None]
    if unknown:
        notes["warning"] = (f"adapter {unknown[0]} has no split in ragqa_card.json: cannot check that questions "
                            "were not trained on")
    known = {p: split for p, split in splits.items() if split is not None}
    if known:
        trained_by = {p: set(split["train"]) for p, split in known.items()}
        trained = set().union(*trained_by.values())
        if default_set:
            held_out = set.intersection(*(set(split["val"]) for split in known.values()))
            rows = [r for r in rows if r["id"] in held_out]
        overlap = [r["id"] for r in rows if r["id"] in trained]
        if overlap and not exclude_trained:
            which = next(p for p, ids in trained_by.items() if overlap[0] in ids)
            raise RagqaError(
                f"{len(overlap)} of the questions (e.g. {overlap[0]}) are in the training split of adapter "
                f"{which}: scoring them would overstate the adapter; use held-out questions, or "
                "--exclude-trained to drop them"
            )
        notes["excluded_trained"] = len(overlap)
        rows = [r for r in rows if r["id"] not in trained]
    if sample is not None and sample < len(rows):
        keep = set(random.Random(seed).sample(range(len(rows)), sample))
        rows = [r for i, r in enumerate(rows) if i in keep]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise RagqaError("no questions left to evaluate (check --questions, --limit and the adapter's split)")
    return rows, notes


def _record_line(record: dict) -> str:
    """One results.jsonl line."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


class ResultsLog:
    """results.jsonl: one JSON line per finished (question, configuration), appended with fsync."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []
        self.dropped_partial = False
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A kill mid-write leaves a partial last line: cut it so the next append starts clean.
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
            self.dropped_partial = True
        seen: set[tuple[str, str]] = set()
        for n, line in enumerate(data[:end].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["qid"]), str(rec["config"]))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise RagqaError(f"{self.path} line {n}: damaged record; delete the file (or use --fresh) "
                                 "to start the evaluation again") from None
            if key not in seen:
                seen.add(key)
                self.records.append(rec)

    @property
    def done(self) -> set[tuple[str, str]]:
        return {(str(r["qid"]), str(r["config"])) for r in self.records}

    def append(self, record: dict) -> None:
        """Write one record durably; a kill before the fsync loses at most this record, a full disk none."""
        line = memoryview(_record_line(record).encode("utf-8"))
        with open(self.path, "ab", buffering=0) as fh:  # unbuffered: the line goes out in one write()
            end = fh.tell()
            try:
                while line:  # a short write (disk full, file-size limit) is retried to get its error
                    written = fh.write(line)
                    if not written:
                        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.path))
                    line = line[written:]
                os.fsync(fh.fileno())
            except OSError as exc:
                with contextlib.suppress(OSError):
                    fh.truncate(end)  # no partial line left behind
                raise write_error(self.path, exc.errno, "--output") from None
        self.records.append(record)


def _adapter_sha256(adapter: str | None) -> str | None:
    weights = Path(adapter) / ADAPTER_WEIGHTS if adapter else None
    return sha256_file(weights) if weights and weights.is_file() else None


def run_fingerprint(cfg: Config, questions_path: str, adapter: str | AdapterSpec | None,
                    judge: str | None) -> dict[str, Any]:
    """What must not change between a run and its resume (results would otherwise mix two setups)."""
    spec = AdapterSpec.of(adapter)
    single = spec.paths[0] if spec and not spec.combined else None
    combination = {"adapter": list(spec.paths), "adapter_sha256": [_adapter_sha256(p) for p in spec.paths],
                   "adapter_weights": list(spec.weights)} if spec and spec.combined else {}
    return {
        "questions": str(questions_path),
        "questions_sha256": sha256_file(questions_path),
        "adapter": single,
        "adapter_sha256": _adapter_sha256(single),
        **combination,
        "model": cfg.model.base,
        "embedder": cfg.model.embedder,
        "index": cfg.index.name,
        "retrieval": cfg.retrieval.model_dump(mode="json"),
        # The engine is part of the setup (its answers differ), but the torch default adds no keys, so reports
        # begun before ask.engine existed still resume.
        "ask": {k: v for k, v in cfg.ask.model_dump(mode="json").items() if k not in ("threads", "disclaimer")
                and not (k in ("engine", "engine_weights") and cfg.ask.engine == "torch")},
        "judge": judge,
        "batch_size": cfg.eval.batch_size,
    }


def describe_retrieval(r) -> str:
    """The report's retrieval line: the mode, k and, when set, the reranker (it changes which passages are shown)."""
    text = f"{r.mode}, k={r.k}"
    return text + (f", top {r.rerank_candidates} reranked by {r.rerank}" if r.rerank else "")


def prepare_output(output: Path, fingerprint: dict[str, Any], fresh: bool) -> ResultsLog:
    """Create the output folder; refuse to resume into results from a different setup."""
    make_dir(output)
    meta_path, results = output / RUN_META, output / RESULTS
    if fresh:
        results.unlink(missing_ok=True)
    previous: dict[str, Any] = {}
    if meta_path.is_file() and results.is_file():
        try:
            previous = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        before = previous.get("fingerprint", {}) if isinstance(previous, dict) else {}
        changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
        if changed:
            raise RagqaError(f"{output} holds results of a different run ({', '.join(changed)} changed): "
                             "use --fresh to start over, or another --output")
    write_json_atomic(meta_path, {"fingerprint": fingerprint, "nli_judge": previous.get("nli_judge", "not run"),
                                  "ref_scorer": previous.get("ref_scorer", "not run"),
                                  "answer_relevance": previous.get("answer_relevance", "not run"),
                                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2, sort_keys=True)
    return ResultsLog(results)


def open_for_rescore(output: Path, fingerprint: dict[str, Any]) -> ResultsLog:
    """The stored results of the run `fingerprint` describes; only the LLM judge may differ (it is what a
    rescore may add)."""
    meta_path, results = output / RUN_META, output / RESULTS
    if not (meta_path.is_file() and results.is_file()):
        raise RagqaError(f"--rescore: {output} holds no eval results; run `ragqa eval` without --rescore first")
    try:
        before = json.loads(meta_path.read_text(encoding="utf-8")).get("fingerprint", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise RagqaError(f"--rescore: {meta_path} is damaged; run the evaluation again with --fresh") from None
    changed = sorted(k for k in fingerprint if k != "judge" and before.get(k) != fingerprint[k])
    if changed:
        raise RagqaError(f"--rescore: {output} holds answers of a different run ({', '.join(changed)} changed): "
                         "pass the options that run used")
    return ResultsLog(results)


def write_records(path: Path, records: list[dict]) -> None:
    """A whole results.jsonl, in ResultsLog's line format (the caller's folder swap makes it atomic)."""
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(_record_line(record))
        fh.flush()
        os.fsync(fh.fileno())


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no copy of a large results.jsonl, and no extra space on a nearly full disk
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def report_swap(output: Path, rewritten: tuple[str, ...]):
    """A new folder for the report files `rewritten`, holding everything else `output` holds (results.jsonl,
    run.json, the other report, a user's notes), that replaces `output` in one rename on success."""
    with atomic_dir(output, action=f"cannot write the report {output}", kept="report folder") as tmp:
        if output.is_dir():
            shutil.copytree(output, tmp, symlinks=True, dirs_exist_ok=True, copy_function=_link_or_copy,
                            ignore=lambda folder, names: rewritten if Path(folder) == output else ())
        yield tmp


def _passage_record(p) -> dict[str, Any]:
    return {"chunk_id": p.chunk_id, "doc_id": p.doc_id, "title": p.title, "text": p.text,
            "score": round(float(p.score), 6)}


JUDGE_NOTES = ("nli_judge", "ref_scorer", "answer_relevance")
"""run.json's notes on what scored the answers, shown in the report."""


def make_scorer(cfg: Config, note, *, judge: str | None, judge_base_url: str | None,
                judge_api_key_env: str | None, nli_judge: str | None):
    """The Scorer of this run, with the judges available now; `note(key, text)` hears what each JUDGE_NOTES
    column is scored by (or why it is not)."""
    from ragqa.evaluate.metrics import Scorer, make_llm_judge
    from ragqa.models import load_embedder

    nli, nli_note = load_nli_judge(cfg, nli_judge)
    ref_judge = load_ref_judge(nli)
    note("nli_judge", nli_note)
    note("ref_scorer", ref_judge.name)
    llm = make_llm_judge(judge, judge_base_url, cfg.model.device, cfg.eval.judge_max_new_tokens,
                         api_key_env=judge_api_key_env) if judge else None
    relevance, relevance_note = load_relevance_model(cfg)
    note("answer_relevance", relevance_note)
    # Without an NLI judge the lexical scorer (ref_judge then) gives lexical_faithfulness: every run, and
    # above all one without reference answers, gets a faithfulness number.
    return Scorer(load_embedder(cfg.model.embedder, cfg.model.device), nli_judge=nli, llm=llm,
                  llm_metrics=cfg.eval.judge_metrics, ref_judge=ref_judge, reranker=relevance,
                  lexical_judge=ref_judge if nli is None else None)


def load_nli_judge(cfg: Config, spec: str | None):
    """(judge or None, note): the NLI faithfulness judge, or why the nli_faithfulness column is unavailable."""
    if spec == "none":
        return None, "disabled (--nli-judge none)"
    from ragqa.judge import judge_from_config

    if spec:
        cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"name": spec})})
    try:
        judge = judge_from_config(cfg)
    except RagqaError as exc:
        return None, f"not available ({exc})"
    return judge, f"NLI judge {judge.name}"


def load_ref_judge(nli):
    """The scorer of ref_support / ref_contradiction: the NLI judge when one runs, else the lexical scorer
    (which cannot say contradiction, so ref_contradiction is then n/a)."""
    if nli is not None:
        return nli
    from ragqa.judge.lexical import LexicalJudge

    return LexicalJudge()


def load_relevance_model(cfg: Config):
    """(reranker or None, note): the cross-encoder behind answer_relevance: retrieval.rerank when set, else the
    trained `default` reranker; without one the column is absent and the note says how to get it."""
    from ragqa.models import resolve_device
    from ragqa.rerank.model import load_reranker
    from ragqa.rerank.registry import DEFAULT, TRAIN_COMMAND, find_reranker

    name = cfg.retrieval.rerank or DEFAULT
    if name == DEFAULT and find_reranker(DEFAULT) is None:
        return None, f"not available (no trained reranker: `{TRAIN_COMMAND}`)"
    try:
        reranker = load_reranker(name, resolve_device(cfg.model.device), cfg.retrieval.rerank_backend)
    except RagqaError as exc:
        return None, f"not available ({exc})"
    return reranker, f"reranker {reranker.name} ({reranker.backend})"


def run_matrix(cfg: Config, rows: list[dict], configs: list[MatrixRow], log: ResultsLog, *,
               adapter: str | AdapterSpec | None, scorer, pipeline_factory=None, progress: bool = True) -> int:
    """Answer and score every pending (question, configuration); returns how many were run."""
    done = log.done
    pending = {c.name: [r for r in rows if (r["id"], c.name) not in done] for c in configs}
    total = sum(len(v) for v in pending.values())
    if total == 0:
        return 0
    if pipeline_factory is None:
        from ragqa.answer import Pipeline

        pipeline_factory = Pipeline
    pipe = pipeline_factory(cfg, adapter=adapter)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = [TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        tasks = {c.name: bar.add_task(c.name, total=len(rows), completed=len(rows) - len(pending[c.name]))
                 for c in configs}
        for config in configs:
            todo = pending[config.name]
            for at in range(0, len(todo), cfg.eval.batch_size):
                batch = todo[at:at + cfg.eval.batch_size]
                for row, record in zip(batch, answer_records(pipe, batch, config), strict=True):
                    record["scores"], record["failures"] = scorer.score(row, record)
                    log.append(record)
                    bar.advance(tasks[config.name])
    return total


def rescore_records(rows: list[dict], configs: list[MatrixRow], log: ResultsLog, scorer, *,
                    progress: bool = True) -> int:
    """Score the stored answers of `rows` x `configs` again, in place in log.records; returns how many."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    by_id = {r["id"]: r for r in rows}
    names = {c.name for c in configs}
    todo = [rec for rec in log.records if str(rec["qid"]) in by_id and rec["config"] in names]
    with Progress(TextColumn("rescore"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        task = bar.add_task("rescore", total=len(todo))
        for record in todo:
            record["scores"], record["failures"] = scorer.score(by_id[str(record["qid"])], record)
            bar.advance(task)
    return len(todo)


def recheck_records(cfg: Config, rows: list[dict], configs: list[MatrixRow], log: ResultsLog, *,
                    progress: bool = True) -> str:
    """Run the answer check (ask.verify) again, in place in log.records, on the stored answers as generated
    (raw_answer), with the checker `cfg` gives now; returns its name. Decoding is greedy, so generating again
    would give the same raw answers: this is what a fresh run with the new checker gives, without the hour of
    generation. The passages are trimmed to the prompt's budget as they were shown."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ragqa.answer import Answer, check
    from ragqa.judge import support_scorer
    from ragqa.models import load_tokenizer
    from ragqa.prompt import fit_passages
    from ragqa.qa import clean_question

    ids = {r["id"] for r in rows}
    names = {c.name for c in configs}
    todo = [rec for rec in log.records
            if str(rec["qid"]) in ids and rec["config"] in names and rec.get("raw_answer") is not None]
    if not todo:
        raise RagqaError("--recheck: the stored answers were never checked (ask.verify was off for this run)")
    checker, tokenizer = support_scorer(cfg), load_tokenizer(cfg.model.base)
    fields = set(Passage.__dataclass_fields__)
    with Progress(TextColumn(f"recheck ({checker.name})"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        task = bar.add_task("recheck", total=len(todo))
        for record in todo:
            passages = [Passage(**{k: v for k, v in p.items() if k in fields}) for p in record["passages"]]
            timings = dict(record.get("timings") or {})
            answer = Answer(clean_question(record["question"], cfg.ask.max_question_chars), record["answer"],
                            passages, list(record["citations"]), 0, bool(record["abstained"]), record["retrieval"],
                            None, timings, raw_answer=record["raw_answer"])
            start = time.perf_counter()
            check(answer, checker, fit_passages(tokenizer, passages, cfg.ask.context_tokens),
                  cut_off=timings.get("new_tokens", 0) >= cfg.ask.max_new_tokens)
            timings["verify_s"] = round(time.perf_counter() - start, 4)
            if "generate_s" in timings:
                timings["total_s"] = round(timings.get("retrieve_s", 0.0) + timings["generate_s"]
                                           + timings["verify_s"], 4)
            record.update(answer=answer.answer, citations=answer.citations, abstained=answer.abstained,
                          sentences=answer.sentences, checked_by=answer.checked_by, timings=timings)
            bar.advance(task)
    return checker.name


def answer_records(pipe, rows: list[dict], config: MatrixRow) -> list[dict[str, Any]]:
    """Run questions through one configuration as one batch; a question the pipeline refuses becomes an error
    record (the batch is then answered one by one, so one bad question never costs the others)."""
    try:
        answers = pipe.answer_batch([r["question"] for r in rows], retrieval=config.retrieval,
                                    use_adapter=config.use_adapter, disclaimer=False)
    except RagqaError as exc:
        if len(rows) > 1:
            return [record for row in rows for record in answer_records(pipe, [row], config)]
        return [{**_record_base(rows[0], config), "answer": "", "passages": [], "citations": [], "abstained": False,
                 "timings": {}, "error": str(exc)}]
    return [{**_record_base(row, config), "answer": ans.answer, "passages": [_passage_record(p) for p in ans.passages],
             "citations": list(ans.citations), "abstained": bool(ans.abstained), "timings": dict(ans.timings),
             # The check (ask.verify): the answer before it, its sentences' verdicts and the scorer that ruled.
             "raw_answer": getattr(ans, "raw_answer", None), "sentences": getattr(ans, "sentences", None),
             "checked_by": getattr(ans, "checked_by", None), "engine": getattr(ans, "engine", None),
             "error": None} for row, ans in zip(rows, answers, strict=True)]


def _record_base(row: dict, config: MatrixRow) -> dict[str, Any]:
    return {"qid": row["id"], "config": config.name, "question": row["question"], "reference": row["answer"],
            "gold_passage_ids": row.get("gold_passage_ids") or [], "retrieval": config.retrieval,
            "adapter": config.use_adapter}


def evaluate(cfg: Config, *, questions: str | None = None, adapter: str | AdapterSpec | None = None,
             configs: str = DEFAULT_CONFIGS, limit: int | None = None, sample: int | None = None,
             output: str | Path = "eval/reports/default", seed: int = 0, judge: str | None = None,
             judge_base_url: str | None = None, judge_api_key_env: str | None = None, nli_judge: str | None = None,
             exclude_trained: bool = False, fresh: bool = False, progress: bool = True,
             overwrite: bool = False, rescore: bool = False, recheck: bool = False) -> dict[str, Any]:
    """Run (or resume) the matrix and write the report; returns the summary with `paths`.

    An existing `output` that is not an eval report is refused unless `overwrite` (--overwrite). `rescore`
    (--rescore) generates nothing: the stored answers of a finished matrix are scored again with the judges
    available now (a newly trained NLI judge or reranker, an LLM judge), and results.jsonl, run.json and the
    report are replaced together. `recheck` (--recheck, implies rescore) first runs the answer check again on
    the stored answers as generated, with the checker available now (recheck_records)."""
    from ragqa.evaluate import report

    rescore = rescore or recheck
    if rescore and fresh:
        raise RagqaError("--rescore scores the stored answers again; it cannot be combined with --fresh")

    adapter = AdapterSpec.of(adapter)
    for path in adapter.paths if adapter else ():
        if not Path(path).exists():
            recover(path)  # a `ragqa train` killed while replacing it left the adapter under its backup name
        if not Path(path).is_dir():
            raise RagqaError(f"--adapter {path}: not found (train one with `ragqa train --output {path}`)")
    for flag, value in (("--limit", limit), ("--sample", sample)):
        if value is not None and value <= 0:
            raise RagqaError(f"{flag} must be positive (got {value})")
    plan = parse_configs(configs, cfg.retrieval.mode)
    if any(c.use_adapter for c in plan) and not adapter:
        names = ", ".join(c.name for c in plan if c.use_adapter)
        raise RagqaError(f"configurations {names} need an adapter: pass --adapter PATH "
                         "(train one with `ragqa train`) or drop them, e.g. --configs base,rag")
    if judge and judge.startswith("openai:"):
        from ragqa.evaluate.metrics import openai_endpoint

        openai_endpoint(judge_base_url, judge_api_key_env)  # a key that would leak is refused before any output
    questions_path = questions or trained_questions(adapter) or STARTER_QA
    loaded = load_questions(questions_path, cfg.ask.max_question_chars)
    references = any(r["answer"] for r in loaded)
    """False: the file has no reference answers, so only the reference-free metrics are scored."""
    rows, notes = select_questions(loaded, adapter, default_set=questions is None, exclude_trained=exclude_trained,
                                   limit=limit, sample=sample, seed=seed)
    output = Path(output)
    check_output_dir(output, "eval report", MARKERS, overwrite=overwrite)
    fingerprint = run_fingerprint(cfg, questions_path, adapter, judge)
    log = open_for_rescore(output, fingerprint) if rescore else prepare_output(output, fingerprint, fresh)
    meta_path = output / RUN_META
    previous = json.loads(meta_path.read_text(encoding="utf-8"))
    notes_now = {k: previous.get(k, "not run") for k in JUDGE_NOTES}
    start = time.perf_counter()
    pending = [(r["id"], c.name) for r in rows for c in plan if (r["id"], c.name) not in log.done]
    if rescore and pending:
        raise RagqaError(f"--rescore: {output} lacks {len(pending)} answers of this matrix (first: question "
                         f"{pending[0][0]}, {pending[0][1]}); run the same command without --rescore to finish it")
    rechecked_by = None
    if pending or rescore:
        def note(key: str, value: str) -> None:
            notes_now[key] = value
            if not rescore:  # a resumed run shows what scored it so far; a rescore swaps run.json at the end
                write_json_atomic(meta_path, {**json.loads(meta_path.read_text(encoding="utf-8")), key: value},
                                  indent=2, sort_keys=True)

        scorer = make_scorer(cfg, note, judge=judge, judge_base_url=judge_base_url,
                             judge_api_key_env=judge_api_key_env, nli_judge=nli_judge)
        if recheck:
            rechecked_by = recheck_records(cfg, rows, plan, log, progress=progress)
        if rescore:
            rescore_records(rows, plan, log, scorer, progress=progress)
        else:
            run_matrix(cfg, rows, plan, log, adapter=adapter, scorer=scorer, progress=progress)
    nli_note, ref_note, relevance_note = (notes_now[k] for k in JUDGE_NOTES)
    elapsed = time.perf_counter() - start
    names = [c.name for c in plan]
    records = report.group_records(log.records, {r["id"] for r in rows}, names)
    held_out = " (held-out split of the adapter" + ("s)" if adapter and adapter.combined else ")")
    meta = {"question file": str(questions_path) + (held_out if questions is None and adapter else "")
            + ("" if references else " (no reference answers)"),
            "questions asked": f"{len(rows)}" + (f" (random sample, seed {seed})" if sample else "")
            + (f" (first {limit})" if limit else ""),
            "adapter": adapter.label if adapter else "none", "model": cfg.model.base, "index": cfg.index.name,
            "retrieval": describe_retrieval(cfg.retrieval), "judge": judge or "none",
            "nli_judge": nli_note, "ref_scorer": ref_note if references else "not run (no reference answers)",
            "answer_relevance": relevance_note,
            "answer check (ask.verify)": cfg.ask.verify, "excluded_trained": notes["excluded_trained"]}
    if "warning" in notes:
        meta["warning"] = notes["warning"]
    if rescore:
        when = time.strftime("%Y-%m-%d %H:%M")
        meta["scores"] = (f"rechecked by {rechecked_by} and rescored {when} (answers as first generated)" if recheck
                          else f"rescored {when} (answers, timings and checks as first run)")
    rewritten = report.REPORT_FILES + ((RESULTS, RUN_META) if rescore else ())
    with report_swap(output, rewritten) as tmp:
        if rescore:
            write_records(tmp / RESULTS, log.records)
            write_json_atomic(tmp / RUN_META, {**previous, **notes_now, "fingerprint": fingerprint,
                                               "updated": time.strftime("%Y-%m-%dT%H:%M:%S")},
                              indent=2, sort_keys=True)
        summary = report.write_report(tmp, records, names, meta, seed=seed, n_resamples=cfg.eval.bootstrap,
                                      references=references)
    summary["paths"] = {name: str(output / name) for name in
                        ("results.jsonl", "report.md", "report.html", "matrix.png", "summary.json")}
    summary["wall_s"] = round(elapsed, 1)
    return summary


def retrieval_only_eval(cfg: Config, *, questions: str | None = None, output: str | Path = "eval/reports/default",
                        limit: int | None = None, progress: bool = True,
                        overwrite: bool = False) -> dict[str, dict[str, float]]:
    """recall@k and MRR@10 of every retrieval mode on the questions' gold passages; writes retrieval.md/json."""
    from ragqa.evaluate.retrieval import evaluate_retrieval, format_table, load_gold_rows
    from ragqa.retrieve import Retriever

    rows = load_gold_rows(questions or STARTER_QA, limit, cfg.ask.max_question_chars)
    out = Path(output)
    check_output_dir(out, "eval report", MARKERS, overwrite=overwrite)
    retriever = Retriever.from_config(cfg)
    ks = sorted({1, cfg.retrieval.k, 10})
    results = evaluate_retrieval(retriever, rows, ks=ks, rerank=cfg.retrieval.rerank, progress=progress)
    table = format_table(results)
    with report_swap(out, RETRIEVAL_FILES) as tmp:
        (tmp / "retrieval.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
        (tmp / "retrieval.md").write_text(f"# ragqa retrieval ({questions or STARTER_QA}, index {cfg.index.name})"
                                          f"\n\n{table}\n", encoding="utf-8")
    print(table)
    return results
