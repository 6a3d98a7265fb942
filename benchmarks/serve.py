"""Load test of `ragqa serve` on loopback: 1, 4 and 16 concurrent clients. Prints one JSON object.

Starts one server process (the starter index unless --index), then per concurrency level sends --requests
streaming chat requests (at most --level-s seconds of new requests per level) and records time to first token,
total latency, answers/s and errors. Streaming requests are generated one at a time (see ragqa/serve.py), so
the batching gain is measured apart, in the same run and on the same server (started with --max-batch set to
the largest level): --requests non-streaming requests sent one at a time, then all at once (the server answers
those waiting together in batches).

    python benchmarks/serve.py [--index indexes/default] [--requests 16] [--max-tokens 64] [--levels 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
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


async def _one(client: httpx.AsyncClient, question: str, max_tokens: int, stream: bool) -> dict:
    body = {"model": "ragqa", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": question}]}
    start = time.perf_counter()
    ttft = None
    try:
        if not stream:
            res = await client.post("/v1/chat/completions", json=body)
            ok = res.status_code == 200
            return {"ok": ok, "status": res.status_code, "ttft": None, "total": time.perf_counter() - start}
        async with client.stream("POST", "/v1/chat/completions", json=body) as res:
            if res.status_code != 200:
                await res.aread()
                return {"ok": False, "status": res.status_code, "ttft": None, "total": time.perf_counter() - start}
            async for line in res.aiter_lines():
                if ttft is None and line.startswith("data: {") and '"content": "' in line \
                        and '"content": ""' not in line:
                    ttft = time.perf_counter() - start
        return {"ok": True, "status": 200, "ttft": ttft, "total": time.perf_counter() - start}
    except httpx.HTTPError as exc:
        return {"ok": False, "status": type(exc).__name__, "ttft": ttft, "total": time.perf_counter() - start}


async def _level(url: str, questions: list[str], clients: int, max_tokens: int, stream: bool, level_s: float):
    """`clients` workers take questions from one list until it is empty or level_s has passed."""
    todo = list(questions)
    results: list[dict] = []
    deadline = time.perf_counter() + level_s
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def worker():
            while todo and time.perf_counter() < deadline:
                results.append(await _one(client, todo.pop(0), max_tokens, stream))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    return {
        "clients": clients, "stream": stream, "requests": len(results), "errors": len(results) - len(ok),
        "error_statuses": sorted({str(r["status"]) for r in results if not r["ok"]}),
        "wall_s": round(wall, 2), "answers_per_s": round(len(ok) / wall, 3) if wall else None,
        "ttft_p50_s": _pct([r["ttft"] for r in ok if r["ttft"] is not None], 0.5),
        "ttft_p95_s": _pct([r["ttft"] for r in ok if r["ttft"] is not None], 0.95),
        "latency_p50_s": _pct([r["total"] for r in ok], 0.5),
        "latency_p95_s": _pct([r["total"] for r in ok], 0.95),
        "latency_mean_s": round(statistics.fmean(r["total"] for r in ok), 3) if ok else None,
    }


def _batches(url: str) -> tuple[float, float]:
    """(answers, generate calls) so far, from the server's ragqa_batch_size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    value = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith(("ragqa_batch_size_count", "ragqa_batch_size_sum"))}
    return value.get("ragqa_batch_size_sum", 0.0), value.get("ragqa_batch_size_count", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=str(ROOT / "indexes" / "default"))
    ap.add_argument("--requests", type=int, default=16, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--level-s", type=float, default=60, help="stop sending new requests of a level after this")
    ap.add_argument("--serve-args", default="", help="more `ragqa serve` arguments in one string, "
                                                   "e.g. --serve-args='--set ask.threads=2'")
    args = ap.parse_args()
    if not (Path(args.index) / "manifest.json").is_file():
        sys.exit(f"error: no index at {args.index}: run `ragqa ingest` first")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"  # loopback only
    proc = subprocess.Popen([sys.executable, "-m", "ragqa", "serve", "--index", args.index, "--port", str(port),
                             "--max-queue", str(max(64, 2 * max(args.levels))),
                             "--max-batch", str(max(args.levels)), *shlex.split(args.serve_args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                sys.exit(f"error: the server exited with status {proc.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        ready_s = time.perf_counter() - start
        questions = _questions(args.requests)
        asyncio.run(_level(url, questions[:1], 1, args.max_tokens, True, args.level_s))  # warm-up, not counted
        levels = [asyncio.run(_level(url, questions, n, args.max_tokens, True, args.level_s)) for n in args.levels]
        one = asyncio.run(_level(url, questions, 1, args.max_tokens, False, args.level_s))
        before = _batches(url)
        together = asyncio.run(_level(url, questions, max(args.levels), args.max_tokens, False, args.level_s))
        after = _batches(url)
        per_call = (after[0] - before[0]) / max(after[1] - before[1], 1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    gain = (together["answers_per_s"] / one["answers_per_s"]) if one["answers_per_s"] and together[
        "answers_per_s"] else None
    print(json.dumps({
        "max_tokens": args.max_tokens, "requests_per_level": args.requests, "ready_s": round(ready_s, 1),
        "load_average": os.getloadavg(), "streaming": levels,
        "non_streaming": {"one_at_a_time": one, "all_at_once": together,
                          "batching_gain": round(gain, 3) if gain else None,
                          "answers_per_generate_call": round(per_call, 2)},
        "errors": sum(r["errors"] for r in [*levels, one, together]),
    }, indent=2))


if __name__ == "__main__":
    main()
