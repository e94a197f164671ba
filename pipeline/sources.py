"""Turn a configured data source into raw preference rows for :func:`pipeline.pairs.finalize`.

A source is one of

* ``builtin:<name>``: rows from :mod:`pipeline.generators` (the embedded default data,
  because the hub cannot be reached here);
* local data as published (:mod:`pipeline.local_files`): a ``.jsonl`` / ``.json`` (JSON
  lines or one array) / ``.parquet`` / ``.csv`` file, optionally ``.gz`` / ``.bz2`` /
  ``.xz`` / ``.zst`` compressed, or a directory or glob of such files, with parts of each
  file's path as columns (``path_pattern``). It is either in a known dataset's real
  schema (``adapter=...``) or in any schema with a generic column mapping
  (``columns=...``);
* anything else is a Hugging Face hub id, loaded with ``datasets.load_dataset(id)`` (all
  splits) and turned into pairs by the adapter for that id (see :data:`KNOWN_HUB_IDS`).

A ``datasets.<name>`` block of ``params.yaml`` holds the keyword arguments of
:func:`load_rows` (plus ``source``, ``params`` for the builtin generators, and
``min_group_size`` for :func:`pipeline.prepare.prepare`)::

    source: <builtin:name | hub id | file | directory | glob>
    adapter: <key of ADAPTERS>     # the source is in that dataset's published schema, or
    columns: {<canonical>: <source column>}   # the generic mapping (not both)
    labels: {<label value>: a | b | tie}      # generic: two responses and a label
    min_margin: <number>           # ratings layouts: smallest rating gap that makes a pair
    split: <train | validation | test | adapt>  # local files: the split of every row
    split_fractions: {train: 0.8, validation: 0.1, test: 0.1}  # for rows without a split
    split_by: pair | prompt        # generic: what a drawn split hashes (default pair)
    path_pattern: <regex with named groups>   # parts of each file's path -> columns
    limits: {<split>: <max pairs>}
    options: {<adapter option>: <value>}      # auto-j: scenario_groups
    seed: 0
    revision: <hub commit>

The generic mapping (``columns``) maps canonical names to source columns; a source
column may be a dotted path into nested data, by field name or list index
(``info.post``, ``summaries.0.text``; a top-level column whose name holds a dot wins).
Canonical names that exist in the source map to themselves. The layout follows from
the names used:

* **pairs**: ``prompt``, ``chosen``, ``rejected``. Any of the three may hold a message
  list. Without a ``prompt`` column, ``chosen`` and ``rejected`` must be whole
  conversations (message lists, or HH-RLHF ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
  transcripts): the final assistant turn is the response and the shared history the
  prompt (``prompt_mismatch`` when the histories differ). With one, a conversation's
  history must be the prompt.
* **labels**: ``response_a``, ``response_b``, ``label`` and ``labels=`` mapping each label
  value to ``a``, ``b`` or ``tie`` (SHP, Auto-J, Chatbot Arena, MT-Bench judgments).
  Ties and label values not in ``labels`` are drops (``tie``, ``unknown_label``).
* **ratings**: ``prompt``, ``response``, ``rating`` (one column; or a list of columns, or
  ``{attribute: column}``, each then an ``attribute``): one row per rated response; every two responses of one
  prompt (and user, and split, where mapped) whose ratings differ by at least
  ``min_margin`` (default: any difference) make a pair, the higher rated chosen.
  Smaller gaps are drops (``tied_rating``, ``small_rating_gap``). The split is drawn
  by prompt.

Metadata (``category``, ``domain``, ``attribute``, ``criterion``, ``user``,
``confidence``) and ``split`` map the same way in every layout. A path that does not
resolve in a row (a missing nested field, a list too short) drops the row as
``missing_field``; for metadata it gives null. A name mapped to null ignores the column
of that name (``split: null``: draw splits instead of reading a publisher's own, e.g.
TL;DR's valid1/valid2; ``prompt: null``: take the prompt from the conversations).

Every adapter follows the paper's preparation (Appendix A and H of
``sparse-moe-reward-models-paper.txt``), or the publisher's own definitions for the real
datasets the paper does not use, in one small function. The columns it needs are
checked against the dataset's features *before* any row is read, so a renamed or
mistyped column fails at once with a :class:`~pipeline.pairs.SchemaError` that names it
(and the file) and lists what exists. Row-level problems are left to
:func:`~pipeline.pairs.finalize`, or yielded as ``{"_drop": reason}`` rows for
adapter-specific filters, so that every rejected row is counted. Invalid options raise
:class:`ConfigError`; both are :class:`~pipeline.errors.UserError`, one line, no traceback.

Rows that are *not* yielded without being counted, on purpose and only these:

* SHP validation/test pairs beyond the one sampled per post (the paper evaluates on one
  pair per post);
* rows over a per-split cap in ``limits`` (a sample size, not bad data).

A split comes from the source when it has one (hub split, a ``split`` column, or
``split=``; the TL;DR adapter ignores the publisher's valid1/valid2). Where it must be drawn (700K, RPR train -> train/validation, files without
one) it is decided by a seeded hash of the row's content, never by row order or a global
RNG stream, so the same row lands in the same split on every machine and run, however
the source is ordered or extended. Where one prompt has several pairs (ratings, HANNA,
RMB, Auto-J, TL;DR's posts; ``split_by: prompt``) the hash is of the prompt, so that no
prompt is in two splits.
PersonalLLM keeps its hub splits (train/test); which of its pairs form the adaptation
sets is left to the stage that samples them.
"""

from __future__ import annotations

import ast
import hashlib
import heapq
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import polars as pl

from pipeline import local_files
from pipeline.pairs import EMPTY_TEXT, METADATA_COLUMNS, SPLITS, SchemaError, as_messages, pair_id, require_columns
from pipeline.pairs import row_problem  # the exact test finalize() applies, so caps count usable pairs
from pipeline.errors import UserError

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
CANONICAL_COLUMNS = ("prompt", "chosen", "rejected", "split", *METADATA_COLUMNS)
LABEL_INPUTS = ("response_a", "response_b", "label")
RATING_INPUTS = ("response", "rating")
MAPPABLE_COLUMNS = (*CANONICAL_COLUMNS, *LABEL_INPUTS, *RATING_INPUTS)
LAYOUT_INPUTS = {"pairs": ("prompt", "chosen", "rejected"),
                 "labels": ("prompt", "response_a", "response_b", "label"),
                 "ratings": ("prompt", "response", "rating")}
LABEL_MEANINGS = ("a", "b", "tie")
SPLIT_BY = ("pair", "prompt")
RATING_TOLERANCE = 1e-9  # ratings are often means (HANNA: thirds): 3.67 - 2.67 must reach 1.0

# Drop reasons emitted by adapters and layouts (finalize() adds its own).
SHP_LOW_SCORE = "shp_low_score"
SHP_EXCLUDED_DOMAIN = "shp_excluded_domain"
SHP_UNKNOWN_DOMAIN = "shp_unknown_domain"
SHP_BAD_LABEL = "shp_bad_label"
RPR_MISSING_CRITERION = "rpr_missing_criterion"
PROMPT_MISMATCH = "prompt_mismatch"
NO_FINAL_ASSISTANT_TURN = "no_final_assistant_turn"
UNPARSEABLE_TRANSCRIPT = "unparseable_transcript"
NO_PROMPT = "no_prompt"  # no prompt column, and the responses carry no history either
PERSONALLLM_MISSING_SCORE = "personalllm_missing_score"
PERSONALLLM_TIED_SCORES = "personalllm_tied_scores"
MISSING_FIELD = "missing_field"  # a column path does not resolve in this row
TIE = "tie"  # the label says neither response is better
UNKNOWN_LABEL = "unknown_label"  # a label value the mapping does not name
MISSING_RATING = "missing_rating"  # one rating of one response (per attribute)
TIED_RATING = "tied_rating"  # two responses of one prompt rated the same (per attribute)
SMALL_RATING_GAP = "small_rating_gap"  # rated differently, but by less than min_margin
AUTO_J_UNKNOWN_SCENARIO = "auto_j_unknown_scenario"

# SHP (paper App. A, Table 7): keep both responses with more than 3 upvotes; the two
# excluded subreddits carry prefixes that leak the domain; 16 domains -> 4 categories.
SHP_MIN_SCORE_EXCLUSIVE = 3
SHP_EXCLUDED_DOMAINS = frozenset({"explainlikeimfive", "changemyview"})
SHP_CATEGORIES: dict[str, str] = {
    **dict.fromkeys(
        ["askphysics", "askscience", "askengineers", "askhistorians", "askphilosophy",
         "asksocialscience", "askanthropology"], "academic"),
    **dict.fromkeys(
        ["askdocs", "askvet", "askhr", "legaladvice", "askacademia", "askcarguys"], "professional"),
    **dict.fromkeys(["askbaking", "askculinary"], "cooking"),
    "asksciencefiction": "fiction",
}

# RPR ships train (10167) and test (1000) only. The paper's 18300/2034 train/validation
# examples are its train split divided about 90/10 by row (each row gives two examples).
RPR_VALIDATION_FRACTION = 0.1

# PersonalLLM (paper App. H): users are Dirichlet(0.3) weights over its 10 reward models.
# Column suffixes as in the dataset (`response_<i>_<model>`), verified against public
# code that reads namkoong-lab/PersonalLLM.
PERSONALLLM_REWARD_MODELS = (
    "gemma_2b", "gemma_7b", "mistral_raft", "mistral_ray", "mistral_weqweasdas",
    "llama3_sfairx", "oasst_deberta_v3", "beaver_7b", "oasst_pythia_7b", "oasst_pythia_1b",
)
PERSONALLLM_RESPONSES = 8
PERSONALLLM_USERS = 5
PERSONALLLM_ALPHA = 0.3

# Auto-J (GAIR-NLP/auto-j, pairwise test set): label 0 = "response 1" better, 1 =
# "response 2" better, 2 = tie. Its 58 scenarios fall in 8 groups, published as the
# `scenario_group` dict of codes/leaderboard/utils_constants.py, shipped beside the data.
AUTO_J_LABELS = {0: "a", 1: "b", 2: "tie"}
AUTO_J_GROUPS_FILE = "utils_constants.py"
AUTO_J_GROUPS_NAME = "scenario_group"

# HANNA (Chhun et al. 2022): six attributes rated 1-5 by three annotators (the mean is
# published). The criterion appended to train/validation prompts is the attribute's
# definition in the HANNA paper. A pair needs a gap of a whole rating point by default:
# a mean of three ratings moves in thirds, and a third is one annotator's one-step shift.
HANNA_CRITERIA = {
    "relevance": "Relevance: how well the story matches its prompt.",
    "coherence": "Coherence: how much the story makes sense.",
    "empathy": "Empathy: how well the reader understood the characters' emotions.",
    "surprise": "Surprise: how surprising the end of the story was.",
    "engagement": "Engagement: how much the reader engaged with the story.",
    "complexity": "Complexity: how elaborate the story is.",
}
HANNA_MIN_MARGIN = 1.0

# RMB (Zhou-Zoey/RMB-Reward-Model-Benchmark, Pairwise_set): the folders below
# Pairwise_set are the categories (Harmlessness, or Helpfulness/<one of 12>), the file
# name the sub-category.
RMB_PATH_PATTERN = r"(?:^|/)(?P<category>Harmlessness|Helpfulness/[^/]+)/(?P<domain>[^/]+?)\.json(?:\.\w+)?$"


class SourceUnavailableError(UserError, ConnectionError):
    """The Hugging Face hub could not be reached for a hub-id source."""


class ConfigError(UserError, ValueError):
    """An invalid option of a ``datasets.<name>`` block (unknown adapter, bad split, ...)."""


# --------------------------------------------------------------------------------------
# Column type checks (on datasets features, before any row is read)
# --------------------------------------------------------------------------------------

_STRING_DTYPES = {"string", "large_string", "null"}


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in _STRING_DTYPES


def _is_int(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and (
        feature.dtype == "null" or feature.dtype.startswith(("int", "uint"))
    )


def _is_number(feature: Any) -> bool:
    return _is_int(feature) or (isinstance(feature, datasets.Value) and feature.dtype.startswith("float"))


# datasets >= 4 has List/LargeList; datasets 3 describes a list of structs as a plain [ {...} ].
_LIST_FEATURES = tuple(getattr(datasets, name) for name in ("List", "LargeList", "Sequence")
                       if isinstance(getattr(datasets, name, None), type))


def _list_item(feature: Any) -> Any:
    """The element feature of a list feature, None for anything else."""
    if isinstance(feature, list) and len(feature) == 1:
        return feature[0]
    if _LIST_FEATURES and isinstance(feature, _LIST_FEATURES):
        return feature.feature
    return None


def _is_json(feature: Any) -> bool:
    # datasets >= 5 types a JSON column mixing kinds as Json; its rows are checked one by one.
    json_feature = getattr(datasets, "Json", None)
    return json_feature is not None and isinstance(feature, json_feature)


def _is_messages(feature: Any) -> bool:
    inner = _list_item(feature)
    return isinstance(inner, Mapping) and _is_text(inner.get("role")) and _is_text(inner.get("content"))


def _is_text_or_messages(feature: Any) -> bool:
    return _is_text(feature) or _is_messages(feature) or _is_json(feature)


def _is_scalar(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) or _is_json(feature)


TEXT = ("text", _is_text)
INT = ("an integer", _is_int)
NUMBER = ("a number", _is_number)
MESSAGES = ("a list of {role, content} messages", _is_messages)
PROMPT = ("text or a list of {role, content} messages", _is_text_or_messages)
SCALAR = ("a scalar value", _is_scalar)

ColumnKind = tuple[str, Callable[[Any], bool]]


def _describe(features: datasets.Features) -> str:
    return ", ".join(f"{name!r} ({_feature_name(f)})" for name, f in features.items()) or "(none)"


def _feature_name(feature: Any) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if _is_messages(feature):
        return "list<{role, content}>"
    if isinstance(feature, Mapping):
        return "struct{" + ", ".join(feature) + "}"
    if _list_item(feature) is not None:
        return f"list<{_feature_name(_list_item(feature))}>"
    return type(feature).__name__


_INDEX = re.compile(r"-?\d+")


def _head(features: Mapping[str, Any], path: str) -> str:
    """The top-level column a column path starts in ('info.post' -> 'info')."""
    return path if path in features else path.split(".")[0]


def feature_at(features: Mapping[str, Any], path: str, source: str) -> Any:
    """The feature at a column path: a column ('response 1'), a struct field ('info.post')
    or a list element ('summaries.0.text'). SchemaError naming what is missing."""
    if path in features:
        return features[path]
    head, *rest = path.split(".")
    require_columns(features.keys(), [head], source)
    feature, walked = features[head], head
    for part in rest:
        item = _list_item(feature)
        if _is_json(feature):
            return feature
        if item is not None:
            if not _INDEX.fullmatch(part):
                raise SchemaError(f"{source}: column path {path!r}: {walked!r} is a list; "
                                  f"index it by position ({walked}.0), not by {part!r}")
            feature = item
        elif isinstance(feature, Mapping):
            if part not in feature:
                raise SchemaError(f"{source}: column path {path!r}: {walked!r} has no field {part!r}; "
                                  f"its fields: {', '.join(repr(k) for k in feature) or '(none)'}")
            feature = feature[part]
        else:
            raise SchemaError(f"{source}: column path {path!r}: {walked!r} is "
                              f"{_feature_name(feature)}, which has no field {part!r}")
        walked = f"{walked}.{part}"
    return feature


def check_schema(features: datasets.Features, required: Mapping[str, ColumnKind], source: str,
                 aliases: Mapping[str, str] | None = None, notes: Mapping[str, str] | None = None) -> None:
    """Fail before reading rows if a column (or column path) is missing or has the wrong type.

    ``aliases`` maps a file column to the canonical name it stands for, only to make
    the message say why the column is needed; ``notes`` explains columns a file reader
    had to read as JSON text.
    """
    require_columns(features.keys(), dict.fromkeys(_head(features, p) for p in required), source)
    for column, (expected, ok) in required.items():
        note = (notes or {}).get(_head(features, column))
        if note and column == _head(features, column):  # typed row by row: a bad value is a counted drop
            continue
        try:
            feature = feature_at(features, column, source)
        except SchemaError as err:
            raise (SchemaError(f"{err} ({note})") if note else err) from None
        if not ok(feature):
            role = f" (mapped to {aliases[column]!r})" if aliases and column in aliases else ""
            raise SchemaError(
                f"{source}: column {column!r}{role} must be {expected}, found "
                f"{_feature_name(feature)}; available columns: {_describe(features)}"
                + (f" ({note})" if note else "")
            )


_MISSING = object()  # a column path that does not resolve in a row


def path_getter(path: str, features: Mapping[str, Any] | None = None) -> Callable[[Mapping[str, Any]], Any]:
    """row -> the value at a column path. A top-level column gives its value (None
    included); a nested path gives _MISSING where a field is absent or null or a list is
    too short."""
    if (features is not None and path in features) or "." not in path:
        return lambda row: row.get(path)
    parts: list[str | int] = [int(p) if _INDEX.fullmatch(p) else p for p in path.split(".")]

    def get(row: Mapping[str, Any]) -> Any:
        value: Any = row
        for part in parts:
            if isinstance(value, (list, tuple)) and isinstance(part, int):
                if not -len(value) <= part < len(value):
                    return _MISSING
                value = value[part]
            elif isinstance(value, Mapping) and str(part) in value:
                value = value[str(part)]
            else:
                return _MISSING
            if value is None:
                return _MISSING
        return value

    return get


# --------------------------------------------------------------------------------------
# Seeded, content-keyed randomness
# --------------------------------------------------------------------------------------

SplitSpec = str | dict[str, float] | None  # a fixed split, or fractions to draw one from


def _hash_int(seed: int, *parts: Any) -> int:
    h = hashlib.sha256(str(seed).encode())
    for part in parts:
        h.update(b"\x1f")
        text = part if isinstance(part, str) else json.dumps(part, sort_keys=True, default=str)
        h.update(text.encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "big")


def _unit(seed: int, *parts: Any) -> float:
    """A uniform number in [0, 1) determined by the seed and the content alone."""
    return _hash_int(seed, *parts) / 2**64


def _draw_split(spec: SplitSpec, seed: int, *key: Any) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    u = _unit(seed, "split", *key)
    acc = 0.0
    name = None
    for name, fraction in spec.items():
        acc += fraction
        if u < acc:
            return name
    return name  # rounding: the last split


def _alias(split: Any) -> Any:
    return SPLIT_ALIASES.get(split, split) if isinstance(split, str) else split


def _normalize_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    unknown = [s for s in fractions if s not in SPLITS]
    if unknown:
        raise ConfigError(f"split_fractions: unknown split(s) {unknown}; use {list(SPLITS)}")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError(f"split_fractions must be non-negative and sum to > 0, got {dict(fractions)}")
    total = sum(fractions.values())
    return {s: f / total for s, f in fractions.items() if f > 0}


def _prompt_key(prompt: Any) -> Any:
    """A prompt as hashable content: text and its one-message form hash alike."""
    try:
        return as_messages(prompt)
    except TypeError:
        return repr(prompt)


def _pair_key(row: Mapping[str, Any]) -> tuple:
    try:
        prompt: Any = as_messages(row.get("prompt"))
    except TypeError:
        prompt = repr(row.get("prompt"))
    return (prompt, row.get("chosen"), row.get("rejected"), row.get("attribute"), row.get("user"))


def apply_limits(rows: Iterable[dict], limits: Mapping[str, int] | None, seed: int) -> Iterator[dict]:
    """Keep at most ``limits[split]`` usable pairs of each capped split: a seeded sample.

    The pairs kept are those with the smallest seeded hash of their pair id, so the sample
    does not depend on row order and memory stays O(cap). Excess rows are not bad data
    and are not counted as drops: a cap is a sample size (the paper's 36000/4000/...).
    Rows that ``finalize`` will reject (and ``_drop`` rows, and splits without a cap) pass
    straight through, uncapped, so that they are counted and the cap is met by usable
    pairs; a duplicate of a kept pair is yielded with it so that ``finalize`` counts it.
    Capped rows follow at the end, in source order.
    """
    if not limits:
        yield from rows
        return
    heaps: dict[str, list[tuple[int, int, str]]] = {s: [] for s in limits}
    kept: dict[str, list[dict]] = {}  # pair id -> [row, *duplicates] currently kept
    order: dict[str, int] = {}
    for idx, row in enumerate(rows):
        split = row.get("split")
        if "_drop" in row or split not in heaps:
            yield row
            continue
        reason, messages = row_problem(row)
        if reason is not None:
            yield row
            continue
        meta = {k: (None if row.get(k) is None else str(row[k])) for k in METADATA_COLUMNS}
        pid = pair_id(messages, row["chosen"], row["rejected"], meta)
        if pid in kept:
            kept[pid].append(row)
            continue
        item = (-_hash_int(seed, "limit", pid), idx, pid)
        heap = heaps[split]
        if len(heap) < limits[split]:
            heapq.heappush(heap, item)
        elif heap and item[:2] > heap[0][:2]:
            evicted = heapq.heapreplace(heap, item)
            del kept[evicted[2]], order[evicted[2]]
        else:
            continue
        kept[pid], order[pid] = [row], idx
    for pid in sorted(kept, key=order.__getitem__):
        yield from kept[pid]


# --------------------------------------------------------------------------------------
# Adapters: one small function per dataset, each a generator over (row, split spec)
# --------------------------------------------------------------------------------------

Records = Iterable[tuple[dict, SplitSpec]]
Options = Mapping[str, Any]  # an adapter's options: its defaults, the block's `options`, and `source`


def _shp_domain(raw: str) -> tuple[str, str | None]:
    """'askculinary_train' -> ('askculinary', 'train'); a plain domain has no split."""
    base, _, suffix = raw.rpartition("_")
    if base and _alias(suffix) in SPLITS:
        return base, _alias(suffix)
    return raw, None


def adapt_shp(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """stanfordnlp/SHP -> pairs, as in the paper's App. A.

    Both responses need more than 3 upvotes; explainlikeimfive and changemyview are
    excluded; the 16 other domains map to 4 categories (Table 7). For validation and
    test only one pair per post is kept (a seeded choice among the pairs that passed
    the filters), the others are not yielded. The domain suffix (``askculinary_train``)
    gives the split when the source does not.
    """
    per_post: dict[tuple[str, Any], tuple[int, int, dict]] = {}
    for idx, (row, spec) in enumerate(records):
        domain, domain_split = _shp_domain(row["domain"] or "")
        if domain in SHP_EXCLUDED_DOMAINS:
            yield {"_drop": SHP_EXCLUDED_DOMAIN}
            continue
        if domain not in SHP_CATEGORIES:
            yield {"_drop": SHP_UNKNOWN_DOMAIN}
            continue
        scores = (row["score_A"], row["score_B"])
        if any(s is None or s <= SHP_MIN_SCORE_EXCLUSIVE for s in scores):
            yield {"_drop": SHP_LOW_SCORE}
            continue
        if row["labels"] not in (0, 1):
            yield {"_drop": SHP_BAD_LABEL}
            continue
        a, b = row["human_ref_A"], row["human_ref_B"]
        chosen, rejected = (a, b) if row["labels"] == 1 else (b, a)
        if isinstance(spec, dict) and domain_split is not None:
            spec = domain_split
        split = _draw_split(spec, seed, row["post_id"], a, b)
        out = {"prompt": row["history"], "chosen": chosen, "rejected": rejected, "split": split,
               "category": SHP_CATEGORIES[domain], "domain": domain}
        if split not in ("validation", "test"):
            yield out
            continue
        key = _hash_int(seed, "shp-post", row["post_id"], a, b)
        slot = (split, row["post_id"])
        if slot not in per_post or (key, idx) < per_post[slot][:2]:
            per_post[slot] = (key, idx, out)
    for _, _, out in sorted(per_post.values(), key=lambda item: item[1]):
        yield out


def adapt_rpr(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """microsoft/rpr -> two pairs per row, as in the paper's App. A.

    ``response_a`` is preferred under ``criteria_x`` and ``response_b`` under
    ``criteria_y``. For training and validation the criterion is appended to the prompt
    (attribute-conditioned preferences); test keeps the bare prompt, because steering and
    personalization are evaluated without the criterion in the input. Both examples of a
    row always share a split.
    """
    for row, spec in records:
        a, b = row["response_a"], row["response_b"]
        split = _draw_split(spec, seed, row["prompt"], a, b)
        for chosen, rejected, attribute, criterion in (
            (a, b, row["category_x"], row["criteria_x"]),
            (b, a, row["category_y"], row["criteria_y"]),
        ):
            if not isinstance(criterion, str) or not criterion.strip():
                yield {"_drop": RPR_MISSING_CRITERION}
                continue
            prompt = row["prompt"]
            if split != "test" and isinstance(prompt, str):
                prompt = f"{prompt}\n\n{criterion}"
            yield {"prompt": prompt, "chosen": chosen, "rejected": rejected, "split": split,
                   "attribute": attribute, "criterion": criterion}


def _turns(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m.get("role"), "content": m.get("content")} for m in messages]


def adapt_preference_700k(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """hendrydong/preference_700K -> pairs: the shared history is the prompt.

    ``chosen`` and ``rejected`` are whole conversations; both must end in an assistant
    turn and share everything before it. The hub has only a ``train`` split; the paper
    samples 36000/4000/5000 at random, done here by a seeded content-hash split (default
    fractions 0.8/0.1/0.1) followed by the default per-split caps in ``limits``.
    """
    for row, spec in records:
        chosen, rejected = row["chosen"] or [], row["rejected"] or []
        if not chosen or not rejected or any(m[-1].get("role") != "assistant" for m in (chosen, rejected)):
            yield {"_drop": NO_FINAL_ASSISTANT_TURN}
            continue
        prompt = _turns(chosen[:-1])
        if prompt != _turns(rejected[:-1]):
            yield {"_drop": PROMPT_MISMATCH}
            continue
        split = _draw_split(spec, seed, _turns(chosen), _turns(rejected))
        yield {"prompt": prompt, "chosen": chosen[-1].get("content"),
               "rejected": rejected[-1].get("content"), "split": split}


def personalllm_users(seed: int, n_users: int = PERSONALLLM_USERS,
                      alpha: float = PERSONALLLM_ALPHA) -> np.ndarray:
    """The simulated users, shape (n_users, 10): Dirichlet(alpha) weight vectors over the
    10 reward models (paper App. H), drawn once per seed so every split sees the same users."""
    return np.random.default_rng(seed).dirichlet([alpha] * len(PERSONALLLM_REWARD_MODELS), size=n_users)


def adapt_personalllm(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """namkoong-lab/PersonalLLM -> one pair per (prompt, user): best vs worst response
    under the user's weighted reward-model score (paper App. H). Scores are used raw, as
    in the public code of the works the paper follows."""
    users = personalllm_users(seed)
    for row, spec in records:
        responses = [row[f"response_{i}"] for i in range(1, PERSONALLLM_RESPONSES + 1)]
        scores = [[row[f"response_{i}_{m}"] for m in PERSONALLLM_REWARD_MODELS]
                  for i in range(1, PERSONALLLM_RESPONSES + 1)]
        if any(s is None for r in scores for s in r):
            for _ in users:
                yield {"_drop": PERSONALLLM_MISSING_SCORE}
            continue
        split = _draw_split(spec, seed, row["prompt"], responses)
        utilities = np.asarray(scores, dtype=float) @ users.T  # (responses, users)
        for u in range(len(users)):
            best, worst = int(np.argmax(utilities[:, u])), int(np.argmin(utilities[:, u]))
            if utilities[best, u] == utilities[worst, u]:
                yield {"_drop": PERSONALLLM_TIED_SCORES}
                continue
            yield {"prompt": row["prompt"], "chosen": responses[best], "rejected": responses[worst],
                   "split": split, "user": f"user_{u + 1}"}


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: Any) -> list[dict[str, str]] | None:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages; None if it is not such a
    transcript or does not end with an assistant turn after at least one other turn."""
    if not isinstance(text, str):
        return None
    parts = _HH_TURN.split(text)
    if len(parts) < 5 or parts[0].strip():
        return None
    messages = [{"role": _HH_ROLES[role], "content": content.strip()}
                for role, content in zip(parts[1::2], parts[2::2])]
    return messages if messages[-1]["role"] == "assistant" else None


def adapt_hh_rlhf(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """Anthropic/hh-rlhf -> pairs: whole transcripts are parsed into turns; the turns
    before the final assistant turn are the prompt and must agree between the two.
    The published files (``helpful-base/test.jsonl.gz``...) are read as they are."""
    for row, spec in records:
        chosen, rejected = parse_hh_transcript(row["chosen"]), parse_hh_transcript(row["rejected"])
        if chosen is None or rejected is None:
            yield {"_drop": UNPARSEABLE_TRANSCRIPT}
            continue
        if chosen[:-1] != rejected[:-1]:
            yield {"_drop": PROMPT_MISMATCH}
            continue
        split = _draw_split(spec, seed, row["chosen"], row["rejected"])
        yield {"prompt": chosen[:-1], "chosen": chosen[-1]["content"],
               "rejected": rejected[-1]["content"], "split": split}


def _beside_source(source: str, name: str) -> Path:
    """A file shipped with the data: in the source directory, or beside the source file
    (for a glob, in the folder before its first wildcard)."""
    base = re.split(r"[*?\[]", source, maxsplit=1)[0]
    path = Path(base).expanduser()
    if base != source:  # a glob
        return (path if base.endswith("/") else path.parent) / name
    return (path if path.is_dir() else path.parent) / name


def _invert_groups(groups: Any, where: str) -> dict[str, str]:
    """{group: [scenario, ...]} -> {scenario: group}."""
    if not isinstance(groups, Mapping) or not all(
            isinstance(g, str) and isinstance(s, (list, tuple)) and all(isinstance(x, str) for x in s)
            for g, s in groups.items()):
        raise SchemaError(f"{where} must map each group name to a list of scenario names")
    out: dict[str, str] = {}
    for group, scenarios in groups.items():
        for scenario in scenarios:
            if out.get(scenario, group) != group:
                raise SchemaError(f"{where}: scenario {scenario!r} is in two groups ({out[scenario]!r}, {group!r})")
            out[scenario] = group
    return out


def read_scenario_groups(path: str | Path) -> dict[str, str]:
    """scenario -> group, from Auto-J's ``utils_constants.py`` read as DATA: the source is
    parsed (``ast``) and only the ``scenario_group = {...}`` assignment is evaluated, as a
    literal. The file is never imported or executed."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(
            f"{path}: Auto-J's scenario groups file is not there. It ships with the data (GAIR-NLP/auto-j, "
            f"codes/leaderboard/{AUTO_J_GROUPS_FILE}): put it beside the data file or set "
            f"options: {{scenario_groups: <path>}}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SchemaError(f"{path}: cannot be read ({err})") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise SchemaError(f"{path}: line {err.lineno}: not parseable as Python ({err.msg})") from None
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if targets and node.value is not None and any(isinstance(t, ast.Name) and t.id == AUTO_J_GROUPS_NAME
                                                      for t in targets):
            try:
                groups = ast.literal_eval(node.value)
            except ValueError as err:
                raise SchemaError(
                    f"{path}: line {node.lineno}: {AUTO_J_GROUPS_NAME} is not a literal ({err})") from None
            return _invert_groups(groups, f"{path}: {AUTO_J_GROUPS_NAME}")
    raise SchemaError(f"{path}: has no `{AUTO_J_GROUPS_NAME} = {{...}}` assignment")


def adapt_auto_j(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """GAIR-NLP/auto-j's pairwise test set (``testdata_pairwise.jsonl``) -> pairs.

    Each row is a real user query (``prompt``), two LLM responses (``response 1``,
    ``response 2``) and a human ``label``: 0 = response 1 better, 1 = response 2 better,
    2 = tie. Ties are drops (``tie``), any other label ``unknown_label``. The category
    is the publisher's scenario group (8: Summarization, Exam Questions, Code, Rewriting,
    Creative Writing, Functional Writing, General Communication, NLP Tasks), read as data
    from ``utils_constants.py`` (beside the data file by default; ``options:
    {scenario_groups: <path or {group: [scenario, ...]}>}``); the scenario (58, 24 pairs
    each) is the domain, a sub-category. A scenario in no group is dropped
    (``auto_j_unknown_scenario``). The set has no splits: one is drawn per prompt, so
    that pairs sharing a query share it.
    """
    given = opts.get("scenario_groups")
    if isinstance(given, Mapping):
        groups = _invert_groups(given, "options.scenario_groups")
    else:  # read now, so that a missing file fails before any row is read
        groups = read_scenario_groups(
            given if given is not None else _beside_source(opts["source"], AUTO_J_GROUPS_FILE))
    return _auto_j_rows(records, seed, groups)


def _label_drop(meaning: str | None) -> str | None:
    """The drop reason of a label that names no winner: a value the mapping does not know,
    or a tie. None when it names ``a`` or ``b``."""
    if meaning is None:
        return UNKNOWN_LABEL
    return TIE if meaning == "tie" else None


def _auto_j_rows(records: Records, seed: int, groups: Mapping[str, str]) -> Iterator[dict]:
    for row, spec in records:
        meaning = AUTO_J_LABELS.get(row["label"]) if isinstance(row["label"], int) else None
        if no_winner := _label_drop(meaning):
            yield {"_drop": no_winner}
            continue
        if row["scenario"] not in groups:
            yield {"_drop": AUTO_J_UNKNOWN_SCENARIO}
            continue
        a, b = row["response 1"], row["response 2"]
        chosen, rejected = (a, b) if meaning == "a" else (b, a)
        yield {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
               "split": _draw_split(spec, seed, "prompt", _prompt_key(row["prompt"])),
               "category": groups[row["scenario"]], "domain": row["scenario"]}


TLDR_PROMPT = "TITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
_TLDR_REQUIRED = ("info.title", "info.post", "summaries.0.text", "summaries.1.text")


def adapt_tldr_comparisons(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """OpenAI's summarize-from-feedback comparisons, TL;DR batches (``batch13.json``...) -> pairs.

    Each row (JSON lines) is a Reddit post (``info.id``, ``info.title``, ``info.post``,
    ``info.subreddit``), two summaries (``summaries[i].text``), the human ``choice`` (the
    index of the preferred one), the annotator (``worker``) and ``extra.confidence``
    (1-9). The prompt is the post's title and text in the layout the summaries were
    written for (ending in "TL;DR:"), without the subreddit: that is the category, and
    would leak it (as SHP's excluded subreddits would). The user is the worker, and the
    confidence is kept (``confidence``). A choice other than 0 or 1 is ``unknown_label``,
    a missing title, post or summary ``missing_field``. The publisher's ``split``
    (valid1/valid2, both OpenAI evaluation sets) is not used: a split is drawn per post,
    so that a post's comparisons share it. The CNN/DM batches (``cnndm*.json``:
    ``info.article``) are another schema and fail the column check: read the TL;DR
    batches by a glob (``tldr-comparisons/batch*.json``).
    """
    get = {path: path_getter(path) for path in (*_TLDR_REQUIRED, "info.id", "info.subreddit", "extra.confidence")}
    for row, spec in records:
        v = {path: g(row) for path, g in get.items()}
        if any(v[path] is _MISSING for path in _TLDR_REQUIRED):
            yield {"_drop": MISSING_FIELD}
            continue
        choice = row["choice"]
        if not isinstance(choice, int) or choice not in (0, 1):
            yield {"_drop": UNKNOWN_LABEL}
            continue
        a, b = v["summaries.0.text"], v["summaries.1.text"]
        chosen, rejected = (a, b) if choice == 0 else (b, a)
        prompt = TLDR_PROMPT.format(title=v["info.title"], post=v["info.post"])
        post = v["info.id"] if v["info.id"] is not _MISSING else prompt
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected,
               "split": _draw_split(spec, seed, "post", post),
               "category": None if v["info.subreddit"] is _MISSING else v["info.subreddit"],
               "user": row["worker"],
               "confidence": None if v["extra.confidence"] is _MISSING else v["extra.confidence"]}


def adapt_hanna(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """HANNA story ratings (thu-coai/HPSS's ``hanna_{valid,test}_*.json``) -> attribute pairs, RPR-style.

    Ratings, not pairs: 96 WritingPrompts ``prompt``s x 11 ``story``s, each rated 1-5 on
    six attributes by three annotators (``scores``: their mean). Every two stories of one
    prompt whose ratings under one attribute differ by at least ``min_margin`` (default
    1.0, a whole rating point: a mean of three moves in thirds) make one pair under that
    attribute, the better rated chosen; smaller gaps are drops (``tied_rating``,
    ``small_rating_gap``). ``attribute`` is the attribute and ``criterion`` its
    definition in the HANNA paper; as in RPR the criterion is appended to the prompt in
    train and validation, and the test keeps the bare prompt (steering and
    personalization are evaluated without it). The publisher's two files divide the
    stories, not the prompts (a prompt's stories are in both): read both (the folder);
    a split is drawn per prompt, so that no prompt is in two splits. The other fields
    (``generated_reference``, ``metrics_*``) are LLM-written by HPSS and not used.
    """
    margin = HANNA_MIN_MARGIN if opts.get("min_margin") is None else opts["min_margin"]
    scores = {attribute: path_getter(f"scores.{attribute}") for attribute in HANNA_CRITERIA}
    values = (({"prompt": row["prompt"], "response": row["story"],
                "rating": {attribute: get(row) for attribute, get in scores.items()}}, spec)
              for row, spec in records)
    for out in rating_rows(values, seed, margin):
        if "_drop" not in out:
            out["criterion"] = HANNA_CRITERIA[out["attribute"]]
            if out["split"] != "test" and isinstance(out["prompt"], str):
                out["prompt"] = f"{out['prompt']}\n\n{out['criterion']}"
        yield out


def adapt_rmb(records: Records, seed: int, opts: Options) -> Iterator[dict]:
    """RMB (Zhou-Zoey/RMB-Reward-Model-Benchmark, ``RMB_dataset/Pairwise_set/``) -> pairs.

    One JSON array per sub-category. Each row is a real-world prompt
    (``conversation_input``, a message list: earlier turns are context), the ``chosen``
    and the ``reject`` response (``{llm_name, answer}``). These are a benchmark's
    labels, not raw human votes. The category lives in the path: ``Harmlessness`` or
    ``Helpfulness/<one of 12>``, and the file name is the sub-category (the domain); the
    adapter's ``path_pattern`` reads both from each file's path, so the source is the
    ``Pairwise_set`` folder (or a glob of its files). A split is drawn per prompt: one
    prompt has up to ten pairs.
    """
    answers = {"chosen": path_getter("chosen.answer"), "rejected": path_getter("reject.answer")}
    for row, spec in records:
        chosen, rejected = answers["chosen"](row), answers["rejected"](row)
        if chosen is _MISSING or rejected is _MISSING:
            yield {"_drop": MISSING_FIELD}
            continue
        prompt = _turns(row["conversation_input"] or [])
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected,
               "split": _draw_split(spec, seed, "prompt", prompt),
               "category": row["category"], "domain": row["domain"]}


class Adapter(NamedTuple):
    """What is needed to read one known dataset."""

    convert: Callable[[Records, int, Options], Iterator[dict]]
    columns: dict[str, ColumnKind]  # column or column path -> kind, checked before any row is read
    hub_splits: dict[str, SplitSpec]  # hub split -> target split (or fractions); default: same name
    default_limits: dict[str, int]  # the paper's sample sizes; pass limits={} for none
    options: Mapping[str, Any] = {}  # its `options:` keys and their defaults
    path_pattern: str | None = None  # default path_pattern for local sources
    split_column: bool = True  # whether a `split` column of the source gives the split
    ratings: bool = False  # whether it reads ratings (takes min_margin)


ADAPTERS: dict[str, Adapter] = {
    "shp": Adapter(
        adapt_shp,
        {"post_id": TEXT, "domain": TEXT, "history": TEXT, "human_ref_A": TEXT, "human_ref_B": TEXT,
         "labels": INT, "score_A": NUMBER, "score_B": NUMBER},
        {},
        {"train": 36000, "validation": 4000, "test": 1497},
    ),
    "rpr": Adapter(
        adapt_rpr,
        {c: TEXT for c in ("prompt", "response_a", "response_b", "criteria_x", "criteria_y",
                           "category_x", "category_y")},
        {"train": {"train": 1 - RPR_VALIDATION_FRACTION, "validation": RPR_VALIDATION_FRACTION},
         "test": "test"},
        {},
    ),
    "preference-700k": Adapter(
        adapt_preference_700k,
        {"chosen": MESSAGES, "rejected": MESSAGES},
        {"train": dict(DEFAULT_SPLIT_FRACTIONS)},
        {"train": 36000, "validation": 4000, "test": 5000},
    ),
    "personalllm": Adapter(
        adapt_personalllm,
        {"prompt": TEXT,
         **{f"response_{i}": TEXT for i in range(1, PERSONALLLM_RESPONSES + 1)},
         **{f"response_{i}_{m}": NUMBER for i in range(1, PERSONALLLM_RESPONSES + 1)
            for m in PERSONALLLM_REWARD_MODELS}},
        {},
        {},
    ),
    "hh-rlhf": Adapter(adapt_hh_rlhf, {"chosen": TEXT, "rejected": TEXT}, {}, {}),
    "auto-j": Adapter(
        adapt_auto_j,
        {"prompt": TEXT, "response 1": TEXT, "response 2": TEXT, "label": INT, "scenario": TEXT},
        {}, {}, options={"scenario_groups": None},
    ),
    "tldr-comparisons": Adapter(
        adapt_tldr_comparisons,
        {"info.id": TEXT, "info.title": TEXT, "info.post": TEXT, "info.subreddit": TEXT,
         "summaries.0.text": TEXT, "summaries.1.text": TEXT, "choice": INT, "worker": TEXT},
        {}, {}, split_column=False,
    ),
    "hanna": Adapter(
        adapt_hanna,
        {"prompt": TEXT, "story": TEXT, **{f"scores.{a}": NUMBER for a in HANNA_CRITERIA}},
        {}, {}, ratings=True,
    ),
    "rmb": Adapter(
        adapt_rmb,
        {"conversation_input": MESSAGES, "chosen.answer": TEXT, "reject.answer": TEXT,
         "category": TEXT, "domain": TEXT},
        {}, {}, path_pattern=RMB_PATH_PATTERN,
    ),
}

KNOWN_HUB_IDS: dict[str, str] = {
    "stanfordnlp/SHP": "shp",
    "microsoft/rpr": "rpr",
    "hendrydong/preference_700K": "preference-700k",
    "namkoong-lab/PersonalLLM": "personalllm",
    "Anthropic/hh-rlhf": "hh-rlhf",
}


# --------------------------------------------------------------------------------------
# Generic column mapping: the layouts real data comes in
# --------------------------------------------------------------------------------------

def _layout(columns: Mapping[str, Any], labels: Any, min_margin: Any) -> str:
    """pairs, labels or ratings: from the canonical names mapped (and labels/min_margin)."""
    used = set(columns)
    found = []
    if used & set(LABEL_INPUTS) or labels is not None:
        found.append("labels (response_a, response_b, label + labels)")
    if used & set(RATING_INPUTS) or min_margin is not None:
        found.append("ratings (response, rating + min_margin)")
    if used & {"chosen", "rejected"}:
        found.append("pairs (chosen, rejected)")
    if len(found) > 1:
        raise ConfigError(f"columns/labels/min_margin mix layouts: {'; '.join(found)}. Use one.")
    return found[0].split()[0] if found else "pairs"


def _label_key(value: Any) -> str:
    """A label value as text, so that YAML's 0 matches a file's 0, 0.0 or "0"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _label_map(labels: Any) -> dict[str, str]:
    if not isinstance(labels, Mapping) or not labels:
        raise ConfigError("the labels layout (response_a, response_b, label) needs labels: a mapping from each "
                          "label value to a, b or tie, e.g. {0: a, 1: b, 2: tie}")
    out = {}
    for value, meaning in labels.items():
        if not isinstance(meaning, str) or meaning.lower() not in LABEL_MEANINGS:
            raise ConfigError(f"labels: {value!r} maps to {meaning!r}; use one of {list(LABEL_MEANINGS)}")
        out[_label_key(value)] = meaning.lower()
    return out


def _rating_paths(rating: Any) -> dict[str | None, str]:
    """columns.rating: one column (no attribute), a list of columns (each an attribute,
    named by its last path component) or {attribute: column}."""
    if isinstance(rating, str):
        return {None: rating}
    if isinstance(rating, (list, tuple)) and rating and all(isinstance(r, str) for r in rating):
        return {r.split(".")[-1]: r for r in rating}
    if isinstance(rating, Mapping) and rating and all(isinstance(r, str) for r in rating.values()):
        return {str(k): v for k, v in rating.items()}
    raise ConfigError(f"columns.rating must be a column, a list of columns or {{attribute: column}}, got {rating!r}")


_GENERIC_KINDS = {"prompt": PROMPT, "chosen": PROMPT, "rejected": PROMPT, "response_a": PROMPT,
                  "response_b": PROMPT, "response": TEXT, "label": SCALAR, "split": TEXT}


def _generic_mapping(features: datasets.Features, columns: Mapping[str, Any] | None, source: str,
                     layout: str = "pairs", notes: Mapping[str, str] | None = None
                     ) -> tuple[dict[str, str], dict[str | None, str]]:
    """({canonical: column path}, {attribute: rating column path}): identity for the
    canonical names that exist, then the caller's mapping on top. Type-checked before
    any row is read. ``prompt`` is optional except for ratings (see the module doc)."""
    columns = dict(columns or {})
    unknown = [c for c in columns if c not in MAPPABLE_COLUMNS]
    if unknown:
        raise ConfigError(f"{source}: columns maps unknown canonical name(s) {unknown}; "
                          f"canonical names are {list(MAPPABLE_COLUMNS)}")
    inputs = LAYOUT_INPUTS[layout]
    names = (*inputs, "split", *METADATA_COLUMNS)
    ignored = {c for c, path in columns.items() if path is None}  # `split: null`: not that column
    needed = [c for c in inputs if c in ignored and (c != "prompt" or layout == "ratings")]
    if needed:
        raise ConfigError(f"{source}: columns.{needed[0]} cannot be null: the {layout} layout needs it")
    mapping = {c: c for c in names if c in features and c not in columns}
    mapping.update({c: path for c, path in columns.items() if path is not None})
    mapping.update({c: c for c in inputs if c not in mapping and c not in ignored
                    and (c != "prompt" or layout == "ratings")})
    ratings = _rating_paths(mapping.pop("rating")) if layout == "ratings" else {}
    bad = {c: path for c, path in mapping.items() if not isinstance(path, str)}
    if bad:
        raise ConfigError(f"{source}: columns must map each name to a column or column path (text), got {bad}")
    required = {path: _GENERIC_KINDS.get(canon, SCALAR) for canon, path in mapping.items()}
    required.update({path: NUMBER for path in ratings.values()})
    aliases = {path: canon for canon, path in mapping.items() if path != canon}
    aliases.update({path: "rating" for path in ratings.values() if path != "rating"})
    check_schema(features, required, source, aliases=aliases, notes=notes)
    return mapping, ratings


def _extractor(features: Mapping[str, Any], mapping: Mapping[str, str],
               ratings: Mapping[str | None, str]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """row -> {canonical: value or _MISSING} (``rating``: {attribute: value}); no split."""
    getters = {canon: path_getter(path, features) for canon, path in mapping.items() if canon != "split"}
    rating_getters = {attribute: path_getter(path, features) for attribute, path in ratings.items()}

    def extract(row: Mapping[str, Any]) -> dict[str, Any]:
        values = {canon: get(row) for canon, get in getters.items()}
        if rating_getters:
            values["rating"] = {attribute: get(row) for attribute, get in rating_getters.items()}
        return values

    return extract


def _is_conversation_text(value: str) -> bool:
    return value.lstrip().startswith("[{") or _HH_TURN.match(value) is not None


def _final_turn(value: Any) -> tuple[list[dict[str, Any]], Any] | str:
    """(history, response) of one response value, or a drop reason. Text is a response
    with no history, unless it is a JSON message list or an HH-RLHF transcript; a
    message list must end in an assistant turn."""
    if isinstance(value, str):
        if value.lstrip().startswith("[{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return [], value
        elif _HH_TURN.match(value):
            messages = parse_hh_transcript(value)
            if messages is None:
                return UNPARSEABLE_TRANSCRIPT
            return messages[:-1], messages[-1]["content"]
        else:
            return [], value
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(m, Mapping) for m in value) or value[-1].get("role") != "assistant":
            return NO_FINAL_ASSISTANT_TURN
        return _turns(value[:-1]), value[-1].get("content")
    return [], value  # None, numbers: finalize() names the problem


def _conversation_pair(prompt: Any, first: Any, second: Any, has_prompt: bool) -> dict[str, Any] | str:
    """{prompt, chosen, rejected} from a preferred and a dispreferred response, either of
    which may be a whole conversation; or a drop reason."""
    turns = (_final_turn(first), _final_turn(second))
    for turn in turns:
        if isinstance(turn, str):
            return turn
    (history_a, chosen), (history_b, rejected) = turns
    if not has_prompt:
        if not history_a and not history_b:
            return NO_PROMPT
        if history_a != history_b:
            return PROMPT_MISMATCH
        prompt = history_a
    elif history_a or history_b:
        try:
            base = as_messages(prompt)
        except TypeError:
            base = None
        if any(h and h != base for h in (history_a, history_b)):
            return PROMPT_MISMATCH
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if values[k] is _MISSING else values[k]) for k in METADATA_COLUMNS if k in values}


def generic_rows(records: Records, seed: int, *, layout: str = "pairs", labels: Mapping[str, str] | None = None,
                 split_by: str = "pair") -> Iterator[dict]:
    """Extracted rows of the pairs or labels layout -> pair rows (see the module doc)."""
    first, second = ("chosen", "rejected") if layout == "pairs" else ("response_a", "response_b")
    needed = ("prompt", first, second, "label")
    for values, spec in records:
        if any(values.get(c) is _MISSING for c in needed):
            yield {"_drop": MISSING_FIELD}
            continue
        a, b = values[first], values[second]
        if layout == "labels":
            meaning = (labels or {}).get(_label_key(values["label"]))
            if no_winner := _label_drop(meaning):
                yield {"_drop": no_winner}
                continue
            if meaning == "b":
                a, b = b, a
        out = _conversation_pair(values.get("prompt"), a, b, "prompt" in values)
        if isinstance(out, str):
            yield {"_drop": out}
            continue
        out.update(_metadata(values))
        key = ("prompt", _prompt_key(out["prompt"])) if split_by == "prompt" else (_pair_key(out),)
        out["split"] = _draw_split(spec, seed, *key)
        yield out


def _is_rating(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rating_pairs(ratings: pl.DataFrame, min_margin: float) -> tuple[pl.DataFrame, Counter]:
    """Every two rated responses of one group under one attribute -> a pair, if their
    ratings differ by at least ``min_margin`` (and at all); the rest counted by reason.

    ``ratings``: one row per (response, attribute): ``group`` (int), ``item`` (int, one
    per response row), ``response`` (str), ``rating`` (float), ``attribute`` (str, ""
    for none). Returns (``group, attribute, chosen, rejected``, ordered by group and the
    two items) and the drop counts. A self-join in polars: no Python loop over pairs.
    """
    right = ratings.rename({"item": "item_b", "response": "response_b", "rating": "rating_b"})
    candidates = ratings.join(right, on=["group", "attribute"]).filter(pl.col("item") < pl.col("item_b"))
    gap = (pl.col("rating") - pl.col("rating_b")).abs()
    candidates = candidates.with_columns(
        reason=pl.when(gap <= RATING_TOLERANCE).then(pl.lit(TIED_RATING))
        .when(gap < min_margin - RATING_TOLERANCE).then(pl.lit(SMALL_RATING_GAP))
        .otherwise(pl.lit(None, dtype=pl.String)))
    counts = candidates.filter(pl.col("reason").is_not_null()).group_by("reason").len()
    dropped = Counter(dict(zip(counts["reason"].to_list(), counts["len"].to_list())))
    first_better = pl.col("rating") > pl.col("rating_b")
    kept = (candidates.filter(pl.col("reason").is_null())
            .sort("group", "item", "item_b", "attribute")
            .select("group", "attribute",
                    chosen=pl.when(first_better).then("response").otherwise("response_b"),
                    rejected=pl.when(first_better).then("response_b").otherwise("response")))
    return kept, dropped


def rating_rows(records: Records, seed: int, min_margin: float = 0.0) -> Iterator[dict]:
    """Extracted rows of the ratings layout (``prompt``, ``response``, ``rating``:
    {attribute: value}, metadata) -> pair rows, via :func:`rating_pairs`.

    A group is one prompt (and user and attribute, where mapped, and given split); its
    metadata are its first row's. A row without a prompt or response is one drop
    (``missing_field``, ``empty_text``), a missing rating one per attribute
    (``missing_rating``). The split is drawn per prompt.
    """
    dropped: Counter = Counter()
    groups: dict[tuple, int] = {}
    info: list[tuple[Any, str, SplitSpec, dict[str, Any]]] = []
    frame: dict[str, list] = {"group": [], "item": [], "response": [], "rating": [], "attribute": []}
    for item, (values, spec) in enumerate(records):
        prompt, response = values.get("prompt"), values.get("response")
        if prompt is _MISSING or response is _MISSING:
            dropped[MISSING_FIELD] += 1
            continue
        if not isinstance(response, str) or not response.strip():
            dropped[EMPTY_TEXT] += 1
            continue
        meta = _metadata(values)
        prompt_key = json.dumps(_prompt_key(prompt), sort_keys=True, default=str)
        key = (prompt_key, meta.get("user"), meta.get("attribute"), spec if isinstance(spec, str) else None)
        if key not in groups:
            groups[key] = len(groups)
            info.append((prompt, prompt_key, spec, meta))
        for attribute, rating in values["rating"].items():
            if not _is_rating(rating):
                dropped[MISSING_RATING] += 1
                continue
            frame["group"].append(groups[key])
            frame["item"].append(item)
            frame["response"].append(response)
            frame["rating"].append(float(rating))
            frame["attribute"].append(attribute or "")
    schema = {"group": pl.Int64, "item": pl.Int64, "response": pl.String, "rating": pl.Float64,
              "attribute": pl.String}
    pairs, gaps = rating_pairs(pl.DataFrame(frame, schema=schema), min_margin)
    dropped.update(gaps)
    for reason, n in sorted(dropped.items()):
        for _ in range(n):
            yield {"_drop": reason}
    for group, attribute, chosen, rejected in pairs.iter_rows():
        prompt, prompt_key, spec, meta = info[group]
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected, **meta}
        if attribute:
            out["attribute"] = attribute
        out["split"] = _draw_split(spec, seed, "prompt", prompt_key)
        yield out


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

class _Part(NamedTuple):
    """One independently typed piece of a source: a hub split or a local file."""

    label: str
    data: Any  # datasets.Dataset or local_files.LocalFile: .features, iterable of row dicts
    split: str | None  # the hub split, or split= for a local file
    notes: Mapping[str, str] = {}


def _records(data: Iterable[Mapping[str, Any]], extract: Callable[[Mapping[str, Any]], Any],
             split_get: Callable[[Mapping[str, Any]], Any] | None, spec: SplitSpec,
             resolve: Callable[[Any], SplitSpec]) -> Records:
    """(row, split spec) for every row: the split column's value when there is one."""
    for row in data:
        if split_get is None:
            yield extract(row), spec
        else:
            given = split_get(row)
            yield extract(row), resolve(None if given is _MISSING else given)


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        pass
    try:
        import requests

        errors.append(requests.exceptions.ConnectionError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _load_hub(hub_id: str, revision: str | None, adapter: str | None) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(hub_id, revision=revision)
    except _network_errors() as err:
        how = f"adapter={adapter!r}" if adapter else "columns={...}"
        raise SourceUnavailableError(
            f"cannot load {hub_id!r}: the Hugging Face hub is unreachable from here ({err}). "
            f"Export it where the hub can be reached, e.g. "
            f"datasets.load_dataset({hub_id!r})['<split>'].to_json('<split>.jsonl'), copy the file "
            f"here and use its path as the source, with {how} and split='<split>' (or add a "
            f"'split' column to one file holding all splits)."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict) or not loaded:
        raise ConfigError(f"{hub_id}: expected a dataset with named splits, got {type(loaded).__name__}")
    return loaded


def _known_adapter(hub_id: str) -> str | None:
    lowered = {k.lower(): v for k, v in KNOWN_HUB_IDS.items()}
    return lowered.get(hub_id.lower())


def load_rows(source: str, *, seed: int = 0, revision: str | None = None, columns: dict[str, Any] | None = None,
              split: str | None = None, split_fractions: dict[str, float] | None = None,
              limits: dict[str, int] | None = None, adapter: str | None = None,
              builtin_params: dict | None = None, labels: dict[Any, str] | None = None,
              min_margin: float | None = None, split_by: str | None = None, path_pattern: str | None = None,
              options: dict[str, Any] | None = None) -> Iterator[dict]:
    """Yield raw pair rows (and ``{"_drop": reason}`` rows) for ``pairs.finalize``.

    Args:
        source: ``builtin:<name>``, a local file, directory or glob (see
            :mod:`pipeline.local_files`), ``shared:<path>`` (a file, folder or glob of the
            shared real datasets under the data location, sha256-verified first; see
            :mod:`pipeline.real_data`), or a hub id.
        seed: seeds every random choice (splits, per-post samples, caps, users).
        revision: hub revision to pin (hub sources only).
        columns: generic mapping ``{canonical_name: source column or column path}``;
            identity by default; its names choose the layout (module doc). Not
            combinable with ``adapter``.
        split: for a local source without a split column: the split of every row. With an
            adapter it names the original dataset's split the file was exported from and
            goes through the adapter's split plan (RPR and 700K ``train`` are re-divided).
        split_fractions: for rows with no given split: fractions to draw a split from by a
            seeded content hash (default train/validation/test 0.8/0.1/0.1). Also replaces
            the re-split of hub data the paper divides itself (RPR train, 700K train).
        limits: max rows per split, a seeded sample (excess rows are not counted as
            drops). ``None`` uses the adapter's paper sizes (SHP 36000/4000/1497, 700K
            36000/4000/5000); ``{}`` disables caps.
        adapter: a key of :data:`ADAPTERS`: the source is in that dataset's real schema.
        builtin_params: keyword arguments for ``generators.generate``.
        labels: generic labels layout: ``{label value: "a" | "b" | "tie"}``.
        min_margin: ratings layouts (generic, ``hanna``): the smallest rating gap that
            makes a pair (default: any gap for the generic mapping, 1.0 for HANNA).
        split_by: generic pairs and labels layouts: ``"pair"`` (default) draws a split per
            pair, ``"prompt"`` per prompt, so that no prompt is in two splits.
        path_pattern: local sources: a regular expression with named groups, searched
            in each file's path; each group becomes a column (RMB's default reads its
            category and sub-category from the folders).
        options: adapter-specific settings (:attr:`Adapter.options`; ``auto-j``:
            ``scenario_groups``).
    """
    if split is not None and _alias(split) not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {list(SPLITS)}")
    split = _alias(split)
    fractions = _normalize_fractions(split_fractions) if split_fractions is not None else None
    if limits is not None:
        bad = {s: n for s, n in limits.items() if s not in SPLITS or not isinstance(n, int) or n < 0}
        if bad:
            raise ConfigError(f"limits: {bad} invalid; keys must be in {list(SPLITS)}, values ints >= 0")
    if adapter is not None and adapter not in ADAPTERS:
        raise ConfigError(f"unknown adapter {adapter!r}; known adapters: {sorted(ADAPTERS)}")
    if adapter is not None and columns:
        raise ConfigError("pass either adapter= (a known dataset's real schema) "
                          "or columns= (a generic mapping), not both")
    _check_layout_options(adapter, labels, min_margin, split_by, options)

    if source.startswith("shared:"):  # the shared real datasets: found under the data location, checksums verified
        from pipeline import real_data

        source = str(real_data.resolve(source.removeprefix("shared:")))
    if source.startswith("builtin:"):
        from pipeline import generators  # lazy: only the builtin branch needs it

        rows = generators.generate(source.removeprefix("builtin:"), seed, **(builtin_params or {}))
        return apply_limits(rows, limits, seed)

    if local_files.looks_local(source):
        pattern = path_pattern if path_pattern is not None else (ADAPTERS[adapter].path_pattern if adapter else None)
        parts = [_Part(f.label, f, split, f.notes) for f in local_files.read_local(source, pattern)]
    else:
        if split is not None:
            raise ConfigError(f"{source}: split= is for local files; a hub dataset brings its own splits")
        if path_pattern is not None:
            raise ConfigError(f"{source}: path_pattern is for local files and folders")
        if adapter is None and not columns:
            adapter = _known_adapter(source)
            if adapter is None:
                raise ConfigError(
                    f"{source!r} is not a local file and not a known hub dataset "
                    f"({', '.join(KNOWN_HUB_IDS)}). Pass adapter= (one of {sorted(ADAPTERS)}) "
                    f"if it is in one of those schemas, or columns={{'prompt': ..., 'chosen': ..., "
                    f"'rejected': ...}} for a generic mapping."
                )
        parts = [_Part(f"{source} split {name!r}", ds, name)
                 for name, ds in _load_hub(source, revision, adapter).items()]
    rows = _convert(source, parts, seed=seed, columns=columns, fractions=fractions, adapter=adapter,
                    labels=labels, min_margin=min_margin, split_by=split_by, options=options)
    if limits is None and adapter is not None:
        limits = ADAPTERS[adapter].default_limits
    return apply_limits(rows, limits, seed)


def _check_layout_options(adapter: str | None, labels: Any, min_margin: Any, split_by: Any, options: Any) -> None:
    """Options that belong to the generic mapping, to ratings, or to one adapter."""
    if min_margin is not None and (isinstance(min_margin, bool) or not isinstance(min_margin, (int, float))
                                   or not min_margin >= 0):
        raise ConfigError(f"min_margin must be a number >= 0, got {min_margin!r}")
    if split_by is not None and split_by not in SPLIT_BY:
        raise ConfigError(f"split_by must be one of {list(SPLIT_BY)}, got {split_by!r}")
    if adapter is None:
        if options:
            raise ConfigError("options are an adapter's settings; this source has no adapter")
        return
    spec = ADAPTERS[adapter]
    if labels is not None:
        raise ConfigError(f"labels is for the generic mapping; adapter {adapter!r} knows its dataset's labels")
    if split_by is not None:
        raise ConfigError(f"split_by is for the generic mapping; adapter {adapter!r} draws its own splits")
    if min_margin is not None and not spec.ratings:
        raise ConfigError(f"min_margin is for ratings; adapter {adapter!r} reads pairs "
                          f"(ratings adapters: {sorted(k for k, a in ADAPTERS.items() if a.ratings)})")
    unknown = sorted(set(options or {}) - set(spec.options))
    if unknown:
        raise ConfigError(f"options: unknown key(s) {unknown} for adapter {adapter!r}; "
                          f"known: {sorted(spec.options) or 'none'}")


def _convert(source: str, parts: list[_Part], *, seed: int, columns: Mapping[str, Any] | None,
             fractions: dict[str, float] | None, adapter: str | None, labels: Any = None,
             min_margin: float | None = None, split_by: str | None = None,
             options: Mapping[str, Any] | None = None) -> Iterator[dict]:
    """Check every part's schema first, then convert rows lazily.

    Each part is a hub split or a local file; its ``split`` (hub split or ``split=``),
    like a ``split`` column, is read as the original dataset's split and, for an adapter,
    goes through the adapter's split plan, so an exported local copy gives the same pairs
    as the hub (e.g. RPR ``train`` is divided into train/validation either way).
    """
    hub_plan = ADAPTERS[adapter].hub_splits if adapter else {}

    def resolve(name: Any) -> SplitSpec:
        if name is not None and not isinstance(name, str):  # a number or an object: finalize drops it
            return repr(name)
        name = _alias(name)
        planned = hub_plan.get(name, name) if isinstance(name, str) else name
        return (fractions or planned) if isinstance(planned, dict) else planned

    def part_spec(part: _Part) -> SplitSpec:
        return resolve(part.split) if part.split is not None else (fractions or dict(DEFAULT_SPLIT_FRACTIONS))

    streams: list[Records] = []
    if adapter:
        spec = ADAPTERS[adapter]
        kind_drops: Counter = Counter()  # rows of columns checked row by row (_typed_rows)
        for part in parts:
            features = part.data.features
            check_schema(features, spec.columns, f"{part.label} [{adapter}]", notes=part.notes)
            split_get = (lambda row: row.get("split")) if spec.split_column and "split" in features else None
            records = _records(part.data, lambda row: row, split_get, part_spec(part), resolve)
            mixed = {c: kind for c, kind in spec.columns.items() if c in part.notes}
            streams.append(_typed_rows(records, mixed, features, kind_drops) if mixed else records)
        opts = {**spec.options, **(options or {}), "source": source, "min_margin": min_margin}
        converted = spec.convert((record for stream in streams for record in stream), seed, opts)
        return itertools.chain(converted, _counted_drops(kind_drops))  # counted once the rows are read

    layout = _layout(columns or {}, labels, min_margin)
    label_map = _label_map(labels) if layout == "labels" else None
    for part in parts:
        features = part.data.features
        mapping, ratings = _generic_mapping(features, columns, part.label, layout, part.notes)
        extract = _extractor(features, mapping, ratings)
        if "prompt" not in mapping:
            _check_conversations(part, extract, LAYOUT_INPUTS[layout][1:3])
        split_get = path_getter(mapping["split"], features) if "split" in mapping else None
        streams.append(_records(part.data, extract, split_get, part_spec(part), resolve))
    records = (record for stream in streams for record in stream)
    if layout == "ratings":
        return rating_rows(records, seed, min_margin or 0.0)
    return generic_rows(records, seed, layout=layout, labels=label_map, split_by=split_by or "pair")


def _typed_rows(records: Records, kinds: Mapping[str, ColumnKind], features: Mapping[str, Any],
                dropped: Counter) -> Records:
    """The records whose values in ``kinds`` (columns whose type changes between rows, so
    checked row by row) are of the kind the adapter needs; the others are counted in
    ``dropped`` by reason (``missing_field``, ``wrong_type_<column>``)."""
    getters = {column: path_getter(column, features) for column in kinds}
    for row, spec in records:
        for column, (_, _) in kinds.items():
            value = getters[column](row)
            if value is _MISSING:
                dropped[MISSING_FIELD] += 1
                break
            if value is not None and not _value_is(kinds[column], value):
                dropped[f"wrong_type_{column.replace(' ', '_')}"] += 1
                break
        else:
            yield row, spec


def _value_is(kind: ColumnKind, value: Any) -> bool:
    """One row's value against a column kind (the per-row form of the feature checks)."""
    if kind is TEXT:
        return isinstance(value, str)
    if kind is INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is MESSAGES:
        return isinstance(value, list) and all(isinstance(m, Mapping) and isinstance(m.get("role"), str)
                                               and isinstance(m.get("content"), str) for m in value)
    if kind is PROMPT:
        return isinstance(value, str) or _value_is(MESSAGES, value)
    return not isinstance(value, (list, dict))  # SCALAR


def _counted_drops(dropped: Counter) -> Iterator[dict]:
    for reason, n in sorted(dropped.items()):
        for _ in range(n):
            yield {"_drop": reason}


def _check_conversations(part: _Part, extract: Callable[[Mapping[str, Any]], dict], responses: tuple[str, ...]) -> None:
    """Without a prompt column the responses must be whole conversations: a first row of
    plain text means the prompt column was forgotten, not that every row is bad."""
    first = next(iter(part.data), None)
    if first is None:
        return
    values = extract(first)
    for name in responses:
        value = values.get(name)
        if isinstance(value, str) and not _is_conversation_text(value):
            raise SchemaError(
                f"{part.label}: no 'prompt' column, so {name!r} must hold whole conversations (message lists "
                f"or '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts), but its first row is plain text; "
                f"map the prompt (columns: {{prompt: <column>}}); available columns: {_describe(part.data.features)}")
