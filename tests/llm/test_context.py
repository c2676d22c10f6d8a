"""What the model is sent: system prompt, earlier turns within the budget, the new message."""

from __future__ import annotations

from channels.store import MessageRecord
from llm.context import build_messages


def turn(role: str, content: str, status: str = "done") -> MessageRecord:
    return MessageRecord(role, content, "ch" if role == "assistant" else None, status, "2026-01-01T00:00:00.000Z")


HISTORY = [turn("user", "q1" * 10), turn("assistant", "a1" * 10),
           turn("user", "q2" * 10), turn("assistant", "a2" * 10)]


def test_the_whole_history_goes_when_it_fits() -> None:
    messages = build_messages("Be brief.", HISTORY, "q3", 1_000)
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "q1" * 10}, {"role": "assistant", "content": "a1" * 10},
                        {"role": "user", "content": "q2" * 10}, {"role": "assistant", "content": "a2" * 10},
                        {"role": "user", "content": "q3"}]


def test_the_oldest_turns_are_dropped_first() -> None:
    # Room for the new message and two 20-character turns: the first exchange goes.
    messages = build_messages("", HISTORY, "q3", 2 + 40 + 5)
    assert [m["content"] for m in messages] == ["q2" * 10, "a2" * 10, "q3"]


def test_history_never_starts_with_an_answer_to_a_dropped_question() -> None:
    messages = build_messages("", HISTORY, "q3", 2 + 60)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "q2" * 10


def test_the_system_prompt_and_the_new_message_always_go() -> None:
    messages = build_messages("sys", HISTORY, "x" * 500, 10)
    assert messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "x" * 500}]


def test_empty_answers_are_left_out_and_kept_partial_answers_go() -> None:
    history = [turn("user", "q1"), turn("assistant", "", "error"),
               turn("user", "q2"), turn("assistant", "half an ans", "cancelled")]
    messages = build_messages("", history, "q3", 1_000)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "q1"), ("user", "q2"), ("assistant", "half an ans"), ("user", "q3")]
