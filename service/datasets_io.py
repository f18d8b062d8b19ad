"""Streaming parse and validation of .jsonl/.csv/.tsv datasets.

Files are read line by line (each line bounded by ``max_line_bytes``), so a file is never held
whole in memory. Errors name the 1-based line of the file (``row``) and the column.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from adalora_core.chat_template import TOOLS_KEY
from adalora_core.recipe import value_chars
from service.settings import Settings

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
# JSON Lines chats (the OpenAI fine-tuning format): a "messages" column of {role, content}.
MESSAGES_COLUMN = "messages"
CHAT_ROLES = ("system", "user", "assistant", "tool")
CHAT_TYPE = "chat"
# A chat row's tool definitions (OpenAI's fine-tuning format for tool calling): rendered by the
# base's chat template with the row's messages.
TOOLS_COLUMN = TOOLS_KEY
TOOLS_TYPE = "tools"
_INT = re.compile(r"^[+-]?\d+$")

csv.field_size_limit(64 * 1024 * 1024)  # per-line limits below are the real bound


class DatasetError(ValueError):
    """A bad dataset; ``row`` is the 1-based line in the file, ``column`` the column name."""

    def __init__(self, row: int | None, column: str | None, message: str) -> None:
        self.row = row
        self.column = column
        self.message = message
        where = []
        if row is not None:
            where.append(f"line {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class UnsupportedFormat(DatasetError):
    """The file type (by extension) is not one we read."""


@dataclass(frozen=True)
class DatasetLimits:
    max_columns: int = 64
    max_line_bytes: int = 1024 * 1024
    max_label_values: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetLimits:
        return cls(settings.max_columns, settings.max_line_bytes, settings.max_label_values)


@dataclass
class DatasetSummary:
    format: str
    num_rows: int
    columns: list[str]
    column_types: dict[str, str]
    # Distinct values (as label_key strings) per column, or None once a column has too many.
    label_values: dict[str, list[str] | None]
    # CSV/TSV only: False when the first line is data (columns are then column_1, column_2, ...).
    header: bool = True
    # Per column, the characters a generative job would learn from it (a chat's assistant turns,
    # else its text): the recipe sizes a generative run by them.
    learned_chars: dict[str, int] = field(default_factory=dict)


def check_filename(filename: str | None) -> str:
    """The format for an upload's filename; rejects path separators, '..' and unknown types."""
    if not filename:
        raise DatasetError(None, None, "the upload has no filename")
    if "/" in filename or "\\" in filename or ".." in filename or "\x00" in filename:
        raise DatasetError(None, None, f"invalid filename {filename!r}: no paths or '..'")
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise UnsupportedFormat(
            None, None, f"unsupported file type {suffix or '(none)'!r}; use .jsonl, .csv or .tsv"
        )
    return FORMATS[suffix]


def label_key(value: Any) -> str:
    """The string form used for label sets: the API's label names and the worker's label ids."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value_kind(value: Any, typed: bool) -> str | None:
    """JSON values keep their own type (``typed``); CSV/TSV text is typed by what it looks like."""
    if value is None:
        return None
    if isinstance(value, list):
        return CHAT_TYPE
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if typed:
        return "string"
    if _INT.match(value):
        return "integer"
    try:
        number = float(value)
    except ValueError:
        return "string"
    return "number" if math.isfinite(number) else "string"


def _column_type(kinds: set[str]) -> str:
    if not kinds:
        return "empty"
    if kinds == {"integer"}:
        return "integer"
    if kinds <= {"integer", "number"}:
        return "number"
    if kinds == {"boolean"}:
        return "boolean"
    if kinds == {CHAT_TYPE}:
        return CHAT_TYPE
    if kinds == {TOOLS_TYPE}:
        return TOOLS_TYPE
    return "string"


def _lines(handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """Decoded lines (newline kept) with their 1-based numbers, each checked for size and UTF-8."""
    number = 0
    while raw := handle.readline(max_line_bytes + 2):
        number += 1
        if len(raw.rstrip(b"\r\n")) > max_line_bytes:
            raise DatasetError(number, None, f"line longer than {max_line_bytes} bytes")
        if b"\x00" in raw:
            raise DatasetError(number, None, "binary content (NUL byte); expected UTF-8 text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(number, None, f"not valid UTF-8 (byte {exc.start + 1})") from exc
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield number, text


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not allowed")


def _jsonl_records(
    handle: BinaryIO, limits: DatasetLimits, columns: list[str]
) -> Iterator[tuple[int, dict[str, Any]]]:
    known = set(columns)
    for number, text in _lines(handle, limits.max_line_bytes):
        if not text.strip():
            continue
        try:
            record = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            message = f"malformed JSON: {exc.msg} (char {exc.colno})"
            raise DatasetError(number, None, message) from exc
        except ValueError as exc:
            raise DatasetError(number, None, f"malformed JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise DatasetError(number, None, "each line must be a JSON object")
        for key, value in record.items():
            if key not in known:
                if not key.strip():
                    raise DatasetError(number, key, "empty column name")
                if len(columns) >= limits.max_columns:
                    raise DatasetError(
                        number, key, f"more than {limits.max_columns} columns (max_columns)"
                    )
                known.add(key)
                columns.append(key)
            if isinstance(value, list) and key == MESSAGES_COLUMN:
                check_messages(number, key, value)
            elif isinstance(value, list) and key == TOOLS_COLUMN:
                check_tools(number, key, value)
            elif isinstance(value, dict | list):
                raise DatasetError(
                    number,
                    key,
                    "nested values are not supported; use a string (only a 'messages' column "
                    "may hold a chat: a list of {role, content} objects, and a 'tools' column "
                    "its tool definitions)",
                )
        yield number, record


def check_messages(number: int, column: str, messages: list[Any]) -> None:
    """A chat as the OpenAI fine-tuning format writes it: {role, content} objects, roles from
    CHAT_ROLES, non-empty text (an assistant turn may instead call tools: ``tool_calls`` of
    {id, type "function", function {name, arguments}}), and at least one assistant turn to
    learn from."""
    if not messages:
        raise DatasetError(number, column, "a chat needs at least one message")
    for index, message in enumerate(messages):
        where = f"{column}[{index}]"
        if not isinstance(message, dict):
            raise DatasetError(number, where, "each message must be an object {role, content}")
        unknown = sorted(set(message) - {"role", "content", "name", "tool_calls", "tool_call_id"})
        if unknown:
            raise DatasetError(number, f"{where}.{unknown[0]}", "unknown message field")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise DatasetError(
                number, f"{where}.role", f"unknown role {role!r}; use one of {list(CHAT_ROLES)}"
            )
        calls = message.get("tool_calls")
        if calls is not None:
            _check_tool_calls(number, f"{where}.tool_calls", role, calls)
        content = message.get("content")
        if calls and content in (None, ""):
            continue
        if not isinstance(content, str) or not content.strip():
            raise DatasetError(number, f"{where}.content", "must be a non-empty string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(number, column, "no assistant message: nothing to learn from")


def check_tools(number: int, column: str, tools: list[Any]) -> None:
    """Tool definitions as OpenAI's fine-tuning format writes them: {"type": "function",
    "function": {"name", "description"?, "parameters"?}}."""
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        parameters = function.get("parameters", {}) if isinstance(function, dict) else None
        if tool.get("type") != "function" or not isinstance(name, str) or not name:
            raise DatasetError(
                number, f"{column}[{index}]", 'must be {"type": "function", "function": {"name"}}'
            )
        if not isinstance(parameters, dict):
            raise DatasetError(
                number, f"{column}[{index}].function.parameters", "must be a JSON Schema object"
            )


def _check_tool_calls(number: int, where: str, role: object, calls: object) -> None:
    if role != "assistant":
        raise DatasetError(number, where, "only an assistant message calls tools")
    if not isinstance(calls, list) or not calls:
        raise DatasetError(number, where, "must be a non-empty list of tool calls")
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or not isinstance(arguments, str | dict):
            raise DatasetError(
                number,
                f"{where}[{index}]",
                'must be {"type": "function", "function": {"name", "arguments"}}',
            )


def _tsv_quoting(handle: BinaryIO, limits: DatasetLimits) -> int:
    """How a TSV file quotes. GLUE and most NLP TSV files do not (HF datasets reads them with
    QUOTE_NONE), and a field may start with a '"' that is plain text; pandas' ``to_csv(sep="\t")``
    writes CSV-style quoting. The file is read as quoted only if all of it parses that way with
    every row as wide as the first; otherwise quotes are text. Reads the file once more."""
    start = handle.tell()
    lines = (text for _, text in _lines(handle, limits.max_line_bytes))
    reader = csv.reader(lines, delimiter="\t", strict=True)
    try:
        widths = {len(row) for row in reader if row}
        return csv.QUOTE_MINIMAL if len(widths) <= 1 else csv.QUOTE_NONE
    except csv.Error:
        return csv.QUOTE_NONE
    finally:
        handle.seek(start)


def _delimited_records(
    handle: BinaryIO, limits: DatasetLimits, columns: list[str], delimiter: str, header: bool
) -> Iterator[tuple[int, dict[str, Any]]]:
    quoting = _tsv_quoting(handle, limits) if delimiter == "\t" else csv.QUOTE_MINIMAL
    lines = (text for _, text in _lines(handle, limits.max_line_bytes))
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=True)
    try:
        first = next(reader, None)
        if first is None:
            raise DatasetError(None, None, "the file is empty")
        if len(first) > limits.max_columns:
            raise DatasetError(
                1, None, f"{len(first)} columns; the limit is {limits.max_columns} (max_columns)"
            )
        names = _header_names(first) if header else headerless_names(len(first))
        columns.extend(names)
        rows = reader if header else itertools.chain([first], reader)
        for row in rows:
            if not row:
                continue
            if len(row) != len(names):
                column = names[len(row)] if len(row) < len(names) else None
                raise DatasetError(
                    reader.line_num,
                    column,
                    f"expected {len(names)} fields (as in the "
                    f"{'header' if header else 'first line'}), found {len(row)}",
                )
            yield (
                reader.line_num,
                {
                    name: (value if value != "" else None)
                    for name, value in zip(names, row, strict=True)
                },
            )
    except csv.Error as exc:
        message = f"malformed {delimiter!r}-separated data: {exc}"
        raise DatasetError(reader.line_num, None, message) from exc


def headerless_names(count: int) -> list[str]:
    return [f"column_{i + 1}" for i in range(count)]


def _header_names(header: list[str]) -> list[str]:
    names = [name.strip() for name in header]
    for index, name in enumerate(names):
        if not name:
            raise DatasetError(
                1,
                f"#{index + 1}",
                "empty column name in the header (if the first line is data, upload the file "
                "with header=false)",
            )
        if name in names[:index]:
            raise DatasetError(1, name, "duplicate column name in the header")
    return names


def _records(
    handle: BinaryIO, fmt: str, limits: DatasetLimits, columns: list[str], header: bool = True
) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt == "jsonl":
        if not header:
            raise DatasetError(None, "header", "applies to .csv and .tsv files only")
        return _jsonl_records(handle, limits, columns)
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        return _delimited_records(handle, limits, columns, delimiter, header)
    raise DatasetError(None, None, f"unknown format {fmt!r}")


@dataclass
class _ColumnStats:
    kinds: set[str] = field(default_factory=set)
    values: set[str] | None = field(default_factory=set)
    chars: int = 0


def scan(
    path: str | Path, fmt: str, limits: DatasetLimits | None = None, header: bool = True
) -> DatasetSummary:
    """Validate the whole file in one streaming pass and summarize it for the dataset row."""
    limits = limits or DatasetLimits()
    columns: list[str] = []
    stats: dict[str, _ColumnStats] = {}
    num_rows = 0
    with open(path, "rb") as handle:
        if handle.read(1) == b"":
            raise DatasetError(None, None, "the file is empty")
        handle.seek(0)
        for _, record in _records(handle, fmt, limits, columns, header):
            num_rows += 1
            for key, value in record.items():
                column = stats.setdefault(key, _ColumnStats())
                kind = _value_kind(value, typed=fmt == "jsonl")
                if kind == CHAT_TYPE and key == TOOLS_COLUMN:
                    kind = TOOLS_TYPE
                if kind is None:
                    continue
                column.kinds.add(kind)
                column.chars += value_chars(value)
                if kind in (CHAT_TYPE, TOOLS_TYPE):
                    column.values = None  # chats and tool lists are never labels
                if column.values is not None:
                    column.values.add(label_key(value))
                    if len(column.values) > limits.max_label_values:
                        column.values = None
    if num_rows == 0:
        message = "no data rows (only a header)" if fmt != "jsonl" and header else "no data rows"
        raise DatasetError(None, None, message)
    types = {name: _column_type(stats.get(name, _ColumnStats()).kinds) for name in columns}
    label_values: dict[str, list[str] | None] = {}
    for name in columns:
        values = stats.get(name, _ColumnStats()).values
        label_values[name] = None if values is None else _sorted_labels(values, types[name])
    chars = {name: stats.get(name, _ColumnStats()).chars for name in columns}
    return DatasetSummary(fmt, num_rows, columns, types, label_values, header, chars)


def _sorted_labels(values: set[str], column_type: str) -> list[str]:
    if column_type in ("integer", "number"):
        return sorted(values, key=float)
    return sorted(values)


def iter_rows(
    path: str | Path, fmt: str, limits: DatasetLimits | None = None, header: bool = True
) -> Iterator[dict[str, Any]]:
    """Rows as dicts (CSV/TSV values are strings, empty cells None; JSONL values as written)."""
    columns: list[str] = []
    with open(path, "rb") as handle:
        for _, record in _records(handle, fmt, limits or DatasetLimits(), columns, header):
            yield record


def read_rows(path: str | Path, fmt: str, header: bool = True) -> list[dict[str, Any]]:
    """All rows in memory: what the worker hands to the trainer."""
    return list(iter_rows(path, fmt, header=header))
