"""Tests for pipeline.sources: every adapter on a small fixture in the dataset's real
schema, the generic column mapping, schema errors, caps, and hub failures (offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: never touch the network

import random
import sys
import types
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

import pipeline
from pipeline import sources
from pipeline.pairs import SchemaError, finalize
from pipeline.sources import SourceUnavailableError, apply_limits, load_rows

FIXTURES = Path(__file__).parent / "fixtures"
REAL_LOAD_DATASET = datasets.load_dataset


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fx(name: str) -> str:
    return str(FIXTURES / name)


def load(name: str, **kwargs):
    table, dropped = finalize(load_rows(fx(name), **kwargs))
    return table.to_pylist(), dropped


def last_turn(row) -> str:
    return row["prompt"][-1]["content"]


# ----------------------------------------------------------------------------- SHP


def test_shp_filters_categories_and_orientation():
    rows, dropped = load("shp.jsonl", adapter="shp")
    assert dropped == Counter({"shp_low_score": 2, "shp_excluded_domain": 2, "chosen_equals_rejected": 1})
    train = {(last_turn(r), r["chosen"], r["rejected"], r["category"], r["domain"])
             for r in rows if r["split"] == "train"}
    assert train == {
        ("How long should I rest a steak?", "About five minutes, tented with foil.",
         "Don't bother resting it.", "cooking", "askculinary"),
        ("Why is the sky blue?", "Rayleigh scattering favours short wavelengths.",  # labels 0: B preferred
         "Because it reflects the ocean.", "academic", "askphysics"),
        ("Could a lightsaber cut through vibranium?", "Probably, given enough time.",
         "No, vibranium absorbs energy.", "fiction", "asksciencefiction"),
        ("Can my landlord keep my deposit for normal wear?", "No, normal wear and tear is not damage.",
         "Yes, always.", "professional", "legaladvice"),
    }
    assert all(r["prompt"] == [{"role": "user", "content": last_turn(r)}] for r in rows)
    # Split from the domain suffix; one pair per post for validation/test.
    assert Counter(r["split"] for r in rows) == Counter({"train": 4, "validation": 1, "test": 2})
    test = {last_turn(r): r for r in rows if r["split"] == "test"}
    assert set(test) == {"Did Vikings wear horned helmets?", "Can dogs eat grapes?"}
    assert test["Can dogs eat grapes?"]["category"] == "professional"
    # The low-score third pair of post p9 is filtered before the per-post choice.
    assert test["Did Vikings wear horned helmets?"]["chosen"] == "No, that is a 19th-century invention."


def test_shp_one_pair_per_post_is_seeded():
    def validation_rejected(seed):
        rows, _ = load("shp.jsonl", adapter="shp", seed=seed)
        (row,) = [r for r in rows if r["split"] == "validation"]
        return row["rejected"]

    assert validation_rejected(3) == validation_rejected(3)
    picks = {validation_rejected(seed) for seed in range(12)}
    assert picks == {"Too much salt, maybe.", "Your yeast may be dead."}


def test_shp_split_argument_overrides_domain_suffix():
    rows, dropped = load("shp.jsonl", adapter="shp", split="test")
    assert {r["split"] for r in rows} == {"test"}
    # Every kept post contributes exactly one pair.
    assert len(rows) == 7
    assert dropped["shp_low_score"] == 2 and dropped["shp_excluded_domain"] == 2


def test_shp_limits_cap_a_split_deterministically():
    rows_a, dropped = load("shp.jsonl", adapter="shp", limits={"train": 2})
    rows_b, _ = load("shp.jsonl", adapter="shp", limits={"train": 2})
    assert Counter(r["split"] for r in rows_a) == Counter({"train": 2, "validation": 1, "test": 2})
    assert rows_a == rows_b
    assert "over_limit" not in dropped  # a cap is a sample size, not bad data


# ----------------------------------------------------------------------------- RPR


@pytest.mark.parametrize("split", ["train", "validation"])
def test_rpr_appends_criterion_outside_test(split):
    rows, dropped = load("rpr.jsonl", adapter="rpr", split=split)
    assert dropped == Counter({"chosen_equals_rejected": 2, "rpr_missing_criterion": 1})
    assert len(rows) == 7
    for r in rows:
        assert r["prompt"][-1]["content"].endswith("\n\n" + r["criterion"])
    by_attr = {r["attribute"]: r for r in rows}
    creative = by_attr["Linguistic Creativity"]
    assert creative["prompt"] == [
        {"role": "user", "content": "Explain recursion.\n\nThe response should use a creative metaphor."}]
    assert creative["chosen"].startswith("A function that calls itself")  # response_a under criteria_x
    humor = by_attr["Humor and Entertainment Value"]
    assert humor["chosen"] == "Because they are happy little engines!"  # response_b under criteria_y
    assert humor["rejected"].startswith("Cats purr via")
    if split == "validation":
        assert {r["split"] for r in rows} == {"validation"}
    else:  # RPR's train is divided into train/validation, both halves of a row together
        assert {r["split"] for r in rows} <= {"train", "validation"}
        by_prompt = {}
        for r in rows:
            by_prompt.setdefault(r["prompt"][0]["content"].split("\n\n")[0], set()).add(r["split"])
        assert all(len(s) == 1 for s in by_prompt.values())


def test_rpr_test_keeps_bare_prompt():
    rows, _ = load("rpr.jsonl", adapter="rpr", split="test")
    assert {r["split"] for r in rows} == {"test"}
    assert {last_turn(r) for r in rows} == {
        "Explain recursion.", "Plan a weekend in Rome.", "Why do cats purr?", "Summarize the water cycle."}
    rome = sorted((r for r in rows if last_turn(r) == "Plan a weekend in Rome."), key=lambda r: r["attribute"])
    assert [r["attribute"] for r in rome] == ["Clarity and Conciseness", "Detail and Elaboration"]
    assert rome[0]["chosen"] == "Wander, eat gelato, enjoy." and rome[1]["rejected"] == "Wander, eat gelato, enjoy."
    assert rome[0]["criterion"] == "Keeps the answer short and relaxed."


def test_rpr_from_hub_uses_known_id_and_split_plan(monkeypatch):
    calls = []

    def fake_load_dataset(path, *args, **kwargs):
        if path in ("json", "parquet", "csv"):
            return REAL_LOAD_DATASET(path, *args, **kwargs)
        calls.append((path, kwargs))
        part = REAL_LOAD_DATASET("json", data_files=fx("rpr.jsonl"), split="train")
        return datasets.DatasetDict({"train": part, "test": part})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table, dropped = finalize(load_rows("microsoft/rpr", revision="abc123", seed=1))
    rows = table.to_pylist()
    assert calls == [("microsoft/rpr", {"revision": "abc123"})]
    assert dropped == Counter({"chosen_equals_rejected": 4, "rpr_missing_criterion": 2})
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 7 and all("\n\n" not in last_turn(r) for r in test)
    fit = [r for r in rows if r["split"] != "test"]
    assert len(fit) == 7 and all(last_turn(r).endswith(r["criterion"]) for r in fit)
    assert {r["split"] for r in fit} <= {"train", "validation"}


# ----------------------------------------------------------------------------- 700K


def test_preference_700k_history_is_prompt():
    rows, dropped = load("preference_700k.jsonl", adapter="preference-700k")
    assert dropped == Counter({"prompt_mismatch": 1, "no_final_assistant_turn": 1, "chosen_equals_rejected": 1})
    assert len(rows) == 7
    joke = next(r for r in rows if r["chosen"].startswith("Why did the chicken"))
    assert joke["prompt"] == [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    assert joke["rejected"] == "No."
    first = next(r for r in rows if last_turn(r) == "What is 2+2?")
    assert (first["chosen"], first["rejected"]) == ("4.", "5.")
    # The hub has one train split: rows are re-split by a seeded content hash.
    assert {r["split"] for r in rows} <= {"train", "validation", "test"}
    again, _ = load("preference_700k.jsonl", adapter="preference-700k")
    assert again == rows


def test_preference_700k_split_fractions_and_limits():
    rows, _ = load("preference_700k.jsonl", adapter="preference-700k", split_fractions={"train": 1.0})
    assert {r["split"] for r in rows} == {"train"}
    capped, dropped = load("preference_700k.jsonl", adapter="preference-700k",
                           split_fractions={"train": 1.0}, limits={"train": 3})
    assert len(capped) == 3 and dropped["prompt_mismatch"] == 1
    assert {r["pair_id"] for r in capped} <= {r["pair_id"] for r in rows}
    other_seed, _ = load("preference_700k.jsonl", adapter="preference-700k", seed=5,
                         split_fractions={"train": 1.0}, limits={"train": 3})
    assert len(other_seed) == 3


# ----------------------------------------------------------------------------- PersonalLLM


def test_personalllm_best_vs_worst_per_user():
    seed = 7
    rows, dropped = load("personalllm.jsonl", adapter="personalllm", split="test", seed=seed)
    n_users = sources.PERSONALLLM_USERS
    assert dropped == Counter({"personalllm_missing_score": n_users, "personalllm_tied_scores": n_users})
    assert len(rows) == 2 * n_users
    assert {r["user"] for r in rows} == {f"user_{u + 1}" for u in range(n_users)}
    juggle = [r for r in rows if last_turn(r) == "How do I learn to juggle?"]
    assert all(r["chosen"].endswith("answer 1") and r["rejected"].endswith("answer 8") for r in juggle)

    # The user-dependent row matches an independent computation of the users' choices.
    users = sources.personalllm_users(seed)
    assert users.shape == (n_users, 10)
    assert np.allclose(users.sum(axis=1), 1.0)
    scores = np.array([[((i * 7 + k * 3) % 11) - 5.0 + 0.1 * i for k in range(10)] for i in range(8)])
    utility = scores @ users.T
    novel = {r["user"]: r for r in rows if last_turn(r) == "Recommend a science fiction novel."}
    for u in range(n_users):
        row = novel[f"user_{u + 1}"]
        assert row["chosen"].endswith(f"answer {int(np.argmax(utility[:, u])) + 1}")
        assert row["rejected"].endswith(f"answer {int(np.argmin(utility[:, u])) + 1}")
    assert {r["split"] for r in rows} == {"test"}


def test_personalllm_users_depend_on_seed_only():
    assert np.array_equal(sources.personalllm_users(1), sources.personalllm_users(1))
    assert not np.array_equal(sources.personalllm_users(1), sources.personalllm_users(2))


# ----------------------------------------------------------------------------- HH-RLHF


def test_hh_rlhf_transcripts():
    rows, dropped = load("hh_rlhf.jsonl", adapter="hh-rlhf", split="train")
    assert dropped == Counter({"prompt_mismatch": 1, "unparseable_transcript": 2, "empty_text": 1})
    assert len(rows) == 2
    egg = next(r for r in rows if r["chosen"].startswith("Place it"))
    assert egg["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! What can I do for you?"},
        {"role": "user", "content": "How do I boil an egg?"},
    ]
    assert egg["rejected"] == "Microwave it for 5 minutes."
    cat = next(r for r in rows if r["chosen"] == "How about Miso?")
    assert cat["prompt"] == [{"role": "user", "content": "What is a good name for a cat?"}]


def test_parse_hh_transcript_edge_cases():
    assert sources.parse_hh_transcript("no turns") is None
    assert sources.parse_hh_transcript("\n\nHuman: hi") is None
    assert sources.parse_hh_transcript("\n\nHuman: a\n\nAssistant: b\n\nHuman: c") is None
    assert sources.parse_hh_transcript("\n\nHuman: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


# ----------------------------------------------------------------------------- generic files

CSV_COLUMNS = {"prompt": "question", "chosen": "good_answer", "rejected": "bad_answer",
               "split": "fold", "category": "topic"}


def test_generic_csv_column_mapping():
    rows, dropped = load("generic.csv", columns=CSV_COLUMNS)
    assert dropped == Counter({"empty_text": 1, "chosen_equals_rejected": 1, "unknown_split": 1, "duplicate_pair": 1})
    got = [(last_turn(r), r["chosen"], r["rejected"], r["split"], r["category"]) for r in rows]
    assert got == [
        ("What is the capital of Italy?", "Rome.", "Milan.", "train", "geography"),
        ("How many legs does a spider have?", "Eight.", "Six.", "train", "biology"),
        ("What is H2O?", "Water.", "Hydrogen peroxide.", "validation", "chemistry"),  # 'valid' -> validation
        ("Who wrote Hamlet?", "Shakespeare.", "Dickens.", "test", "literature"),
    ]


def test_generic_parquet_messages_prompt_and_split_choices():
    columns = {"prompt": "instruction", "chosen": "preferred", "rejected": "dispreferred", "user": "annotator"}
    rows, dropped = load("generic.parquet", columns=columns, split="train")
    assert not dropped and len(rows) == 3
    assert {r["split"] for r in rows} == {"train"}
    colour = rows[0]
    assert colour["prompt"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Name a colour."}]
    assert (colour["chosen"], colour["rejected"], colour["user"]) == ("Blue.", "Loud.", "u1")
    hashed, _ = load("generic.parquet", columns=columns)  # no split given: seeded hash split
    assert hashed == load("generic.parquet", columns=columns)[0]
    assert {r["split"] for r in hashed} <= {"train", "validation", "test"}
    only_test, _ = load("generic.parquet", columns=columns, split_fractions={"test": 2.0})
    assert {r["split"] for r in only_test} == {"test"}


def test_generic_identity_mapping_jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p1", "chosen": "a", "rejected": "b", "split": "test", "domain": "d"}\n'
                    '{"prompt": "p2", "chosen": "c", "rejected": "d", "split": "adapt", "domain": "e"}\n')
    table, dropped = finalize(load_rows(str(path)))
    assert not dropped
    assert [(r["split"], r["domain"]) for r in table.to_pylist()] == [("test", "d"), ("adapt", "e")]


def test_hash_split_is_stable_and_follows_fractions(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"prompt": "q{i}", "chosen": "good {i}", "rejected": "bad {i}"}}\n' for i in range(400)))
    rows = list(load_rows(str(path), seed=3))
    counts = Counter(r["split"] for r in rows)
    assert 270 <= counts["train"] <= 370 and counts["validation"] > 15 and counts["test"] > 15
    assert rows == list(load_rows(str(path), seed=3))
    assert rows != list(load_rows(str(path), seed=4))


# ----------------------------------------------------------------------------- schema errors


def test_numeric_chosen_column_is_a_schema_error():
    with pytest.raises(SchemaError) as err:
        load_rows(fx("numeric_chosen.csv"))  # raised before any row is read
    message = str(err.value)
    assert "'chosen'" in message and "int64" in message
    assert "'prompt'" in message and "'rejected'" in message


def test_missing_mapped_column_is_a_schema_error():
    with pytest.raises(SchemaError) as err:
        load_rows(fx("generic.csv"), columns={**CSV_COLUMNS, "chosen": "best_answer"})
    message = str(err.value)
    assert "'best_answer'" in message
    assert all(f"'{c}'" in message for c in ("question", "good_answer", "bad_answer", "fold", "topic"))


def test_adapter_on_wrong_schema_is_a_schema_error():
    with pytest.raises(SchemaError, match="'post_id'.*available columns: 'question'"):
        load_rows(fx("generic.csv"), adapter="shp")
    with pytest.raises(SchemaError, match=r"column 'chosen' must be a list of \{role, content\} messages"):
        load_rows(fx("hh_rlhf.jsonl"), adapter="preference-700k")


def test_unknown_canonical_name_in_columns():
    with pytest.raises(ValueError, match="promt"):
        load_rows(fx("generic.csv"), columns={"promt": "question"})


@pytest.mark.parametrize("kwargs, match", [
    ({"adapter": "nope"}, "unknown adapter"),
    ({"adapter": "shp", "columns": {"prompt": "history"}}, "not both"),
    ({"split": "holdout"}, "holdout"),
    ({"split_fractions": {"train": -1.0}}, "non-negative"),
    ({"split_fractions": {"training": 1.0}}, "training"),
    ({"limits": {"train": -2}}, "limits"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_rows(fx("generic.csv"), **kwargs)


def test_missing_local_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        load_rows(str(FIXTURES / "does_not_exist.jsonl"))


# ----------------------------------------------------------------------------- hub errors (never the network)


def test_unknown_hub_id_without_adapter_fails_before_loading(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_dataset must not be called")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(ValueError) as err:
        load_rows("someone/some-preferences")
    message = str(err.value)
    assert "someone/some-preferences" in message and "adapter=" in message and "columns=" in message


@pytest.mark.parametrize("source, kwargs", [
    ("stanfordnlp/SHP", {}),
    ("someone/some-preferences", {"columns": {"prompt": "q", "chosen": "a", "rejected": "b"}}),
    ("someone/some-preferences", {"adapter": "hh-rlhf"}),
])
def test_unreachable_hub_gives_clear_error(monkeypatch, source, kwargs):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SourceUnavailableError) as err:
        load_rows(source, **kwargs)
    message = str(err.value)
    assert "unreachable" in message and source in message
    assert "local" in message.lower() or "path" in message
    assert isinstance(err.value, ConnectionError)


def test_split_argument_is_rejected_for_hub_sources():
    with pytest.raises(ValueError, match="local files"):
        load_rows("stanfordnlp/SHP", split="train")


# ----------------------------------------------------------------------------- builtin and caps


def test_builtin_source_uses_generators_lazily(monkeypatch):
    calls = []

    def generate(name, seed, **params):
        calls.append((name, seed, params))
        return [{"prompt": f"p{i}", "chosen": "a", "rejected": "b", "split": "train"} for i in range(5)]

    fake = types.ModuleType("pipeline.generators")
    fake.generate = generate
    monkeypatch.setitem(sys.modules, "pipeline.generators", fake)
    monkeypatch.setattr(pipeline, "generators", fake, raising=False)
    rows = list(load_rows("builtin:clusters", seed=4, builtin_params={"n": 5}, limits={"train": 2}))
    assert calls == [("clusters", 4, {"n": 5})]
    assert len(rows) == 2


def test_apply_limits_is_order_independent_and_passes_drops():
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "split": "train"} for i in range(50)]
    rows += [{"_drop": "x"}, {"prompt": "t", "chosen": "c", "rejected": "r", "split": "test"}]
    kept = list(apply_limits(rows, {"train": 10}, seed=2))
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    kept_shuffled = list(apply_limits(shuffled, {"train": 10}, seed=2))
    key = lambda r: sorted(r.items())  # noqa: E731
    assert sorted(map(key, kept)) == sorted(map(key, kept_shuffled))
    assert sum(r.get("split") == "train" for r in kept) == 10
    assert {"_drop": "x"} in kept and any(r.get("split") == "test" for r in kept)
    assert list(apply_limits(rows, {"train": 0}, seed=2)) == rows[50:]


def test_apply_limits_counts_only_usable_pairs():
    """Rows finalize() rejects do not use up the cap; duplicates stay with their original."""
    good = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "split": "train"} for i in range(6)]
    bad = [{"prompt": f"b{i}", "chosen": "same", "rejected": "same", "split": "train"} for i in range(6)]
    rows = good + bad + [dict(r) for r in good]  # every good pair twice
    table, dropped = finalize(apply_limits(rows, {"train": 3}, seed=0))
    assert table.num_rows == 3
    assert dropped == Counter({"chosen_equals_rejected": 6, "duplicate_pair": 3})


def test_mixed_text_and_message_prompts_in_one_jsonl(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"prompt": "plain", "chosen": "a", "rejected": "b"}\n'
                    '{"prompt": [{"role": "user", "content": "chat"}], "chosen": "c", "rejected": "d"}\n')
    table, dropped = finalize(load_rows(str(path), split="train"))
    assert not dropped
    assert [r["prompt"] for r in table.to_pylist()] == [[{"role": "user", "content": "plain"}],
                                                        [{"role": "user", "content": "chat"}]]


def test_unreadable_local_file_is_a_schema_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n')
    with pytest.raises(SchemaError, match=r"broken\.jsonl: line 2, column 1: invalid JSON"):
        load_rows(str(path))
