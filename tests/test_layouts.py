"""Reading real files as published, on small files written here: every format and
compression, folders and globs with path columns, each layout of the generic mapping
(pairs, two responses and a label, whole conversations, nested fields, ratings), and the
bad cases, each a counted drop or a one-line error naming the file."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import local_files, sources
from pipeline.errors import UserError
from pipeline.local_files import SourceFileError
from pipeline.pairs import SchemaError, finalize
from pipeline.prepare import prepare
from pipeline.sources import ConfigError, load_rows

ROOT = Path(__file__).resolve().parents[1]

ROWS = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "n": i} for i in range(4)]


def pairs_of(source, **kwargs):
    table, dropped = finalize(load_rows(str(source), **kwargs))
    return table.to_pylist(), dropped


def texts(rows):
    return sorted((r["prompt"][-1]["content"], r["chosen"], r["rejected"]) for r in rows)


def write(path: Path, rows: list[dict], fmt: str | None = None) -> Path:
    """rows -> a file in the format its name says, compressed as its last suffix says."""
    fmt = fmt or local_files.file_format(path)[0]
    compression = local_files.file_format(path)[1]
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        data = sink.getvalue().to_pybytes()
    elif fmt == "csv":
        lines = [",".join(rows[0])] + [",".join(str(v) for v in r.values()) for r in rows]
        data = ("\n".join(lines) + "\n").encode()
    elif fmt == "array":
        data = json.dumps(rows, indent=1).encode()
    else:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if compression == ".gz":
        data = gzip.compress(data)
    elif compression == ".bz2":
        data = bz2.compress(data)
    elif compression == ".xz":
        data = lzma.compress(data)
    elif compression == ".zst":
        data = pa.compress(data, codec="zstd", asbytes=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("compression", ["", ".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("name, fmt", [("pairs.jsonl", None), ("pairs.json", "array"), ("lines.json", "json"),
                                       ("pairs.parquet", None), ("pairs.csv", None)])
def test_every_format_and_compression_reads_the_same_pairs(tmp_path, name, fmt, compression):
    path = write(tmp_path / (name + compression), ROWS, fmt)
    rows, dropped = pairs_of(path, split="train")
    assert not dropped
    assert texts(rows) == [(f"question {i}", f"good {i}", f"bad {i}") for i in range(4)]


def test_folder_and_glob_with_a_column_from_each_files_path(tmp_path):
    data = tmp_path / "Pairwise_set"
    write(data / "Harmlessness" / "S1.json", ROWS[:2], "array")
    write(data / "Helpfulness" / "Chat" / "Casual.jsonl.gz", ROWS[2:])
    (data / "README.md").write_text("not data")  # a folder's other files are left alone
    write(data / ".cache" / "old.jsonl", ROWS)  # hidden: skipped
    pattern = r"Pairwise_set/(?P<category>.+)/(?P<domain>[^/]+?)\.json"
    rows, dropped = pairs_of(data, path_pattern=pattern, split="train")
    assert not dropped
    got = sorted((r["prompt"][0]["content"], r["category"], r["domain"]) for r in rows)
    assert got == [("question 0", "Harmlessness", "S1"), ("question 1", "Harmlessness", "S1"),
                   ("question 2", "Helpfulness/Chat", "Casual"), ("question 3", "Helpfulness/Chat", "Casual")]
    globbed, _ = pairs_of(f"{data}/**/*.json*", path_pattern=pattern, split="train")
    assert globbed == rows
    with pytest.raises(SourceFileError, match=r"S1\.json: path_pattern .* does not match"):
        load_rows(str(data), path_pattern=r"/(?P<category>Nowhere)/")
    with pytest.raises(FileNotFoundError, match="no files match"):
        load_rows(f"{data}/*.parquet")
    with pytest.raises(SourceFileError, match=r"README\.md: unsupported file type"):
        load_rows(f"{data}/*")


def test_a_column_that_changes_type_is_kept_as_json_text(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([{"prompt": "plain", "chosen": "a", "rejected": "b", "extra": 1},
                                {"prompt": [{"role": "user", "content": "chat"}], "chosen": "c", "rejected": "d",
                                 "extra": "two"}]))
    rows, dropped = pairs_of(path, split="train")
    assert not dropped and [r["prompt"] for r in rows] == [[{"role": "user", "content": "plain"}],
                                                           [{"role": "user", "content": "chat"}]]
    changes = r"mixed\.json.*'extra' changes type between rows \(int in row 1, str in row 2\)"
    with pytest.raises(SchemaError, match=changes):
        load_rows(str(path), columns={"prompt": "prompt", "chosen": "chosen", "rejected": "chosen",
                                      "category": "extra.name"})


# ----------------------------------------------------------------------------- bad files: one line naming the file


def bad_file(tmp_path: Path, case: str) -> tuple[Path, str]:
    good = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    if case == "non_utf8":
        path = tmp_path / "latin1.jsonl"
        path.write_bytes(good + '{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))
        return path, r"latin1\.jsonl: line 5, column 16: byte 0xe9 is not UTF-8"
    if case == "truncated_gzip":
        path = tmp_path / "cut.jsonl.gz"
        data = gzip.compress(good * 50)
        path.write_bytes(data[: len(data) // 2])
        return path, r"cut\.jsonl\.gz: truncated or corrupt gzip data"
    if case == "not_gzip":
        path = tmp_path / "plain.jsonl.gz"
        path.write_bytes(good)
        return path, r"plain\.jsonl\.gz: truncated or corrupt gzip data"
    if case == "invalid_json_line":
        path = tmp_path / "broken.jsonl"
        path.write_bytes(good + b'{"prompt": "x", "chosen": }\n')
        return path, r"broken\.jsonl: line 5, column 27: invalid JSON"
    if case == "invalid_json_array":
        path = tmp_path / "broken.json"
        path.write_text('[\n {"prompt": "x", "chosen": "a", "rejected": "b"},\n {"prompt": "y",,}\n]')
        return path, r"broken\.json: line 3, column 17: invalid JSON"
    if case == "not_an_object":
        path = tmp_path / "list.jsonl"
        path.write_bytes(good + b'["a", "b"]\n')
        return path, r"list\.jsonl: line 5 is list, not a JSON object"
    if case == "csv_row":
        path = tmp_path / "short.csv"
        path.write_text('prompt,chosen,rejected\nq,a,b\nq2,"a\n')
        return path, r"short\.csv: CSV parse error: Row #3"
    if case == "empty":
        path = tmp_path / "empty.jsonl"
        path.write_text("\n")
        return path, r"empty\.jsonl: empty file"
    if case == "bad_parquet":
        path = tmp_path / "fake.parquet"
        path.write_bytes(good)
        return path, r"fake\.parquet: not a readable Parquet file"
    raise AssertionError(case)


BAD_FILES = ["non_utf8", "truncated_gzip", "not_gzip", "invalid_json_line", "invalid_json_array", "not_an_object",
             "csv_row", "empty", "bad_parquet"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_one_line_naming_the_file_and_place(tmp_path, case):
    path, match = bad_file(tmp_path, case)
    with pytest.raises(SourceFileError, match=match) as err:
        load_rows(str(path))
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("case", ["non_utf8", "truncated_gzip"])
def test_the_stage_prints_a_bad_file_as_one_line_not_a_traceback(tmp_path, case):
    path, match = bad_file(tmp_path, case)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": {"mine": {"source": str(path)}}}))
    result = subprocess.run([sys.executable, "-m", "stages.prepare", "mine", "--params", str(params),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(path) in line
    assert re.search(match, line)


# ----------------------------------------------------------------------------- two responses and a label


ARENA = [  # Chatbot Arena: whole conversations and a winner
    {"conversation_a": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
     "conversation_b": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
     "winner": "model_a", "judge": "u1"},
    {"conversation_a": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
     "conversation_b": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
     "winner": "model_b", "judge": "u2"},
    {"conversation_a": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
     "conversation_b": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Azure."}],
     "winner": "tie", "judge": "u1"},
    {"conversation_a": [{"role": "user", "content": "Sea?"}, {"role": "assistant", "content": "Wet."}],
     "conversation_b": [{"role": "user", "content": "Sea?"}, {"role": "assistant", "content": "Dry."}],
     "winner": "tie (bothbad)", "judge": "u3"},
    {"conversation_a": [{"role": "user", "content": "Sun?"}, {"role": "assistant", "content": "Hot."}],
     "conversation_b": [{"role": "user", "content": "Sun?"}, {"role": "assistant", "content": "Cold."}],
     "winner": "model_c", "judge": "u3"},
    {"conversation_a": [{"role": "user", "content": "T1"}, {"role": "assistant", "content": "A1"},
                        {"role": "user", "content": "T2"}, {"role": "assistant", "content": "A2"}],
     "conversation_b": [{"role": "user", "content": "T1"}, {"role": "assistant", "content": "B1"},
                        {"role": "user", "content": "T2"}, {"role": "assistant", "content": "B2"}],
     "winner": "model_a", "judge": "u2"},  # a second turn after different first answers: no shared prompt
    {"conversation_a": [{"role": "user", "content": "Moon?"}],
     "conversation_b": [{"role": "user", "content": "Moon?"}, {"role": "assistant", "content": "Rock."}],
     "winner": "model_b", "judge": "u1"},  # no final assistant turn
]
ARENA_LABELS = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}


def test_labels_layout_conversations_and_a_winner(tmp_path):
    path = write(tmp_path / "arena.jsonl", ARENA)
    columns = {"response_a": "conversation_a", "response_b": "conversation_b", "label": "winner", "user": "judge"}
    rows, dropped = pairs_of(path, columns=columns, labels=ARENA_LABELS)
    assert dropped == Counter({"tie": 2, "unknown_label": 1, "prompt_mismatch": 1, "no_final_assistant_turn": 1})
    got = sorted((r["prompt"][-1]["content"], r["chosen"], r["rejected"], r["user"]) for r in rows)
    assert got == [("2+2?", "4", "5", "u2"), ("Hi?", "Hello!", "Go away.", "u1")]


def test_labels_layout_text_responses_numeric_labels_and_bad_rows(tmp_path):
    rows = [{"q": "Q1", "response 1": "r1 good", "response 2": "r1 bad", "label": 0, "scenario": "code"},
            {"q": "Q2", "response 1": "r2 bad", "response 2": "r2 good", "label": 1, "scenario": "math"},
            {"q": "Q3", "response 1": "x", "response 2": "y", "label": 2, "scenario": "math"},   # a tie
            {"q": "Q4", "response 1": "x", "response 2": "y", "label": 7, "scenario": "math"},   # unknown label
            {"q": "Q5", "response 1": "x", "response 2": "  ", "label": 0, "scenario": "math"},  # an empty response
            {"q": "Q6", "response 1": "x", "response 2": "y", "label": None, "scenario": "math"}]  # no label
    path = write(tmp_path / "autoj.jsonl", rows)
    columns = {"prompt": "q", "response_a": "response 1", "response_b": "response 2", "domain": "scenario"}
    pairs, dropped = pairs_of(path, columns=columns, labels={0: "a", 1: "b", 2: "tie"}, split_by="prompt")
    assert dropped == Counter({"tie": 1, "unknown_label": 2, "empty_text": 1})
    assert texts(pairs) == [("Q1", "r1 good", "r1 bad"), ("Q2", "r2 good", "r2 bad")]
    assert {r["domain"] for r in pairs} == {"code", "math"}
    with pytest.raises(ConfigError, match="needs labels"):
        load_rows(str(path), columns=columns)
    with pytest.raises(ConfigError, match="use one of"):
        load_rows(str(path), columns=columns, labels={0: "first"})
    with pytest.raises(ConfigError, match="mix layouts"):
        load_rows(str(path), columns={**columns, "chosen": "q"}, labels={0: "a"})


# ----------------------------------------------------------------------------- whole transcripts, message lists


def test_pairs_layout_whole_transcripts_and_message_lists(tmp_path):
    hh = "\n\nHuman: Name a fruit.\n\nAssistant: "
    rows = [{"chosen": hh + "Apple.", "rejected": hh + "A car."},
            {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": hh + "x"},  # ends with the human
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hey", "rejected": "\n\nHuman: Yo\n\nAssistant: Hey you"},
            {"chosen": [{"role": "user", "content": "Sing."}, {"role": "assistant", "content": "La la."}],
             "rejected": [{"role": "user", "content": "Sing."}, {"role": "assistant", "content": "No."}]}]
    path = write(tmp_path / "transcripts.json", rows, "array")  # text in some rows, message lists in others
    pairs, dropped = pairs_of(path, split="train")
    assert dropped == Counter({"unparseable_transcript": 1, "prompt_mismatch": 1})
    assert texts(pairs) == [("Name a fruit.", "Apple.", "A car."), ("Sing.", "La la.", "No.")]
    assert all(r["prompt"] == [{"role": "user", "content": r["prompt"][0]["content"]}] for r in pairs)


def test_a_message_list_response_must_continue_the_prompt(tmp_path):
    turn = [{"role": "user", "content": "Q"}]
    rows = [{"p": "Q", "c": [*turn, {"role": "assistant", "content": "yes"}], "r": "no"},
            {"p": "Other", "c": [*turn, {"role": "assistant", "content": "yes"}], "r": "no"}]
    path = write(tmp_path / "m.jsonl", rows)
    pairs, dropped = pairs_of(path, columns={"prompt": "p", "chosen": "c", "rejected": "r"}, split="test")
    assert dropped == Counter({"prompt_mismatch": 1})
    assert texts(pairs) == [("Q", "yes", "no")]


def test_a_forgotten_prompt_column_fails_before_rows_are_read(tmp_path):
    path = write(tmp_path / "plain.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(SchemaError, match=r"plain\.jsonl: no 'prompt' column.*'question'"):
        load_rows(str(path))


# ----------------------------------------------------------------------------- nested fields


TLDR = [
    {"info": {"id": "p1", "title": "T1", "post": "Post one.", "subreddit": "cats"},
     "summaries": [{"text": "one good"}, {"text": "one bad"}], "choice": 0, "worker": "w1", "extra": {"confidence": 7}},
    {"info": {"id": "p2", "title": "T2", "post": "Post two.", "subreddit": "dogs"},
     "summaries": [{"text": "two bad"}, {"text": "two good"}], "choice": 1, "worker": "w2", "extra": {}},
    {"info": {"id": "p3", "title": "T3", "subreddit": "dogs"},  # no post: a missing nested field
     "summaries": [{"text": "x"}, {"text": "y"}], "choice": 0, "worker": "w1", "extra": {"confidence": 2}},
    {"info": {"id": "p4", "title": "T4", "post": "Post four.", "subreddit": "cats"},
     "summaries": [{"text": "only one"}], "choice": 0, "worker": "w2", "extra": {"confidence": 2}},  # list too short
]
TLDR_COLUMNS = {"prompt": "info.post", "response_a": "summaries.0.text", "response_b": "summaries.1.text",
                "label": "choice", "category": "info.subreddit", "user": "worker", "confidence": "extra.confidence"}


def test_nested_fields_by_dotted_path_and_list_index(tmp_path):
    path = write(tmp_path / "batch.json", TLDR, "json")
    pairs, dropped = pairs_of(path, columns=TLDR_COLUMNS, labels={0: "a", 1: "b"})
    assert dropped == Counter({"missing_field": 2})
    got = sorted((r["prompt"][0]["content"], r["chosen"], r["rejected"], r["category"], r["user"], r["confidence"])
                 for r in pairs)
    assert got == [("Post one.", "one good", "one bad", "cats", "w1", "7"),
                   ("Post two.", "two good", "two bad", "dogs", "w2", None)]  # missing metadata is null


@pytest.mark.parametrize("path, match", [
    ("info.body", r"batch\.json: column path 'info\.body': 'info' has no field 'body'; its fields: 'id', 'title'"),
    ("summaries.first.text", r"'summaries' is a list; index it by position \(summaries\.0\)"),
    ("worker.name", r"'worker' is string, which has no field 'name'"),
    ("story.text", r"missing column\(s\) 'story'"),
])
def test_a_nested_path_that_does_not_exist_is_a_schema_error(tmp_path, path, match):
    source = write(tmp_path / "batch.json", TLDR, "json")
    with pytest.raises(SchemaError, match=match):
        load_rows(str(source), columns={**TLDR_COLUMNS, "prompt": path}, labels={0: "a", 1: "b"})


def test_tldr_adapter_on_a_small_batch(tmp_path):
    path = write(tmp_path / "batch1.json", [*TLDR, {**TLDR[0], "choice": 5}])
    pairs, dropped = pairs_of(path, adapter="tldr-comparisons")
    assert dropped == Counter({"missing_field": 2, "unknown_label": 1})
    (one,) = [r for r in pairs if r["chosen"] == "one good"]
    assert one["prompt"] == [{"role": "user", "content": "TITLE: T1\n\nPOST: Post one.\n\nTL;DR:"}]
    assert (one["category"], one["user"], one["confidence"]) == ("cats", "w1", "7")


# ----------------------------------------------------------------------------- ratings


RATED = [  # one row per rated response
    {"prompt": "P1", "response": "a", "score": 5.0, "helpful": 1, "rater": "u1"},
    {"prompt": "P1", "response": "b", "score": 3.0, "helpful": 4, "rater": "u1"},
    {"prompt": "P1", "response": "c", "score": 2.5, "helpful": 4, "rater": "u1"},
    {"prompt": "P1", "response": "d", "score": None, "helpful": 2, "rater": "u1"},  # one missing rating
    {"prompt": "P1", "response": "", "score": 1.0, "helpful": 1, "rater": "u1"},  # an empty response
    {"prompt": "P1", "response": "a", "score": 1.0, "helpful": 3, "rater": "u2"},  # another user's group
    {"prompt": "P1", "response": "b", "score": 4.0, "helpful": 3, "rater": "u2"},
    {"prompt": "P2", "response": "x", "score": 3.0, "helpful": 5, "rater": "u1"},
    {"prompt": "P2", "response": "y", "score": 3.0, "helpful": 1, "rater": "u1"},
]


def test_ratings_become_pairs_within_a_prompt_with_a_minimum_margin(tmp_path):
    path = write(tmp_path / "ratings.parquet", RATED)
    columns = {"response": "response", "rating": "score", "user": "rater"}
    pairs, dropped = pairs_of(path, columns=columns, min_margin=1.0)
    # P1/u1: a, b, c rated (d missing, "" empty): a>b (2.0), a>c (2.5), b-c 0.5 < margin; P1/u2: b>a; P2: tie.
    assert dropped == Counter({"missing_rating": 1, "empty_text": 1, "small_rating_gap": 1, "tied_rating": 1})
    got = sorted((r["prompt"][0]["content"], r["chosen"], r["rejected"], r["user"], r["attribute"]) for r in pairs)
    assert got == [("P1", "a", "b", "u1", None), ("P1", "a", "c", "u1", None), ("P1", "b", "a", "u2", None)]
    assert len({r["split"] for r in pairs}) == 1  # one prompt, one split
    any_gap, dropped = pairs_of(path, columns=columns)  # default: any difference
    assert len(any_gap) == 4 and dropped["tied_rating"] == 1


def test_several_rating_columns_give_attribute_pairs(tmp_path):
    path = write(tmp_path / "ratings.jsonl", RATED[:3])
    pairs, dropped = pairs_of(path, columns={"rating": ["score", "helpful"]}, min_margin=1.0)
    got = sorted((r["attribute"], r["chosen"], r["rejected"]) for r in pairs)
    assert got == [("helpful", "b", "a"), ("helpful", "c", "a"), ("score", "a", "b"), ("score", "a", "c")]
    assert dropped == Counter({"small_rating_gap": 1, "tied_rating": 1})


def test_rating_pairs_is_a_polars_self_join():
    import polars as pl

    frame = pl.DataFrame({"group": [0, 0, 0, 1], "item": [0, 1, 2, 3], "response": ["a", "b", "c", "d"],
                          "rating": [1.0, 2.0, 1.0 + 1e-12, 9.0], "attribute": ["", "", "", ""]})
    kept, dropped = sources.rating_pairs(frame, 1.0)
    assert kept.rows() == [(0, "", "b", "a"), (0, "", "b", "c")]
    assert dropped == Counter({"tied_rating": 1})


def test_hanna_adapter_on_a_small_file(tmp_path):
    def story(prompt, text, **scores):
        return {"prompt": prompt, "story": text, "scores": {a: scores.get(a, 3.0) for a in sources.HANNA_CRITERIA},
                "generated_reference": "ignored", "metrics_relevance": "ignored"}

    rows = [story("W1", "s1", relevance=5.0, coherence=2.0), story("W1", "s2", relevance=3.0, coherence=4.0),
            story("W1", "s3", relevance=14 / 3, coherence=11 / 3)]
    write(tmp_path / "hanna" / "hanna_valid.json", rows[:2], "array")
    write(tmp_path / "hanna" / "hanna_test.json", rows[2:], "array")
    pairs, dropped = pairs_of(tmp_path / "hanna", adapter="hanna")
    got = sorted((r["attribute"], r["chosen"], r["rejected"]) for r in pairs)
    assert got == [("coherence", "s2", "s1"), ("coherence", "s3", "s1"), ("relevance", "s1", "s2"),
                   ("relevance", "s3", "s2")]
    # relevance s1-s3: 1/3; coherence s2-s3: 1/3; the other four attributes are all tied.
    assert dropped == Counter({"small_rating_gap": 2, "tied_rating": 12})
    for r in pairs:
        assert r["criterion"] == sources.HANNA_CRITERIA[r["attribute"]]
        assert r["prompt"][0]["content"] == ("W1" if r["split"] == "test" else f"W1\n\n{r['criterion']}")
    assert len({r["split"] for r in pairs}) == 1  # split by prompt, across both files
    finer, _ = pairs_of(tmp_path / "hanna", adapter="hanna", min_margin=0.3)
    assert len(finer) == 6


# ----------------------------------------------------------------------------- named adapters: Auto-J, RMB


def test_auto_j_scenario_groups_are_read_as_data_never_executed(tmp_path):
    (tmp_path / "utils_constants.py").write_text(
        'import not_a_module_anywhere\nraise SystemExit("executed")\n'
        'scenario_group = {"Code": ["code_generation"], "Exam Questions": ["math_reasoning"]}\n'
        'def f():\n    return 1\n')
    rows = [{"scenario": "code_generation", "label": 1, "prompt": "Sort a list.", "response 1": "bad",
             "response 2": "sorted()"},
            {"scenario": "math_reasoning", "label": 2, "prompt": "1+1?", "response 1": "2", "response 2": "two"},
            {"scenario": "poetry", "label": 0, "prompt": "A poem.", "response 1": "Roses", "response 2": "No"}]
    path = write(tmp_path / "testdata_pairwise.jsonl", rows)
    pairs, dropped = pairs_of(path, adapter="auto-j")
    assert dropped == Counter({"tie": 1, "auto_j_unknown_scenario": 1})
    (pair,) = pairs
    assert (pair["chosen"], pair["rejected"], pair["category"], pair["domain"]) == (
        "sorted()", "bad", "Code", "code_generation")
    inline, _ = pairs_of(path, adapter="auto-j", options={"scenario_groups": {"Verse": ["poetry"]}})
    assert [(r["category"], r["domain"]) for r in inline] == [("Verse", "poetry")]
    (tmp_path / "utils_constants.py").unlink()
    with pytest.raises(SchemaError, match=r"utils_constants\.py: Auto-J's scenario groups file is not there"):
        load_rows(str(path), adapter="auto-j")


def test_rmb_adapter_reads_the_category_from_the_path(tmp_path):
    row = {"pair_uid": "1", "conversation_input": [{"content": "Help me.", "language": "English", "role": "user"}],
           "chosen": {"llm_name": "m1", "answer": "Sure."}, "reject": {"llm_name": "m2", "answer": "No."},
           "category_path": "ignored"}
    root = tmp_path / "RMB_dataset" / "Pairwise_set"
    write(root / "Harmlessness" / "S1.json", [row], "array")
    write(root / "Helpfulness" / "Chat" / "Casual Conversation.json",
          [{**row, "conversation_input": [{"content": "Hi", "role": "user"}]},
           {**row, "reject": {"llm_name": "m2"}}], "array")  # no answer: a missing nested field
    pairs, dropped = pairs_of(root, adapter="rmb")
    assert dropped == Counter({"missing_field": 1})
    assert sorted((r["category"], r["domain"], r["prompt"][0]["content"]) for r in pairs) == [
        ("Harmlessness", "S1", "Help me."), ("Helpfulness/Chat", "Casual Conversation", "Hi")]


# ----------------------------------------------------------------------------- prepare: groups; options


def test_prepare_counts_groups_and_filters_small_ones(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}", "user": u, "category": "c"}
            for i, u in enumerate(["u1"] * 5 + ["u2"] * 2 + [None])]
    path = write(tmp_path / "users.jsonl", rows)
    manifest = prepare(str(path), tmp_path / "out", min_group_size={"user": 3})
    assert manifest["num_pairs"] == 5
    assert manifest["dropped"] == {"small_user_group": 3}
    assert manifest["pairs_by"] == {"category": {"c": 5}, "user": {"u1": 5}}
    assert manifest["group_sizes"]["user"] == {"groups": 1, "min": 5, "median": 5.0, "max": 5}
    table = pq.read_table(tmp_path / "out" / "pairs.parquet")
    assert set(table.column("user").to_pylist()) == {"u1"}
    with pytest.raises(ConfigError, match="not a metadata column"):
        prepare(str(path), tmp_path / "out", min_group_size={"worker": 3})


@pytest.mark.parametrize("kwargs, match", [
    ({"colums": {}}, r"unknown dataset option\(s\) \['colums'\]"),
    ({"options": {"x": 1}}, "no adapter"),
    ({"adapter": "auto-j", "options": {"groups": "x"}}, r"unknown key\(s\) \['groups'\] for adapter 'auto-j'"),
    ({"adapter": "hh-rlhf", "labels": {0: "a"}}, "labels is for the generic mapping"),
    ({"adapter": "hh-rlhf", "min_margin": 1}, "min_margin is for ratings"),
    ({"split_by": "row"}, "split_by must be one of"),
    ({"min_margin": -1}, "min_margin must be a number >= 0"),
    ({"columns": {"rating": 3}}, "columns.rating must be"),
    ({"path_pattern": "(unclosed"}, "not a valid regular expression"),
])
def test_invalid_options_are_one_line_user_errors(tmp_path, kwargs, match):
    path = write(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(UserError, match=match):
        prepare(str(path), tmp_path / "out", **kwargs)


def test_a_name_mapped_to_null_ignores_that_column(tmp_path):
    rows = [{"q": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}", "split": "valid1"} for i in range(20)]
    path = write(tmp_path / "published_splits.jsonl", rows)
    _, dropped = pairs_of(path, columns={"prompt": "q"})
    assert dropped == Counter({"unknown_split": 20})  # the publisher's own split names are not ours
    drawn, dropped = pairs_of(path, columns={"prompt": "q", "split": None})
    assert not dropped and len(drawn) == 20 and {r["split"] for r in drawn} <= {"train", "validation", "test"}
    with pytest.raises(ConfigError, match="columns.chosen cannot be null"):
        load_rows(str(path), columns={"prompt": "q", "chosen": None})
    with pytest.raises(ConfigError, match="must map each name to a column"):
        load_rows(str(path), columns={"prompt": ["q"]})
