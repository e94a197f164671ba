"""Each shared real dataset goes through `prepare` from its unmodified published file.

The pair count and every drop count are computed here from the file by the test's own
reading (plain json/gzip and the publisher's documented schema), independent of the
pipeline's code, pinned as literals, and compared with the stage's manifest. The files
live outside the repository: ``$SMOE_SHARED_DATASETS``, by default
``<repo root>/../shared/datasets``; a test is skipped when its dataset is absent.
"""

from __future__ import annotations

import ast
import gzip
import itertools
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SMOE_SHARED_DATASETS") or ROOT.parent / "shared" / "datasets")

# What each dataset's block in params.yaml holds (the source relative to the shared folder).
BLOCKS = {
    "hh-rlhf": {"source": "hh-rlhf-helpful/helpful-base/test.jsonl.gz", "adapter": "hh-rlhf"},
    "auto-j": {"source": "auto-j/testdata_pairwise.jsonl", "adapter": "auto-j"},
    "tldr-comparisons": {"source": "tldr-comparisons/batch*.json", "adapter": "tldr-comparisons"},
    "hanna": {"source": "hanna", "adapter": "hanna"},
    "rmb": {"source": "rmb/RMB_dataset/Pairwise_set", "adapter": "rmb"},
}


def shared(relative: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED} (set SMOE_SHARED_DATASETS)")
    path = SHARED / (Path(relative).parent if "*" in relative else relative)
    if not path.exists():
        pytest.skip(f"{path} not found under the shared datasets")
    return SHARED / relative


def run_prepare(name: str, tmp_path: Path) -> tuple[dict, list[dict]]:
    """`python -m stages.prepare <name>` in-process, from a params file with its block."""
    from stages.prepare import main

    block = dict(BLOCKS[name], source=str(shared(BLOCKS[name]["source"])))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"datasets": {name: block}}))
    out = tmp_path / "prepared"
    main(name, out=out, params_file=params)
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest, pq.read_table(out / "pairs.parquet").to_pylist()


def finalize_counts(candidates) -> tuple[int, Counter]:
    """The canonical table's row rules, written out here: (prompt messages, chosen,
    rejected, identity) -> usable pairs and drops by reason."""
    dropped: Counter = Counter()
    seen = set()
    for prompt, chosen, rejected, identity in candidates:
        if any(not isinstance(t, str) or not t.strip() for t in (chosen, rejected)) \
                or not prompt or not prompt[-1][1].strip():
            dropped["empty_text"] += 1
        elif chosen.strip() == rejected.strip():
            dropped["chosen_equals_rejected"] += 1
        elif (key := (tuple(prompt), chosen, rejected, identity)) in seen:
            dropped["duplicate_pair"] += 1
        else:
            seen.add(key)
    return len(seen), dropped


def check(manifest: dict, pairs: int, dropped: Counter, pinned_pairs: int, pinned_dropped: dict) -> None:
    assert (pairs, dict(+dropped)) == (pinned_pairs, pinned_dropped)  # the file is what we think it is
    assert manifest["num_pairs"] == pairs
    assert manifest["dropped"] == dict(+dropped)
    assert sum(manifest["pairs_by_split"].values()) == pairs


# ----------------------------------------------------------------------------- HH-RLHF


def hh_turns(text: str):
    pieces = re.split(r"\n\n(Human|Assistant):", text)
    if len(pieces) < 5 or pieces[0].strip():
        return None
    turns = [("user" if role == "Human" else "assistant", content.strip())
             for role, content in zip(pieces[1::2], pieces[2::2])]
    return turns if turns[-1][0] == "assistant" else None


def test_hh_rlhf_helpful_base_test_from_the_gzip_file(tmp_path):
    with gzip.open(shared(BLOCKS["hh-rlhf"]["source"]), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    dropped: Counter = Counter()
    candidates = []
    for row in rows:
        chosen, rejected = hh_turns(row["chosen"]), hh_turns(row["rejected"])
        if chosen is None or rejected is None:
            dropped["unparseable_transcript"] += 1
        elif chosen[:-1] != rejected[:-1]:
            dropped["prompt_mismatch"] += 1
        else:
            candidates.append((chosen[:-1], chosen[-1][1], rejected[-1][1], None))
    pairs, final = finalize_counts(candidates)
    manifest, table = run_prepare("hh-rlhf", tmp_path)
    check(manifest, pairs, dropped + final, 2339,
          {"prompt_mismatch": 9, "empty_text": 4, "chosen_equals_rejected": 2})
    assert len(rows) == 2354


# ----------------------------------------------------------------------------- Auto-J


def test_auto_j_pairwise_ties_dropped_scenario_groups_as_categories(tmp_path):
    source = shared(BLOCKS["auto-j"]["source"])
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    module = ast.parse((source.parent / "utils_constants.py").read_text(encoding="utf-8"))
    (groups,) = [ast.literal_eval(node.value) for node in module.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "scenario_group" for t in node.targets)]
    group_of = {scenario: group for group, scenarios in groups.items() for scenario in scenarios}
    dropped: Counter = Counter()
    candidates = []
    for row in rows:
        if row["label"] == 2:
            dropped["tie"] += 1
        elif row["label"] not in (0, 1):
            dropped["unknown_label"] += 1
        elif row["scenario"] not in group_of:
            dropped["auto_j_unknown_scenario"] += 1
        else:
            a, b = row["response 1"], row["response 2"]
            chosen, rejected = (a, b) if row["label"] == 0 else (b, a)
            candidates.append(([("user", row["prompt"])], chosen, rejected, None))
    pairs, final = finalize_counts(candidates)
    manifest, table = run_prepare("auto-j", tmp_path)
    check(manifest, pairs, dropped + final, 1017, {"tie": 373, "empty_text": 1, "chosen_equals_rejected": 1})
    assert len(groups) == 8 and len(group_of) == 58
    assert set(manifest["pairs_by"]["category"]) == set(groups)
    assert all(group_of[r["domain"]] == r["category"] for r in table)
    by_prompt = defaultdict(set)
    for r in table:
        by_prompt[r["prompt"][-1]["content"]].add(r["split"])
    assert all(len(s) == 1 for s in by_prompt.values())  # pairs sharing a query share a split


# ----------------------------------------------------------------------------- TL;DR comparisons


def test_tldr_comparisons_batches_users_categories_confidence(tmp_path):
    files = sorted(shared("tldr-comparisons").glob("batch*.json"))
    rows = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    dropped: Counter = Counter()
    candidates = []
    for row in rows:
        info, summaries = row.get("info") or {}, row.get("summaries") or []
        if info.get("title") is None or info.get("post") is None or len(summaries) < 2 \
                or any(s.get("text") is None for s in summaries[:2]):
            dropped["missing_field"] += 1
        elif row["choice"] not in (0, 1):
            dropped["unknown_label"] += 1
        else:
            chosen, rejected = summaries[row["choice"]]["text"], summaries[1 - row["choice"]]["text"]
            prompt = f"TITLE: {info['title']}\n\nPOST: {info['post']}\n\nTL;DR:"
            candidates.append(([("user", prompt)], chosen, rejected, row["worker"]))
    pairs, final = finalize_counts(candidates)
    manifest, table = run_prepare("tldr-comparisons", tmp_path)
    check(manifest, pairs, dropped + final, 1771, {})
    assert manifest["group_sizes"]["user"]["groups"] == len({r["worker"] for r in rows}) == 30
    assert manifest["group_sizes"]["category"]["groups"] == len({r["info"]["subreddit"] for r in rows}) == 28
    assert sum(n >= 115 for n in Counter(r["worker"] for r in rows).values()) == 5
    assert Counter(r["confidence"] for r in table) == Counter(str(r["extra"]["confidence"]) for r in rows)
    assert all("SUBREDDIT" not in r["prompt"][0]["content"] for r in table)


# ----------------------------------------------------------------------------- HANNA


def test_hanna_ratings_become_attribute_pairs_split_by_prompt(tmp_path):
    rows = [row for f in sorted(shared("hanna").glob("*.json")) for row in json.loads(f.read_text(encoding="utf-8"))]
    stories = defaultdict(list)
    for row in rows:
        stories[row["prompt"]].append(row)
    dropped: Counter = Counter()
    candidates = []
    for prompt, group in stories.items():
        for a, b in itertools.combinations(group, 2):
            for attribute in ("relevance", "coherence", "empathy", "surprise", "engagement", "complexity"):
                # Each score is the mean of three 1-5 ratings: compare the sums, integers.
                gap = round(3 * a["scores"][attribute]) - round(3 * b["scores"][attribute])
                if gap == 0:
                    dropped["tied_rating"] += 1
                elif abs(gap) < 3:  # under one rating point (the default min_margin)
                    dropped["small_rating_gap"] += 1
                else:
                    chosen, rejected = (a, b) if gap > 0 else (b, a)
                    candidates.append(([("user", prompt)], chosen["story"], rejected["story"], attribute))
    pairs, final = finalize_counts(candidates)
    manifest, table = run_prepare("hanna", tmp_path)
    check(manifest, pairs, dropped + final, 13688, {"small_rating_gap": 13894, "tied_rating": 4098})
    assert len(rows) == 1056 and len(stories) == 96
    assert sum(manifest["pairs_by"]["attribute"].values()) == pairs
    splits_of_prompt = defaultdict(set)
    for r in table:
        bare = r["prompt"][-1]["content"]
        if r["split"] != "test":  # the criterion is appended in train and validation only
            assert bare.endswith("\n\n" + r["criterion"])
            bare = bare[: -len(r["criterion"]) - 2]
        assert bare in stories
        splits_of_prompt[bare].add(r["split"])
    assert all(len(s) == 1 for s in splits_of_prompt.values())  # no prompt in two splits
    assert {s for ss in splits_of_prompt.values() for s in ss} == {"train", "validation", "test"}


# ----------------------------------------------------------------------------- RMB


def test_rmb_pairwise_set_category_from_the_path(tmp_path):
    root = shared(BLOCKS["rmb"]["source"])
    files = sorted(root.rglob("*.json"))
    candidates = []
    categories = {}
    for f in files:
        parts = f.relative_to(root).parts  # Harmlessness/S1.json, Helpfulness/Chat/Discussion.json
        category = "/".join(parts[:-1])
        categories[category] = categories.get(category, 0)
        for row in json.loads(f.read_text(encoding="utf-8")):
            prompt = [(m["role"], m["content"]) for m in row["conversation_input"]]
            candidates.append((prompt, row["chosen"]["answer"], row["reject"]["answer"], None))
    pairs, final = finalize_counts(candidates)
    manifest, table = run_prepare("rmb", tmp_path)
    check(manifest, pairs, final, 14494, {"duplicate_pair": 28, "chosen_equals_rejected": 14, "empty_text": 7})
    assert len(candidates) == 14543 and len(files) == 46
    assert set(manifest["pairs_by"]["category"]) == set(categories) and len(categories) == 13
    assert {r["domain"] for r in table} == {f.stem for f in files}
    assert any(len(r["prompt"]) > 1 for r in table)  # multi-turn prompts stay message lists
