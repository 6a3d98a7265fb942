"""`ragqa serve`: an OpenAI-compatible HTTP API and a web page over one loaded answer pipeline.

One process holds one model. Requests wait in a bounded queue served by a single worker thread (the model
is not safe to run from two threads at once, and on CPU two generations would only share the same cores).
Requests waiting together (up to --max-batch) are answered by one left-padded `generate` call, the path
`ragqa eval` uses: streaming and non-streaming requests alike, each row with its own max_tokens, its own
token stream and its own stop event (ragqa.rows), so a client that leaves ends only its row. A batch pays in
decoding (one pass over the weights per step serves every row), not in prefill. Scale-out is by replicas: N
`ragqa serve` processes can share one read-only index directory.

Only `ragqa serve` imports this module (cli.py imports it inside the command), so fastapi loads here at the top.
Everything that comes in over HTTP is data: the question is cleaned like `ragqa ask`'s, the page inserts
answers and passages as text (never markup), and bad input gets a 4xx JSON error in the OpenAI shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from ragqa.answer import Answer, Pipeline
from ragqa.qa import MAX_QUESTION_CHARS, clean_question
from ragqa.config import Config
from ragqa.errors import RagqaError, first_line
from ragqa.passage import RETRIEVAL_MODES

MODEL_ID = "ragqa"
MAX_BODY_BYTES = 64 * 1024
"""A question is at most 2,000 characters; 64 KiB leaves room for a chat history and refuses floods."""
MAX_TOKENS_LIMIT = 1024
DEFAULT_MAX_BATCH = 8
"""Most requests answered by one generate call (--max-batch): see benchmarks/serve.py for the measured gain."""
STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""No inline script or style, nothing from another origin: a corpus or an answer cannot run code in the page."""

log = logging.getLogger("ragqa.serve")


class ApiError(Exception):
    """A request the client can fix (or retry): sent as an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


# ---- request bodies --------------------------------------------------------------------------------------

class _Strict(BaseModel):
    # strict: "12" is not a number and "yes" not a boolean, as in OpenAI's API.
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    type: str
    text: str | None = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Strict):
    """OpenAI's chat-completions body. Sampling hints ragqa does not use (temperature, top_p, seed, stop,
    penalties, user, ...) and unknown fields are ignored, as vLLM and llama-server do, so existing clients
    work; parameters whose result ragqa cannot give (n > 1, tools, logprobs, JSON output) are refused."""

    model: str | None = None
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    # ragqa's own extensions
    k: int | None = Field(None, ge=1, le=20)
    retrieval: Literal[RETRIEVAL_MODES] | None = None


class AskRequest(_Strict):
    """The body of POST /v1/ask: ragqa's own API, so unknown fields are refused."""

    model_config = ConfigDict(strict=True, extra="forbid")
    question: str
    k: int | None = Field(None, ge=1, le=20)
    retrieval: Literal[RETRIEVAL_MODES] | None = None
    max_tokens: int | None = Field(None, ge=1)


# ---- the queue and its worker --------------------------------------------------------------------------

@dataclass
class Job:
    question: str
    mode: str
    k: int
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future
    tokens: asyncio.Queue | None = None
    """Streaming jobs get their text pieces here; None: answer in one piece."""
    cancel: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def batch_key(self) -> tuple:
        """Jobs batch together when they retrieve alike (answer_batch takes one mode and k for all rows)."""
        return (self.mode, self.k)


def _settle(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hand a result to the job's event loop (called from the worker thread)."""

    def settle() -> None:
        if job.done.done():  # the request was cancelled meanwhile
            return
        if error is not None:
            job.done.set_exception(error)
        else:
            job.done.set_result(result)

    job.loop.call_soon_threadsafe(settle)


class Engine:
    """The loaded pipeline, a bounded queue of jobs and the one thread that runs them."""

    def __init__(self, cfg: Config, adapter: str | None, max_queue: int, max_batch: int, batch_window_s: float,
                 metrics: Metrics):
        self.cfg, self.adapter = cfg, adapter
        self.max_queue, self.max_batch, self.batch_window_s = max_queue, max_batch, batch_window_s
        self.metrics = metrics
        self.pipe: Pipeline | None = None
        self.load_error: str | None = None
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.job_s = 2.0
        """Moving average of one job's share of its generate call's time, for Retry-After."""

    # loading ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load model, adapter and index (in a background thread: /healthz says 'loading' until done)."""
        try:
            pipe = Pipeline(self.cfg, adapter=self.adapter)
            if self.cfg.retrieval.mode != "none":
                pipe.retriever  # noqa: B018 - load the index now, so ready means ready
            self.pipe = pipe
        except RagqaError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported on one line by healthz and the command
            self.load_error = f"{type(exc).__name__}: {first_line(exc)}"
        if self.pipe is not None:
            threading.Thread(target=self._work, name="ragqa-generate", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self.pipe is not None

    # queueing --------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.pending) >= self.max_queue:
                self.metrics.errors.labels("queue_full").inc()
                # The time to answer the queue: job_s is already each answer's share of its batch.
                wait = max(1, math.ceil(self.job_s * (len(self.pending) + 1)))
                raise ApiError(503, f"the server is busy ({len(self.pending)} requests queued): retry in {wait} s",
                               code="queue_full", headers={"Retry-After": str(wait)})
            self.pending.append(job)
            self.metrics.queue_depth.set(len(self.pending))
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            for job in self.pending:
                job.cancel.set()
            self.cond.notify_all()

    def _next_batch(self) -> list[Job] | None:
        """The oldest job, plus the other waiting jobs it can share a generate call with, after a short window
        for requests arriving together. On the openvino engine only non-streaming jobs of one max_tokens batch
        (it streams, and ends rows early, only for a lone prompt)."""
        with self.cond:
            while not self.pending and not self.closing:
                self.cond.wait()
            if self.closing:
                return None
            first = self.pending.popleft()
        batchable = self.max_batch > 1 and self._batchable(first, first)
        if batchable and self.batch_window_s > 0 and len(self.pending) < self.max_batch - 1:
            time.sleep(self.batch_window_s)
        batch = [first]
        with self.cond:
            if batchable:
                for job in list(self.pending):
                    if len(batch) >= self.max_batch:
                        break
                    if self._batchable(first, job):
                        self.pending.remove(job)
                        batch.append(job)
            self.metrics.queue_depth.set(len(self.pending))
        return batch

    def _batchable(self, first: Job, job: Job) -> bool:
        if job.batch_key != first.batch_key:
            return False
        if self.pipe is not None and self.pipe.engine is not None:
            return job.tokens is None and first.tokens is None and job.max_tokens == first.max_tokens
        return True

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [job for job in batch if not job.cancel.is_set()]  # clients gone while queued
            for job in batch:
                if job.cancel.is_set():
                    _settle(job, error=ApiError(499, "client closed the request", code="cancelled"))
            if not live:
                continue
            start = time.perf_counter()
            try:
                self._run(live)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive one failed batch
                log.error("generation failed: %s: %s", type(exc).__name__, first_line(exc))
                self.metrics.errors.labels("generation").inc()
                for job in live:
                    _settle(job, error=exc)
            took = time.perf_counter() - start
            self.job_s = 0.8 * self.job_s + 0.2 * took / len(live)

    def _run(self, jobs: list[Job]) -> None:
        assert self.pipe is not None
        first = jobs[0]
        self.metrics.batch_size.observe(len(jobs))
        answers = self.pipe.answer_batch([job.question for job in jobs], retrieval=first.mode, k=first.k,
                                         on_token=[_stream_to(job) for job in jobs],
                                         max_new_tokens=[job.max_tokens for job in jobs],
                                         stops=[job.cancel for job in jobs])
        for job, answer in zip(jobs, answers, strict=True):
            self.metrics.tokens.labels("completion").inc(answer.timings.get("new_tokens", 0))
            self.metrics.tokens.labels("prompt").inc(answer.timings.get("prompt_tokens", 0))
            _settle(job, answer)


def _stream_to(job: Job):
    """The callback handing a streaming job's text pieces to its event loop (None for a non-streaming job)."""
    if job.tokens is None:
        return None
    queue, loop = job.tokens, job.loop

    def on_token(piece: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, piece)

    return on_token


# ---- metrics ---------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics in a registry of their own (two apps in one process must not share counters)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ragqa_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
        self.latency = Histogram("ragqa_answer_latency_seconds", "Request to last token", ["endpoint"],
                                 buckets=buckets, registry=r)
        self.ttft = Histogram("ragqa_time_to_first_token_seconds", "Request to first streamed token",
                              buckets=buckets, registry=r)
        self.tokens = Counter("ragqa_tokens", "Tokens processed", ["kind"], registry=r)
        self.queue_depth = Gauge("ragqa_queue_depth", "Requests waiting for the generator", registry=r)
        self.batch_size = Histogram("ragqa_batch_size", "Requests answered per generate call",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.errors = Counter("ragqa_errors", "Failed requests by kind", ["kind"], registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---- the app ---------------------------------------------------------------------------------------------

def _error_body(err: ApiError) -> dict:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}


async def _read_json(request, model: type[BaseModel]):
    """The body, at most MAX_BODY_BYTES (counted as it arrives, whatever Content-Length says), as `model`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}", code="too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is over the {MAX_BODY_BYTES}-byte limit", code="too_large")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        param = _param(e["loc"], data)
        raise ApiError(400, f"{param}: {e['msg']}" if param else e["msg"], param=param, code="invalid_value") from None


def _param(loc: tuple, data: Any) -> str | None:
    """The dotted name of the field an error is about, as the client wrote it: pydantic adds the member
    type of a union to the location ('messages.0.content.str'), which names nothing in the request."""
    out, cur = [], data
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and isinstance(part, str) and (part in cur or i == len(loc) - 1):
            out.append(part)
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(str(part))
            cur = cur[part]
        else:
            break
    return ".".join(out) or None


def _question(text: str, param: str) -> str:
    if len(text) > MAX_QUESTION_CHARS:
        raise ApiError(400, f"{param}: the question is {len(text)} characters; the limit is {MAX_QUESTION_CHARS}",
                       param=param, code="too_long")
    try:
        return clean_question(text)
    except RagqaError:
        raise ApiError(400, f"{param}: the question is empty", param=param, code="empty") from None


def _last_user_text(req: ChatRequest) -> str:
    if not req.messages:
        raise ApiError(400, "messages: at least one message is needed", param="messages", code="empty")
    index, msg = next(((i, m) for i, m in reversed(list(enumerate(req.messages))) if m.role == "user"), (None, None))
    if msg is None:
        raise ApiError(400, "messages: no message has role 'user' (its text is the question)", param="messages")
    content = msg.content
    if isinstance(content, list):
        content = "\n".join(part.text or "" for part in content if part.type == "text")
    return _question(content or "", f"messages.{index}.content")


def _sources(answer: Answer) -> list[dict]:
    return [{"n": n, "id": p.chunk_id, "title": p.title, "source": p.source, "url": p.url,
             "score": round(float(p.scores.get("dense", p.score)), 4), "text": p.text}
            for n, p in enumerate(answer.passages, start=1)]


def create_app(cfg: Config, adapter: str | None = None, api_key: str | None = None, max_queue: int = 64,
               max_batch: int = DEFAULT_MAX_BATCH, batch_window_s: float = 0.005, cors_origins: tuple[str, ...] = (),
               load_in_background: bool = True):
    metrics = Metrics()
    engine = Engine(cfg, adapter, max_queue, max_batch, batch_window_s, metrics)
    served_max = cfg.ask.max_new_tokens
    key = api_key.encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app):
        loader = threading.Thread(target=engine.load, name="ragqa-load", daemon=True)
        loader.start()
        if not load_in_background:
            await asyncio.to_thread(loader.join)
        yield
        engine.close()

    app = FastAPI(title="ragqa", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        try:
            if key is not None and path.startswith("/v1/"):
                given = request.headers.get("authorization", "")
                scheme, _, token = given.partition(" ")
                # compare_digest: the time taken does not tell how much of a guessed key was right.
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
                    raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            response = await call_next(request)
        except ApiError as err:
            response = JSONResponse(_error_body(err), status_code=err.status, headers=err.headers)
        route = request.scope.get("route")
        metrics.requests.labels(route.path if route is not None else "other", str(response.status_code)).inc()
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        if err.status >= 500:
            metrics.errors.labels(err.code or "server").inc()
        elif err.status != 499:
            metrics.errors.labels("bad_request").inc()
        return JSONResponse(_error_body(err), status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(_error_body(ApiError(exc.status_code, str(exc.detail))), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        # The traceback stays in the server's log; the client gets one line and no internals.
        log.exception("request failed")
        metrics.errors.labels("internal").inc()
        return JSONResponse(_error_body(ApiError(500, "internal error: see the server log", code="internal")),
                            status_code=500)

    def require_ready() -> None:
        if not engine.ready:
            raise ApiError(503, "the model and index are still loading" if engine.load_error is None
                           else f"the server failed to load: {engine.load_error}",
                           code="loading", headers={"Retry-After": "5"})

    def max_tokens_of(value: int | None, param: str) -> int:
        if value is None:
            return served_max
        if value > MAX_TOKENS_LIMIT:
            raise ApiError(400, f"{param}: {value} is over the limit of {MAX_TOKENS_LIMIT}", param=param,
                           code="too_large")
        return value

    def new_job(question: str, mode: str | None, k: int | None, max_tokens: int, stream: bool) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(question, mode or cfg.retrieval.mode, k or cfg.retrieval.k, max_tokens, loop,
                  loop.create_future(), asyncio.Queue() if stream else None)
        engine.submit(job)
        return job

    async def wait_answer(job: Job, request: Request) -> Answer:
        """The job's answer; a client that disconnects meanwhile cancels it (queued or generating)."""
        try:
            while True:
                done, _ = await asyncio.wait({job.done}, timeout=0.25)
                if done:
                    return job.done.result()
                if await request.is_disconnected():
                    job.cancel.set()
        finally:
            if not job.done.done():
                job.cancel.set()

    @app.get("/healthz")
    async def healthz():
        if engine.ready:
            return {"status": "ok", "model": MODEL_ID, "queue": len(engine.pending)}
        status = "loading" if engine.load_error is None else "failed"
        return JSONResponse({"status": status, "error": engine.load_error}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": MODEL_ID, "object": "model", "created": 0, "owned_by": "ragqa",
            "base_model": cfg.model.base, "adapter": adapter, "index": cfg.index.name,
        }]}

    @app.post("/v1/ask")
    async def ask(request: Request):
        req = await _read_json(request, AskRequest)
        question = _question(req.question, "question")
        max_tokens = max_tokens_of(req.max_tokens, "max_tokens")
        require_ready()
        start = time.perf_counter()
        answer = await wait_answer(new_job(question, req.retrieval, req.k, max_tokens, stream=False), request)
        metrics.latency.labels("ask").observe(time.perf_counter() - start)
        return answer.to_dict()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await _read_json(request, ChatRequest)
        if req.model not in (None, MODEL_ID):
            raise ApiError(404, f"model '{req.model}' does not exist: this server serves '{MODEL_ID}' "
                                f"(GET /v1/models)", param="model", code="model_not_found")
        if req.n != 1:
            raise ApiError(400, "n: only n=1 is supported", param="n")
        if req.tools or req.functions:
            raise ApiError(400, "tools: ragqa does not call tools", param="tools")
        if req.logprobs:
            raise ApiError(400, "logprobs: not supported", param="logprobs")
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise ApiError(400, "response_format: only text answers are supported", param="response_format")
        question = _last_user_text(req)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = max_tokens_of(req.max_completion_tokens or req.max_tokens, param)
        require_ready()
        start = time.perf_counter()
        job = new_job(question, req.retrieval, req.k, max_tokens, stream=req.stream)
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

        def finish(answer: Answer) -> dict:
            new = int(answer.timings.get("new_tokens", 0))
            prompt = int(answer.timings.get("prompt_tokens", 0))
            return {"finish_reason": "length" if new >= max_tokens else "stop",
                    "usage": {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new},
                    "sources": _sources(answer), "abstained": answer.abstained}

        if not req.stream:
            answer = await wait_answer(job, request)
            metrics.latency.labels("chat").observe(time.perf_counter() - start)
            end = finish(answer)
            return {"id": cid, "object": "chat.completion", "created": created, "model": MODEL_ID,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                                 "finish_reason": end["finish_reason"]}],
                    "usage": end["usage"], "sources": end["sources"], "abstained": end["abstained"]}

        def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            # Starlette cancels this generator when the client disconnects: `finally` then stops generation.
            try:
                yield chunk({"role": "assistant", "content": ""})
                first = True
                while True:
                    getter = asyncio.ensure_future(job.tokens.get())
                    done, _ = await asyncio.wait({getter, job.done}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        if first:
                            metrics.ttft.observe(time.perf_counter() - start)
                            first = False
                        yield chunk({"content": getter.result()})
                        continue
                    getter.cancel()
                    while not job.tokens.empty():  # pieces queued before the answer was settled
                        yield chunk({"content": job.tokens.get_nowait()})
                    break
                try:
                    answer = job.done.result()
                except Exception as exc:  # noqa: BLE001 - headers are sent: report in the stream, one line
                    err = exc if isinstance(exc, ApiError) else ApiError(500, "internal error: see the server log")
                    yield f"data: {json.dumps(_error_body(err))}\n\n"
                    return
                if answer.abstained:  # nothing was generated: the abstention text is the answer
                    yield chunk({"content": answer.answer})
                end = finish(answer)
                metrics.latency.labels("chat_stream").observe(time.perf_counter() - start)
                # `answer` is the final text: citation markers pointing at no passage are removed from it.
                yield chunk({}, end["finish_reason"], usage=end["usage"], sources=end["sources"],
                            abstained=end["abstained"], answer=answer.answer, disclaimer=answer.disclaimer)
                yield "data: [DONE]\n\n"
            finally:
                if not job.done.done():
                    job.cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def run(cfg: Config, adapter: str | None, host: str, port: int, api_key: str | None, max_queue: int,
        max_batch: int, cors_origins: tuple[str, ...]) -> None:
    """Entry point of `ragqa serve` (inputs checked by cli.py): serve until Ctrl-C; exit 2 if loading fails."""
    import uvicorn

    app = create_app(cfg, adapter=adapter, api_key=api_key, max_queue=max_queue, max_batch=max_batch,
                     cors_origins=cors_origins)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                                           timeout_graceful_shutdown=5))
    engine: Engine = app.state.engine

    def stop_on_load_error() -> None:
        while engine.pipe is None and engine.load_error is None:
            time.sleep(0.2)
        if engine.load_error is not None:
            server.should_exit = True
        else:
            log.warning("ready: http://%s:%d/ (model %s, adapter %s, index %s)", host, port, cfg.model.base,
                        adapter or "none", cfg.index.name)

    threading.Thread(target=stop_on_load_error, daemon=True).start()
    server.run()
    if engine.load_error is not None:
        raise RagqaError(engine.load_error)
