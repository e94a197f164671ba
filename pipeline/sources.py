"""Turn a configured data source into raw preference rows for :func:`pipeline.pairs.finalize`.

A source is one of

* ``builtin:<name>``: rows from :mod:`pipeline.generators` (the embedded default data,
  because the hub cannot be reached here);
* a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, read with
  ``datasets.load_dataset(<builder>, data_files=...)`` so that it goes through the same
  code path as hub data. The file is either in a known dataset's real schema
  (``adapter=...``) or in any schema with a generic column mapping (``columns=...``);
* anything else is a Hugging Face hub id, loaded with ``datasets.load_dataset(id)`` (all
  splits) and turned into pairs by the adapter for that id (see :data:`KNOWN_HUB_IDS`).

Every adapter follows the paper's preparation (Appendix A and H of
``sparse-moe-reward-models-paper.txt``) in one small function. The columns it needs are
checked against the dataset's features *before* any row is read, so a renamed or
mistyped column fails at once with a :class:`~pipeline.pairs.SchemaError` that names it
and lists what exists. Row-level problems are left to :func:`~pipeline.pairs.finalize`,
or yielded as ``{"_drop": reason}`` rows for adapter-specific filters, so that every
rejected row is counted.

Rows that are *not* yielded without being counted, on purpose and only these:

* SHP validation/test pairs beyond the one sampled per post (the paper evaluates on one
  pair per post);
* rows over a per-split cap in ``limits`` (a sample size, not bad data).

A split comes from the source when it has one (hub split, a ``split`` column, or
``split=``). Where it must be drawn (700K, RPR train -> train/validation, files without
one) it is decided by a seeded hash of the row's content, never by row order or a global
RNG stream, so the same row lands in the same split on every machine and run, however
the source is ordered or extended. PersonalLLM keeps its hub splits (train/test); which
of its pairs form the adaptation sets is left to the stage that samples them.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np

from pipeline.pairs import METADATA_COLUMNS, SPLITS, SchemaError, as_messages, pair_id, require_columns
from pipeline.pairs import row_problem  # the exact test finalize() applies, so caps count usable pairs
from pipeline.errors import UserError

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
CANONICAL_COLUMNS = ("prompt", "chosen", "rejected", "split", *METADATA_COLUMNS)

# Drop reasons emitted by adapters (finalize() adds its own).
SHP_LOW_SCORE = "shp_low_score"
SHP_EXCLUDED_DOMAIN = "shp_excluded_domain"
SHP_UNKNOWN_DOMAIN = "shp_unknown_domain"
SHP_BAD_LABEL = "shp_bad_label"
RPR_MISSING_CRITERION = "rpr_missing_criterion"
PROMPT_MISMATCH = "prompt_mismatch"
NO_FINAL_ASSISTANT_TURN = "no_final_assistant_turn"
UNPARSEABLE_TRANSCRIPT = "unparseable_transcript"
PERSONALLLM_MISSING_SCORE = "personalllm_missing_score"
PERSONALLLM_TIED_SCORES = "personalllm_tied_scores"

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


class SourceUnavailableError(UserError, ConnectionError):
    """The Hugging Face hub could not be reached for a hub-id source."""


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
_LIST_FEATURES = tuple(getattr(datasets, name) for name in ("List", "LargeList") if hasattr(datasets, name))


def _is_messages(feature: Any) -> bool:
    if isinstance(feature, list) and len(feature) == 1:
        inner = feature[0]
    elif _LIST_FEATURES and isinstance(feature, _LIST_FEATURES):
        inner = feature.feature
    else:
        return False
    return isinstance(inner, Mapping) and _is_text(inner.get("role")) and _is_text(inner.get("content"))


def _is_text_or_messages(feature: Any) -> bool:
    # datasets >= 5 types a JSON column mixing text and message lists as Json; the rows
    # are then checked one by one by finalize().
    json_feature = getattr(datasets, "Json", None)
    is_json = json_feature is not None and isinstance(feature, json_feature)
    return _is_text(feature) or _is_messages(feature) or is_json


def _is_scalar(feature: Any) -> bool:
    return isinstance(feature, datasets.Value)


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
    return type(feature).__name__


def check_schema(features: datasets.Features, required: Mapping[str, ColumnKind], source: str,
                 aliases: Mapping[str, str] | None = None) -> None:
    """Fail before reading rows if a column is missing or has the wrong type.

    ``aliases`` maps a file column to the canonical name it stands for, only to make
    the message say why the column is needed.
    """
    require_columns(features.keys(), required.keys(), source)
    for column, (expected, ok) in required.items():
        if not ok(features[column]):
            role = f" (mapped to {aliases[column]!r})" if aliases and column in aliases else ""
            raise SchemaError(
                f"{source}: column {column!r}{role} must be {expected}, found "
                f"{_feature_name(features[column])}; available columns: {_describe(features)}"
            )


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
        raise ValueError(f"split_fractions: unknown split(s) {unknown}; use {list(SPLITS)}")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"split_fractions must be non-negative and sum to > 0, got {dict(fractions)}")
    total = sum(fractions.values())
    return {s: f / total for s, f in fractions.items() if f > 0}


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


def _shp_domain(raw: str) -> tuple[str, str | None]:
    """'askculinary_train' -> ('askculinary', 'train'); a plain domain has no split."""
    base, _, suffix = raw.rpartition("_")
    if base and _alias(suffix) in SPLITS:
        return base, _alias(suffix)
    return raw, None


def adapt_shp(records: Records, seed: int) -> Iterator[dict]:
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


def adapt_rpr(records: Records, seed: int) -> Iterator[dict]:
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


def adapt_preference_700k(records: Records, seed: int) -> Iterator[dict]:
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


def adapt_personalllm(records: Records, seed: int) -> Iterator[dict]:
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


def adapt_hh_rlhf(records: Records, seed: int) -> Iterator[dict]:
    """Anthropic/hh-rlhf -> pairs: whole transcripts are parsed into turns; the turns
    before the final assistant turn are the prompt and must agree between the two."""
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


class Adapter(NamedTuple):
    """What is needed to read one known dataset."""

    convert: Callable[[Records, int], Iterator[dict]]
    columns: dict[str, ColumnKind]
    hub_splits: dict[str, SplitSpec]  # hub split -> target split (or fractions); default: same name
    default_limits: dict[str, int]  # the paper's sample sizes; pass limits={} for none


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
}

KNOWN_HUB_IDS: dict[str, str] = {
    "stanfordnlp/SHP": "shp",
    "microsoft/rpr": "rpr",
    "hendrydong/preference_700K": "preference-700k",
    "namkoong-lab/PersonalLLM": "personalllm",
    "Anthropic/hh-rlhf": "hh-rlhf",
}


# --------------------------------------------------------------------------------------
# Generic column mapping
# --------------------------------------------------------------------------------------

def _generic_mapping(features: datasets.Features, columns: Mapping[str, str] | None,
                     source: str) -> dict[str, str]:
    """{canonical: source column}: identity for the canonical names that exist, then the
    caller's mapping on top. Type-checked before any row is read."""
    columns = dict(columns or {})
    unknown = [c for c in columns if c not in CANONICAL_COLUMNS]
    if unknown:
        raise ValueError(f"{source}: columns maps unknown canonical name(s) {unknown}; "
                         f"canonical names are {list(CANONICAL_COLUMNS)}")
    mapping = {c: c for c in CANONICAL_COLUMNS if c in features and c not in columns}
    mapping.update(columns)
    mapping.update({c: columns.get(c, c) for c in ("prompt", "chosen", "rejected")})
    kinds = {"prompt": PROMPT, "chosen": TEXT, "rejected": TEXT, "split": TEXT}
    required = {col: kinds.get(canon, SCALAR) for canon, col in mapping.items()}
    aliases = {col: canon for canon, col in mapping.items() if col != canon}
    check_schema(features, required, source, aliases=aliases)
    return mapping


def generic_rows(records: Records, mapping: Mapping[str, str], seed: int) -> Iterator[dict]:
    """Rows already in pair form, with columns renamed by ``mapping``."""
    for row, spec in records:
        out = {canon: row[col] for canon, col in mapping.items() if canon != "split"}
        out["split"] = _draw_split(spec, seed, _pair_key(out))
        yield out


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _records(ds: datasets.Dataset, split_column: str | None, spec: SplitSpec,
             resolve: Callable[[Any], SplitSpec]) -> Records:
    """(row, split spec) for every row: the split column's value when there is one."""
    for row in ds:
        yield row, (resolve(row[split_column]) if split_column else spec)


def _looks_local(source: str) -> bool:
    return (
        os.path.exists(source)
        or Path(source).suffix.lower() in LOCAL_BUILDERS
        or source.startswith(("/", "./", "../", "~"))
    )


def _load_local(path: str) -> datasets.Dataset:
    file = Path(path).expanduser()
    builder = LOCAL_BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise ValueError(f"{path}: unsupported file type {file.suffix!r}; use one of {sorted(LOCAL_BUILDERS)}")
    if not file.is_file():
        raise FileNotFoundError(f"{path}: local source file not found")
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train")
    except (datasets.exceptions.DatasetGenerationError, ValueError) as err:  # incl. pyarrow.ArrowInvalid
        raise SchemaError(f"{path}: could not be read as {builder}: {err.__cause__ or err}") from err


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
        raise ValueError(f"{hub_id}: expected a dataset with named splits, got {type(loaded).__name__}")
    return loaded


def _known_adapter(hub_id: str) -> str | None:
    lowered = {k.lower(): v for k, v in KNOWN_HUB_IDS.items()}
    return lowered.get(hub_id.lower())


def load_rows(source: str, *, seed: int = 0, revision: str | None = None, columns: dict[str, str] | None = None,
              split: str | None = None, split_fractions: dict[str, float] | None = None,
              limits: dict[str, int] | None = None, adapter: str | None = None,
              builtin_params: dict | None = None) -> Iterator[dict]:
    """Yield raw pair rows (and ``{"_drop": reason}`` rows) for ``pairs.finalize``.

    Args:
        source: ``builtin:<name>``, a local .jsonl/.json/.parquet/.csv file, or a hub id.
        seed: seeds every random choice (splits, per-post samples, caps, users).
        revision: hub revision to pin (hub sources only).
        columns: generic mapping ``{canonical_name: source_column}``; identity by default.
            Not combinable with ``adapter``.
        split: for a local file without a split column: the split of every row. With an
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
    """
    if split is not None and _alias(split) not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    split = _alias(split)
    fractions = _normalize_fractions(split_fractions) if split_fractions is not None else None
    if limits is not None:
        bad = {s: n for s, n in limits.items() if s not in SPLITS or not isinstance(n, int) or n < 0}
        if bad:
            raise ValueError(f"limits: {bad} invalid; keys must be in {list(SPLITS)}, values ints >= 0")
    if adapter is not None and adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known adapters: {sorted(ADAPTERS)}")
    if adapter is not None and columns:
        raise ValueError("pass either adapter= (a known dataset's real schema) "
                         "or columns= (a generic mapping), not both")

    if source.startswith("builtin:"):
        from pipeline import generators  # lazy: only the builtin branch needs it

        rows = generators.generate(source.removeprefix("builtin:"), seed, **(builtin_params or {}))
        return apply_limits(rows, limits, seed)

    if _looks_local(source):
        ds = _load_local(source)
        parts: dict[str | None, datasets.Dataset] = {None: ds}
    else:
        if split is not None:
            raise ValueError(f"{source}: split= is for local files; a hub dataset brings its own splits")
        if adapter is None and not columns:
            adapter = _known_adapter(source)
            if adapter is None:
                raise ValueError(
                    f"{source!r} is not a local file and not a known hub dataset "
                    f"({', '.join(KNOWN_HUB_IDS)}). Pass adapter= (one of {sorted(ADAPTERS)}) "
                    f"if it is in one of those schemas, or columns={{'prompt': ..., 'chosen': ..., "
                    f"'rejected': ...}} for a generic mapping."
                )
        parts = dict(_load_hub(source, revision, adapter))
    rows = _convert(source, parts, seed=seed, columns=columns, split=split, fractions=fractions,
                    adapter=adapter)
    if limits is None and adapter is not None:
        limits = ADAPTERS[adapter].default_limits
    return apply_limits(rows, limits, seed)


def _convert(source: str, parts: Mapping[str | None, datasets.Dataset], *, seed: int,
             columns: Mapping[str, str] | None, split: str | None, fractions: dict[str, float] | None,
             adapter: str | None) -> Iterator[dict]:
    """Check every part's schema first, then convert rows lazily.

    ``parts`` maps a hub split name to its data, or ``None`` to a local file's data. For
    an adapter, a split name (hub split, ``split=`` or a ``split`` column) is read as the
    original dataset's split and goes through the adapter's split plan, so an exported
    local copy gives the same pairs as the hub (e.g. RPR ``train`` is divided into
    train/validation either way).
    """
    label = f"{source} [{adapter}]" if adapter else source
    hub_plan = ADAPTERS[adapter].hub_splits if adapter else {}

    def resolve(name: Any) -> SplitSpec:
        name = _alias(name)
        planned = hub_plan.get(name, name) if isinstance(name, str) else name
        return (fractions or planned) if isinstance(planned, dict) else planned

    plans: list[tuple[datasets.Dataset, str | None, SplitSpec, dict[str, str]]] = []
    for hub_split, ds in parts.items():
        part_label = f"{label} split {hub_split!r}" if hub_split else label
        mapping: dict[str, str] = {}
        if adapter:
            check_schema(ds.features, ADAPTERS[adapter].columns, part_label)
            split_column = "split" if "split" in ds.features else None
        else:
            mapping = _generic_mapping(ds.features, columns, part_label)
            split_column = mapping.get("split")
        given = hub_split if hub_split is not None else split
        spec = resolve(given) if given is not None else (fractions or dict(DEFAULT_SPLIT_FRACTIONS))
        plans.append((ds, split_column, spec, mapping))

    if adapter:
        records = (rec for ds, split_column, spec, _ in plans
                   for rec in _records(ds, split_column, spec, resolve))
        return ADAPTERS[adapter].convert(records, seed)
    return (row for ds, split_column, spec, mapping in plans
            for row in generic_rows(_records(ds, split_column, spec, resolve), mapping, seed))
