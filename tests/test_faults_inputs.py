"""Fault injection, input half: bad params, bad rows, bad files.

Each command is run for real: in-process through the same runner as ``python -m
stages.<name>`` (:func:`stages.common.exit_with`), and a few cases also as a subprocess.
Each refusal asserts three things:

1. the exit code (1 for a user's mistake, 2 for a click usage error);
2. stderr is ONE line, naming the file or the param key, with no traceback;
3. the output folder is unchanged (a previous good output is made first).

A bad row is not a refusal: it is a drop counted by reason in the manifest, whatever
column it is in; only a schema-level problem (a missing column, no rows, no usable pair)
refuses a file. The artifact half (damaged caches and heads, kill tests) is in
``test_faults_artifacts.py``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import common as P
from tests.faults import assert_refused, invoke, snapshot

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}",
         "user": f"u{i % 2}", "category": "c"} for i in range(8)]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with a good source file and a good previous `prepare` output."""
    root = tmp_path_factory.mktemp("inputs")
    jsonl(root / "good.jsonl", ROWS)
    return root


def run_prepare(project: Path, capsys, block: dict | None = None, text: str | None = None,
                module: str = "prepare", args: list[str] | None = None) -> tuple[int, str, Path, dict]:
    """Write params (a dataset block, or raw text), make a previous good output, then run."""
    params = project / "params.yaml"
    out = project / "out"
    params.write_text(yaml.safe_dump({"datasets": {"good": {"source": str(project / "good.jsonl")}}}))
    code, err = invoke("prepare", ["good", "--params", str(params), "--out", str(out)], capsys)
    assert code == 0, err
    before = snapshot(out)
    if text is not None:
        params.write_text(text)
    else:
        params.write_text(yaml.safe_dump({"datasets": {"d": block}}))
    code, err = invoke(module, args or ["d", "--params", str(params), "--out", str(out)], capsys)
    return code, err, out, before


# ----------------------------------------------------------------------------- bad params

GOOD = "datasets:\n  d: {source: SRC}\n"


@pytest.mark.parametrize("text, names", [
    # unknown keys, at every level, with the known ones listed
    ("lamda_div: 1.0\n" + GOOD, "unknown top-level key 'lamda_div'; known: backbone, datasets"),
    ("train: {batchsize: 3}\n" + GOOD, "train: unknown key 'batchsize'; known: batch_size"),
    ("datasets:\n  d: {source: SRC, adaptr: hh-rlhf}\n", "datasets.d: unknown key 'adaptr'; known: adapter"),
    ("experiments:\n  e: {dataset: d, num_expert: 3}\n" + GOOD, "experiments.e: unknown key 'num_expert'"),
    ("datasets:\n  d: {source: SRC, limits: {trian: 3}}\n", "datasets.d.limits: unknown key 'trian'"),
    ("personalize: {seed: 1}\n" + GOOD, "personalize: unknown key 'seed'"),
    # wrong types
    ("train: {epochs: three}\n" + GOOD, "train.epochs: must be an integer, got 'three'"),
    ("train: {epochs: 2.0}\n" + GOOD, "train.epochs: must be an integer, got 2.0"),
    ("train: {lr_experts: 1e-3}\n" + GOOD, "train.lr_experts: must be a number, got '1e-3' (text); YAML reads"),
    ("train: 3\n" + GOOD, "train: must be a mapping, got 3"),
    ("steer: {weights: 0.5}\n" + GOOD, "steer.weights: must be a list"),
    # impossible values
    ("experiments:\n  e: {dataset: d, num_experts: 0}\n" + GOOD, "experiments.e.num_experts: must be >= 1, got 0"),
    ("train: {batch_size: 0}\n" + GOOD, "train.batch_size: must be >= 1, got 0"),
    ("personalize: {lr: -0.01}\n" + GOOD, "personalize.lr: must be > 0, got -0.01"),
    ("lambda_div: -1\n" + GOOD, "lambda_div: must be >= 0, got -1"),
    ("steer: {weights: [0.5, 2]}\n" + GOOD, "steer.weights[1]: must be <= 1, got 2"),
    ("train: {router: moe}\n" + GOOD, "train.router: must be one of mlp, linear, got 'moe'"),
    ("datasets:\n  d: {source: SRC, adapter: nope}\n", "datasets.d.adapter: must be one of shp"),
    ("datasets:\n  d: {seed: 1}\n", "datasets.d: missing key 'source'"),
    # not YAML, or YAML that silently loses a value
    ("train: [1, 2\n" + GOOD, "line 2, column 9: not valid YAML (expected ',' or ']'"),
    ("train: {epochs: 1}\ntrain: {epochs: 2}\n" + GOOD, "line 2, column 1: not valid YAML (key 'train' appears twice"),
    ("- a list\n", "must be a mapping of sections"),
])
def test_bad_params_are_one_line_naming_the_key(project, capsys, text, names):
    code, err, out, before = run_prepare(project, capsys, text=text.replace("SRC", str(project / "good.jsonl")))
    assert_refused(code, err, names, before, out)
    assert f"{project / 'params.yaml'}: " in err  # the file is named too


def test_every_stage_checks_the_whole_params_file(project, capsys, tmp_path):
    """A mistake in a section a stage does not read still stops it: the file is checked
    against one schema before any stage uses it."""
    params = tmp_path / "params.yaml"
    params.write_text("lamda_div: 1.0\nexperiments:\n  e: {dataset: d, num_experts: 2}\n")
    for module, args in [("train", ["e", "sparse"]), ("featurize", ["d", "--out", str(tmp_path / "f")]),
                         ("evaluate", ["e", "sparse"]), ("steer", ["e", "sparse"])]:
        code, err = invoke(module, [*args, "--params", str(params)], capsys)
        assert code == 1 and err.strip().splitlines() == [f"error: {params}: unknown top-level key 'lamda_div'; "
                                                          f"known: {err.split('known: ')[1].strip()}"], (module, err)
    assert not (tmp_path / "f").exists()


def test_a_check_across_keys_is_one_line_too(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("experiments:\n  e: {dataset: d, num_experts: 2}\ntrain: {batch_size: 16, block_pairs: 100}\n")
    code, err = invoke("train", ["e", "vanilla", "--params", str(params)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "train.block_pairs (100) must be a multiple of train.batch_size (16)" in err


def test_missing_params_file_and_usage_errors(project, capsys, tmp_path):
    code, err, out, before = run_prepare(project, capsys, args=["d", "--params", str(tmp_path / "absent.yaml"),
                                                                "--out", str(project / "out")])
    assert_refused(code, err, "absent.yaml does not exist", before, out)
    code, err, out, before = run_prepare(project, capsys, args=["d", "--bogus", "--out", str(project / "out")])
    assert_refused(code, err, "No such option: --bogus", before, out, exit_code=2)


def test_both_committed_params_files_validate():
    for path in (REPO / "params.yaml", REPO / "real" / "params.yaml"):
        assert P.load(path)


# ----------------------------------------------------------------------------- bad rows


def _prepared(out: Path) -> tuple[dict, pa.Table]:
    return json.loads((out / "manifest.json").read_text()), pq.read_table(out / "pairs.parquet")


@pytest.mark.parametrize("column, value, reason", [
    ("prompt", 5, "non_string"),
    ("prompt", [{"role": "user", "content": 3}], "non_string"),
    ("chosen", 5, "non_string"),
    ("chosen", True, "non_string"),
    ("rejected", {"text": "an object"}, "non_string"),
    ("chosen", None, "empty_text"),
    ("rejected", "   ", "empty_text"),
    ("rejected", "good answer 3", "chosen_equals_rejected"),
    ("user", {"id": 1}, "non_scalar_metadata"),
    ("category", ["a", "b"], "non_scalar_metadata"),
    ("split", 7, "unknown_split"),
    ("split", "holdout", "unknown_split"),
])
def test_a_bad_value_in_any_column_is_one_counted_drop(project, capsys, column, value, reason):
    rows = [dict(r, split="train") for r in ROWS]
    rows[3][column] = value
    source = jsonl(project / f"bad-{column}.jsonl", rows)
    code, err, out, _ = run_prepare(project, capsys, {"source": str(source)})
    assert code == 0, err
    manifest, table = _prepared(out)
    assert manifest["dropped"] == {reason: 1} and manifest["num_pairs"] == len(ROWS) - 1
    assert "question 3" not in json.dumps(table.column("prompt").to_pylist())


def test_bad_rows_in_an_adapters_columns_are_counted_drops(project, capsys):
    rows = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: no {i}"}
            for i in range(6)]
    rows[1]["chosen"] = 5  # a number in a text column: that row only
    rows[2]["rejected"] = "not a transcript"
    source = jsonl(project / "hh.jsonl", rows)
    code, err, out, _ = run_prepare(project, capsys, {"source": str(source), "adapter": "hh-rlhf"})
    assert code == 0, err
    manifest, _ = _prepared(out)
    assert manifest["dropped"] == {"wrong_type_chosen": 1, "unparseable_transcript": 1}
    assert manifest["num_pairs"] == 4


def test_bad_rows_in_parquet_and_csv_are_counted_drops(project, capsys):
    table = pa.table({k: [r[k] for r in ROWS] for k in ("prompt", "chosen", "rejected")})
    table = table.set_column(1, "chosen", pa.array([None, *table.column("chosen").to_pylist()[1:]], pa.string()))
    pq.write_table(table, project / "nulls.parquet")
    code, err, out, _ = run_prepare(project, capsys, {"source": str(project / "nulls.parquet")})
    assert code == 0 and _prepared(out)[0]["dropped"] == {"empty_text": 1}, err
    (project / "gaps.csv").write_text("prompt,chosen,rejected\nq1,a,b\nq2,,b\nq3,a,b\n")
    code, err, out, _ = run_prepare(project, capsys, {"source": str(project / "gaps.csv")})
    assert code == 0 and _prepared(out)[0]["dropped"] == {"empty_text": 1}, err


@pytest.mark.parametrize("name, make, names", [
    ("nocol.csv", lambda p: p.write_text("prompt,chosen\nq,a\n"), "missing column(s) 'rejected'"),
    ("header.csv", lambda p: p.write_text("prompt,chosen,rejected\n"), "holds no rows"),
    ("allbad.jsonl", lambda p: jsonl(p, [dict(r, chosen=r["rejected"]) for r in ROWS]),
     "no usable pairs (dropped: {'chosen_equals_rejected': 8})"),
    ("ints.parquet", lambda p: pq.write_table(pa.table({"prompt": ["q"], "chosen": [1], "rejected": ["r"]}), p),
     "column 'chosen' must be text or a list of {role, content} messages, found int64"),
])
def test_only_a_schema_level_problem_refuses_a_file(project, capsys, name, make, names):
    make(project / name)
    code, err, out, before = run_prepare(project, capsys, {"source": str(project / name)})
    assert_refused(code, err, names, before, out)
    assert str(project / name) in err


# ----------------------------------------------------------------------------- bad files

GOOD_BYTES = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


def _zst(data: bytes) -> bytes:
    stream = pa.BufferOutputStream()
    with pa.CompressedOutputStream(stream, "zstd") as out:
        out.write(data)
    return stream.getvalue().to_pybytes()


@pytest.mark.parametrize("name, data", [
    ("ok.jsonl.gz", gzip.compress(GOOD_BYTES)),
    ("ok.jsonl.bz2", bz2.compress(GOOD_BYTES)),
    ("ok.jsonl.xz", lzma.compress(GOOD_BYTES)),
    ("ok.jsonl.zst", _zst(GOOD_BYTES)),
])
def test_compressed_files_are_read_as_they_are(project, capsys, name, data):
    (project / name).write_bytes(data)
    code, err, out, _ = run_prepare(project, capsys, {"source": str(project / name)})
    assert code == 0 and _prepared(out)[0]["num_pairs"] == len(ROWS), err


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.jsonl", GOOD_BYTES)


@pytest.mark.parametrize("name, make, names", [
    ("empty.jsonl", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("blank.jsonl", lambda p: p.write_text("\n\n"), "empty file (no text)"),
    ("latin1.jsonl", lambda p: p.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1")),
     "line 1, column 16: byte 0xe9 is not UTF-8"),
    ("data.txt", lambda p: p.write_bytes(GOOD_BYTES), "unsupported file type '.txt'"),
    ("data.zip", _zip, "is an archive (.zip); extract it"),
    ("packed.jsonl", lambda p: p.write_bytes(gzip.compress(GOOD_BYTES)), "is gzip-compressed data; rename it to"),
    ("table.json", lambda p: pq.write_table(pa.table({"a": [1]}), p), "is a Parquet file, not json data"),
    ("cut.jsonl.gz", lambda p: p.write_bytes(gzip.compress(GOOD_BYTES)[:40]), "truncated or corrupt gzip data"),
    ("cut.parquet", lambda p: p.write_bytes(b"PAR1" + b"\0" * 40), "not a readable Parquet file"),
    ("broken.jsonl", lambda p: p.write_text(json.dumps(ROWS[0]) + '\n{"prompt": "q", "chos\n'),
     "line 2, column 17: invalid JSON"),
    ("broken.json", lambda p: p.write_text('[{"prompt": "q"},\n {"prompt": }]'), "line 2, column 13: invalid JSON"),
    ("absent.jsonl", lambda p: None, "local source file not found"),
])
def test_bad_files_are_one_line_naming_the_file(project, capsys, name, make, names):
    make(project / name)
    code, err, out, before = run_prepare(project, capsys, {"source": str(project / name)})
    assert_refused(code, err, names, before, out)
    assert str(project / name) in err


def test_a_hub_id_that_cannot_be_reached_says_how_to_use_a_local_file(project, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err, out, before = run_prepare(project, capsys, {"source": "stanfordnlp/SHP"})
    assert_refused(code, err, "cannot load 'stanfordnlp/SHP': the Hugging Face hub is unreachable", before, out)
    assert "use its path as the source" in err


def test_the_real_command_as_a_subprocess(project):
    """The same refusals from `python -m stages.prepare` itself: one line, exit 1, nothing
    changed; twice for a Parquet file (a process that exited right after a threaded
    Parquet read could abort in C++ teardown)."""
    out = project / "out"
    pq.write_table(pa.table({"prompt": ["q"], "chosen": [1], "rejected": ["r"]}), project / "sub.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for text, names in [("lamda_div: 1\n", "unknown top-level key 'lamda_div'"),
                        (yaml.safe_dump({"datasets": {"d": {"source": str(project / "sub.parquet")}}}),
                         "column 'chosen' must be text"),
                        (yaml.safe_dump({"datasets": {"d": {"source": str(project / "sub.parquet")}}}),
                         "column 'chosen' must be text")]:
        (project / "sub.yaml").write_text(text)
        before = snapshot(out)
        proc = subprocess.run([sys.executable, "-m", "stages.prepare", "d", "--params", str(project / "sub.yaml"),
                               "--out", str(out)], capture_output=True, text=True, env=env, cwd=project)
        assert_refused(proc.returncode, proc.stderr, names, before, out)


# ----------------------------------------------------------------------------- featurize, smoe data


@pytest.fixture(scope="module")
def featurized(project, tmp_path_factory):
    """A tiny backbone, a prepared dataset and its good cache (the output a failure must
    leave untouched)."""
    from tests.conftest import build_tiny_llama

    root = tmp_path_factory.mktemp("featurize")
    backbone = build_tiny_llama(root / "tiny")
    jsonl(root / "src.jsonl", ROWS[:3])
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": {"d": {"source": str(root / "src.jsonl")}},
                                      "backbone": {"max_length": 64}, "featurize": {"token_budget": 256}}))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert subprocess.run([sys.executable, "-m", "stages.prepare", "d", "--params", str(params)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True).returncode == 0
    finally:
        os.chdir(cwd)
    return root, backbone


def test_featurize_refuses_bad_inputs_before_loading_the_backbone(featurized, capsys, monkeypatch):
    root, backbone = featurized
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prepared, out, params = root / "data/prepared/d", root / "features", str(root / "params.yaml")
    code, err = invoke("featurize", ["d", "--params", params, "--backbone", str(backbone), "--prepared",
                                     str(prepared), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    before = snapshot(out)
    (root / "damaged").mkdir(exist_ok=True)
    (root / "damaged/pairs.parquet").write_bytes((prepared / "pairs.parquet").read_bytes()[:100])
    (root / "foreign").mkdir(exist_ok=True)
    pq.write_table(pa.table({"x": [1]}), root / "foreign/pairs.parquet")
    (root / "notamodel").mkdir(exist_ok=True)
    for option, value, names in [
        ("--prepared", root / "absent", "no prepared pairs here; run `smoe prepare d`"),
        ("--prepared", root / "damaged", "damaged/pairs.parquet: damaged, not a readable Parquet file"),
        ("--prepared", root / "foreign", "missing column(s) 'pair_id'"),
        ("--backbone", root / "absent-backbone", "absent-backbone: no backbone folder here"),
        ("--backbone", root / "notamodel", "notamodel: not a model folder (no config.json)"),
        ("--backbone", "someone/no-such-model", "the Hugging Face hub cannot be reached from here"),
    ]:
        args = {"--prepared": str(prepared), "--backbone": str(backbone), option: str(value)}
        code, err = invoke("featurize", ["d", "--params", params, "--out", str(out), "--no-progress",
                                         *[x for kv in args.items() for x in kv]], capsys)
        assert_refused(code, err, names, before, out)


def test_smoe_data_mistakes_are_one_line(tmp_path, capsys):
    for args, names in [(["verify", "--location", str(tmp_path), "nosuch"], "no real dataset or file 'nosuch'"),
                        (["verify", "--location", str(tmp_path / "absent")], "does not exist"),
                        (["verify", "--location", str(tmp_path), "auto-j"], "is missing under")]:
        code, err = invoke("data", args, capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and names in err, err
