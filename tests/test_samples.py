"""The dataset file reader (schemas.samples) on good and bad files of every format
(tests/data/datasets/) and on files written by the tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.samples import (
    MAX_STORED_ERRORS,
    Conversation,
    Message,
    TextSample,
    count,
    count_samples,
    read_dataset,
)

DATA = Path(__file__).parent / "data" / "datasets"


def _errors(path: Path, fmt: str) -> list[str]:
    return [str(e) for e in read_dataset(path, fmt).errors]


def _roles(conv: Conversation) -> list[str]:
    return [m.role for m in conv.messages]


def test_alpaca_good() -> None:
    r = read_dataset(DATA / "alpaca_good.jsonl", "alpaca")
    assert r.ok and r.count == 3 and count_samples(DATA / "alpaca_good.jsonl", "alpaca") == 3
    first, cjk, with_system = r.samples
    assert first.messages == [
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris."),
    ]
    assert cjk.messages[0].content == "Translate to English\n你好，世界"  # instruction + "\n" + input
    assert [s.source_line for s in r.samples] == [1, 2, 4]  # the blank line 3 is skipped
    assert _roles(with_system) == ["system", "user", "assistant"]


def test_alpaca_bad_collects_every_line() -> None:
    assert _errors(DATA / "alpaca_bad.jsonl", "alpaca") == [
        "line 2: output: missing",
        "line 3: invalid JSON: Expecting value at column 1",
        "line 4: instruction: expected a non-empty string, got an empty one",
        "line 5: expected a JSON object, got an array",
        "line 6: output: expected a string, got a number",
    ]
    r = read_dataset(DATA / "alpaca_bad.jsonl", "alpaca")
    assert [s.source_line for s in r.samples] == [1, 7]


def test_alpaca_history(tmp_path: Path) -> None:
    p = tmp_path / "h.jsonl"
    p.write_text(json.dumps({"instruction": "q2", "output": "a2", "history": [["q1", "a1"]]}) + "\n")
    assert _roles(read_dataset(p, "alpaca").samples[0]) == ["user", "assistant", "user", "assistant"]
    p.write_text(json.dumps({"instruction": "q", "output": "a", "history": [["only one"]]}) + "\n")
    assert _errors(p, "alpaca") == ["line 1: history[0]: expected a [user, assistant] pair of strings"]


def test_pretrain() -> None:
    r = read_dataset(DATA / "pretrain_good.jsonl", "pretrain")
    assert r.samples == [
        TextSample("Large language models learn from text.", 1),
        TextSample("大语言模型从文本中学习。", 2),
    ]
    assert _errors(DATA / "pretrain_bad.jsonl", "pretrain") == [
        "line 2: text: missing",
        "line 3: text: expected a non-empty string, got an empty one",
    ]


def test_moss_turns_in_numeric_order() -> None:
    r = read_dataset(DATA / "moss_good.jsonl", "moss")
    assert r.ok and r.count == 2
    assert r.samples[0].messages[1].content == "你好！有什么可以帮你？"
    contents = [m.content for m in r.samples[1].messages]
    assert contents == [
        "First?",
        "Yes.",
        "And then?",
        "Then we stop.",
        "Last",
        "Done",
    ]  # turn_10 after turn_2
    assert _errors(DATA / "moss_bad.jsonl", "moss") == [
        "line 2: chat: missing",
        "line 3: chat.turn_1.MOSS: missing",
        "line 4: chat.first: expected a key turn_<n>",
        "line 5: conversation_id: missing",
    ]


def test_sharegpt_roles_tools_system() -> None:
    r = read_dataset(DATA / "sharegpt_good.jsonl", "sharegpt")
    assert r.ok and r.count == 2
    assert _roles(r.samples[0]) == ["system", "user", "assistant"]
    fc = r.samples[1]
    assert _roles(fc) == ["user", "function_call", "tool", "assistant"]
    assert fc.tools == '[{"name": "weather"}]' and "北京" in fc.messages[0].content


def test_sharegpt_bad_role_order_and_shapes() -> None:
    assert _errors(DATA / "sharegpt_bad.jsonl", "sharegpt") == [
        "line 2: conversations[0].from: expected 'human' or 'observation' at position 1, got 'gpt'",
        "line 3: conversations[5].from: expected 'gpt' or 'function_call' at position 6, got 'human'",
        "line 4: conversations: expected an even number of turns ending with 'gpt', got 1",
        "line 5: conversations: expected at least one human/gpt pair, got none",
        "line 6: conversations: missing",
        "line 7: conversations[1].value: missing",
        "line 8: invalid JSON: Expecting ',' delimiter at column 84",
    ]


def test_csv_bom_cjk_and_multiturn_grouping() -> None:
    r = read_dataset(DATA / "csv_good.csv", "csv")
    assert r.ok and r.count == 3 == count_samples(DATA / "csv_good.csv", "csv")
    first, second, third = r.samples
    assert [m.content for m in first.messages] == ["你好", "你好！", "再见", "再见, 朋友"]  # BOM stripped
    assert (first.source_line, second.source_line, third.source_line) == (2, 4, 6)
    assert third.messages[0].content == "multi\nline"


def test_csv_same_id_not_adjacent_is_a_new_conversation(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("human,assistant,conversation_id\nq1,a1,1\nq2,a2,2\nq3,a3,1\n", encoding="utf-8")
    r = read_dataset(p, "csv")  # columns in any order; rows group only while the id repeats
    assert [len(c.messages) for c in r.samples] == [2, 2, 2]


def test_csv_bad_rows() -> None:
    assert _errors(DATA / "csv_bad.csv", "csv") == [
        "row 3: conversation_id: expected a positive integer, got '0'",
        "row 4: conversation_id: expected a positive integer, got '-2'",
        "row 5: conversation_id: expected a positive integer, got 'x'",
        "row 6: human: expected a non-empty value, got an empty cell",
        "row 7: assistant: expected a non-empty value, got an empty cell",
    ]
    assert read_dataset(DATA / "csv_bad.csv", "csv").count == 2
    (err,) = _errors(DATA / "csv_noheader.csv", "csv")
    assert err.startswith("row 1: header row: expected columns conversation_id, human, assistant")


def test_xlsx() -> None:
    r = read_dataset(DATA / "xlsx_mixed.xlsx", "xlsx")
    assert [str(e) for e in r.errors] == [
        "row 5: conversation_id: expected a positive integer, got '0'",
        "row 6: human: expected a non-empty value, got an empty cell",
    ]
    assert [m.content for m in r.samples[0].messages] == ["你好", "你好！", "more", "sure"]
    assert r.samples[1].source_line == 4 and count_samples(DATA / "xlsx_mixed.xlsx", "xlsx") == 2


def test_xlsx_not_a_workbook(tmp_path: Path) -> None:
    p = tmp_path / "x.xlsx"
    p.write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable xlsx workbook"):
        read_dataset(p, "xlsx")


def test_errors_capped_but_all_counted(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text("{}\n" * 120 + '{"text": "ok"}\n')
    r = read_dataset(p, "pretrain")
    assert r.error_count == 120 and len(r.errors) == MAX_STORED_ERRORS and r.count == 1
    assert r.errors[-1].line == MAX_STORED_ERRORS and not r.ok
    assert r.as_dict()["error_count"] == 120


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset format 'jsonl'"):
        read_dataset(DATA / "alpaca_good.jsonl", "jsonl")
    with pytest.raises(OSError):
        read_dataset(tmp_path / "nope.jsonl", "alpaca")


def test_count_matches_read_and_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "bom"}\n\n  \n{"text": "b"}\n\xff\xfe\n{"text": "c"}')
    r = read_dataset(p, "pretrain")
    assert [s.text for s in r.samples] == ["bom", "b", "c"]
    assert [str(e) for e in r.errors] == ["line 5: not UTF-8 text"]
    assert count_samples(p, "pretrain") == 4  # counts lines; bad ones too (read_dataset is the check)
    assert count is count_samples


def test_light_import() -> None:
    code = "import sys, schemas.samples; print('torch' in sys.modules, 'openpyxl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
