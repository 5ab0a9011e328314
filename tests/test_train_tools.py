"""ShareGPT `tools` reach the chat template: runners.train.data passes a conversation's tools to
`apply_chat_template(tools=...)`, and the debug Qwen2's template renders them the Qwen2 way
(<tools> in the system turn, <tool_call> / <tool_response> turns). The tool call is trained on,
the tool response is not; a conversation without tools renders as plain ChatML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TOOL = {
    "name": "weather",
    "description": "current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = '{"name": "weather", "arguments": {"city": "北京"}}'


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _conv(tools: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "conversations": [
            {"from": "human", "value": "Weather in 北京?"},
            {"from": "function_call", "value": CALL},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "It is 20 °C."},
        ],
        "system": "You are helpful.",
    }
    if tools is not None:
        row["tools"] = tools
    return row


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen2: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2)


def test_tools_rendered_and_labels(tokenizer: Any, tmp_path: Path) -> None:
    from runners.samples import read_samples
    from runners.train.data import IGNORE, tokenize_sft

    path = _write(tmp_path / "d.jsonl", [_conv(json.dumps([TOOL]))])
    (sample,) = read_samples(path, "sharegpt")
    assert sample["tools"] == [TOOL]
    ex = tokenize_sft(tokenizer, sample["messages"], 4096, sample["tools"])
    text = tokenizer.decode(ex.input_ids)
    assert "<tools>\n" + json.dumps(TOOL, ensure_ascii=False) + "\n</tools>" in text
    # the system prompt is merged into the tools system turn, not repeated
    assert text.startswith("<|im_start|>system\nYou are helpful.\n\n# Tools") and text.count("system\n") == 1
    assert "<|im_start|>assistant\n<tool_call>\n" + CALL + "\n</tool_call><|im_end|>" in text
    assert "<|im_start|>user\n<tool_response>\n" + '{"temp": 20}' in text
    trained = tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])
    assert CALL in trained and "It is 20 °C." in trained
    assert "temp" not in trained and "weather of a city" not in trained and "北京?" not in trained


def test_single_schema_and_no_tools(tokenizer: Any, tmp_path: Path) -> None:
    from runners.samples import read_samples
    from runners.train.data import load_examples, tokenize_sft

    path = _write(tmp_path / "d.jsonl", [_conv(json.dumps(TOOL)), _conv(None)])
    one, none = read_samples(path, "sharegpt")
    assert one["tools"] == [TOOL] and "tools" not in none
    plain = tokenizer.decode(tokenize_sft(tokenizer, none["messages"], 4096).input_ids)
    assert plain.startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n")
    assert "<tools>" not in plain
    assert len(load_examples(tokenizer, path, "sharegpt", "lora", 4096)) == 2
    # continued pre-training renders the tools too
    (block,) = load_examples(tokenizer, path, "sharegpt", "continued_pretrain", 4096)
    assert "<tools>" in tokenizer.decode(block.input_ids)


def test_bad_tools_name_the_line(tmp_path: Path) -> None:
    from runners.runfiles import UserError
    from runners.samples import read_samples

    path = _write(tmp_path / "d.jsonl", [_conv(None), _conv("not json")])
    with pytest.raises(UserError, match=r"d\.jsonl: line 2: tools: "):
        read_samples(path, "sharegpt")
