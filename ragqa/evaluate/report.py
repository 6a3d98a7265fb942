"""Aggregate results.jsonl into the ablation report: summary.json, report.md, report.html, matrix.png.

Every number comes from the per-question records, with seeded bootstrap CIs, so the same results and
seed always give the same report. A question file without reference answers gets a report that says so at
the top and shows the metrics that need a reference (metrics.NEEDS_REFERENCE) as not applicable. The files
are written into a fresh folder that the caller (ablation.py) renames into place whole, with results.jsonl,
so a report is never half old and half new.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ragqa.evaluate.metrics import FAILURE_TARGETS, METRICS, NEEDS_REFERENCE
from ragqa.evaluate.stats import bootstrap_ci, paired_bootstrap_pvalue

REPORT_FILES = ("summary.json", "report.md", "matrix.png", "report.html")
REFERENCE_CONFIG = "rag+lora"
WORST_BY = "token_f1"
WORST_BY_REFERENCE_FREE = ("nli_faithfulness", "lexical_faithfulness", "answer_relevance")
"""Without reference answers the worst answers are the least faithful (else the least relevant) ones."""
NOT_APPLICABLE = "not applicable: the question file has no reference answers"


def _metric_order(records: list[dict]) -> list[str]:
    seen = {m for r in records for m in [*(r.get("scores") or {}), *(r.get("failures") or {})]}
    return [m for m in METRICS if m in seen] + sorted(seen - set(METRICS))


def summarize(records: list[dict], configs: list[str], *, seed: int = 0, n_resamples: int = 2000,
              reference: str = REFERENCE_CONFIG, references: bool = True) -> dict[str, Any]:
    """Means with 95% CIs, failure counts, paired p-values vs `reference`, winners, latency, judge agreement.

    references=False: the question file has no reference answers (recorded as `reference_answers`)."""
    by_config: dict[str, list[dict]] = {c: [] for c in configs}
    for rec in records:
        if rec["config"] in by_config:
            by_config[rec["config"]].append(rec)
    metrics = _metric_order(records)
    table: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        row = {}
        for config, recs in by_config.items():
            values = [r["scores"][metric] for r in recs if (r.get("scores") or {}).get(metric) is not None]
            failures = Counter((r.get("failures") or {}).get(metric) for r in recs)
            failures.pop(None, None)
            ci = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
            row[config] = {"mean": _num(ci.mean), "low": _num(ci.low), "high": _num(ci.high), "n": ci.n,
                           "failures": {k.split(":")[0]: v for k, v in sorted(failures.items())}}
        table[metric] = row
    return {
        "configs": configs,
        "questions": len({r["qid"] for recs in by_config.values() for r in recs}),
        "answers": {c: len(v) for c, v in by_config.items()},
        "errors": {c: sum(1 for r in v if r.get("error")) for c, v in by_config.items()},
        "metrics": table,
        "winners": _winners(table),
        "comparisons": _comparisons(by_config, metrics, reference, seed, n_resamples),
        "latency": {c: _latency(v) for c, v in by_config.items()},
        "checked_by": {c: sorted({r["checked_by"] for r in v if r.get("checked_by")}) for c, v in by_config.items()},
        "failure_modes": _failure_modes(table, configs),
        "agreement": _agreement(records, configs),
        "seed": seed,
        "n_resamples": n_resamples,
        "reference_answers": references,
    }


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _winners(table: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    winners = {}
    for metric, row in table.items():
        scored = {c: v["mean"] for c, v in row.items() if v["mean"] is not None}
        if len(scored) < 2:
            continue
        higher = METRICS[metric].higher_is_better if metric in METRICS else True
        best = max(scored.values()) if higher else min(scored.values())
        winners[metric] = [c for c, v in scored.items() if v == best]
    return winners


def _comparisons(by_config, metrics, reference, seed, n_resamples) -> dict[str, dict[str, Any]]:
    if reference not in by_config:
        return {}
    out: dict[str, dict[str, Any]] = {}
    ref = {r["qid"]: r.get("scores") or {} for r in by_config[reference]}
    for metric in metrics:
        for other, recs in by_config.items():
            if other == reference:
                continue
            pairs = [(ref[r["qid"]].get(metric), (r.get("scores") or {}).get(metric)) for r in recs
                     if r["qid"] in ref]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            diff, p = paired_bootstrap_pvalue([a for a, _ in pairs], [b for _, b in pairs],
                                              n_resamples=n_resamples, seed=seed)
            out.setdefault(metric, {})[other] = {"diff": _num(diff), "p": _num(p), "n": len(pairs)}
    return out


def _failure_modes(table: dict[str, dict[str, Any]], configs: list[str]) -> dict[str, dict[str, Any]]:
    """Per failure mode and configuration: rate, answers counted, the issue's bound and whether it holds."""
    out: dict[str, dict[str, Any]] = {}
    for metric, (op, bound) in FAILURE_TARGETS.items():
        if metric not in table:
            continue
        row = {}
        for c in configs:
            rate, n = table[metric][c]["mean"], table[metric][c]["n"]
            ok = None if rate is None else (rate <= bound if op == "<=" else rate >= bound)
            row[c] = {"rate": rate, "n": n, "target": f"{op} {bound:g}", "ok": ok}
        out[metric] = row
    return out


def _latency(recs: list[dict]) -> dict[str, float | None]:
    def mean(key: str) -> float | None:
        values = [r["timings"][key] for r in recs if isinstance((r.get("timings") or {}).get(key), int | float)]
        return round(sum(values) / len(values), 4) if values else None

    return {"total_s": mean("total_s"), "generate_s": mean("generate_s"), "retrieve_s": mean("retrieve_s"),
            "verify_s": mean("verify_s"), "tokens_per_s": mean("tokens_per_s")}


def _agreement(records: list[dict], configs: list[str]) -> dict[str, Any]:
    """Spearman correlation and sign agreement of NLI vs LLM-judge faithfulness where both ran."""
    pairs = [(r["scores"].get("nli_faithfulness"), r["scores"].get("llm_faithfulness")) for r in records
             if r["config"] in configs and r.get("scores")]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pairs) < 3:
        return {"n": len(pairs), "spearman": None, "same_side_of_0.5": None}
    from scipy.stats import spearmanr

    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    same = sum((a >= 0.5) == (b >= 0.5) for a, b in pairs) / len(pairs)
    return {"n": len(pairs), "spearman": _num(rho), "same_side_of_0.5": _num(same)}


def skipped_metrics(records: list[dict], meta: dict[str, Any]) -> list[str]:
    """The reference metrics a run without reference answers leaves out: those it would otherwise have scored
    (token_f1_raw only with checked answers, the LLM judge's only with a judge)."""
    checked = any(r.get("raw_answer") is not None for r in records)
    judged = meta.get("judge") not in (None, "none")
    return [m for m in NEEDS_REFERENCE if (m != "token_f1_raw" or checked) and (not m.startswith("llm_") or judged)]


def worst_key(summary: dict[str, Any]) -> str | None:
    """The score the worst answers are ranked by: token_f1, or without references the first reference-free
    score that was measured (None: no per-answer score to rank by)."""
    if summary.get("reference_answers", True):
        return WORST_BY
    table = summary["metrics"]
    return next((m for m in WORST_BY_REFERENCE_FREE
                 if m in table and any(v["n"] for v in table[m].values())), None)


def worst_answers(records: list[dict], config: str, n: int = 5, key: str | None = WORST_BY) -> list[dict]:
    """The n answers of `config` with the lowest `key` score (errors first), ties broken by question id."""
    recs = [r for r in records if r["config"] == config]
    def rank(r: dict) -> tuple:
        value = (r.get("scores") or {}).get(key) if key else None
        return (-1.0 if value is None else value, str(r["qid"]))
    return sorted(recs, key=rank)[:n]


# ------------------------------------------------------------------------------------------ rendering


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cell(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def _failure_text(stats: dict[str, Any]) -> str:
    if stats["n"] == 0 and not stats["failures"]:
        return "n/a"
    return ", ".join(f"{k} {v}" for k, v in stats["failures"].items()) or "0"


def _p(p: float | None) -> str:
    return "n/a" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _sources(meta: dict[str, Any]) -> dict[str, str]:
    sources = {m: info.source for m, info in METRICS.items()}
    sources["nli_faithfulness"] += f" — {meta.get('nli_judge') or 'not run'}"
    sources["lexical_faithfulness"] += f" (NLI judge: {meta.get('nli_judge') or 'not run'})"
    sources["answer_relevance"] += f" — {meta.get('answer_relevance') or 'not run'}"
    for m in ("llm_faithfulness", "llm_answer_relevancy", "llm_context_precision", "llm_context_recall"):
        sources[m] += f" — judge: {meta.get('judge') or 'none configured'}"
    for m in ("ref_support", "ref_contradiction"):
        sources[m] += f" — scorer: {meta.get('ref_scorer') or 'not run'}"
    return sources


def render_markdown(summary: dict[str, Any], records: list[dict], meta: dict[str, Any]) -> str:
    """report.md: setup, matrix with CIs, winners, p-values, failures, latency, worst answers."""
    configs, table = summary["configs"], summary["metrics"]
    sources = _sources(meta)
    skipped = [] if summary.get("reference_answers", True) else summary.get("skipped_metrics", [])
    lines = ["# ragqa ablation report", ""]
    if not summary.get("reference_answers", True):
        lines += ["**No reference answers:** no row of the question file has an `answer`, so only the reference-free "
                  "metrics are scored (faithfulness, answer_relevance when a reranker exists, abstention, "
                  "citation and failure-mode rates, latency). Skipped as not applicable: "
                  + (", ".join(f"`{m}`" for m in skipped) or "none") + ".", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [f"- evaluated: {summary['questions']} questions; answers per configuration: "
              + ", ".join(f"{c} {n}" for c, n in summary["answers"].items()),
              f"- 95% percentile bootstrap CIs ({summary['n_resamples']} resamples, seed {summary['seed']})"
              + (f"; p-values: paired bootstrap of {REFERENCE_CONFIG} vs each configuration"
                 if summary["comparisons"] else ""), ""]
    lines += ["## Matrix (mean [95% CI])", "", "| metric | " + " | ".join(configs) + " | winner |",
              "|---|" + "---|" * (len(configs) + 1)]
    shown = list(table)
    if "ref_support" in table and "ref_contradiction" not in table:  # the scorer cannot say contradiction
        sources["ref_contradiction"] += " (n/a: only an NLI judge can say contradiction)"
        shown.insert(shown.index("ref_support") + 1, "ref_contradiction")
    for metric in skipped:  # no reference answers: shown, as not applicable
        if metric not in table:
            sources[metric] = f"{sources.get(metric, metric)} — {NOT_APPLICABLE}"
            shown.append(metric)
    for metric in shown:
        winner = ", ".join(summary["winners"].get(metric, [])) or "-"
        cells = [_cell(table[metric][c]) if metric in table else "n/a" for c in configs]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {winner} |")
    lines += ["", "Metric sources:", ""] + [f"- `{m}`: {sources.get(m, m)}" for m in shown] + [""]
    lines += _check_section(summary) + _failure_mode_section(summary)
    if summary["comparisons"]:
        others = [c for c in configs if c != REFERENCE_CONFIG]
        lines += [f"## {REFERENCE_CONFIG} vs the others (mean difference, paired bootstrap p)", "",
                  "| metric | " + " | ".join(f"vs {c}" for c in others) + " |", "|---|" + "---|" * len(others)]
        for metric, comp in summary["comparisons"].items():
            cells = [f"{comp[c]['diff']:+.3f} (p={_p(comp[c]['p'])}, n={comp[c]['n']})" if c in comp else "n/a"
                     for c in others]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Failures (metric runs that gave no number: nan / parse / error)", "",
              "| metric | " + " | ".join(configs) + " |", "|---|" + "---|" * len(configs)]
    for metric, row in table.items():
        lines.append(f"| {metric} | " + " | ".join(_failure_text(row[c]) for c in configs) + " |")
    lines += ["", "Answers the pipeline refused (errors): "
              + ", ".join(f"{c} {n}" for c, n in summary["errors"].items()), ""]
    agreement = summary["agreement"]
    lines += ["## NLI vs LLM-judge faithfulness", ""]
    if agreement["spearman"] is None:
        lines += [f"Not computed: both judges scored {agreement['n']} answers (need 3).", ""]
    else:
        lines += [f"Spearman {agreement['spearman']:.3f}; same side of 0.5 in {agreement['same_side_of_0.5']:.1%} "
                  f"of {agreement['n']} answers.", ""]
    lines += ["## Latency (mean seconds per answer)", "",
              "| configuration | total | retrieve | generate | check | tokens/s |", "|---|---|---|---|---|---|"]
    for c, lat in summary["latency"].items():
        lines.append(f"| {c} | {_fmt(lat['total_s'])} | {_fmt(lat['retrieve_s'])} | {_fmt(lat['generate_s'])} "
                     f"| {_fmt(lat.get('verify_s'))} | {_fmt(lat['tokens_per_s'], 1)} |")
    key = worst_key(summary)
    lines += ["", "Answers are generated in batches (`eval.batch_size`): generate is each answer's share of its "
              "batch, tokens/s the batch's generated tokens per second.", "",
              f"## Worst 5 answers per configuration (lowest {key})" if key
              else "## 5 answers per configuration (no per-answer score to rank them by)", ""]
    for config in configs:
        lines += [f"### {config}", ""]
        for r in worst_answers(records, config, key=key):
            score = (r.get("scores") or {}).get(key) if key else None
            lines.append(f"- **{r['qid']}**" + (f" ({key} {_fmt(score)})" if key else "")
                         + f": {_one_line(r['question'])}")
            if r.get("reference"):
                lines.append(f"  - reference: {_one_line(r['reference'], 300)}")
            lines.append(f"  - answer: {_one_line(r.get('error') or r['answer'], 300) or '(empty)'}")
            if r.get("raw_answer") is not None and r["raw_answer"] != r["answer"]:
                lines.append(f"  - before the check ({r.get('checked_by')}): {_one_line(r['raw_answer'], 300)}")
            for i, p in enumerate(r.get("passages") or [], 1):
                lines.append(f"  - [{i}] `{p.get('doc_id')}` {_one_line(p.get('title', ''))}: "
                             f"{_one_line(p.get('text', ''), 200)}")
        lines.append("")
    return "\n".join(lines)


def _check_section(summary: dict[str, Any]) -> list[str]:
    """Checked rows (ask.verify): the answer before and after the check, side by side."""
    checked = [c for c in summary["configs"] if summary["checked_by"].get(c)]
    if not checked:
        return []
    table = summary["metrics"]

    def mean(metric: str, c: str) -> float | None:
        return table.get(metric, {}).get(c, {}).get("mean")

    def pair(metric: str, c: str) -> str:
        raw, kept = mean(f"{metric}_raw", c), mean(metric, c)
        if raw is None or kept is None:
            return f"{_fmt(raw)} → {_fmt(kept)}"
        return f"{raw:.3f} → {kept:.3f} ({kept - raw:+.3f})"

    lines = ["## Answer check (ask.verify: unsupported sentences removed; none left -> abstain)", "",
             "| configuration | checked by | token_f1 raw → checked | nli_faithfulness raw → checked | "
             "sentences removed | citations corrected or added | withdrawn | abstained |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checked:
        lines.append(f"| {c} | {', '.join(summary['checked_by'][c])} | {pair('token_f1', c)} | "
                     f"{pair('nli_faithfulness', c)} | {_pct(mean('check_removed', c))} | "
                     f"{_pct(mean('check_recited', c))} | "
                     f"{_pct(mean('withdrawn', c))} | {_pct(mean('abstained', c))} |")
    return lines + ["", "withdrawn: the check left no supported sentence, so the pipeline abstained (part of "
                    "abstained). citations corrected or added: of the kept sentences, those whose [n] the check "
                    "set to the passage that supports them. When the same judge checks and scores "
                    "nli_faithfulness, the checked number is not an independent measurement.", ""]


def _failure_mode_section(summary: dict[str, Any]) -> list[str]:
    """Failure-mode rates per configuration against the issue's bounds (✓ holds, ✗ does not)."""
    modes = summary["failure_modes"]
    if not modes:
        return []
    configs = summary["configs"]
    lines = ["## Failure modes (share of the answers given; abstentions not counted)", "",
             "| failure mode | target | " + " | ".join(configs) + " |", "|---|---|" + "---|" * len(configs)]
    for metric, row in modes.items():
        cells = [("n/a" if v["rate"] is None else f"{v['rate']:.1%} of {v['n']} {'✓' if v['ok'] else '✗'}")
                 for v in (row[c] for c in configs)]
        target = next(iter(row.values()))["target"]
        lines.append(f"| {metric} | {target} | " + " | ".join(cells) + " |")
    return lines + ["", "echo_or_short: under 5 words outside yes/no questions, or mostly the question's words; "
                    "repetition: a word 3-gram 4+ times; cites: at least one [n] marker (rows with passages).", ""]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_png(summary: dict[str, Any]) -> bytes:
    """matrix.png: heatmap of metric means (rows) by configuration (columns), annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    configs, table = summary["configs"], summary["metrics"]
    metrics = [m for m in table if any(table[m][c]["mean"] is not None for c in configs)] or list(table)
    grid = np.array([[np.nan if table[m][c]["mean"] is None else table[m][c]["mean"] for c in configs]
                     for m in metrics], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(configs), 1.0 + 0.45 * len(metrics)), dpi=100)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(configs)), configs)
    ax.set_yticks(range(len(metrics)), metrics)
    for i in range(len(metrics)):
        for j in range(len(configs)):
            text = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
            dark = not np.isnan(grid[i, j]) and grid[i, j] < 0.6
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title("ragqa ablation: mean per question")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def render_html(markdown_text: str, png: bytes) -> str:
    """report.html: self-contained (inline CSS, PNG as a data URI) rendering of report.md."""
    body: list[str] = []
    table: list[list[str]] = []
    in_list = False

    def flush_table() -> None:
        if table:
            head, *rows = [r for r in table if not set("".join(r)) <= set("-: ")]
            body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                        + "</tbody></table>")
            table.clear()

    for raw in markdown_text.splitlines():
        line = _inline(html.escape(raw))
        if raw.startswith("|"):
            table.append([c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")])
            continue
        flush_table()
        if in_list and not raw.lstrip().startswith("- "):
            body.append("</ul>")
            in_list = False
        if raw.startswith("#"):
            level = len(raw) - len(raw.lstrip("#"))
            body.append(f"<h{level}>{line[level:].strip()}</h{level}>")
            if raw.startswith("## Matrix"):
                body.append(f'<img alt="matrix" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        elif raw.lstrip().startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            indent = " class='sub'" if raw.startswith("  ") else ""
            body.append(f"<li{indent}>{line.lstrip()[2:]}</li>")
        elif raw.strip():
            body.append(f"<p>{line}</p>")
    flush_table()
    if in_list:
        body.append("</ul>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px}th{background:#eee}li.sub{margin-left:2em;list-style:circle}img{max-width:100%}"
             "code{background:#f4f4f4}")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>ragqa ablation report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """`code` and **bold** of the markdown we generate (escaped text in, HTML out)."""
    import re

    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text.replace("\\|", "|"))
    return re.sub(r"\*\*([^*]*)\*\*", r"<b>\1</b>", text)


def write_report(out_dir: str | Path, records: list[dict], configs: list[str], meta: dict[str, Any], *,
                 seed: int = 0, n_resamples: int = 2000, references: bool = True) -> dict[str, Any]:
    """Write summary.json, report.md, matrix.png and report.html (REPORT_FILES) into out_dir; returns the summary.

    references=False: the question file has no reference answers; the summary then lists `skipped_metrics`.

    Plain writes: out_dir is a new folder that is renamed into place as a whole (files.atomic_dir), which is
    what keeps the previous report intact when a write fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, configs, seed=seed, n_resamples=n_resamples, references=references)
    summary["skipped_metrics"] = [] if references else skipped_metrics(records, meta)
    markdown = render_markdown(summary, records, meta)
    png = render_png(summary)
    files = {
        "summary.json": json.dumps({"meta": meta, **summary}, indent=2, sort_keys=True).encode(),
        "report.md": markdown.encode(),
        "matrix.png": png,
        "report.html": render_html(markdown, png).encode(),
    }
    for name in REPORT_FILES:
        (out / name).write_bytes(files[name])
    return summary


def group_records(records: list[dict], qids: set[str], configs: list[str]) -> list[dict]:
    """The records of this run's questions and configurations, in a stable order."""
    order = {c: i for i, c in enumerate(configs)}
    picked = [r for r in records if r["qid"] in qids and r["config"] in order]
    grouped: dict[str, list[dict]] = defaultdict(list)
    for r in picked:
        grouped[r["config"]].append(r)
    return [r for c in configs for r in sorted(grouped[c], key=lambda r: str(r["qid"]))]
