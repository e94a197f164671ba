"""Read local data files as their publishers ship them, into Arrow tables.

A local source is

* one file: ``.jsonl``, ``.json`` (JSON lines, or one array of objects), ``.parquet`` or
  ``.csv``, each optionally compressed (``.gz``, ``.bz2``, ``.xz``, ``.zst``: the last
  suffix says which, ``test.jsonl.gz``);
* a directory: every such file below it (recursively, sorted, hidden entries skipped;
  files of other types, a README or a ``.py``, are not data and are left alone);
* a glob (``data/batch*.json``, ``data/**/*.json``): every file it matches, which must
  all be data files.

Each file becomes one :class:`LocalFile` (an Arrow table with its ``datasets`` features),
so a schema error names the file it is about. ``path_pattern`` (a regular expression
with named groups, searched in each file's absolute path with ``/`` separators) turns
parts of the path into columns, one per group: RMB's category lives in its folder names.

Errors are one line that names the file, and the line (or row) and column where that
applies: a non-UTF-8 byte, invalid JSON, a CSV row with the wrong number of fields,
truncated or corrupt compressed data, an empty file. They are :class:`SourceFileError`
(a :class:`~pipeline.pairs.SchemaError`, so a :class:`~pipeline.errors.UserError`),
which the stage runner prints as one line. A JSON column whose values change type from
row to row (text in one row, a message list in the next) is kept, as JSON text, and the
schema check that trips over it says so.

Nothing here parses more than it must: JSON lines go through pyarrow's reader and only a
file it rejects is read again line by line, to find the line to report.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipeline.pairs import SchemaError

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
ARCHIVES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z", ".rar")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UTF8_BOM = b"\xef\xbb\xbf"
# Blocks large enough for long rows (a row may not straddle two blocks).
_JSON_READ = pa_json.ReadOptions(block_size=16 << 20)


class SourceFileError(SchemaError):
    """A local source file cannot be read: the message names the file, and the line or
    row and the column where that applies."""


class LocalFile:
    """One file of a local source: its rows as an Arrow table, iterable as dicts.

    ``label`` is the path as the user wrote it (for messages); ``notes`` explains columns
    typed as JSON text because their values change type between rows. Rows carry such a
    column's ORIGINAL values (``raw``), so that a number or an object in a text column
    reaches the row checks as what it is, and is dropped and counted there, instead of
    passing as the text of its JSON.
    """

    def __init__(self, label: str, table: pa.Table, notes: dict[str, str] | None = None,
                 raw: dict[str, list[Any]] | None = None):
        self.label = label
        self.table = table
        self.notes = notes or {}
        self.raw = raw or {}
        self.features = datasets.Features.from_arrow_schema(table.schema)

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = 0
        for batch in self.table.to_batches(max_chunksize=2048):
            rows = batch.to_pylist()
            for name, values in self.raw.items():
                for i, row in enumerate(rows):
                    row[name] = values[start + i]
            start += len(rows)
            yield from rows


# --------------------------------------------------------------------------------------
# Which files
# --------------------------------------------------------------------------------------

def file_format(path: str | Path) -> tuple[str | None, str | None]:
    """(format, compression suffix) from a file name: 'test.jsonl.gz' -> ('json', '.gz')."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    return (FORMATS.get(suffixes[-1]) if suffixes else None), compression


def looks_local(source: str) -> bool:
    """A path (existing, a glob, a data-file name or explicitly relative), not a hub id."""
    return (
        os.path.exists(os.path.expanduser(source))
        or bool(_GLOB_CHARS.search(source))
        or file_format(source)[0] is not None
        or source.startswith(("/", "./", "../", "~"))
    )


def _supported_names() -> str:
    return ", ".join(FORMATS) + f" (each optionally {'/'.join(COMPRESSIONS)} compressed)"


def list_files(source: str) -> list[Path]:
    """The data files of a local source, sorted; FileNotFoundError when there are none."""
    expanded = os.path.expanduser(source)
    if _GLOB_CHARS.search(source) and not os.path.exists(expanded):
        files = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"{source}: no files match this pattern")
        unsupported = [str(f) for f in files if file_format(f)[0] is None]
        if unsupported:
            raise SourceFileError(f"{unsupported[0]}: unsupported file type (matched by {source!r}); "
                                  f"data files are {_supported_names()}")
        return files
    path = Path(expanded)
    if path.is_dir():
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(root) / n for n in names if not n.startswith(".") and file_format(n)[0] is not None]
        if not files:
            raise FileNotFoundError(f"{source}: no data files in this directory ({_supported_names()})")
        return sorted(files)
    if file_format(path)[0] is None:
        suffix = "".join(path.suffixes).lower()
        if suffix.endswith(ARCHIVES):
            raise SourceFileError(f"{source}: is an archive ({suffix}); extract it and use the extracted file "
                                  f"or folder as the source ({_supported_names()})")
        raise SourceFileError(f"{source}: unsupported file type {''.join(path.suffixes)!r}; "
                              f"use {_supported_names()}, a directory or a glob")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: local source file not found")
    return [path]


# --------------------------------------------------------------------------------------
# Bytes: decompression and encoding
# --------------------------------------------------------------------------------------

def _decompress(data: bytes, compression: str | None, label: str) -> bytes:
    if compression is None:
        return data
    try:
        if compression == ".gz":
            return gzip.decompress(data)
        if compression == ".bz2":
            return bz2.decompress(data)
        if compression == ".xz":
            return lzma.decompress(data)
        return pa.input_stream(pa.BufferReader(data), compression="zstd").read()
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, pa.ArrowException) as err:
        raise SourceFileError(f"{label}: truncated or corrupt {COMPRESSIONS[compression]} data ({err})") from None


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of a byte offset."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _check_utf8(data: bytes, label: str) -> bytes:
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, column = _position(data, err.start)
        raise SourceFileError(f"{label}: line {line}, column {column}: byte 0x{data[err.start]:02x} is not "
                              f"UTF-8; the file must be UTF-8 text") from None
    return data


# --------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------

def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _table_from_rows(rows: list[dict], where: str, label: str
                     ) -> tuple[pa.Table, dict[str, str], dict[str, list[Any]]]:
    """Column by column, so that a column whose values change type is typed as JSON text
    (noted, its original values kept) instead of failing the whole file."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    arrays, notes, raw = {}, {}, {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            first = next(i for i, v in enumerate(values) if v is not None)
            other = next((i for i, v in enumerate(values)
                          if v is not None and _kind(v) != _kind(values[first])), first)
            notes[name] = (f"{label}: column {name!r} changes type between rows ({_kind(values[first])} in "
                           f"{where} {first + 1}, {_kind(values[other])} in {where} {other + 1}); read as JSON text")
            arrays[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                     for v in values], pa.string())
            raw[name] = values
    return pa.table(arrays), notes, raw


def _json_rows(text: str, label: str) -> tuple[list[dict], str]:
    """Rows of a JSON array or JSON lines file, with the word that numbers them."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceFileError(f"{label}: line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise SourceFileError(f"{label}: row {i + 1} of the JSON array is {_kind(row)}, not an object")
        return rows, "row"
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            whole = _whole_json(text) if lineno == 1 else None
            if isinstance(whole, dict):
                raise SourceFileError(f"{label}: holds one JSON object, not rows: use JSON lines (one object "
                                      f"per line) or an array of objects") from None
            raise SourceFileError(f"{label}: line {lineno}, column {err.colno}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise SourceFileError(f"{label}: line {lineno} is {_kind(row)}, not a JSON object")
        rows.append(row)
    return rows, "line"


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _read_json(data: bytes, label: str) -> tuple[pa.Table, dict[str, str], dict[str, list[Any]]]:
    if not data.lstrip().startswith(b"["):
        try:  # the fast path: pyarrow's reader; only a file it rejects is parsed in Python
            return pa_json.read_json(io.BytesIO(data), read_options=_JSON_READ), {}, {}
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    rows, where = _json_rows(data.decode("utf-8"), label)
    return _table_from_rows(rows, where, label)


def _read_csv(data: bytes, label: str) -> pa.Table:
    try:
        # Single-threaded: its errors name the row ("Row #12"), the threaded reader's do not.
        return pa_csv.read_csv(io.BytesIO(data), read_options=pa_csv.ReadOptions(use_threads=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SourceFileError(f"{label}: {err}") from None


def _read_parquet(data: bytes, label: str) -> pa.Table:
    try:
        # ParquetFile, one thread: read_table's thread pool can outlive the read by a few
        # ms, and a process that exits then (a one-line refusal right after) aborts in
        # C++ teardown next to torch ("terminate called without an active exception").
        return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise SourceFileError(f"{label}: not a readable Parquet file ({err})") from None


def read_file(path: Path, label: str | None = None) -> LocalFile:
    """One data file -> :class:`LocalFile`; every problem is a one-line SourceFileError."""
    label = label or str(path)
    fmt, compression = file_format(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SourceFileError(f"{label}: cannot be read ({err.strerror or err})") from None
    if not raw:
        raise SourceFileError(f"{label}: empty file (0 bytes); export the data again, or remove the file from the source")
    data = _decompress(raw, compression, label)
    _check_kind(data, fmt, compression, label)
    notes: dict[str, str] = {}
    originals: dict[str, list[Any]] = {}
    if fmt == "parquet":
        table = _read_parquet(data, label)
    else:
        data = _check_utf8(data, label)
        if not data.strip():
            raise SourceFileError(f"{label}: empty file (no text); export the data again, or remove the file "
                                  f"from the source")
        if fmt == "json":
            table, notes, originals = _read_json(data, label)
        else:
            table = _read_csv(data, label)
    if table.num_rows == 0:
        raise SourceFileError(f"{label}: holds no rows (only a header or an empty list); export the data again")
    return LocalFile(label, table, notes, originals)


# What a file's first bytes say it is, whatever its name.
_MAGIC = {b"\x1f\x8b": ".gz", b"BZh": ".bz2", b"\xfd7zXZ\x00": ".xz", b"\x28\xb5\x2f\xfd": ".zst",
          b"PAR1": "parquet", b"PK\x03\x04": "zip"}


def _check_kind(data: bytes, fmt: str | None, compression: str | None, label: str) -> None:
    """Refuse a file whose bytes are another kind than its name says (a gzip named
    .jsonl, a Parquet file named .json, a zip archive), naming what it is."""
    kind = next((k for magic, k in _MAGIC.items() if data.startswith(magic)), None)
    if kind is None or kind == fmt:
        return
    name = Path(label).name
    if kind == "zip":
        raise SourceFileError(f"{label}: is a zip archive, not {fmt} data; extract it and use the extracted "
                              f"file or folder as the source")
    if kind == "parquet":
        raise SourceFileError(f"{label}: is a Parquet file, not {fmt} data; rename it to end in .parquet")
    what = COMPRESSIONS[kind]
    if compression is not None:
        raise SourceFileError(f"{label}: is {what} data inside {COMPRESSIONS[compression]}; decompress it once "
                              f"more, or name it for what it holds")
    raise SourceFileError(f"{label}: is {what}-compressed data; rename it to {name}{kind} (it is then read as it is)")


# --------------------------------------------------------------------------------------
# Path columns
# --------------------------------------------------------------------------------------

def compile_path_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise SourceFileError(f"path_pattern {pattern!r} is not a valid regular expression ({err})") from None
    if not compiled.groupindex:
        raise SourceFileError(f"path_pattern {pattern!r} has no named group: name each part that becomes a "
                              f"column, e.g. (?P<category>[^/]+)/[^/]+\\.json$")
    return compiled


def add_path_columns(file: LocalFile, path: Path, pattern: re.Pattern | None) -> LocalFile:
    """Add one string column per named group of ``pattern``, matched in the file's path."""
    if pattern is None:
        return file
    where = path.resolve().as_posix()
    match = pattern.search(where)
    if match is None:
        raise SourceFileError(f"{file.label}: path_pattern {pattern.pattern!r} does not match its path {where!r}")
    table = file.table
    for name, value in match.groupdict().items():
        if name in table.column_names:
            raise SourceFileError(f"{file.label}: path_pattern group {name!r} is also a column of the file; "
                                  f"rename the group")
        table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    return LocalFile(file.label, table, file.notes, file.raw)


def read_local(source: str, path_pattern: str | None = None) -> list[LocalFile]:
    """Every data file of ``source`` (a file, a directory or a glob), read and checked."""
    pattern = compile_path_pattern(path_pattern)
    return [add_path_columns(read_file(path), path, pattern) for path in list_files(source)]
