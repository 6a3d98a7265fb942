"""Load test of `ragqa serve` on loopback: 1, 4 and 16 concurrent clients, batched vs one at a time. One JSON object.

One bounded run: the same streaming requests go to two servers started one after the other on 127.0.0.1 (never
both at once: they would share the cores), one with --max-batch 1 (one request per generate call) and one with
--max-batch N (the default, or --max-batch). Per level and server: time to first token and total latency
(p50/p95, client side), answers/s, errors, the server's CPU seconds per answer (from /proc: less disturbed than
wall time by other work on the machine) and answers per generate call (from /metrics). The batching gain per
level is the batched server's answers/s over the one-at-a-time server's; `same_answers` counts the questions
whose final answer text is the same from both (greedy; left padding can change float rounding). Each level
sends a fixed number of requests (--requests, one count per level) and stops sending when --budget-s of the
run is spent (60 % of it for the first server; a level cut short is marked `cut`). Exit status 1 if any request failed.

    python benchmarks/serve.py [--index indexes/default] [--levels 1 4 16] [--requests 4 8 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "corpora/starter/qa.jsonl").read_text().splitlines() if line]
    return [rows[i % len(rows)]["question"] for i in range(0, n * 7, 7)]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 3)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batches(url: str) -> tuple[float, float]:
    """(answers, generate calls) so far, from the server's ragqa_batch_size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    value = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith(("ragqa_batch_size_count", "ragqa_batch_size_sum"))}
    return value.get("ragqa_batch_size_sum", 0.0), value.get("ragqa_batch_size_count", 0.0)


async def _one(client: httpx.AsyncClient, question: str, max_tokens: int) -> dict:
    """One streaming chat request: time to the first content chunk, to [DONE], and the final answer text."""
    body = {"model": "ragqa", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": question}]}
    start = time.perf_counter()
    out = {"question": question, "ok": False, "status": None, "ttft": None, "total": None, "answer": None}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as res:
            out["status"] = res.status_code
            if res.status_code != 200:
                await res.aread()
                return out
            done = False
            async for line in res.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    out["status"] = f"stream error: {event['error'].get('message')}"
                    return out
                choice = event["choices"][0]
                if out["ttft"] is None and choice["delta"].get("content"):
                    out["ttft"] = time.perf_counter() - start
                if choice.get("finish_reason") is not None:
                    out["answer"] = event.get("answer")
            out["ok"] = done and out["answer"] is not None
            if not out["ok"]:
                out["status"] = "stream ended without [DONE]"
    except httpx.HTTPError as exc:
        out["status"] = type(exc).__name__
    finally:
        out["total"] = time.perf_counter() - start
    return out


async def _level(url: str, questions: list[str], clients: int, max_tokens: int, deadline: float) -> dict:
    """`clients` workers take questions from one list until it is empty or the run's deadline has passed."""
    todo = list(questions)
    results: list[dict] = []
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600, connect=10)) as client:
        async def worker():
            while todo and time.perf_counter() < deadline:
                results.append(await _one(client, todo.pop(0), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "clients": clients, "requests": len(results), "cut": len(results) < len(questions),
        "errors": len(results) - len(ok), "error_statuses": sorted({str(r["status"]) for r in results if not r["ok"]}),
        "wall_s": round(wall, 2), "answers_per_s": round(len(ok) / wall, 4) if wall and ok else 0.0,
        "ttft_p50_s": _pct(ttft, 0.5), "ttft_p95_s": _pct(ttft, 0.95),
        "latency_p50_s": _pct([r["total"] for r in ok], 0.5), "latency_p95_s": _pct([r["total"] for r in ok], 0.95),
        "answers": {r["question"]: r["answer"] for r in ok},
    }


def _serve(args, max_batch: int, levels: list[tuple[int, list[str]]], deadline: float) -> dict:
    """Start a server with --max-batch max_batch, run the levels, stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"  # loopback only
    max_queue = max(64, 2 * max(c for c, _ in levels))
    proc = subprocess.Popen([sys.executable, "-m", "ragqa", "serve", "--index", args.index, "--port", str(port),
                             "--max-queue", str(max_queue), "--max-batch", str(max_batch),
                             *shlex.split(args.serve_args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                sys.exit(f"error: the server (--max-batch {max_batch}) exited with status {proc.returncode}; "
                         f"run `ragqa serve --index {args.index}` to see why")
            if time.perf_counter() - start > 300:
                sys.exit(f"error: the server (--max-batch {max_batch}) was not ready in 300 s")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        ready_s = time.perf_counter() - start
        # Warm-up, not counted: first-call allocations, the judge's first forward.
        warm = asyncio.run(_level(url, [_questions(1)[0]], 1, args.max_tokens, deadline))
        results = []
        for clients, questions in levels:
            cpu0, (answers0, calls0) = _cpu_s(proc.pid), _batches(url)
            level = asyncio.run(_level(url, questions, clients, args.max_tokens, deadline))
            cpu1, (answers1, calls1) = _cpu_s(proc.pid), _batches(url)
            done = level["requests"] - level["errors"]
            level["server_cpu_s_per_answer"] = (round((cpu1 - cpu0) / done, 3)
                                                if cpu0 is not None and cpu1 is not None and done else None)
            level["answers_per_generate_call"] = round((answers1 - answers0) / max(calls1 - calls0, 1), 2)
            results.append(level)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"max_batch": max_batch, "ready_s": round(ready_s, 1), "warmup_errors": warm["errors"], "levels": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=str(ROOT / "indexes" / "default"))
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per level")
    ap.add_argument("--requests", type=int, nargs="+", default=[4, 8, 16], help="requests per level (one per level)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=None, help="the batched server's --max-batch "
                                                                  "(default: ragqa serve's default)")
    ap.add_argument("--budget-s", type=float, default=570, help="no new request after this many seconds of the run")
    ap.add_argument("--serve-args", default="", help="more `ragqa serve` arguments in one string, "
                                                   "e.g. --serve-args='--set ask.threads=2'")
    args = ap.parse_args()
    if not (Path(args.index) / "manifest.json").is_file():
        sys.exit(f"error: --index {args.index}: no index there; run `ragqa ingest` first (writes indexes/default)")
    if len(args.requests) != len(args.levels) or min(args.requests) < 1 or min(args.levels) < 1:
        sys.exit("error: --requests needs one count >= 1 per --levels entry")
    if args.max_batch is None:
        sys.path.insert(0, str(ROOT))
        from ragqa.serve import DEFAULT_MAX_BATCH

        args.max_batch = DEFAULT_MAX_BATCH
    levels = [(clients, _questions(n)) for clients, n in zip(args.levels, args.requests, strict=True)]
    start = time.perf_counter()
    # The one-at-a-time server is the slower: it may send for 60 % of the budget, the batched one for the rest.
    one = _serve(args, 1, levels, start + 0.6 * args.budget_s)
    batched = _serve(args, args.max_batch, levels, start + args.budget_s)
    per_level = []
    for a, b in zip(one["levels"], batched["levels"], strict=True):
        same = [q for q, text in b["answers"].items() if q in a["answers"] and a["answers"][q] == text]
        both = [q for q in b["answers"] if q in a["answers"]]
        gain = b["answers_per_s"] / a["answers_per_s"] if a["answers_per_s"] and b["answers_per_s"] else None
        cpu = (a["server_cpu_s_per_answer"] / b["server_cpu_s_per_answer"]
               if a["server_cpu_s_per_answer"] and b["server_cpu_s_per_answer"] else None)
        per_level.append({"clients": a["clients"], "batching_gain_answers_per_s": round(gain, 3) if gain else None,
                          "batching_gain_cpu_per_answer": round(cpu, 3) if cpu else None,
                          "same_answers": f"{len(same)}/{len(both)}"})
    for run in (one, batched):
        for level in run["levels"]:
            del level["answers"]
    errors = sum(r["errors"] for run in (one, batched) for r in run["levels"]) + one["warmup_errors"] \
        + batched["warmup_errors"]
    print(json.dumps({
        "max_tokens": args.max_tokens, "index": args.index, "serve_args": args.serve_args,
        "wall_s": round(time.perf_counter() - start, 1), "load_average_at_end": os.getloadavg(),
        "cpu_count": os.cpu_count(), "one_at_a_time": one, "batched": batched, "batching": per_level,
        "cut": any(r["cut"] for run in (one, batched) for r in run["levels"]), "errors": errors,
    }, indent=2))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
