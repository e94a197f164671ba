"""Tests for the synthetic preference generators (pipeline/generators.py)."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from pipeline import generators as g
from pipeline.pairs import finalize

NAMES = list(g.GENERATORS)


@pytest.fixture(scope="module")
def default_rows() -> dict[str, list[dict]]:
    return {name: g.generate(name, seed=0) for name in NAMES}


def last_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip())[-1]


def bare_prompt(row: dict) -> str:
    return row["prompt"].split("\n\n")[0]


# --- shared properties -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_rows(name, default_rows):
    assert g.generate(name, seed=0) == default_rows[name]


@pytest.mark.parametrize("name", NAMES)
def test_different_seed_gives_different_rows(name, default_rows):
    other = g.generate(name, seed=1)
    assert other != default_rows[name]
    prompts0 = {r["prompt"] for r in default_rows[name]}
    prompts1 = {r["prompt"] for r in other}
    assert len(prompts0 & prompts1) < 0.5 * len(prompts0)


@pytest.mark.parametrize("name", NAMES)
def test_finalize_drops_nothing(name, default_rows):
    rows = default_rows[name]
    table, dropped = finalize(rows)
    assert sum(dropped.values()) == 0, dropped
    assert table.num_rows == len(rows)
    assert set(table.column("split").to_pylist()) == {"train", "validation", "test"}


@pytest.mark.parametrize("name", NAMES)
def test_texts_are_short(name, default_rows):
    for r in default_rows[name]:
        assert 6 <= len(r["prompt"].split()) <= 45
        for text in (r["chosen"], r["rejected"]):
            assert 6 <= len(text.split()) <= 40


def test_generate_reports_unknown_name_and_params():
    with pytest.raises(ValueError, match="available: categories, attributes, users"):
        g.generate("nope", seed=0)
    with pytest.raises(ValueError, match="n_prompt.*accepted: .*n_train_prompts"):
        g.generate("categories", seed=0, n_prompt=3)
    rows = g.generate("categories", seed=0, n_train_prompts=4, n_validation_prompts=0, n_test_prompts=0)
    assert len(rows) == 24  # 6 style pairs per train prompt


def test_invalid_parameters_raise():
    with pytest.raises(ValueError):
        g.categories(label_noise=1.5)
    with pytest.raises(ValueError, match="category_strength"):
        g.categories(category_strength=-0.1)
    with pytest.raises(ValueError):
        g.attributes(n_attributes=1)
    with pytest.raises(ValueError):
        g.users(n_users=3, users_per_prompt=5)
    with pytest.raises(ValueError):
        g.users(n_scorers=4)


def test_exhausted_grammar_raises_instead_of_repeating():
    with pytest.raises(ValueError, match="exhausted"):
        g.attributes(n_train_examples=6000, n_validation_examples=0, n_test_examples=0)


def test_style_of_recovers_every_style_from_text_and_final_sentence():
    rng = np.random.default_rng(0)
    for style, parts in g.STYLES.items():
        for body, closer in itertools.product(parts["bodies"], parts["closers"]):
            topic = g.TOPICS[rng.integers(len(g.TOPICS))]
            text = g._sentence(body, topic) + " " + g._sentence(closer, topic)
            assert g.style_of(text) == style, text
            assert g.style_of(last_sentence(text)) == style, text


# --- categories --------------------------------------------------------------------------


def test_categories_structure(default_rows):
    rows = default_rows["categories"]
    domains = defaultdict(set)
    for r in rows:
        domains[r["category"]].add(r["domain"])
    assert len(domains) >= 4
    assert all(len(d) >= 3 for d in domains.values())
    # the domain is a property of the prompt; no prompt text repeats across prompts
    per_split = Counter(r["split"] for r in rows)
    assert per_split == {"train": 6 * 400, "validation": 200, "test": 320}
    prompts = Counter(r["prompt"] for r in rows)
    assert len(prompts) == 400 + 200 + 320
    assert all(prompts[r["prompt"]] == (6 if r["split"] == "train" else 1) for r in rows)
    # a train prompt's 6 pairs are all pairs of its 4 responses: 4 sequences to featurize
    responses = defaultdict(set)
    for r in rows:
        responses[r["prompt"]] |= {r["chosen"], r["rejected"]}
    assert all(len(responses[r["prompt"]]) == (4 if r["split"] == "train" else 2) for r in rows)
    # each split follows SHP's composition (Table 7: 617/384/256/240 of 1497): by prompt,
    # train 165/103/68/64 of 400, validation 83/51/34/32 of 200, test 132/82/55/51 of 320
    for split, n_pairs, expected in [("train", 6, (165, 103, 68, 64)), ("validation", 1, (83, 51, 34, 32)),
                                     ("test", 1, (132, 82, 55, 51))]:
        cats = Counter(r["category"] for r in rows if r["split"] == split)
        assert tuple(cats[c] // n_pairs for c in ("Academic", "Professional", "Cooking", "Fiction")) == expected


def test_apportion_sums_exactly_and_follows_the_weights():
    assert g.apportion(1497, g.SHP_CATEGORY_COUNTS) == g.SHP_CATEGORY_COUNTS
    assert g.apportion(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}  # tie: key order
    assert g.apportion(5, {"a": 0, "b": 3}) == {"a": 0, "b": 5}
    assert g.apportion(0, {"a": 1, "b": 2}) == {"a": 0, "b": 0}


def test_categories_equal_weights_balance_every_split():
    equal = {c: 1 for c in g.DOMAINS}
    rows = g.categories(seed=0, n_train_prompts=40, n_validation_prompts=20, n_test_prompts=20,
                        category_weights=equal)
    for split, n in [("train", 6 * 10), ("validation", 5), ("test", 5)]:
        assert set(Counter(r["category"] for r in rows if r["split"] == split).values()) == {n}


@pytest.mark.parametrize("weights", [{"Academic": 1}, {**{c: 1 for c in g.DOMAINS}, "Poetry": 1},
                                     {c: 0 for c in g.DOMAINS}, {**{c: 1 for c in g.DOMAINS}, "Fiction": -1}])
def test_categories_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="category_weights"):
        g.categories(category_weights=weights)


def test_categories_responses_address_the_prompt_subject(default_rows):
    for r in default_rows["categories"]:
        subjects = [s for s in g.DOMAINS[r["category"]][r["domain"]] if s in r["prompt"]]
        assert subjects, r["prompt"]
        assert any(s in r["chosen"] and s in r["rejected"] for s in subjects)


def _style_pairs(rows):
    return [(r["category"], g.style_of(r["chosen"], g.CATEGORY_STYLES), g.style_of(r["rejected"], g.CATEGORY_STYLES))
            for r in rows]


def _agrees(ranking, chosen, rejected):
    return ranking.index(chosen) < ranking.index(rejected)


def _reversed_pairs(ranking, reference):
    return {frozenset((a, b)) for a, b in itertools.combinations(ranking, 2)
            if reference.index(a) > reference.index(b)}


def test_category_norms_put_the_favourite_first_and_deviate_equally():
    assert g.category_ranking(None) == g.GLOBAL_STYLE_RANKING
    deviations = []
    for category, favourite in g.PREFERRED_STYLE.items():
        ranking = g.category_ranking(category)
        assert sorted(ranking) == sorted(g.CATEGORY_STYLES) and ranking[0] == favourite
        deviations.append(_reversed_pairs(ranking, g.GLOBAL_STYLE_RANKING))
    # every category disagrees with the global ranking on 3 of the 6 pairs, each on its own 3
    assert [len(d) for d in deviations] == [3, 3, 3, 3]
    assert len(set(map(frozenset, deviations))) == 4
    assert len(set(g.PREFERRED_STYLE.values())) == 4


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_categories_labels_follow_the_chosen_ranking(strength):
    rows = g.categories(seed=1, n_train_prompts=40, n_validation_prompts=20, n_test_prompts=20,
                        category_strength=strength, label_noise=0.0)
    pairs = _style_pairs(rows)
    assert all(c is not None and j is not None and c != j for _, c, j in pairs)
    for cat, c, j in pairs:
        assert _agrees(g.category_ranking(cat if strength == 1.0 else None), c, j)
    # the final sentence alone carries the style (the model reads the last token)
    for r, (_, c, j) in zip(rows, pairs):
        assert g.style_of(last_sentence(r["chosen"]), g.CATEGORY_STYLES) == c
        assert g.style_of(last_sentence(r["rejected"]), g.CATEGORY_STYLES) == j


def test_categories_strength_sets_the_share_of_category_driven_askers():
    rows = g.categories(seed=0, category_strength=0.6, label_noise=0.0)
    # per train prompt: does it follow its category's ranking or the global one? The two
    # disagree on 3 of a prompt's 6 pairs, so its 6 pairs always tell them apart.
    by_prompt = defaultdict(list)
    for r, p in zip(rows, _style_pairs(rows)):
        if r["split"] == "train" and r["category"] == "Fiction":
            by_prompt[r["prompt"]].append(p)
    follows = [all(_agrees(g.category_ranking("Fiction"), c, j) for _, c, j in ps) for ps in by_prompt.values()]
    assert all(f or all(_agrees(g.GLOBAL_STYLE_RANKING, c, j) for _, c, j in ps)
               for f, ps in zip(follows, by_prompt.values()))
    assert abs(np.mean(follows) - 0.6) < 0.12
    # with full strength, no single global ranking fits: routing on the category is needed
    strong = [p for r, p in zip(g.categories(seed=0, category_strength=1.0, label_noise=0.0),
                                _style_pairs(g.categories(seed=0, category_strength=1.0, label_noise=0.0)))
              if r["split"] == "train"]
    best = max(np.mean([_agrees(order, c, j) for _, c, j in strong])
               for order in itertools.permutations(g.CATEGORY_STYLES))
    assert best < 0.8


def test_categories_label_noise_flips_about_the_right_fraction():
    clean = g.categories(seed=0, label_noise=0.0)
    noisy = g.categories(seed=0, label_noise=0.3)
    assert [r["prompt"] for r in noisy] == [r["prompt"] for r in clean]
    flipped = 0
    for a, b in zip(clean, noisy):
        assert {a["chosen"], a["rejected"]} == {b["chosen"], b["rejected"]}
        flipped += a["chosen"] != b["chosen"]
    assert abs(flipped / len(clean) - 0.3) < 0.05


# --- attributes --------------------------------------------------------------------------


def test_attributes_structure_and_criterion_placement(default_rows):
    rows = default_rows["attributes"]
    assert len({r["attribute"] for r in rows}) >= 10
    assert Counter(r["split"] for r in rows) == {"train": 600, "validation": 200, "test": 960}
    for r in rows:
        assert r["criterion"] and r["attribute"] in g.ATTRIBUTE_STYLE
        if r["split"] == "test":
            assert "\n\n" not in r["prompt"] and r["criterion"] not in r["prompt"]
        else:
            assert r["prompt"].endswith("\n\n" + r["criterion"])
        style = g.ATTRIBUTE_STYLE[r["attribute"]]
        assert g.style_of(r["chosen"]) == style
        assert g.style_of(last_sentence(r["chosen"])) == style
        assert g.style_of(r["rejected"]) != style


def test_attributes_each_example_is_two_reversed_rows_with_a_unique_prompt(default_rows):
    rows = default_rows["attributes"]
    assert len(rows) % 2 == 0
    bare = [bare_prompt(r) for r in rows[0::2]]
    assert len(set(bare)) == len(bare)  # no request repeats across examples or splits
    for a, b in zip(rows[0::2], rows[1::2]):
        assert bare_prompt(a) == bare_prompt(b) and a["split"] == b["split"]
        assert (a["chosen"], a["rejected"]) == (b["rejected"], b["chosen"])
        assert a["attribute"] != b["attribute"]


def test_attributes_are_balanced_within_each_split(default_rows):
    for split in ("train", "validation", "test"):
        counts = Counter(r["attribute"] for r in default_rows["attributes"] if r["split"] == split)
        assert len(counts) == 12
        assert max(counts.values()) <= 1.5 * min(counts.values()), (split, counts)


# --- users -------------------------------------------------------------------------------


def test_users_pairs_are_best_vs_worst_under_dirichlet_weights(default_rows):
    rows = default_rows["users"]
    world = g._users_world(seed=0, n_prompts=200, n_responses=8, n_scorers=6, n_users=10, dirichlet_alpha=0.3)
    assert len(world["scorers"]) >= 5 and world["scores"].shape == (200, 8, 6)
    np.testing.assert_allclose(world["weights"].sum(axis=1), 1.0)
    assert (world["weights"] >= 0).all()
    index = {p: i for i, p in enumerate(world["prompts"])}
    assert len(index) == 200  # prompts never repeat
    users_of = defaultdict(list)
    for r in rows:
        p, u = index[r["prompt"]], int(r["user"][1:])
        users_of[p].append(r["user"])
        utility = world["scores"][p] @ world["weights"][u]
        assert r["chosen"] == world["responses"][p][int(np.argmax(utility))]
        assert r["rejected"] == world["responses"][p][int(np.argmin(utility))]
    assert all(len(v) == len(set(v)) == 5 for v in users_of.values())
    assert {r["user"] for r in rows} <= {f"u{i:02d}" for i in range(10)}


def test_users_split_by_prompt(default_rows):
    rows = default_rows["users"]
    split_of = defaultdict(set)
    for r in rows:
        split_of[r["prompt"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    n = Counter(next(iter(s)) for s in split_of.values())
    assert n == {"train": 120, "validation": 30, "test": 50}


def test_users_responses_are_marked_by_their_dominant_qualities():
    world = g._users_world(seed=3, n_prompts=20, n_responses=8, n_scorers=6, n_users=4, dirichlet_alpha=0.3)
    for p in range(20):
        for r, text in enumerate(world["responses"][p]):
            primary = world["scorers"][int(np.argmax(world["scores"][p, r]))]
            markers = set(g._words(text)) & g.STYLE_MARKERS[g.SCORERS[primary]]
            assert markers, (primary, text)
