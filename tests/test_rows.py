"""ragqa.rows: per-row budgets, stop events and text streaming of one batched generate call, driven step by step
in the order transformers calls them (stopping criteria, then the streamer), with the real tokenizer."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    from ragqa.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


TEXT = "Eczéma flares: naïve café crème, 🙂 and 皮肤 — itch.\nNext line [1]."


def test_incremental_text_gives_whole_characters_that_add_up_to_the_decoded_answer(tokenizer):
    from ragqa.rows import IncrementalText

    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    text = IncrementalText(tokenizer)
    pieces = [text.push(token) for token in ids]
    pieces.append(text.flush())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert not any("\ufffd" in piece for piece in pieces), "a multi-byte character is never shown in halves"
    assert sum(1 for piece in pieces if piece) >= 10, "pieces arrive as tokens complete, not at the end"


def test_rows_end_at_their_own_budget_stop_event_or_end_token(tokenizer):
    from ragqa.rows import RowState

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    words = tokenizer(" Scabies is treated with permethrin cream.", add_special_tokens=False)["input_ids"]
    assert len(words) >= 6
    three = tokenizer.decode(words[:3])
    stop = threading.Event()
    out: list[list[str]] = [[], [], []]
    # Row 0: budget 3. Row 1: its client leaves after step 2. Row 2: ends with its end token at step 2.
    state = RowState(tokenizer, width=4, budgets=[3, 6, 6], eos={eos}, stops=[None, stop, None],
                     callbacks=[out[0].append, out[1].append, None])
    ids: list[list[int]] = [[], [], []]
    for step in range(1, 7):
        tokens = []
        for row in range(3):
            ended = state.ended[row]
            # generate pads a finished row (its own pad id) until the batch ends
            tokens.append(pad if ended is not None and ended < step else
                          (eos if row == 2 and step == 2 else words[step - 1]))
        for row in range(3):
            ids[row].append(tokens[row])
        done = state.check(tokens, step)
        state.put(tokens)
        if step == 2:
            stop.set()  # seen by the next step's check: that step's token is the row's last
        if all(done):
            break
    state.end()
    assert state.ended == [3, 3, 2]
    assert "".join(out[0]) == three and "".join(out[1]) == three
    assert [state.new_tokens(row, ids[row]) for row in range(3)] == [words[:3], words[:3], [words[0], eos]]
    assert all(t is not None for t in state.first_token_s)
