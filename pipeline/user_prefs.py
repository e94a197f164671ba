"""User-facing personalization: adapt a trained reward model to one user's labelled pairs.

    pairs = read_preference_file("prefs.jsonl")          # {"prompt", "chosen", "rejected"} per line
    model = RewardModel.load("data/models/categories/sparse", backbone="data/backbone")
    head, report = adapt_model(model, pairs, AdaptConfig())
    save_adapted("out/me", head, report)                 # a head folder + report.md / report.json

The adaptation itself is :func:`pipeline.adaptation.adapt` (Hedge router adaptation for MoE
heads, HyRe reweighting for the ensemble, nothing for a single head): only the way experts
are combined moves, never the experts. The saved folder is an ordinary head, so it loads
with ``RewardModel.load(out, backbone)``; :func:`reward_function` wraps such a model as a
reward function with the signature GRPO trainers call (paper App. I).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any


from pipeline.adaptation import AdaptConfig, adapt, method_for, pair_accuracy
from pipeline.models import RewardHead
from pipeline.pairs import as_messages, canonical_prompt
from pipeline.reward_model import RewardModel
from pipeline.errors import UserError

KEYS = ("prompt", "chosen", "rejected")
METHODS = {
    "hedge": "Hedge router adaptation (only the router was trained; the experts are unchanged)",
    "hyre": "HyRe reweighting of the ensemble (input-independent weights; the heads are unchanged)",
    "none": "none: a single head has no expert weights to adapt, so the model was copied unchanged",
}


class PreferenceFileError(UserError, ValueError):
    """A user's preference file (or the place its adapted model should go) cannot be used."""


# ----------------------------------------------------------------------------- input


def _prompt_problem(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return None if prompt.strip() else "'prompt' is empty"
    if not isinstance(prompt, list):
        return f"'prompt' must be text or a list of {{\"role\", \"content\"}} messages, got {type(prompt).__name__}"
    if not prompt:
        return "'prompt' is an empty list of messages"
    try:
        messages = as_messages(prompt)
    except TypeError:
        return "'prompt' messages must each be an object with 'role' and 'content'"
    if not all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in messages):
        return "'prompt' messages need text 'role' and 'content'"
    if not messages[-1]["content"].strip():
        return "the last 'prompt' message is empty"
    return None


def read_preference_file(path: str | Path, min_pairs: int = 5) -> list[dict[str, Any]]:
    """Labelled pairs from a jsonl file: one ``{"prompt", "chosen", "rejected"}`` object per
    line (other keys are kept and ignored). ``prompt`` is text or a list of chat messages.
    Blank lines are skipped. Returns the rows with their 1-based ``line`` number.

    Raises :class:`PreferenceFileError` naming the file and line for invalid JSON, a missing,
    non-text or empty field, chosen == rejected, a pair that repeats an earlier line, or
    fewer than ``min_pairs`` pairs."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str], int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PreferenceFileError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PreferenceFileError(f"{where}: expected a JSON object with {list(KEYS)}, "
                                          f"got {type(row).__name__}")
            missing = [k for k in KEYS if k not in row]
            if missing:
                raise PreferenceFileError(f"{where}: missing {', '.join(repr(k) for k in missing)}; each line needs "
                                          f"{list(KEYS)}, got keys {sorted(row)}")
            problem = _prompt_problem(row["prompt"])
            if problem:
                raise PreferenceFileError(f"{where}: {problem}")
            for key in ("chosen", "rejected"):
                if not isinstance(row[key], str):
                    raise PreferenceFileError(f"{where}: {key!r} must be text, got {type(row[key]).__name__}")
                if not row[key].strip():
                    raise PreferenceFileError(f"{where}: {key!r} is empty")
            if row["chosen"].strip() == row["rejected"].strip():
                raise PreferenceFileError(f"{where}: 'chosen' and 'rejected' are the same text; a pair "
                                          f"needs two different responses")
            key = (canonical_prompt(as_messages(row["prompt"])), row["chosen"], row["rejected"])
            if key in seen:
                raise PreferenceFileError(f"{where}: duplicate pair: the same prompt, chosen and rejected "
                                          f"as line {seen[key]} (lines {seen[key]} and {n})")
            seen[key] = n
            rows.append({**row, "line": n})
    if len(rows) < min_pairs:
        lines = f" (lines {rows[0]['line']}-{rows[-1]['line']})" if rows else ""
        raise PreferenceFileError(f"{path}: {len(rows)} labelled pair{'s' * (len(rows) != 1)}{lines}; "
                                  f"need at least {min_pairs} to adapt on")
    return rows


def default_descriptions_path(model_dir: str | Path) -> Path | None:
    """``data/interpret/<exp>/<variant>/experts.json`` for a model in
    ``data/models/<exp>/<variant>``; None when the folder is laid out otherwise."""
    model_dir = Path(model_dir).resolve()
    if len(model_dir.parents) < 3 or model_dir.parent.parent.name != "models":
        return None
    return model_dir.parents[2] / "interpret" / model_dir.parent.name / model_dir.name / "experts.json"


# ----------------------------------------------------------------------------- adaptation


def adapt_model(model: RewardModel, pairs: Sequence[Mapping[str, Any]], config: AdaptConfig | None = None, *,
                descriptions: Mapping[int, str] | None = None) -> tuple[RewardHead, dict[str, Any]]:
    """Adapt ``model``'s head to ``pairs`` (rows of :func:`read_preference_file`).

    Returns the adapted head (a new one; ``model`` is unchanged) and a report: the method,
    settings, accuracy on these same pairs before and after (training-set accuracy, not a
    held-out estimate), and per expert the mean routing weight over the pairs' prompts
    before and after, sorted by shift (largest increase first), with its description when
    ``descriptions`` ({expert id: text}) has one."""
    config = config or AdaptConfig()
    if not pairs:
        raise ValueError("no pairs to adapt on")
    prompts = [p["prompt"] for p in pairs]
    # One call for both responses: each prompt is encoded once, its responses packed behind it.
    prompt_states, response_states = model.states(prompts + prompts, [p["chosen"] for p in pairs]
                                                  + [p["rejected"] for p in pairs])
    head = model.head
    device = next(head.parameters()).device
    n = len(pairs)
    # clone(): states come from inference mode, and the router adaptation needs autograd.
    prompt, chosen, rejected = (t.to(device).clone() for t in
                                (prompt_states[:n], response_states[:n], response_states[n:]))
    accuracy_before, weights_before = pair_accuracy(head, prompt, chosen, rejected)
    adapted = adapt(head, prompt, chosen, rejected, config)
    accuracy_after, weights_after = pair_accuracy(adapted, prompt, chosen, rejected)
    descriptions = descriptions or {}
    experts = [{"id": k, "weight_before": b, "weight_after": a, "shift": a - b, "description": descriptions.get(k)}
               for k, (b, a) in enumerate(zip(weights_before, weights_after))]
    experts.sort(key=lambda e: (-e["shift"], e["id"]))
    report = {
        "method": method_for(head),
        "num_pairs": n,
        "num_experts": head.num_experts,
        "settings": asdict(config),
        "training_accuracy_before": accuracy_before,
        "training_accuracy_after": accuracy_after,
        "experts": experts,
    }
    return adapted, report


# ----------------------------------------------------------------------------- output


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable form of an :func:`adapt_model` report."""
    source = f" `{report['model']}`" if report.get("model") else ""
    examples = f" from `{report['examples']}`" if report.get("examples") else ""
    lines = [
        "# Personalized reward model", "",
        f"Adapted{source} on {report['num_pairs']} labelled pairs{examples}.", "",
        f"- Method: {METHODS.get(report['method'], report['method'])}.",
        "- Settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()) + ".", "",
        "## Accuracy on your pairs (training set)", "",
        "These are the same pairs the model was adapted on, so the accuracy after adaptation is a "
        "training-set accuracy: it shows the fit, not how well the model will generalize to new pairs.", "",
        "| | before | after |", "|---|---|---|",
        f"| training-set accuracy | {_pct(report['training_accuracy_before'])} | "
        f"{_pct(report['training_accuracy_after'])} |", "",
        "## Expert weights", "",
        "Mean routing weight over your prompts, before and after adaptation, sorted by shift "
        "(largest increase first).", "",
        "| expert | before | after | shift | description |", "|---|---|---|---|---|",
    ]
    for e in report["experts"]:
        text = (e.get("description") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| E{e['id']} | {e['weight_before']:.3f} | {e['weight_after']:.3f} | "
                     f"{e['shift']:+.3f} | {text} |")
    lines.append("")
    source = report.get("descriptions_file")
    if report.get("descriptions_found"):
        lines.append(f"Expert descriptions from `{source}`.")
    elif source:
        lines.append(f"No expert descriptions: `{source}` does not exist (run `smoe interpret` for this "
                     f"model, or pass `--descriptions`).")
    else:
        lines.append("No expert descriptions: none were given (`--descriptions`) and the model folder is not "
                     "laid out as `data/models/<experiment>/<variant>`.")
    return "\n".join(lines) + "\n"


def write_report(directory: str | Path, report: Mapping[str, Any]) -> None:
    """``report.json`` and ``report.md`` in ``directory``."""
    directory = Path(directory)
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (directory / "report.md").write_text(report_markdown(report))


def check_output_dir(out: str | Path, force: bool = False, keep: Sequence[str | Path] = ()) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``force``. Even with
    ``force``, refuse one that is or contains any path of ``keep`` (the model, the examples)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise PreferenceFileError(f"{out}: --out exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise PreferenceFileError(f"{out}: --out is not empty; pass --force to replace it")
    resolved = out.resolve()
    for path in keep:
        path = Path(path).resolve()
        if path == resolved or resolved in path.parents:
            raise PreferenceFileError(f"{out}: --out contains {path}; refusing to replace it even with --force")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise PreferenceFileError(f"{out}: --out is the working directory or one of its parents; "
                                  f"refusing to replace it even with --force")


def save_adapted(out: str | Path, head: RewardHead, report: Mapping[str, Any], force: bool = False,
                 **extra: Any) -> Path:
    """Write the adapted head (``model.safetensors`` + ``config.json``, with ``extra`` in its
    config) and the report to ``out``, all or nothing: everything goes to a temporary folder
    beside ``out`` that replaces it only once complete."""
    out = Path(out)
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        head.save(tmp, **extra)
        write_report(tmp, report)
        # Old folder aside, new one in, old one gone: at every instant `out` is either the
        # previous complete folder or the new complete one.
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- policy training


def _text(completion: Any) -> str:
    """A completion as text: a string, or TRL's conversational ``[{"role": "assistant",
    "content": ...}]`` (the contents of several messages are joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion["content"])
    if isinstance(completion, (list, tuple)):
        return "".join(_text(m) for m in completion)
    raise TypeError(f"completion must be text or a list of messages, got {type(completion).__name__}")


def load_descriptions(experts_json: str | Path) -> dict[int, str]:
    """Expert id -> description from interpret's ``experts.json`` (empty when absent)."""
    path = Path(experts_json)
    if not path.exists():
        return {}
    try:
        return {int(e["id"]): str(e["description"]) for e in json.loads(path.read_text()).get("experts", [])}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise PreferenceFileError(f"{path}: not interpret's experts.json ({type(e).__name__}: {e}); re-run "
                                  f"interpret, or pass the right file") from None


def reward_function(model: RewardModel, batch_size: int = 64,
                    name: str = "smoe_reward") -> Callable[..., list[float]]:
    """``model`` as a reward function for GRPO-style policy training (e.g. TRL's
    ``GRPOTrainer(reward_funcs=[...])``): ``f(prompts, completions, **kwargs) -> list[float]``,
    one reward per completion. Accepts the standard format (prompts and completions are
    strings) and the conversational one (prompts are lists of ``{"role", "content"}``
    messages, completions lists like ``[{"role": "assistant", "content": ...}]``). Other
    keyword arguments (dataset columns, ``completion_ids``, ...) are ignored. Scores
    ``batch_size`` completions per backbone call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        texts = [_text(c) for c in completions]
        rewards: list[float] = []
        for start in range(0, len(texts), batch_size):
            scores = model.score(list(prompts[start:start + batch_size]), texts[start:start + batch_size])
            rewards.extend(float(r) for r in scores.reward)
        return rewards

    reward.__name__ = reward.__qualname__ = name
    return reward
