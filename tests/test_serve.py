"""`ragqa serve` end to end: a real server process on a free port, spoken to with the official `openai` client,
with httpx and with a headless chromium, on a starter index that also holds a hostile passage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, STARTER

KEY = "test-key-7d1f"
EVIL_TITLE = '<script>window.__pwned = 1</script>Scabies <img src=x onerror="window.__pwned = 2">'
EVIL = {
    "id": "evil:scabies", "title": EVIL_TITLE, "source": "<b>hostile</b> corpus", "url": "javascript:window.__pwned=3",
    "text": "Scabies is treated with permethrin cream applied to the whole body. <script>window.__pwned = 4</script> "
            "Everyone in the household should be treated at the same time, and bedding washed hot.",
}
SCABIES = "How is scabies treated?"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    from ragqa.config import load_config
    from ragqa.index import ingest

    tmp = tmp_path_factory.mktemp("serve")
    evil = tmp / "evil.jsonl"
    evil.write_text(json.dumps(EVIL) + "\n")
    path = tmp / "index"
    ingest(load_config(None, [f"index.name={path}", f"index.corpus=[{STARTER / 'passages.jsonl'}, {evil}]"]))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(index_dir, tmp_path_factory):
    """`python -m ragqa serve` in a subprocess; yields its base URL and the /healthz codes seen while starting."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("serve-log") / "server.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragqa", "serve", "--index", str(index_dir), "--port", str(port),
         # Unchecked answers: 8-token answers end mid-sentence and the check would withdraw them all, while these
         # tests are about the API (the check itself is tested in test_check.py).
         "--api-key-env", "RAGQA_TEST_KEY", "--set", "ask.max_new_tokens=8", "--set", "ask.threads=2",
         "--set", "ask.verify=false",
         "--max-batch", "4"],
        cwd=ROOT, env={**os.environ, "RAGQA_TEST_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT)
    url, seen = f"http://127.0.0.1:{port}", []
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}: {log.seek(0) or log.read()}"
            assert time.monotonic() < deadline, "server not ready in 300 s"
            try:
                res = httpx.get(f"{url}/healthz", timeout=5)
                seen.append((res.status_code, res.json()["status"]))
                if res.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield url, seen
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def _metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all labels) from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in "{ ")


def test_healthz_is_loading_until_model_and_index_are_loaded(server):
    url, seen = server
    assert seen[-1] == (200, "ok")
    # The port opens before loading ends; until then the server says so instead of answering.
    assert (503, "loading") in seen


def test_openai_client_non_streaming(server):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
    assert [m.id for m in client.models.list()] == ["ragqa"]
    # temperature / seed and a parameter OpenAI does not have are ignored, not crashed on.
    resp = client.chat.completions.create(
        model="ragqa", max_tokens=8, temperature=0.7, seed=1, extra_body={"not_an_openai_param": 1},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": SCABIES}])
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content.strip()
    assert 0 < resp.usage.completion_tokens <= 8
    extra = resp.model_extra
    assert extra["abstained"] is False
    assert extra["sources"] and set(extra["sources"][0]) >= {"id", "title", "source", "url", "score"}
    assert any("scabies" in s["title"].lower() for s in extra["sources"])


def test_openai_client_streaming(server):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
    chunks = list(client.chat.completions.create(
        model="ragqa", max_tokens=8, stream=True, messages=[{"role": "user", "content": SCABIES}]))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, "tokens arrive one by one"
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.model_extra["sources"] and last.model_extra["abstained"] is False
    assert last.model_extra["answer"].strip()


def test_ask_endpoint_gives_the_ask_json_shape(server):
    from ragqa.answer import Answer

    url, _ = server
    res = httpx.post(f"{url}/v1/ask", json={"question": SCABIES, "max_tokens": 6}, headers=_auth(), timeout=300)
    assert res.status_code == 200, res.text
    body = res.json()
    assert set(body) == set(Answer("q", "a", [], [], 0, False, "hybrid", None).to_dict())
    assert body["passages"] and body["timings"]["new_tokens"] <= 6


def test_off_topic_question_abstains(server):
    url, _ = server
    res = httpx.post(f"{url}/v1/chat/completions", headers=_auth(), timeout=300,
                     json={"model": "ragqa", "messages": [{"role": "user", "content": "Who won the 1954 World Cup?"}]})
    body = res.json()
    assert res.status_code == 200 and body["abstained"] is True
    assert "could not find a grounded answer" in body["choices"][0]["message"]["content"]
    assert body["sources"], "the nearest sources are still listed"


BAD = [
    ("malformed JSON", b'{"model": "ragqa", "messages": [', 400, None),
    ("not an object", b'["hi"]', 400, None),
    ("messages wrong type", {"messages": "How is acne treated?"}, 400, "messages"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ("max_tokens as a string", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}, 400, "max_tokens"),
    ("stream as a string", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("no user message", {"messages": [{"role": "system", "content": "hi"}]}, 400, "messages"),
    ("blank question", {"messages": [{"role": "user", "content": " \n\t "}]}, 400, "messages.0.content"),
    ("question too long", {"messages": [{"role": "user", "content": "acne " * 1000}]}, 400, "messages.0.content"),
    ("max_tokens too large", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, "max_tokens"),
    ("n > 1", {"messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n"),
    ("tools", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ("1 MB body", {"messages": [{"role": "user", "content": "a" * (1 << 20)}]}, 413, None),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_chat_input_gets_a_clear_4xx(server, name, body, status, param):
    url, _ = server
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    res = httpx.post(f"{url}/v1/chat/completions", headers={**_auth(), "Content-Type": "application/json"},
                     timeout=60, **kwargs)
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["message"] and "Traceback" not in res.text
    assert error["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    ({"question": "x", "color": "red"}, "color"),
    ({"question": 42}, "question"),
    ({"question": "x", "k": 0}, "k"),
    ({"question": "x", "retrieval": "psychic"}, "retrieval"),
])
def test_bad_ask_input_gets_a_clear_4xx(server, body, param):
    url, _ = server
    res = httpx.post(f"{url}/v1/ask", json=body, headers=_auth(), timeout=60)
    assert res.status_code == 400 and res.json()["error"]["param"] == param, res.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}], ids=["missing", "wrong", "no-scheme", "basic"])
def test_api_key_is_required(server, headers):
    url, _ = server
    for res in (httpx.get(f"{url}/v1/models", headers=headers, timeout=30),
                httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=30,
                           json={"messages": [{"role": "user", "content": SCABIES}]})):
        assert res.status_code == 401 and res.headers["WWW-Authenticate"] == "Bearer"
        assert res.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # probes need no key


def test_page_is_offline_and_strict(server):
    url, _ = server
    res = httpx.get(url, timeout=30)
    assert res.status_code == 200 and "Medical disclaimer" in res.text
    csp = res.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in res.text.replace('<script src="/static/app.js" defer></script>', "")
    assert "http://" not in res.text and "https://" not in res.text  # no CDN
    js = httpx.get(f"{url}/static/app.js", timeout=30).text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "://"):
        assert sink not in js, sink


@pytest.mark.slow
def test_concurrent_requests_are_batched(server):
    url, _ = server
    before_batches = _metric(url, "ragqa_batch_size_count")
    before_answers = _metric(url, "ragqa_batch_size_sum")
    results = []

    def ask(q):
        results.append(httpx.post(f"{url}/v1/chat/completions", headers=_auth(), timeout=300, json={
            "model": "ragqa", "max_tokens": 2, "messages": [{"role": "user", "content": q}]}))

    questions = ["How is scabies treated?", "What causes acne?", "How is psoriasis treated?", "What is eczema?"]
    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * len(questions), [r.text for r in results]
    answers = _metric(url, "ragqa_batch_size_sum") - before_answers
    calls = _metric(url, "ragqa_batch_size_count") - before_batches
    assert answers == len(questions)
    assert calls < len(questions), "requests waiting together share one generate call"


def _queued(url: str) -> int:
    return httpx.get(f"{url}/healthz", timeout=30).json()["queue"]


def test_concurrent_stream_and_answer_share_one_batch_and_each_gets_its_own_tokens(server):
    """A streaming chat request and a /v1/ask request waiting together are generated in one batch (rows of
    different prompt lengths and max_tokens), and each gets the greedy answer it gets alone, the stream token by
    token. The old server generated every streaming request alone."""
    url, _ = server
    stream_q, ask_q = "How is scabies treated?", "What are the usual triggers of an eczema flare in adults?"

    def stream(question: str, max_tokens: int) -> tuple[list[str], str]:
        pieces, final = [], None
        body = {"model": "ragqa", "max_tokens": max_tokens, "stream": True,
                "messages": [{"role": "user", "content": question}]}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=_auth(), timeout=300) as res:
            assert res.status_code == 200
            for line in res.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    pieces += [event["choices"][0]["delta"]["content"]] if event["choices"][0]["delta"].get(
                        "content") else []
                    final = event.get("answer", final)
        return pieces, final

    def ask(question: str, max_tokens: int) -> dict:
        res = httpx.post(f"{url}/v1/ask", json={"question": question, "max_tokens": max_tokens}, headers=_auth(),
                         timeout=300)
        assert res.status_code == 200, res.text
        return res.json()

    alone_stream, alone_ask = stream(stream_q, 8), ask(ask_q, 5)
    assert alone_ask["timings"]["batch_size"] == 1

    # Keep the generator busy with a long answer, queue the two requests behind it, then leave: they are next.
    # The blocker's length is the model's (greedy, until EOS), so on a fast machine it may end before both requests
    # are queued; that try proves nothing and is repeated (its answers are discarded).
    body = {"model": "ragqa", "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": "Describe scabies, its symptoms, causes, treatment and "
                                                     "prevention in as much detail as you can."}]}
    for _ in range(4):
        results: dict = {}
        queued = False
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=_auth(), timeout=300) as blocker:
            lines = blocker.iter_lines()
            for line in lines:
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break  # generating now
            ended = threading.Event()
            reader = threading.Thread(target=lambda lines=lines, ended=ended: (all(True for _ in lines), ended.set()))
            reader.start()
            threads = [threading.Thread(target=lambda results=results: results.update(stream=stream(stream_q, 8))),
                       threading.Thread(target=lambda results=results: results.update(ask=ask(ask_q, 5)))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while not ended.is_set():
                if _queued(url) >= 2 and not ended.is_set():
                    queued = True
                    break
                assert time.monotonic() < deadline, "the two requests never queued"
                time.sleep(0.02)
            reader.join()
        for t in threads:
            t.join()
        if queued:
            break
    assert queued, "the blocking answer ended before the two requests queued behind it, four times"
    pieces, streamed_final = results["stream"]
    together = results["ask"]
    assert together["timings"]["batch_size"] == 2, "the ask waited beside the stream and shared its generate call"
    assert 0 < together["timings"]["new_tokens"] <= 5, "its own max_tokens, not the stream's 8"
    assert together["answer"] == alone_ask["answer"]
    assert len(pieces) >= 2, "the batched stream still arrives token by token"
    assert pieces == alone_stream[0] and streamed_final == alone_stream[1]


def test_client_disconnect_stops_generation(server):
    url, _ = server
    completion = 'ragqa_tokens_total{kind="completion"}'
    settled = "ragqa_tokens_total"  # prompt + completion tokens: grows when a job settles
    before, before_all = _metric(url, completion), _metric(url, settled)
    body = {"model": "ragqa", "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": "Describe scabies, its symptoms, causes, treatment and "
                                                     "prevention in as much detail as you can."}]}
    received = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=_auth(), timeout=300) as res:
        for line in res.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                received += 1
                if received == 2:
                    break  # leaving the block closes the connection mid-answer
    deadline = time.monotonic() + 120
    while _metric(url, settled) == before_all:
        assert time.monotonic() < deadline, "generation did not end after the client left"
        time.sleep(0.5)
    generated = _metric(url, completion) - before
    # Stopped within a few tokens of the disconnect, far short of the 400 allowed or of a full answer.
    assert 2 <= generated <= 20, generated


def test_metrics_are_prometheus_text(server):
    url, _ = server
    res = httpx.get(f"{url}/metrics", timeout=30)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    for name in ("ragqa_requests_total", "ragqa_answer_latency_seconds_bucket", "ragqa_tokens_total",
                 "ragqa_queue_depth", "ragqa_errors_total", "ragqa_time_to_first_token_seconds_bucket"):
        assert name in res.text, name


def test_queue_full_answers_503_with_retry_after():
    """The bounded queue, without a model: a job beyond max_queue is refused with Retry-After."""
    import asyncio

    from ragqa.config import load_config
    from ragqa.serve import ApiError, Engine, Job, Metrics

    engine = Engine(load_config(None, []), None, max_queue=2, max_batch=4, batch_window_s=0, metrics=Metrics())
    loop = asyncio.new_event_loop()
    try:
        jobs = [Job("q", "hybrid", 3, 8, loop, loop.create_future()) for _ in range(3)]
        engine.submit(jobs[0])
        engine.submit(jobs[1])
        with pytest.raises(ApiError) as err:
            engine.submit(jobs[2])
    finally:
        loop.close()
    assert err.value.status == 503 and int(err.value.headers["Retry-After"]) >= 1


@pytest.mark.slow
def test_browser_streams_answer_and_shows_cited_passage_as_text(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (make install installs it)")
    url, _ = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        blocked = []
        page.on("request", lambda r: None if r.url.startswith(url) else blocked.append(r.url))
        page.goto(url)
        # Count how often the answer grows while the page still says it is answering: streamed tokens.
        page.evaluate("""() => {
            window.__growths = 0;
            new MutationObserver(() => {
                if (document.getElementById('status').textContent.startsWith('Answering')) window.__growths++;
            }).observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});
        }""")
        page.get_by_text("API key (only if this server asks for one)").click()
        page.get_by_label("API key").fill(KEY)
        page.get_by_label("Your question").fill(SCABIES)
        page.get_by_label("Your question").press("Enter")  # keyboard only
        # expect() polls from Python: wait_for_function would eval a string, which the page's CSP forbids.
        playwright.expect(page.locator("#status")).to_have_text("Done.", timeout=300_000)
        assert page.evaluate("window.__growths") >= 2, "the answer arrived token by token"
        assert page.locator("#answer").inner_text().strip()
        assert page.locator("#error").is_hidden()
        # The hostile passage is listed by its title, as text.
        evil = page.locator("#sources button", has_text="<script>")
        assert evil.count() == 1
        evil.click()
        assert page.locator("#passage").is_visible()
        n = evil.evaluate("b => b.parentNode.value")
        assert page.locator("#passage-title").inner_text() == f"[{n}] {EVIL_TITLE}"
        assert "permethrin cream" in page.locator("#passage-text").inner_text()
        assert "<script>" in page.locator("#passage-text").inner_text()
        assert page.locator("#passage a").count() == 0, "a javascript: URL is not made a link"
        assert page.locator("main script, main img").count() == 0
        assert page.evaluate("window.__pwned") is None
        # A real passage opens from its citation button too.
        first = page.locator("#sources button").first
        first.click()
        assert page.locator("#passage-text").inner_text().strip()
        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 1000
    assert blocked == [], "the page loads nothing from another origin"


def test_serve_input_errors_are_one_line_and_fast(tmp_path):
    from conftest import run_cli

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [
        (["--api-key-env", "RAGQA_NO_SUCH_VAR"], "--api-key-env RAGQA_NO_SUCH_VAR: the environment variable"),
        (["--adapter", str(tmp_path / "nope")], f"--adapter {tmp_path / 'nope'}: no such adapter directory"),
        (["--index", str(tmp_path / "none")], "run `ragqa ingest --index"),
        (["--set", "retrieval.mode=none", "--port", str(port)], f"--port {port}: cannot listen on 127.0.0.1:{port}"),
    ]
    try:
        for args, message in cases:
            start = time.monotonic()
            res = run_cli("serve", *args, env={"RAGQA_NO_SUCH_VAR": ""}, timeout=60)
            assert res.returncode == 2 and message in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1
            assert time.monotonic() - start < 20, "no model is loaded before the inputs are checked"
    finally:
        taken.close()


def test_cli_max_batch_default_is_the_servers():
    from ragqa.cli import serve_cmd
    from ragqa.serve import DEFAULT_MAX_BATCH

    option = next(p for p in serve_cmd.params if p.name == "max_batch")
    assert option.default == DEFAULT_MAX_BATCH > 1, "batching is on by default, with one number for both"
