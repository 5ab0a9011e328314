"""runners.samples: every dataset format the manuals define reaches training, calibration and
evaluation through the one reader (schemas.samples), streaming, stopping at the first bad line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runners.evaluate.run import split_sample
from runners.runfiles import UserError
from runners.samples import chat_text, read_samples

DATA = Path(__file__).parent / "data" / "datasets"


def test_moss_turns_in_turn_order_and_evaluation_pairs() -> None:
    first, second = read_samples(DATA / "moss_good.jsonl", "moss")
    assert first == {
        "messages": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你？"},
        ]
    }
    assert [m["content"] for m in second["messages"]] == [
        "First?", "Yes.", "And then?", "Then we stop.", "Last", "Done",
    ]  # fmt: skip
    prompt, expected = split_sample(second)
    assert expected == "Done" and prompt["messages"][-1] == {"role": "user", "content": "Last"}


def test_csv_rows_grouped_into_conversations() -> None:
    first, second, third = read_samples(DATA / "csv_good.csv", "csv")
    assert [m["content"] for m in first["messages"]] == ["你好", "你好！", "再见", "再见, 朋友"]
    assert split_sample(second) == ({"messages": [{"role": "user", "content": "Hi"}]}, "Hello")
    assert third["messages"][0]["content"] == "multi\nline"  # a quoted cell may span lines


def test_first_bad_line_named_and_reading_stops_at_the_limit() -> None:
    with pytest.raises(UserError, match=r"moss_bad\.jsonl: line 2: chat: missing"):
        read_samples(DATA / "moss_bad.jsonl", "moss")
    # line 2 is bad, but a caller that needs one sample never reads that far
    assert len(read_samples(DATA / "moss_bad.jsonl", "moss", limit=1)) == 1
    with pytest.raises(UserError, match=r"csv_bad\.csv: row 3: conversation_id: expected a positive integer"):
        read_samples(DATA / "csv_bad.csv", "csv")
    with pytest.raises(UserError, match=r"nowhere\.jsonl: cannot read the dataset"):
        read_samples(DATA / "nowhere.jsonl", "alpaca")


def test_chat_text_renders_the_template_with_tools(tiny_qwen2: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    tools: list[dict[str, Any]] = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    sample = {"messages": [{"role": "user", "content": "weather?"}], "tools": tools}
    text = chat_text(sample, tok, generation_prompt=True)
    assert text == tok.apply_chat_template(
        sample["messages"], tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert '"weather"' in text and text.endswith("<|im_start|>assistant\n")
    assert chat_text({"text": "plain"}, tok) == "plain"
