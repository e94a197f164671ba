"""params.schema.json is what stages/params_schema.py generates from the config dataclasses."""

from __future__ import annotations

import inspect
from dataclasses import fields

from pipeline import sources
from pipeline.prepare import DatasetSpec, option_names
from stages import common, params_schema


def test_the_committed_schema_is_the_generated_one():
    committed = common.SCHEMA_FILE.read_text() if common.SCHEMA_FILE.exists() else ""
    assert committed == params_schema.render(), (
        f"{common.SCHEMA_FILE.name} is stale: a config dataclass changed. Regenerate it with "
        f"`{common.REGENERATE}` (python -m stages.params_schema schema) and commit it.")


def test_every_section_and_key_of_the_committed_params_files_is_in_the_schema():
    for path in (common.SCHEMA_FILE.parents[1] / "params.yaml", common.SCHEMA_FILE.parents[1] / "real" / "params.yaml"):
        params = common.load(path)
        assert set(params) <= set(params_schema.schema()["properties"])


def test_dataset_spec_names_every_option_of_load_rows():
    options = {p for p in inspect.signature(sources.load_rows).parameters if p not in ("source", "builtin_params")}
    assert {f.name for f in fields(DatasetSpec)} == {"source", "params", "min_group_size", *options}
    assert set(option_names()) == {"min_group_size", *options}
