"""An LLM as a yes/no faithfulness judge through any OpenAI-compatible chat endpoint.

Only used when configured (judge.name=llm with judge.llm_url). A plain stdlib HTTP call: the request is
one small JSON POST, and an SDK would add nothing but a dependency. OPENAI_API_KEY is sent if set.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence

from ragqa.errors import RagqaError
from ragqa.judge.support import ClaimScore, SupportResult, passage_text, split_claims

PROMPT = (
    "Passages:\n{passages}\n\nClaim: {claim}\n\n"
    "Is the claim fully supported by the passages? Answer with one word: yes or no."
)


class LLMJudge:
    """Asks a chat model whether each claim is supported; score 1.0 for yes, 0.0 for no."""

    threshold = 0.5
    can_contradict = False
    """A yes/no judge says supported or not, never contradicted."""

    def __init__(self, url: str, model: str, timeout: float = 60.0):
        if not url:
            raise RagqaError("judge.name=llm needs judge.llm_url, e.g. --set judge.llm_url=http://localhost:8000/v1")
        if not model:
            raise RagqaError("judge.name=llm needs judge.llm_model, the model name the endpoint serves")
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
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - user-configured URL
                reply = json.load(response)["choices"][0]["message"]["content"]
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
