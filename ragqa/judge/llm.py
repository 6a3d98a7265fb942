"""An LLM as a yes/no faithfulness judge through any OpenAI-compatible chat endpoint.

Only used when configured (judge.name=llm with judge.llm_url). A plain stdlib HTTP call: the request is
one small JSON POST, and an SDK would add nothing but a dependency. Which API key is sent, and where, is
decided by `api_key_for` (also used by eval's `--judge openai:MODEL`).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from ragqa.endpoints import check_http_url, check_key_transport
from ragqa.errors import RagqaError
from ragqa.judge.support import ClaimScore, SupportResult, passage_text, split_claims

PROMPT = (
    "Passages:\n{passages}\n\nClaim: {claim}\n\n"
    "Is the claim fully supported by the passages? Answer with one word: yes or no."
)


OPENAI_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"


def api_key_for(url: str, key_env: str | None, *, url_option: str, key_option: str) -> str | None:
    """The API key to send to the OpenAI-compatible endpoint `url`, or None to send none.

    A key is a credential for one service, so it goes only where the user pointed it: OPENAI_API_KEY (read
    without being named) only to OpenAI's own https endpoint; any other endpoint gets the key of the variable
    the user named (`key_option` VAR), and never in the clear: plain http only to this machine (loopback).
    The refusal happens here, before any connection is made.
    """
    parts = check_http_url(url, url_option, "http://localhost:8000/v1")
    host = parts.hostname or ""
    if key_env is None:
        official = parts.scheme == "https" and host.lower() == urllib.parse.urlsplit(OPENAI_URL).hostname
        return (os.environ.get(OPENAI_KEY_ENV) or None) if official else None
    key = os.environ.get(key_env)
    if not key:
        raise RagqaError(f"{key_option} {key_env}: that environment variable is not set (or empty); export it "
                         f"or drop {key_option}")
    check_key_transport(url, refusing=f"{key_option} {key_env}: refusing to send the key",
                        fix=f"use an https {url_option}, a loopback address, or drop {key_option}")
    return key


class LLMJudge:
    """Asks a chat model whether each claim is supported; score 1.0 for yes, 0.0 for no."""

    threshold = 0.5
    can_contradict = False
    """A yes/no judge says supported or not, never contradicted."""

    def __init__(self, url: str, model: str, timeout: float = 60.0, api_key_env: str | None = None):
        if not url:
            raise RagqaError("judge.name=llm needs judge.llm_url, e.g. --set judge.llm_url=http://localhost:8000/v1")
        if not model:
            raise RagqaError("judge.name=llm needs judge.llm_model, the model name the endpoint serves")
        self.api_key = api_key_for(url, api_key_env, url_option="judge.llm_url",
                                   key_option="judge.llm_api_key_env")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.name = f"llm:{model}@{url}"

    def ask(self, claim: str, passages: Sequence) -> bool | None:
        """True / False for a yes / no answer; None when the reply is neither."""
        text = "\n\n".join(f"[{i}] {passage_text(p)}" for i, p in enumerate(passages, start=1)) or "(none)"
        body = {"model": self.model, "temperature": 0, "max_tokens": 3,
                "messages": [{"role": "user", "content": PROMPT.format(passages=text, claim=claim)}]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - user-configured URL
                reply = json.load(response)["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as exc:
            hint = "; no API key was sent: name one with judge.llm_api_key_env=VAR" \
                if exc.code == 401 and not self.api_key else ""
            raise RagqaError(f"LLM judge at {self.url}: {exc}{hint}") from None
        except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as exc:
            raise RagqaError(f"LLM judge at {self.url}: {exc}") from None
        word = reply.strip().lower().lstrip("*'\" ")
        return True if word.startswith("yes") else False if word.startswith("no") else None

    def support(self, answer: str, passages: Sequence) -> SupportResult:
        """Per-claim yes/no support; an unparseable reply counts as not supported."""
        scored = self.score_claims(split_claims(answer), passages)
        faithfulness = sum(c.score for c in scored) / len(scored) if scored else None
        return SupportResult(self.name, faithfulness, scored)

    def score_claims(self, claims: Sequence[str], passages: Sequence) -> list[ClaimScore]:
        """Each claim: 1.0 on a yes, 0.0 on a no or an unparseable reply."""
        scored = []
        for claim in claims:
            verdict = self.ask(claim, passages)
            scored.append(ClaimScore(claim, 1.0 if verdict else 0.0, "entailment" if verdict else "neutral",
                                     None, {"valid": float(verdict is not None)}))
        return scored
