"""The canonical preference-pairs table that every source is turned into.

One row per preference judgement. Written by the `prepare` stage as
``data/prepared/<dataset>.parquet`` and read by `featurize`.

Schema (Arrow):

| column     | type                                     | notes                                      |
|------------|------------------------------------------|--------------------------------------------|
| pair_id    | string                                   | content hash, stable across runs/machines  |
| prompt     | list<struct<role: string, content: string>> | chat messages; plain text -> one user turn |
| chosen     | string                                   | preferred final assistant response         |
| rejected   | string                                   | dispreferred final assistant response      |
| split      | string                                   | train / validation / test (/ adapt)        |
| category   | string, nullable                         | optional metadata (SHP-like categories)    |
| domain     | string, nullable                         | optional metadata (sub-domain)             |
| attribute  | string, nullable                         | optional metadata (RPR-like attribute)     |
| criterion  | string, nullable                         | optional metadata (attribute criterion)    |
| user       | string, nullable                         | optional metadata (user or annotator)      |
| confidence | string, nullable                         | optional metadata (annotator's confidence) |

Rows that cannot be used are never dropped silently: :func:`finalize` returns the
clean table together with a count of dropped rows per reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pipeline.errors import UserError

SPLITS = ("train", "validation", "test", "adapt")
METADATA_COLUMNS = ("category", "domain", "attribute", "criterion", "user", "confidence")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt", pa.list_(MESSAGE_TYPE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("split", pa.string()),
        *[(name, pa.string()) for name in METADATA_COLUMNS],
    ]
)

# Drop reasons, recorded by name in the manifests.
EMPTY_TEXT = "empty_text"
NON_STRING = "non_string"
IDENTICAL_RESPONSES = "chosen_equals_rejected"
BAD_SPLIT = "unknown_split"
BAD_METADATA = "non_scalar_metadata"  # a list or an object where a metadata column needs one value
DUPLICATE_PAIR = "duplicate_pair"

Messages = list[dict[str, str]]


class SchemaError(UserError, ValueError):
    """A source is missing a column, or a column has the wrong type."""


def _digest(*parts: str, length: int = 16) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")  # unit separator: ("ab","c") and ("a","bc") hash differently
    return h.hexdigest()[:length]


def canonical_prompt(prompt: Messages) -> str:
    """A stable string form of a prompt, used for hashing and as a join key."""
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def sequence_id(prompt: Messages, response: str) -> str:
    """Id of one (prompt, response) sequence: the unit the backbone runs on exactly once."""
    return _digest("seq", canonical_prompt(prompt), response)


def pair_id(prompt: Messages, chosen: str, rejected: str, meta: Mapping[str, Any] | None = None) -> str:
    """Content-derived pair id. Metadata that makes the same texts a different judgement
    (another user or attribute) is part of the id."""
    meta = meta or {}
    extra = [f"{k}={meta.get(k) or ''}" for k in ("attribute", "criterion", "user")]
    return _digest("pair", canonical_prompt(prompt), chosen, rejected, *extra)


def as_messages(prompt: Any) -> Messages:
    """Accept text, a list of {role, content} dicts, or a JSON string of such a list."""
    if isinstance(prompt, str):
        stripped = prompt.lstrip()
        if stripped.startswith("[{"):
            try:
                return as_messages(json.loads(prompt))
            except json.JSONDecodeError:
                pass
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)):
        out = []
        for m in prompt:
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise TypeError(f"prompt message must be a mapping with role and content, got {m!r}")
            out.append({"role": m["role"], "content": m["content"]})
        return out
    raise TypeError(f"prompt must be text or a list of messages, got {type(prompt).__name__}")


def row_problem(row: Mapping[str, Any]) -> tuple[str | None, Messages | None]:
    """Return (drop_reason, messages). drop_reason is None for a usable row."""
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if value is None:
            return EMPTY_TEXT, None
        if not isinstance(value, str):
            return NON_STRING, None
        if not value.strip():
            return EMPTY_TEXT, None
    if row.get("prompt") is None:
        return EMPTY_TEXT, None
    try:
        messages = as_messages(row["prompt"])
    except TypeError:
        return NON_STRING, None
    if not messages:
        return EMPTY_TEXT, None
    for m in messages:
        if not isinstance(m["content"], str) or not isinstance(m["role"], str):
            return NON_STRING, None
    if not messages[-1]["content"].strip():
        return EMPTY_TEXT, None
    if row["chosen"].strip() == row["rejected"].strip():
        return IDENTICAL_RESPONSES, None
    split = row.get("split")
    if not isinstance(split, str) or split not in SPLITS:
        return BAD_SPLIT, None
    if any(isinstance(row.get(k), (dict, list, tuple, set)) for k in METADATA_COLUMNS):
        return BAD_METADATA, None
    return None, messages


def finalize(rows: Iterable[Mapping[str, Any]]) -> tuple[pa.Table, Counter]:
    """Validate raw rows, assign pair ids, and build the canonical table.

    Each raw row needs ``prompt, chosen, rejected, split`` and may carry any of the
    metadata columns. A row ``{"_drop": reason}`` is a row a source adapter rejected;
    it is only counted. Returns the table and a Counter of dropped rows per reason.
    """
    dropped: Counter = Counter()
    seen: set[str] = set()
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for row in rows:
        if "_drop" in row:  # a source adapter already rejected this row, with a reason
            dropped[row["_drop"]] += 1
            continue
        reason, messages = row_problem(row)
        if reason is not None:
            dropped[reason] += 1
            continue
        meta = {k: (None if row.get(k) is None else str(row[k])) for k in METADATA_COLUMNS}
        pid = pair_id(messages, row["chosen"], row["rejected"], meta)
        if pid in seen:
            dropped[DUPLICATE_PAIR] += 1
            continue
        seen.add(pid)
        columns["pair_id"].append(pid)
        columns["prompt"].append(messages)
        columns["chosen"].append(row["chosen"])
        columns["rejected"].append(row["rejected"])
        columns["split"].append(row["split"])
        for k in METADATA_COLUMNS:
            columns[k].append(meta[k])
    return pa.table(columns, schema=SCHEMA), dropped


def require_columns(available: Iterable[str], required: Iterable[str], source: str) -> None:
    """Fail with an error that names the missing column and lists what exists."""
    available = list(available)
    missing = [c for c in required if c not in available]
    if missing:
        raise SchemaError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"available columns: {', '.join(repr(c) for c in available) or '(none)'}"
        )


def validate_table(table: pa.Table, source: str) -> None:
    """Check that a table read back from disk is a canonical pairs table."""
    require_columns(table.column_names, ["pair_id", "prompt", "chosen", "rejected", "split"], source)
    for name in ("pair_id", "chosen", "rejected", "split"):
        if table.schema.field(name).type != pa.string():
            raise SchemaError(
                f"{source}: column {name!r} must be string, found {table.schema.field(name).type}"
            )
    if table.schema.field("prompt").type != SCHEMA.field("prompt").type:
        raise SchemaError(
            f"{source}: column 'prompt' must be {SCHEMA.field('prompt').type}, "
            f"found {table.schema.field('prompt').type}"
        )


class PreparedError(SchemaError):
    """A prepared pairs table (``prepare``'s output) that is missing or cannot be read."""


def check_prepared(prepared: str | Path, dataset: str | None = None) -> Path:
    """The ``pairs.parquet`` of a prepared folder (or the file itself), read whole and
    checked: a missing, damaged or foreign table is one :class:`PreparedError` naming the
    file and the ``prepare`` run that rebuilds it. Cheap next to any use of the table."""
    path = Path(prepared)
    path = path / "pairs.parquet" if path.is_dir() or not path.suffix else path
    redo = f"run `smoe prepare {dataset}` (or `dvc repro prepare@{dataset}`)" if dataset else "rerun `smoe prepare`"
    if not path.is_file():
        raise PreparedError(f"{path}: no prepared pairs here; {redo} first, or pass --prepared")
    try:
        table = pq.ParquetFile(path).read(use_threads=False)  # one thread: see local_files._read_parquet
    except (pa.ArrowException, OSError) as err:
        raise PreparedError(f"{path}: damaged, not a readable Parquet file ({' '.join(str(err).split())}); "
                            f"{redo} to rebuild it") from None
    try:
        validate_table(table, str(path))
    except SchemaError as err:
        raise PreparedError(f"{err}; is this a `prepare` output? {redo}") from None
    if table.num_rows == 0:
        raise PreparedError(f"{path}: holds no pairs; {redo}")
    return path


def prompt_text(prompt: Messages) -> str:
    """The text a human reads as "the prompt": the last user message (the whole
    conversation's last turn; earlier turns are context)."""
    if not prompt:
        return ""
    users = [m for m in prompt if m.get("role") == "user"]
    return str((users or prompt)[-1]["content"])


def prompt_texts(prepared_pairs: str | Path, pair_ids: Iterable[str] | None = None) -> dict[str, str]:
    """pair_id -> :func:`prompt_text`, from a prepared pairs table (for reports and
    interpretation). With ``pair_ids``, every one of them must be in the table."""
    table = pq.ParquetFile(prepared_pairs).read(columns=["pair_id", "prompt"], use_threads=False)
    out = {pid: prompt_text(p) for pid, p in zip(table.column("pair_id").to_pylist(), table.column("prompt").to_pylist())}
    if pair_ids is not None:
        wanted = set(pair_ids)
        missing = sorted(wanted - set(out))
        if missing:
            raise SchemaError(f"{prepared_pairs}: {len(missing)} pair(s) of the feature cache have no prompt here "
                              f"(e.g. {missing[0]}); is this the prepared table the cache was built from?")
        out = {pid: out[pid] for pid in wanted}
    return out
