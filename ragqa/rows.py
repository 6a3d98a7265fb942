"""Per-row control of one batched `generate` call: each row's own token budget and stop event, and each row's
text handed out as it is generated.

transformers' streamers take one row (TextStreamer refuses a batch) and its stopping criteria see the batch as a
whole, so `ragqa serve` could only batch requests that did not stream and asked for the same max_tokens. With
these, one left-padded generate call (the path `ragqa eval` uses) serves streaming and non-streaming requests
with different budgets together, and a client that leaves ends only its own row.

transformers loads inside the factory (`row_control`): importing this module stays cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence


class IncrementalText:
    """One row's token ids -> the text each new token completes.

    Decodes a short window (the tokens of the previous piece and the new ones), not the whole answer per token,
    and holds a piece back while it ends in U+FFFD: a character whose bytes span several tokens is shown whole.
    The window starts at a token boundary the previous piece ended on, so a tokenizer that drops a leading space
    at the start of a decode drops it from both strings compared."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._piece(final=False)

    def flush(self) -> str:
        """Whatever is still held back (called once generation has ended)."""
        return self._piece(final=True)

    def _piece(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


class RowState:
    """What the stopping criterion and the streamer of one generate call share.

    ended[i]: the step (1 = first new token) that produced row i's last token (its end token, the last token of
    its budget, or the token generated when its stop event was seen); None while the row goes on. transformers
    pads a finished row with pad tokens until the whole batch ends; they are neither streamed nor counted."""

    def __init__(self, tokenizer, width: int, budgets: Sequence[int], eos: set[int],
                 stops: Sequence[threading.Event | None] | None = None,
                 callbacks: Sequence[Callable[[str], None] | None] | None = None):
        n = len(budgets)
        self.width, self.budgets, self.eos = width, list(budgets), eos
        self.stops = list(stops) if stops is not None else [None] * n
        self.callbacks = list(callbacks) if callbacks is not None else [None] * n
        if len(self.stops) != n or len(self.callbacks) != n:
            raise ValueError("budgets, stops and callbacks need one entry per row")
        self.texts = [IncrementalText(tokenizer) if cb is not None else None for cb in self.callbacks]
        self.ended: list[int | None] = [None] * n
        self.first_token_s: list[float | None] = [None] * n
        self.start = time.perf_counter()
        self.steps_streamed = 0
        self.prompt_seen = False

    def check(self, last_tokens: list[int], step: int) -> list[bool]:
        """After step `step` appended `last_tokens`: which rows have ended (ended[] is updated)."""
        for i, token in enumerate(last_tokens):
            if self.ended[i] is None:
                stop = self.stops[i]
                if token in self.eos or step >= self.budgets[i] or (stop is not None and stop.is_set()):
                    self.ended[i] = step
        return [e is not None for e in self.ended]

    def put(self, tokens: list[int]) -> None:
        """One step's tokens, one per row: time each row's first token and stream the live rows' text."""
        self.steps_streamed += 1
        step, now = self.steps_streamed, time.perf_counter()
        for i, token in enumerate(tokens):
            ended = self.ended[i]
            if ended is not None and ended < step:  # padding after the row's end
                continue
            if self.first_token_s[i] is None:
                self.first_token_s[i] = now - self.start
            text = self.texts[i]
            if text is not None and token not in self.eos:
                piece = text.push(token)
                if piece:
                    self.callbacks[i](piece)

    def end(self) -> None:
        for text, callback in zip(self.texts, self.callbacks, strict=True):
            if text is not None:
                piece = text.flush()
                if piece:
                    callback(piece)

    def new_tokens(self, row: int, generated: list[int]) -> list[int]:
        """Row `row`'s own tokens among the ids generate returned for it (its end token included, padding not)."""
        ended = self.ended[row]
        if ended is None:  # the batch stopped at its longest budget (or a criterion of transformers' own)
            ended = next((j + 1 for j, token in enumerate(generated) if token in self.eos), len(generated))
        return generated[:ended]


def row_control(state: RowState):
    """(stopping criterion, streamer) for `generate`, both driving `state`."""
    import torch
    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class RowCriterion(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = state.check(input_ids[:, -1].tolist(), input_ids.shape[1] - state.width)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    class RowStreamer(BaseStreamer):
        def put(self, value):
            if not state.prompt_seen:  # generate first hands over the prompt ids
                state.prompt_seen = True
                return
            state.put(value.reshape(-1).tolist())

        def end(self):
            state.end()

    return RowCriterion(), RowStreamer()
