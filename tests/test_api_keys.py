"""API keys for OpenAI-compatible judges go only where the user pointed them, and never in clear text off-host.

A real HTTP server on loopback records the Authorization header each request carries; the remote URLs below
are never contacted (the refusal comes first, and the offline guard in conftest would fail any attempt).
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import chat_server, run_cli

from ragqa.errors import RagqaError

OPENAI_KEY = "sk-openai-secret"
LOCAL_KEY = "sk-local-secret"
REMOTE_HTTP = "http://10.20.30.40:8000/v1"  # a LAN host over plain http: never contacted


@pytest.fixture
def server():
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that says "yes" and records each request's key header."""
    with chat_server(lambda body, headers: "yes") as (url, seen):
        yield url, seen


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("LOCAL_LLM_KEY", LOCAL_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_llm_judge_sends_only_the_named_key_and_only_over_https_or_loopback(server, keys):
    from ragqa.judge import load_judge

    url, seen = server
    # OPENAI_API_KEY is set but this is not OpenAI: no key at all
    assert load_judge("llm", llm_url=url, llm_model="m").support("Cream helps.", ["Cream helps."]).faithfulness == 1
    assert seen == [None]
    # the key the user named, to this machine over http
    load_judge("llm", llm_url=url.replace("127.0.0.1", "localhost"), llm_model="m",
               llm_api_key_env="LOCAL_LLM_KEY").support("Cream helps.", ["Cream helps."])
    assert seen == [None, f"Bearer {LOCAL_KEY}"]
    # a named key in clear text to another host: refused before connecting
    with pytest.raises(RagqaError, match=r"refusing to send the key in clear text to 10\.20\.30\.40 over http"):
        load_judge("llm", llm_url=REMOTE_HTTP, llm_model="m", llm_api_key_env="LOCAL_LLM_KEY")
    with pytest.raises(RagqaError, match="NO_SUCH_KEY_VAR: that environment variable is not set"):
        load_judge("llm", llm_url=url, llm_model="m", llm_api_key_env="NO_SUCH_KEY_VAR")


def test_api_key_rules(keys):
    from ragqa.judge.llm import api_key_for

    def key(url, env=None):
        return api_key_for(url, env, url_option="--url", key_option="--key")

    assert key("https://api.openai.com/v1") == OPENAI_KEY  # OpenAI's own endpoint: its usual key
    for url in ("https://llm.example.org/v1", "http://api.openai.com/v1", REMOTE_HTTP, "http://127.0.0.1:8/v1"):
        assert key(url) is None, url  # anywhere else, a key only when named
    for url in ("https://llm.example.org/v1", "http://127.0.0.1:8/v1", "http://[::1]:8/v1",
                "http://localhost:8/v1", "http://127.8.9.1/v1"):
        assert key(url, "LOCAL_LLM_KEY") == LOCAL_KEY, url
    for url in (REMOTE_HTTP, "http://api.openai.com/v1", "http://llm.example.org/v1"):
        with pytest.raises(RagqaError, match="refusing to send the key in clear text"):
            key(url, "OPENAI_API_KEY")
    with pytest.raises(RagqaError, match="is not an http"):
        key("ftp://127.0.0.1/v1")


def test_openai_judge_client_sends_only_the_named_key(server, keys):
    """eval's `--judge openai:MODEL`: the real OpenAI client, as built by make_llm_judge, against loopback."""
    from pydantic import BaseModel

    from ragqa.evaluate.metrics import make_llm_judge

    class Verdict(BaseModel):
        verdict: int

    url, seen = server
    for key_env in (None, "LOCAL_LLM_KEY"):
        llm = make_llm_judge("openai:tiny", url, api_key_env=key_env)
        with pytest.raises(Exception):  # noqa: B017 - "yes" is no Verdict; only the request's header matters here
            asyncio.run(llm.agenerate("Is the sky blue?", Verdict))
    assert seen and set(seen[: seen.index(f"Bearer {LOCAL_KEY}")]) == {None}, seen
    assert set(seen[seen.index(f"Bearer {LOCAL_KEY}"):]) == {f"Bearer {LOCAL_KEY}"}, seen
    with pytest.raises(RagqaError, match="--judge-api-key-env LOCAL_LLM_KEY: refusing to send the key in clear"):
        make_llm_judge("openai:tiny", REMOTE_HTTP, api_key_env="LOCAL_LLM_KEY")


def test_eval_refuses_a_key_in_clear_text_before_writing_anything(tmp_path):
    out = tmp_path / "report"
    res = run_cli("eval", "--judge", "openai:tiny", "--judge-base-url", REMOTE_HTTP, "--judge-api-key-env",
                  "LOCAL_LLM_KEY", "--configs", "base", "--limit", "1", "--output", str(out),
                  env={"LOCAL_LLM_KEY": LOCAL_KEY})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: --judge-api-key-env LOCAL_LLM_KEY: refusing to send the key in clear text to 10.20.30.40 over "
        "http; use an https --judge-base-url, a loopback address, or drop --judge-api-key-env"]
    assert not out.exists()
