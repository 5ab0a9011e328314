"""The one reader of the manuals' dataset file formats (001 §6, 000 §4.6.2): moss, alpaca,
pretrain, sharegpt (jsonl) and csv/xlsx (conversation_id, human, assistant).

Called by `zsconf validate` (every line checked, all bad lines reported), by the planner
(`count_samples`, for iterations) and by the training/compression/evaluation runners (samples as
conversations). Imports the stdlib only (samples are slotted dataclasses: building pydantic objects per message
cost ~5x the JSON parsing); openpyxl is imported lazily for xlsx.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "FORMATS",
    "MAX_STORED_ERRORS",
    "Conversation",
    "DatasetError",
    "DatasetReport",
    "Message",
    "SampleError",
    "TextSample",
    "count",
    "count_samples",
    "iter_samples",
    "read_dataset",
]

Format = Literal["moss", "alpaca", "sharegpt", "csv", "xlsx", "pretrain"]
FORMATS: tuple[str, ...] = ("moss", "alpaca", "sharegpt", "csv", "xlsx", "pretrain")
MAX_STORED_ERRORS = 50
Role = Literal["system", "user", "assistant", "tool", "function_call"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(slots=True)
class Conversation:
    """A fine-tune sample. `source_line` is the jsonl line (1-based) or the first csv/xlsx row."""

    messages: list[Message]
    tools: str | None = None
    source_line: int = 0


@dataclass(frozen=True, slots=True)
class TextSample:
    """A continued pre-training sample (`{"text": ...}`)."""

    text: str
    source_line: int = 0


@dataclass(frozen=True, slots=True)
class SampleError:
    """One bad line or row. `field` is a path inside the sample (e.g. `conversations[2].from`)."""

    line: int
    field: str | None
    message: str
    unit: Literal["line", "row"] = "line"  # csv/xlsx errors name rows (csv: the record's first line)

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.field + ': ' if self.field else ''}{self.message}"


@dataclass(slots=True)
class DatasetReport:
    """All samples in file order, their count, and the bad lines (the first MAX_STORED_ERRORS kept;
    `error_count` counts them all)."""

    path: str
    format: str
    samples: list[Conversation | TextSample] = field(default_factory=list)
    errors: list[SampleError] = field(default_factory=list)
    error_count: int = 0

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no samples)."""
        return {
            "path": self.path,
            "format": self.format,
            "count": self.count,
            "error_count": self.error_count,
            "errors": [asdict(e) for e in self.errors],
        }


# Samples are plain slotted dataclasses, not pydantic models: the readers check every field
# themselves, and building pydantic objects cost ~5x the JSON parsing (measured on 100k lines).
class _Bad(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return kinds.get(type(value), type(value).__name__)


def _text(obj: dict[str, Any], key: str, field: str, *, required: bool = True, empty_ok: bool = False) -> str:
    if key not in obj:
        if required:
            raise _Bad(field, "missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(field, f"expected a string, got {_kind(value)}")
    if required and not empty_ok and not value.strip():
        raise _Bad(field, "expected a non-empty string, got an empty one")
    return value


def _object(value: Any, field: str | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(field, f"expected a JSON object, got {_kind(value)}")
    return value


# ---------------------------------------------------------------- jsonl parsers (one per format)


def _parse_alpaca(obj: dict[str, Any], line: int) -> Conversation:
    # Fast path for the plain shape; anything else goes through the checks below.
    ins, out, extra = obj.get("instruction"), obj.get("output"), obj.get("input", "")
    if (
        type(ins) is str and type(out) is str and type(extra) is str and ins.strip() and out.strip()
        and "system" not in obj and "history" not in obj
    ):  # fmt: skip
        return Conversation(
            [Message("user", ins + ("\n" + extra if extra else "")), Message("assistant", out)], None, line
        )
    instruction = _text(obj, "instruction", "instruction")
    extra = _text(obj, "input", "input", required=False)
    output = _text(obj, "output", "output")
    messages: list[Message] = []
    system = _text(obj, "system", "system", required=False)
    if system:
        messages.append(Message(role="system", content=system))
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise _Bad("history", f"expected an array of [user, assistant] pairs, got {_kind(history)}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise _Bad(f"history[{i}]", "expected a [user, assistant] pair of strings")
        messages += [Message(role="user", content=pair[0]), Message(role="assistant", content=pair[1])]
    user = instruction + ("\n" + extra if extra else "")
    messages += [Message(role="user", content=user), Message(role="assistant", content=output)]
    return Conversation(messages, None, line)


def _parse_pretrain(obj: dict[str, Any], line: int) -> TextSample:
    return TextSample(_text(obj, "text", "text"), line)


def _turn_number(key: str) -> int:
    if key.startswith("turn_") and key[5:].isdigit():
        return int(key[5:])
    raise _Bad(f"chat.{key}", "expected a key turn_<n>")


def _parse_moss(obj: dict[str, Any], line: int) -> Conversation:
    if "conversation_id" not in obj:
        raise _Bad("conversation_id", "missing")
    chat = obj.get("chat")
    if chat is None:
        raise _Bad("chat", "missing")
    chat = _object(chat, "chat")
    if not chat:
        raise _Bad("chat", "expected at least one turn, got none")
    messages: list[Message] = []
    for key in sorted(chat, key=_turn_number):
        turn = _object(chat[key], f"chat.{key}")
        messages.append(Message(role="user", content=_text(turn, "Human", f"chat.{key}.Human")))
        messages.append(Message(role="assistant", content=_text(turn, "MOSS", f"chat.{key}.MOSS")))
    return Conversation(messages, None, line)


_SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "observation": "tool",
    "function_call": "function_call",
}
_ODD = ("human", "observation")  # 1-based odd positions: the user side
_EVEN = ("gpt", "function_call")


def _parse_sharegpt(obj: dict[str, Any], line: int) -> Conversation:
    turns = obj.get("conversations")
    if turns is None:
        raise _Bad("conversations", "missing")
    if not isinstance(turns, list):
        raise _Bad("conversations", f"expected an array, got {_kind(turns)}")
    if not turns:
        raise _Bad("conversations", "expected at least one human/gpt pair, got none")
    messages: list[Message] = []
    system = _text(obj, "system", "system", required=False)
    if system:
        messages.append(Message(role="system", content=system))
    tools = obj.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json.dumps(tools, ensure_ascii=False)  # some exporters write the list itself
    roles = _SHAREGPT_ROLES
    for i, turn in enumerate(turns):
        # Fast path for a well-formed turn; _turn_error re-checks a bad one to say exactly what is wrong.
        if type(turn) is dict:
            who = turn.get("from")
            value = turn.get("value")
            if who in (_EVEN if i % 2 else _ODD) and type(value) is str and value.strip():
                messages.append(Message(roles[who], value))  # type: ignore[arg-type]
                continue
        _turn_error(turn, i)
    if len(turns) % 2:
        raise _Bad("conversations", f"expected an even number of turns ending with 'gpt', got {len(turns)}")
    return Conversation(messages, tools, line)


def _turn_error(turn: Any, i: int) -> None:
    field = f"conversations[{i}]"
    turn = _object(turn, field)
    who = turn.get("from")
    position = i + 1
    allowed = _ODD if position % 2 else _EVEN
    if who not in allowed:
        raise _Bad(
            f"{field}.from",
            f"expected {' or '.join(repr(a) for a in allowed)} at position {position}, got {who!r}",
        )
    _text(turn, "value", f"{field}.value")
    raise _Bad(field, "invalid turn")  # not reached: one of the checks above fails


_JSONL_PARSERS = {
    "alpaca": _parse_alpaca,
    "pretrain": _parse_pretrain,
    "moss": _parse_moss,
    "sharegpt": _parse_sharegpt,
}


Item = Conversation | TextSample | SampleError


def _jsonl(path: Path, fmt: str) -> Iterator[Item]:
    parse = _JSONL_PARSERS[fmt]
    loads = json.loads
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue  # blank lines are allowed and skipped
            try:
                obj = loads(raw)
            except UnicodeDecodeError:
                yield SampleError(number, None, "not UTF-8 text")
                continue
            except json.JSONDecodeError as exc:
                yield SampleError(number, None, f"invalid JSON: {exc.msg} at column {exc.pos + 1}")
                continue
            except ValueError as exc:
                yield SampleError(number, None, f"invalid JSON: {exc}")
                continue
            try:
                yield parse(_object(obj), number)
            except _Bad as bad:
                yield SampleError(number, bad.field, bad.message)


# ---------------------------------------------------------------- csv / xlsx


_COLUMNS = ("conversation_id", "human", "assistant")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rows_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        start = 1
        for row in reader:
            yield start, row  # the line the record starts on (a quoted cell may span lines)
            start = reader.line_num + 1


def _rows_xlsx(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        import openpyxl
    except ImportError as exc:  # pragma: no cover - installed with zsconf
        raise ValueError("reading xlsx needs openpyxl (pip install openpyxl)") from exc
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise ValueError(f"not a readable xlsx workbook: {exc}") from exc
    try:
        sheet = book.worksheets[0]
        for number, row in enumerate(sheet.iter_rows(values_only=True), 1):
            yield number, [_cell(v) for v in row]
    finally:
        book.close()


def _table(path: Path, fmt: str) -> Iterator[Item]:
    """Rows grouped into conversations by consecutive conversation_id, in file order; a
    conversation is yielded when the next one starts (or the file ends)."""
    rows = _rows_csv(path) if fmt == "csv" else _rows_xlsx(path)
    header: dict[str, int] | None = None
    current: Conversation | None = None
    current_id: int | None = None
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            names = [cell.strip().lower() for cell in row]
            missing = [c for c in _COLUMNS if c not in names]
            if missing:
                yield SampleError(
                    number,
                    None,
                    f"header row: expected columns {', '.join(_COLUMNS)}, got {', '.join(repr(n) for n in names)} "
                    f"(missing {', '.join(missing)})",
                    "row",
                )
                return
            header = {c: names.index(c) for c in _COLUMNS}
            continue
        cells = {c: (row[i] if i < len(row) else "") for c, i in header.items()}
        raw_id = cells["conversation_id"].strip()
        bad = False
        try:
            cid = int(raw_id)
        except ValueError:
            cid = 0
        if cid <= 0:
            yield SampleError(
                number, "conversation_id", f"expected a positive integer, got {raw_id!r}", "row"
            )
            bad = True
        for col in ("human", "assistant"):
            if not cells[col].strip():
                yield SampleError(number, col, "expected a non-empty value, got an empty cell", "row")
                bad = True
        if bad:
            continue
        turn = [
            Message(role="user", content=cells["human"]),
            Message(role="assistant", content=cells["assistant"]),
        ]
        if current is not None and cid == current_id:
            current.messages.extend(turn)
        else:
            if current is not None:
                yield current
            current, current_id = Conversation(turn, None, number), cid
    if current is not None:
        yield current
    if header is None:
        yield SampleError(
            1, None, f"empty file: expected a header row with columns {', '.join(_COLUMNS)}", "row"
        )


# ---------------------------------------------------------------- public API


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _items(path: str | os.PathLike[str], format: str) -> Iterator[Item]:
    _check_format(format)
    p = Path(path)
    return _table(p, format) if format in ("csv", "xlsx") else _jsonl(p, format)


def read_dataset(path: str | os.PathLike[str], format: str) -> DatasetReport:
    """Read and check every line/row of a dataset file. Never stops at the first bad line: all are
    counted in `error_count` (the first MAX_STORED_ERRORS kept in `errors`). Raises OSError when the
    file cannot be opened, ValueError for an unknown format or an unreadable workbook."""
    report = DatasetReport(path=str(path), format=format)
    samples, errors = report.samples, report.errors
    for item in _items(path, format):
        if type(item) is SampleError:
            report.error_count += 1
            if len(errors) < MAX_STORED_ERRORS:
                errors.append(item)
        else:
            samples.append(item)  # type: ignore[arg-type]
    return report


class DatasetError(ValueError):
    """The first bad line or row of a dataset read by `iter_samples`; names the file."""


def iter_samples(path: str | os.PathLike[str], format: str) -> Iterator[Conversation | TextSample]:
    """The samples of a dataset file in file order, streaming: a runner that needs the first N
    reads only as far as those. Stops at the first bad line or row with a DatasetError naming the
    file and the line (`read_dataset` is the check that reports them all)."""
    try:
        for item in _items(path, format):
            if type(item) is SampleError:
                raise DatasetError(f"{path}: {item}")
            yield item  # type: ignore[misc]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the dataset: {exc.strerror or exc}") from exc


def count_samples(path: str | os.PathLike[str], format: str) -> int:
    """Number of samples without building them (for the planner's iterations): non-blank lines for
    jsonl formats, distinct consecutive conversation_id groups for csv/xlsx. Bad lines are counted
    too; `read_dataset` is the check."""
    _check_format(format)
    p = Path(path)
    if format == "xlsx":
        return read_dataset(p, format).count
    if format == "csv":
        n = 0
        last: str | None = None
        header: int | None = None
        with open(p, encoding="utf-8-sig", newline="") as f:
            for row in csv.reader(f):
                if not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    names = [c.strip().lower() for c in row]
                    if "conversation_id" not in names:
                        return 0
                    header = names.index("conversation_id")
                    continue
                cid = row[header].strip() if header < len(row) else ""
                if cid != last:
                    n += 1
                    last = cid
        return n
    with open(p, "rb") as f:
        return sum(1 for line in f if line.strip())


count = count_samples  # the name zsconf.engine.estimates looks up
