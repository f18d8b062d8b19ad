"""Dataset parsing: every rejection names the line and column; limits hold while streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.datasets_io import (
    DatasetError,
    DatasetLimits,
    check_filename,
    iter_rows,
    label_key,
    read_rows,
    scan,
)
from tests.conftest import data_lines, glue_file


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_csv_summary_types_and_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'text,label,score\nhello,pos,1.5\n"a, b",neg,2\nx,pos,3\n')
    summary = scan(path, "csv")
    assert summary.num_rows == 3
    assert summary.columns == ["text", "label", "score"]
    assert summary.column_types == {"text": "string", "label": "string", "score": "number"}
    assert summary.label_values["label"] == ["neg", "pos"]
    assert summary.label_values["score"] == ["1.5", "2", "3"]
    assert read_rows(path, "csv")[1] == {"text": "a, b", "label": "neg", "score": "2"}


def test_tsv_and_bom_and_quoted_newline(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", '\ufefftext\tlabel\n"two\nlines"\t0\nb\t1\n')
    summary = scan(path, "tsv")
    assert summary.columns == ["text", "label"]
    assert summary.column_types["label"] == "integer"
    assert [r["text"] for r in iter_rows(path, "tsv")] == ["two\nlines", "b"]


def test_a_headerless_file_reads_every_line_as_a_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cola.tsv",
        "gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n",
    )
    summary = scan(path, "tsv", header=False)
    assert summary.header is False and summary.num_rows == 2
    assert summary.columns == ["column_1", "column_2", "column_3", "column_4"]
    rows = read_rows(path, "tsv", header=False)
    assert rows[0] == {
        "column_1": "gj04",
        "column_2": "1",
        "column_3": None,
        "column_4": "Our friends won't buy this.",
    }
    with pytest.raises(DatasetError, match="header=false"):
        scan(path, "tsv")  # read with a header, its empty third name is refused with a hint
    short = write(tmp_path, "short.csv", "a,b\nc\n")
    with pytest.raises(DatasetError, match="as in the first line"):
        scan(short, "csv", header=False)


def test_jsonl_summary_union_of_keys(tmp_path: Path) -> None:
    lines = [{"text": "a", "label": 1}, {"text": "b", "label": 0, "extra": True}, {}]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    summary = scan(path, "jsonl")
    assert summary.num_rows == 3
    assert summary.columns == ["text", "label", "extra"]
    assert summary.column_types == {"text": "string", "label": "integer", "extra": "boolean"}
    assert summary.label_values["label"] == ["0", "1"]
    assert summary.label_values["extra"] == ["true"]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "row", "column", "fragment"),
    [
        ("empty.csv", "", "csv", None, None, "empty"),
        ("header.csv", "text,label\n", "csv", None, None, "no data rows"),
        ("ragged.csv", "text,label\na,1\nb\n", "csv", 3, "label", "expected 2 fields"),
        ("extra.csv", "text,label\na,1,2\n", "csv", 2, None, "found 3"),
        ("dup.csv", "text,text\na,b\n", "csv", 1, "text", "duplicate"),
        ("blankname.csv", "text,\na,b\n", "csv", 1, "#2", "empty column name"),
        ("bad.jsonl", '{"text": "a"}\n{"text": \n', "jsonl", 2, None, "malformed JSON"),
        ("list.jsonl", "[1, 2]\n", "jsonl", 1, None, "JSON object"),
        ("nested.jsonl", '{"text": {"a": 1}}\n', "jsonl", 1, "text", "nested"),
        (
            "role.jsonl",
            '{"messages": [{"role": "robot", "content": "x"}]}\n',
            "jsonl",
            1,
            "messages[0].role",
            "unknown role 'robot'",
        ),
        (
            "empty.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": " "}]}\n',
            "jsonl",
            1,
            "messages[1].content",
            "non-empty",
        ),
        (
            "mute.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}]}\n',
            "jsonl",
            1,
            "messages",
            "no assistant message",
        ),
        ("none.jsonl", '{"messages": []}\n', "jsonl", 1, "messages", "at least one message"),
        ("shape.jsonl", '{"messages": ["hi"]}\n', "jsonl", 1, "messages[0]", "{role, content}"),
        (
            "field.jsonl",
            '{"messages": [{"role": "user", "content": "x", "tool": 1}]}\n',
            "jsonl",
            1,
            "messages[0].tool",
            "unknown message field",
        ),
        (
            "chats.jsonl",
            '{"text": [{"role": "user", "content": "hi"}]}\n',
            "jsonl",
            1,
            "text",
            "only a 'messages' column",
        ),
        ("nan.jsonl", '{"x": NaN}\n', "jsonl", 1, None, "NaN"),
        ("blank.jsonl", "\n\n", "jsonl", None, None, "no data rows"),
        ("quote.csv", 'text,label\n"unterminated,1\n', "csv", None, None, "malformed"),
    ],
)
def test_rejections_name_row_and_column(
    tmp_path: Path,
    name: str,
    content: str,
    fmt: str,
    row: int | None,
    column: str | None,
    fragment: str,
) -> None:
    with pytest.raises(DatasetError) as info:
        scan(write(tmp_path, name, content), fmt)
    if row is not None:
        assert info.value.row == row
    assert info.value.column == column
    assert fragment in str(info.value)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.csv", "text,label\nok,1\ncaf\xe9,0\n".encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        scan(path, "csv")
    assert info.value.row == 3
    assert "UTF-8" in info.value.message


def test_binary_named_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DatasetError, match="binary|UTF-8"):
        scan(path, "csv")


def test_line_over_max_line_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "long.jsonl", '{"t": "a"}\n' + '{"t": "' + "x" * 500 + '"}\n')
    with pytest.raises(DatasetError) as info:
        scan(path, "jsonl", DatasetLimits(max_line_bytes=100))
    assert info.value.row == 2
    assert "longer than 100 bytes" in info.value.message


def test_long_line_without_newline_is_not_read_whole(tmp_path: Path) -> None:
    path = write(tmp_path, "blob.csv", "a" * 10_000_000)
    with pytest.raises(DatasetError, match="longer than 1000 bytes"):
        scan(path, "csv", DatasetLimits(max_line_bytes=1000))


def test_too_many_columns(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(5))
    with pytest.raises(DatasetError, match="max_columns"):
        scan(write(tmp_path, "wide.csv", header + "\n" + "1,2,3,4,5\n"), "csv", DatasetLimits(4))
    wide = json.dumps({f"k{i}": i for i in range(5)})
    with pytest.raises(DatasetError) as info:
        scan(write(tmp_path, "wide.jsonl", wide + "\n"), "jsonl", DatasetLimits(4))
    assert info.value.column == "k4"


def test_too_many_label_values_drops_the_set(tmp_path: Path) -> None:
    rows = "".join(f"t{i},{i}\n" for i in range(20))
    summary = scan(
        write(tmp_path, "many.csv", "text,label\n" + rows),
        "csv",
        DatasetLimits(max_label_values=10),
    )
    assert summary.label_values["label"] is None
    assert summary.label_values["text"] is None


@pytest.mark.parametrize(
    ("filename", "fmt"), [("a.jsonl", "jsonl"), ("A.CSV", "csv"), ("x.y.tsv", "tsv")]
)
def test_check_filename_accepts(filename: str, fmt: str) -> None:
    assert check_filename(filename) == fmt


@pytest.mark.parametrize(
    "filename", ["../x.csv", "dir/x.csv", "..\\x.csv", "a..b.csv", "x.txt", "noext", "", None]
)
def test_check_filename_rejects(filename: str | None) -> None:
    with pytest.raises(DatasetError):
        check_filename(filename)


def test_label_key_is_stable() -> None:
    assert [label_key(v) for v in (True, False, 3, "pos", 1.5)] == [
        "true",
        "false",
        "3",
        "pos",
        "1.5",
    ]


def test_jsonl_keeps_json_types_csv_infers(tmp_path: Path) -> None:
    jl = write(tmp_path, "t.jsonl", '{"a": "5", "b": 5, "c": 5.5}\n')
    assert scan(jl, "jsonl").column_types == {"a": "string", "b": "integer", "c": "number"}
    csv_path = write(tmp_path, "t.csv", "a,b\n5,5.5\n")
    assert scan(csv_path, "csv").column_types == {"a": "integer", "b": "number"}


GLUE_WITH_HEADER = [
    f"{task}/{split}.tsv" for task in ("SST-2", "RTE", "MRPC") for split in ("train", "dev")
]


@pytest.mark.parametrize("name", GLUE_WITH_HEADER)
def test_glue_tsv_files_as_published(name: str) -> None:
    """GLUE's TSV files are unquoted: RTE and MRPC have fields that begin with a '"' which is
    text, not CSV quoting. Every data line is one row, quotes kept."""
    path = glue_file(name)
    assert scan(path, "tsv").num_rows == data_lines(path)
    rows = read_rows(path, "tsv")
    raw = [line.split("\t") for line in path.read_text("utf-8-sig").splitlines()[1:] if line]
    assert [list(r.values()) for r in rows] == [[v or None for v in fields] for fields in raw]


def test_unquoted_tsv_keeps_leading_quotes_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", 'text\tlabel\n"Hello," she said.\t1\nplain\t0\n')
    assert [r["text"] for r in iter_rows(path, "tsv")] == ['"Hello," she said.', "plain"]


def test_csv_quoted_tsv_as_pandas_writes_it(tmp_path: Path) -> None:
    """pandas' to_csv(sep="\\t") quotes fields holding a quote, a tab or a newline."""
    content = 'text\tlabel\n"He said ""hi"""\t1\n"a\ttab"\t0\n"two\nlines"\t1\nplain\t0\n'
    path = write(tmp_path, "d.tsv", content)
    assert [r["text"] for r in iter_rows(path, "tsv")] == [
        'He said "hi"',
        "a\ttab",
        "two\nlines",
        "plain",
    ]
    assert scan(path, "tsv").num_rows == 4


def test_a_tsv_row_with_the_wrong_width_is_still_named(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", 'text\tlabel\n"quoted" text\t1\nmissing\n')
    with pytest.raises(DatasetError) as raised:
        scan(path, "tsv")
    assert raised.value.row == 3 and "expected 2 fields" in raised.value.message


def test_a_chat_data_set_in_the_openai_format_is_read_whole(tmp_path: Path) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "name": "bot"},
    ]
    lines = [json.dumps({"messages": chat})] * 3
    path = write(tmp_path, "chat.jsonl", "\n".join(lines) + "\n")
    summary = scan(path, "jsonl")
    assert summary.column_types == {"messages": "chat"} and summary.label_values == {
        "messages": None
    }
    assert next(iter_rows(path, "jsonl"))["messages"] == chat


def test_a_chat_with_tool_calls_and_tool_results_is_read_and_a_bad_call_is_named(
    tmp_path: Path,
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    path = write(tmp_path, "tools.jsonl", json.dumps({"messages": chat, "tools": tools}) + "\n")
    assert scan(path, "jsonl").column_types == {"messages": "chat", "tools": "tools"}
    assert next(iter_rows(path, "jsonl")) == {"messages": chat, "tools": tools}
    bad_tools = [{"type": "function", "function": {"parameters": {}}}]
    path = write(tmp_path, "t.jsonl", json.dumps({"messages": chat, "tools": bad_tools}) + "\n")
    with pytest.raises(DatasetError) as raised:
        scan(path, "jsonl")
    assert raised.value.column == "tools[0]"
    bad = [{**chat[1], "tool_calls": [{"id": "c1", "function": {"arguments": "{}"}}]}]
    path = write(tmp_path, "bad.jsonl", json.dumps({"messages": [chat[0], *bad]}) + "\n")
    with pytest.raises(DatasetError) as raised:
        scan(path, "jsonl")
    assert raised.value.column == "messages[1].tool_calls[0]"
