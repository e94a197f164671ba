"""Row-level validation: every bad row is dropped and counted by reason; ids are stable."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import pairs
from pipeline.featurize import FeaturizeConfig, shard_limit


def test_each_row_problem_has_its_drop_reason():
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "split": "train"}
    rows = [good,
            {**good, "chosen": None},                                # null text
            {**good, "rejected": "   "},                             # empty text
            {**good, "chosen": 3},                                   # non-string
            {**good, "prompt": [{"role": "user", "content": 7}]},    # non-string message
            {**good, "rejected": "a"},                               # chosen == rejected
            {**good, "split": "holdout"},                            # unknown split
            dict(good),                                              # exact duplicate
            {"_drop": "shp_low_score"}]                              # adapter-level filter
    table, dropped = pairs.finalize(rows)
    assert table.num_rows == 1
    assert dropped == {"empty_text": 2, "non_string": 2, "chosen_equals_rejected": 1, "unknown_split": 1,
                       "duplicate_pair": 1, "shp_low_score": 1}


def test_ids_are_content_derived_and_metadata_aware():
    p = [{"role": "user", "content": "q"}]
    assert pairs.pair_id(p, "a", "b") == pairs.pair_id(list(p), "a", "b")
    assert pairs.pair_id(p, "a", "b") != pairs.pair_id(p, "b", "a")
    assert pairs.pair_id(p, "a", "b", {"user": "u1"}) != pairs.pair_id(p, "a", "b", {"user": "u2"})
    assert pairs.sequence_id(p, "ab") != pairs.sequence_id([{"role": "user", "content": "qa"}], "b")


def test_schema_errors_name_the_column_and_list_what_exists():
    with pytest.raises(pairs.SchemaError, match=r"missing column\(s\) 'rejected'; available columns: 'prompt', 'chosen'"):
        pairs.require_columns(["prompt", "chosen"], ["prompt", "chosen", "rejected"], "x.jsonl")
    bad = pa.table({"pair_id": ["1"], "prompt": ["q"], "chosen": [1], "rejected": ["b"], "split": ["train"]})
    with pytest.raises(pairs.SchemaError, match="column 'chosen' must be string"):
        pairs.validate_table(bad, "x.parquet")


def test_shards_stay_a_few_hundred_mb_at_paper_scale():
    config = FeaturizeConfig()
    assert shard_limit(config, 3072) * 2 * 3072 * 2 <= 256 * 2**20
    assert shard_limit(FeaturizeConfig(shard_max_sequences=6), 3072) == 6
