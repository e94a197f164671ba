"""Expert interpretation and description fidelity (paper §6.1, App. A Eq. 19-20, Fig. 4-5).

For every expert k of a trained MoE head (vanilla, micro or sparse; single and hyre heads
have no input-dependent routing to interpret):

1. **Describe.** Take its top-``top_n`` (paper: 20) VALIDATION prompts by routing weight
   pi_k(x) and have a describer summarize what they share (:func:`describe_from_weights`).
2. **Judge.** On TEST prompts, stratified as in App. A (``per_stratum`` = 100 drawn from
   the top 10 % by pi_k, 100 from the other 90 %), ask a judge whether each prompt matches
   the description, z_k(x) in {0, 1}, and correlate: DF_k = corr(z_k(x), pi_k(x)) (Eq. 19),
   DF = mean_k DF_k (Eq. 20) (:func:`fidelity`). The random baseline correlates the same
   judgments of a shuffled example list with the unshuffled router weights. The sampling
   rule and the statistics are pure functions in :mod:`pipeline.metrics`; this module
   makes the judge calls and writes the outputs.

What a "prompt" is here: the text of the user's LAST message (the turn the response
answers; for a multi-turn prompt without a user turn, the last message). Pairs that share
a prompt share their router input, so prompts are de-duplicated by text before ranking
and before sampling; specialization (Eq. 11-13) is still computed over all test pairs.

Describers and judges are the backends of :mod:`pipeline.describers` (``keywords``,
``hf:<model>``, ``openai:<base_url>``). Every setting that changes the outputs is a field
of :class:`InterpretConfig` (params.yaml's ``interpret:`` block, which DVC tracks).

Outputs (:func:`interpret_variant`): ``experts.md`` (a Table-11-style table: id,
description, fidelity, specialization) and ``experts.json`` (the same plus
``description_fidelity``, ``description_fidelity_random`` and each expert's top prompts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Len

import numpy as np

from pipeline import metrics, pairs
from pipeline.cache import write_json
from pipeline.describers import Backend, Connection, InterpretError, backend_kind, make_backend
from pipeline.evaluate import split_specialization
from pipeline.models import RewardHead, check_compatible, predict
from pipeline.split_store import SplitStore, SplitStores

# The trained variants (pipeline.train.VARIANTS) whose routing depends on the prompt, and
# those whose does not: a single head has one expert, a hyre ensemble weights its heads
# the same for every input. Only the first have experts that prompts can describe.
ROUTED = ("vanilla", "micro", "sparse")
UNROUTED = ("single", "hyre")

# App. A: the judged sample's top stratum is the top 10 % of test prompts by pi_k. The
# specialization reported next to fidelity uses the same share for Eq. 12's T_k, so the
# table's two columns look at the same examples.
TOP_FRACTION = 0.10

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class InterpretConfig:
    """Every setting that changes interpret's outputs, with the paper's defaults (§6.1,
    App. A). The backend-specific ones apply only when that backend is chosen. How an
    ``openai:`` endpoint is reached (key, timeout, retries) changes no output and is a
    :class:`~pipeline.describers.Connection` instead."""

    describer: str = "keywords"       # keywords | hf:<model or path> | openai:<base_url>
    judge: str = "keywords"           # same choices; the same spec as describer shares one backend
    top_n: Annotated[int, Ge(1)] = 20                   # validation prompts per expert shown to the describer
    per_stratum: Annotated[int, Ge(1)] = 100            # test prompts judged per stratum (top 10 % / the rest)
    seed: Annotated[int, Ge(0)] = 0   # of the stratified sample and of the random baseline
    keywords: Annotated[int, Ge(1)] = 5                 # keywords: terms per description
    llm_model: Annotated[str, Len(1)] = "gpt-4o-mini"    # openai: model name sent to the endpoint
    max_new_tokens: Annotated[int, Ge(1)] = 48          # hf: tokens generated for a description
    device: str = "auto"              # hf: auto | cpu | cuda | cuda:<n> | mps

    def __post_init__(self) -> None:
        backend_kind(self.describer, "describer")
        backend_kind(self.judge, "judge")
        for name in ("top_n", "per_stratum", "keywords", "max_new_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.llm_model, str) or not self.llm_model.strip():
            raise ValueError(f"llm_model must be a model name, got {self.llm_model!r}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:<n> or mps, got {self.device!r}")


def make_backends(config: InterpretConfig, connection: Connection = Connection()) -> tuple[Backend, Backend]:
    """(describer, judge) for ``config``, each given the settings of its kind; one backend
    (one model load, one judgment memo) when both specs are the same. ``connection``: how
    ``openai:`` backends reach their endpoint."""

    def build(spec: str) -> Backend:
        options = {"keywords": {"num_terms": config.keywords},
                   "hf": {"max_new_tokens": config.max_new_tokens, "device": config.device},
                   "openai": {"model": config.llm_model, "connection": connection}}[backend_kind(spec)]
        return make_backend(spec, **options)

    describer = build(config.describer)
    return describer, (describer if config.judge == config.describer else build(config.judge))


# ----------------------------------------------------------------------------- describing


def _unique_by_text(texts: list[str], order: np.ndarray) -> list[int]:
    """Indices from ``order`` whose text has not been seen earlier in ``order``."""
    seen: set[str] = set()
    keep = []
    for i in order:
        if texts[i] not in seen:
            seen.add(texts[i])
            keep.append(int(i))
    return keep


def top_prompts(weights: np.ndarray, pair_ids: list[str], prompt_texts: dict[str, str],
                top_n: int) -> list[list[dict[str, Any]]]:
    """Per expert, its ``top_n`` distinct prompt texts by pi_k(x), highest first:
    ``[{"pair_id", "text", "weight"}]``. Ties keep pair_id order (as in ``pipeline.metrics``)."""
    by_id = np.argsort(np.array(pair_ids), kind="stable")
    texts = [prompt_texts[pair_ids[i]] for i in by_id]
    w = weights[by_id]
    out = []
    for k in range(w.shape[1]):
        keep = _unique_by_text(texts, metrics.top_examples(w, k, len(w)))[:top_n]
        out.append([{"pair_id": pair_ids[by_id[i]], "text": texts[i], "weight": float(w[i, k])} for i in keep])
    return out


def describe_from_weights(weights: np.ndarray, pair_ids: list[str], prompt_texts: dict[str, str],
                          describer: Backend, top_n: int) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """(descriptions, top prompts) for routing weights over a split's pairs: each expert is
    described from its ``top_n`` distinct prompts (:func:`top_prompts`); the split's other
    prompts are the background that the keywords describer contrasts them with."""
    tops = top_prompts(weights, pair_ids, prompt_texts, top_n)
    background = sorted({prompt_texts[p] for p in pair_ids})
    descriptions = describer.describe_all([[t["text"] for t in top] for top in tops], background)
    for k, d in enumerate(descriptions):
        if not d or not d.strip():
            raise InterpretError(f"expert {k}: {describer.name} returned an empty description")
    return descriptions, tops


# ----------------------------------------------------------------------------- fidelity


@dataclass
class FidelityResult:
    overall: float                      # DF, Eq. 20
    per_expert: list[float]             # DF_k, Eq. 19
    random_overall: float               # the shuffled-example baseline
    random_per_expert: list[float]
    samples: list[list[int]] = field(default_factory=list)     # per expert, judged example indices
    judgments: list[list[int]] = field(default_factory=list)   # per expert, z in sample order
    num_top: list[int] = field(default_factory=list)           # per expert, how many came from the top stratum


def fidelity(weights: np.ndarray, prompts: list[str], descriptions: list[str], judge: Backend,
             config: InterpretConfig) -> FidelityResult:
    """Description fidelity (Eq. 19-20) on examples with router weights ``weights`` [N, K]
    and texts ``prompts`` [N] (pass distinct prompts: duplicates would be judged and
    counted twice).

    Per expert k: a stratified sample (:func:`pipeline.metrics.stratified_sample`, top
    :data:`TOP_FRACTION`, ``config.per_stratum`` per stratum, seeded by (seed, k)), judged
    once; DF_k = corr(z_k, pi_k) over it (:func:`pipeline.metrics.description_fidelity`; 0
    when either is constant). The random baseline keeps the weights and the judged examples
    but shuffles the examples (seeded by (seed, k, 1)) before pairing them with the
    weights: corr(z_k[perm], pi_k). A judgment depends only on (description, example), so
    the shuffled list's judgments are the permuted ones and the baseline costs no extra
    judge calls."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(prompts), len(descriptions)):
        raise ValueError(f"weights {weights.shape} do not match {len(prompts)} prompts x {len(descriptions)} descriptions")
    samples, judgments, num_top = [], [], []
    for k, description in enumerate(descriptions):
        top, rest = metrics.stratified_sample(weights[:, k], config.per_stratum, TOP_FRACTION,
                                              np.random.default_rng([config.seed, k]))
        sample = np.concatenate([top, rest])
        z = np.array(judge.judge(k, description, [prompts[i] for i in sample]), dtype=np.float64)
        if len(z) != len(sample) or not np.isin(z, (0.0, 1.0)).all():
            raise InterpretError(f"expert {k}: judge must return one 0/1 per example, got {z.tolist()[:10]}")
        samples.append(sample)
        judgments.append(z)
        num_top.append(len(top))
    pis = [weights[sample, k] for k, sample in enumerate(samples)]
    shuffled = [z[np.random.default_rng([config.seed, k, 1]).permutation(len(z))] for k, z in enumerate(judgments)]
    overall, per_expert = metrics.description_fidelity(judgments, pis)
    random_overall, random_per_expert = metrics.description_fidelity(shuffled, pis)
    return FidelityResult(overall, per_expert, random_overall, random_per_expert,
                          samples=[s.tolist() for s in samples],
                          judgments=[z.astype(int).tolist() for z in judgments], num_top=num_top)


# ----------------------------------------------------------------------------- one variant


def skip_reason(head: RewardHead) -> str | None:
    """Why a head has nothing to interpret, or None."""
    if head.num_experts < 2:
        return "a single-expert head has no routing to interpret"
    if head.config.kind != "moe" or head.router is None:
        return f"a {head.config.kind} head's weights do not depend on the input; nothing to interpret"
    return None


def _distinct(pair_ids: list[str], prompt_texts: dict[str, str]) -> list[int]:
    """Row indices (into pair_ids) of the first pair, by pair_id, of each distinct prompt text."""
    order = np.argsort(np.array(pair_ids), kind="stable")
    return _unique_by_text([prompt_texts[p] for p in pair_ids], order)


def _specialization(val_weights: np.ndarray, val_states: SplitStore, weights: np.ndarray, margins: np.ndarray,
                    states: SplitStore) -> tuple[str, list[float], list[str] | None]:
    """Per-expert specialization on the test split, exactly as the evaluate stage computes it
    (Eq. 11 with validation-assigned categories when every pair has one, else Eq. 12 on the
    top :data:`TOP_FRACTION`)."""
    spec = split_specialization(val_states, val_weights, states, weights, margins, top_m=TOP_FRACTION)
    if "category_coverage" in spec:
        return "category", spec["experts"]["specialization"], spec["experts"]["category"]
    return "topm", spec["experts"]["specialization_topm"], None


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def experts_markdown(report: dict[str, Any]) -> str:
    """Table 11's layout: ID, description, description fidelity, expert specialization."""
    kind = "category, Eq. 11" if report["specialization_kind"] == "category" else f"top {report['top_m']:g}, Eq. 12"
    name = "/".join(str(x) for x in (report.get("experiment"), report["variant"]) if x)
    lines = [f"# Experts of {name}",
             "",
             f"Described by `{report['describer']}` from the top {report['top_n']} validation prompts; judged by "
             f"`{report['judge']}`. Description fidelity (Eq. 20): **{report['description_fidelity']:.3f}** "
             f"(random baseline {report['description_fidelity_random']:.3f}). Specialization in percentage points "
             f"({kind}, test split).",
             "",
             "| ID | Natural Language Description | Description Fidelity | Expert Specialization |",
             "|---:|---|---:|---:|"]
    for e in report["experts"]:
        lines.append(f"| {e['id']} | {_cell(e['description'])} | {e['fidelity']:.2f} | {100 * e['specialization']:.2f} |")
    return "\n".join(lines) + "\n"


def interpret_variant(stores: SplitStores, prepared_pairs: str | Path, model_dir: str | Path, out_dir: str | Path,
                      config: InterpretConfig, *, connection: Connection = Connection(),
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe and judge every expert of the head in ``model_dir`` as ``config`` says;
    write ``out_dir/experts.md`` and ``out_dir/experts.json`` and return the report. A head with nothing to interpret (single, hyre)
    raises :class:`InterpretError` before the splits or backends are loaded. The files are
    written last, after every judge call, but one after the other: a caller that needs
    them to appear together writes to a staging folder and renames it (the stage does)."""
    head = RewardHead.load(model_dir)
    variant = str(head.config.extra.get("variant", Path(model_dir).name))
    reason = skip_reason(head)
    if reason is not None:
        raise InterpretError(f"{model_dir}: {reason}")
    check_compatible(head.config, stores.cache_manifest, f"{model_dir} on {stores.path}")
    validation, test = stores.split("validation"), stores.split("test")
    prompt_texts = pairs.prompt_texts(prepared_pairs, set(validation.pair_ids) | set(test.pair_ids))
    # Backends last: an hf model takes a while to load, and bad inputs should fail first.
    describer, judge = make_backends(config, connection)

    val_weights, _ = predict(head, validation)
    descriptions, tops = describe_from_weights(val_weights, validation.pair_ids, prompt_texts, describer,
                                               config.top_n)
    weights, margins = predict(head, test)
    rows = _distinct(test.pair_ids, prompt_texts)
    texts = [prompt_texts[test.pair_ids[i]] for i in rows]
    fid = fidelity(weights[rows], texts, descriptions, judge, config)
    kind, spec, assigned = _specialization(val_weights, validation, weights, margins, test)
    experts = []
    for k, description in enumerate(descriptions):
        entry = {"id": k, "description": description, "fidelity": fid.per_expert[k],
                 "fidelity_random": fid.random_per_expert[k], "specialization": spec[k],
                 "num_judged": len(fid.samples[k]), "num_judged_top": fid.num_top[k],
                 "num_judged_yes": int(sum(fid.judgments[k])), "top_prompts": tops[k]}
        if assigned is not None:
            entry["category"] = assigned[k]
        experts.append(entry)
    report = {**(extra or {}), "variant": variant, "num_experts": head.num_experts,
              "describer": describer.name, "judge": judge.name,
              "description_fidelity": fid.overall, "description_fidelity_random": fid.random_overall,
              "expert_specialization": float(np.mean(spec)), "specialization_kind": kind,
              "top_n": config.top_n, "per_stratum": config.per_stratum, "top_m": TOP_FRACTION, "seed": config.seed,
              "num_test_prompts": len(rows), "num_validation_pairs": len(validation), "experts": experts}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "experts.json", report)
    (out_dir / "experts.md").write_text(experts_markdown(report))
    return report
