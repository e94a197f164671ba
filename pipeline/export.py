"""Export a trained head with its backbone as a Hugging Face checkpoint (`smoe export`).

Two formats, chosen by whether the routing depends on the input:

``linear``: fixed routing collapses to ONE linear score head.
    A single head (pi = 1), the HyRe ensemble (its ensemble weights, frozen prior heads
    included), or an MoE head with given routing weights (steering towards one expert is
    the one-hot case) all score r(x, y) = sum_k pi_k v_k . (h - mean) / scale, where v_k is
    expert k's weight vector (plus its prior head for HyRe). That is

        r(x, y) = w' . h + c,   w' = (sum_k pi_k v_k) / scale,   c = -w' . mean

    and w' becomes ``score.weight`` of the backbone's own ``*ForSequenceClassification``
    class (e.g. ``LlamaForSequenceClassification``): safetensors, no custom code, loadable
    by ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")``
    with ``trust_remote_code=False``, servable by anything that serves that class.

    The constant c cannot be folded in: Llama's (and most decoders') score head has no
    bias, and h is post-norm, so no fixed direction of h is constant either. The exported
    logit is therefore ``r(x, y) - c``. c is one number per exported model, the same for
    every prompt and response, so it changes no preference (r(x, y1) - r(x, y2) is
    unchanged: Bradley-Terry probabilities, RewardBench accuracy, best-of-n) and no
    group-normalized advantage ((r_i - mean_j r_j) / std_j r_j in GRPO is unchanged). It
    is stored in ``config.json`` as ``smoe.reward_offset``: ``reward = logit + offset``.
    Where the class's score head does have a bias, c goes into it and the offset is 0.

``moe``: input-dependent routing needs the router, i.e. custom code.
    The folder carries ``modeling_smoe.py`` (:mod:`pipeline.hf_moe_modeling`) and an
    ``auto_map`` entry, as ArmoRM ships, and loads with ``trust_remote_code=True``. Its
    forward takes the one chat-templated sequence and finds the prompt state itself, at
    the last token of the last assistant header; see that module's docstring.

Both formats score the same token sequence smoe-rm scores: the exported tokenizer's chat
template is the backbone's with the formatting featurize used baked in (the system
prompt, the pinned date), automatic special tokens are switched off when the chat
template already writes them, the pad token is one that never ends a sequence (HF's
sequence classifiers pool the rightmost non-pad token, which must be the last real
token: with SmolLM2's template that is the ``\\n`` after ``<|im_end|>``), and truncation
cuts from the left, which keeps the last ``max_length`` tokens as ``truncate_prompt_left``
does. :func:`export` checks all of this on probe conversations, and by default checks
the written checkpoint's scores against :class:`~pipeline.reward_model.RewardModel` too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import backbone as bb
from pipeline.errors import UserError
from pipeline.integrity import write_checksums
from pipeline.models import RewardHead
from pipeline.reward_model import RewardModel
from pipeline.user_prefs import default_descriptions_path, load_descriptions

FORMATS = ("auto", "linear", "moe")
MODELING_TEMPLATE = Path(__file__).with_name("hf_moe_modeling.py")
MODELING_FILE = "modeling_smoe.py"
MOE_CLASS = "SmoeMoERewardModel"
_BACKBONE_LINE = re.compile(r"^from transformers import .*# smoe:backbone.*$", re.MULTILINE)
# Probe conversations: one single-turn, one multi-turn (the header must be found in the LAST turn).
PROBES: tuple[tuple[list[dict[str, str]], str], ...] = (
    ([{"role": "user", "content": "How do I proof dough?"}], "Knead it, let it rest for an hour, then shape and bake."),
    ([{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."},
      {"role": "user", "content": "Another one, please."}], "Eleven is prime too."),
)


class ExportError(UserError, ValueError):
    """A head, routing or backbone that cannot be exported as asked (one line)."""


# ----------------------------------------------------------------------------- the math


@dataclass
class Collapsed:
    """A fixed-routing head as one linear score: ``reward = weight . h + offset``."""

    weight: torch.Tensor   # [H] float64: w' = (sum_k pi_k v_k) / scale
    offset: float          # c = -w' . mean, the constant the exported logit leaves out
    routing: list[float]   # the pi used


def expert_vectors(head: RewardHead) -> torch.Tensor:
    """v_k for every expert, [K, H] float64: the expert's weights, plus its frozen prior
    head for HyRe (``expert_rewards`` adds ``prior_scale * prior_k . h_std``)."""
    vectors = head.experts.weight.detach().double().cpu()
    if head.config.kind == "hyre":
        vectors = vectors + head.config.prior_scale * head.prior.detach().double().cpu()
    return vectors


def fixed_routing(head: RewardHead, routing_weights: Sequence[float] | None = None) -> torch.Tensor:
    """The input-independent pi of a head, [K] float64: given weights if any, else pi = 1
    for a single head, the ensemble weights for HyRe. An MoE router depends on the input,
    so an MoE head needs ``routing_weights`` (or the ``moe`` format)."""
    k = head.num_experts
    if routing_weights is not None:
        pi = torch.as_tensor([float(w) for w in routing_weights], dtype=torch.float64)
        if pi.shape != (k,):
            raise ExportError(f"--routing-weights needs {k} numbers (one per expert), got {len(pi)}")
        if not torch.isfinite(pi).all() or (pi < 0).any() or not math.isclose(float(pi.sum()), 1.0, abs_tol=1e-4):
            raise ExportError(f"--routing-weights must be non-negative and sum to 1, got {pi.tolist()}")
        return pi
    if head.config.kind == "hyre":
        return head.ensemble_log_weights.detach().double().cpu().exp()
    if head.router is None:  # single head, or an MoE with one expert
        return torch.ones(k, dtype=torch.float64)
    raise ExportError(f"this {head.config.kind} head routes by the input ({k} experts, a router on the prompt "
                      f"state); export it with --format moe, or fix the routing with --routing-weights / --expert")


def one_hot(num_experts: int, expert: int) -> list[float]:
    """Routing that puts all weight on one expert: steering at w = 1 (App. A Eq. 14)."""
    if not 0 <= expert < num_experts:
        raise ExportError(f"--expert must be in 0..{num_experts - 1}, got {expert}")
    return [1.0 if k == expert else 0.0 for k in range(num_experts)]


def collapse(head: RewardHead, routing_weights: Sequence[float] | None = None) -> Collapsed:
    """Fold routing and input standardization into one vector; see the module docstring."""
    pi = fixed_routing(head, routing_weights)
    combined = (pi[:, None] * expert_vectors(head)).sum(0)
    weight = combined / head.response_scale.detach().double().cpu()
    offset = -float(weight @ head.response_mean.detach().double().cpu())
    return Collapsed(weight, offset, pi.tolist())


def fold_moe_head(head: RewardHead) -> dict[str, torch.Tensor]:
    """The MoE head's weights with standardization folded into the first layers, named as
    :class:`~pipeline.hf_moe_modeling.SmoeMoERewardModel` names them (float32)."""
    mean, scale = head.response_mean.double().cpu(), head.response_scale.double().cpu()
    experts = expert_vectors(head) / scale                       # w_k / scale
    state = {"smoe_experts.weight": experts, "smoe_experts.bias": -(experts @ mean)}
    layers = [m for m in (head.router.net if isinstance(head.router.net, torch.nn.Sequential) else [head.router.net])
              if isinstance(m, torch.nn.Linear)]
    slots = [0] if head.config.router == "linear" else [0, 2]  # positions in the template's Sequential
    p_mean, p_scale = head.prompt_mean.double().cpu(), head.prompt_scale.double().cpu()
    for i, layer in enumerate(layers):
        w, b = layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()
        if i == 0:  # W (x - m) / s + b = (W / s) x + (b - (W / s) m)
            w = w / p_scale
            b = b - w @ p_mean
        state[f"smoe_router.net.{slots[i]}.weight"] = w
        state[f"smoe_router.net.{slots[i]}.bias"] = b
    return {k: v.float().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------- the tokenizer


def baked_chat_template(backbone: bb.Backbone) -> str:
    """The backbone's chat template with the formatting featurize used fixed in it: the
    configured system prompt is inserted when the messages have none (as
    ``Backbone.render`` does) and template variables such as the pinned date are set,
    so ``tokenizer.apply_chat_template(messages)`` renders exactly what smoe-rm scored."""
    template = backbone.tokenizer.chat_template or bb.FALLBACK_TEMPLATE
    if not isinstance(template, str):
        raise ExportError("the backbone's tokenizer has several named chat templates; export needs one")
    lines = []
    for key, value in sorted(backbone.template_kwargs.items()):
        lines.append("{%- set " + key + " = " + json.dumps(value, ensure_ascii=False) + " %}")
    system = backbone.config.system_prompt
    if system is not None:
        lines.append("{%- if messages[0]['role'] != 'system' %}{%- set messages = [{'role': 'system', 'content': "
                     + json.dumps(system, ensure_ascii=False) + "}] + messages %}{%- endif %}")
    return "".join(lines) + template


def _probe_sequences(backbone: bb.Backbone) -> list[tuple[list[dict[str, str]], str, bb.Encoded]]:
    out = []
    for prompt, response in PROBES:
        try:
            out.append((prompt, response, backbone.encode(prompt, response)))
        except ValueError as e:
            raise ExportError(f"probe conversation does not fit backbone.max_length={backbone.config.max_length} "
                              f"({e})") from None
    return out


def _choose_pad(tok: Any, last_tokens: set[int]) -> int:
    """A pad id that is never the last real token: HF pools the rightmost non-pad token."""
    candidates = [tok.pad_token_id, tok.unk_token_id, tok.eos_token_id, tok.bos_token_id,
                  *getattr(tok, "all_special_ids", [])]
    for pad in candidates:
        if pad is not None and pad not in last_tokens:
            return int(pad)
    raise ExportError(f"every special token of the tokenizer can end a sequence ({sorted(last_tokens)}); "
                      f"there is no safe pad token")


def _disable_auto_special_tokens(tok: Any) -> None:
    """Make ``tok(text)`` tokenize as ``tok(text, add_special_tokens=False)``: the chat
    template writes its own BOS, and pipelines call the tokenizer with defaults."""
    for attr in ("add_bos_token", "add_eos_token"):
        if getattr(tok, attr, False):
            setattr(tok, attr, False)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and backend.post_processor is not None:
        from tokenizers import processors

        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])


def export_tokenizer(backbone: bb.Backbone, probes: list[tuple[list[dict[str, str]], str, bb.Encoded]]) -> Any:
    """A fresh copy of the backbone's tokenizer set up to reproduce smoe-rm's token
    sequences (see the module docstring)."""
    from transformers import AutoTokenizer

    config = backbone.config
    # Passed at load (not set afterwards) so that save_pretrained writes them out.
    tok = AutoTokenizer.from_pretrained(bb.HUB_ALIASES.get(config.model, config.model), revision=config.revision,
                                        trust_remote_code=config.trust_remote_code, padding_side="right",
                                        truncation_side="left",  # keeps the last max_length tokens, as
                                        model_max_length=config.max_length)  # truncate_prompt_left does
    tok.chat_template = baked_chat_template(backbone)
    text = tok.apply_chat_template([*probes[0][0], {"role": "assistant", "content": probes[0][1]}], tokenize=False)
    if tok(text).input_ids != tok(text, add_special_tokens=False).input_ids:
        _disable_auto_special_tokens(tok)
    pad = _choose_pad(tok, {(e.prefix + e.response)[-1] for _, _, e in probes})
    tok.pad_token = tok.convert_ids_to_tokens(pad)
    return tok


def check_tokenizer(folder: Path, probes: list[tuple[list[dict[str, str]], str, bb.Encoded]]) -> None:
    """The saved tokenizer, as a consumer loads it, turns each probe conversation into
    exactly smoe-rm's token sequence, with the default call and with special tokens off."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    for prompt, response, encoded in probes:
        text = tok.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
        expected = encoded.prefix + encoded.response
        for special in (True, False):
            got = tok(text, add_special_tokens=special).input_ids
            if got != expected:
                raise ExportError(f"the exported tokenizer does not reproduce smoe-rm's tokens "
                                  f"(add_special_tokens={special}): {len(got)} vs {len(expected)} tokens, first "
                                  f"difference at {next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))}")
        if tok.pad_token_id == expected[-1]:
            raise ExportError("the exported pad token is the sequence's last token; HF would pool the wrong state")


def assistant_header_ids(backbone: bb.Backbone, probes: list[tuple[list[dict[str, str]], str, bb.Encoded]]) -> list[int]:
    """The token ids the chat template appends for ``add_generation_prompt=True``: the
    prompt state is read at the last of them. Must be the same for every probe."""
    headers = set()
    for prompt, _, encoded in probes:
        bare = backbone.tokenizer(backbone.render(prompt, add_generation_prompt=False),
                                  add_special_tokens=False).input_ids
        if encoded.prefix[: len(bare)] != bare or len(encoded.prefix) == len(bare):
            raise ExportError("the chat template's generation prompt does not extend the rendered prompt token by "
                              "token; the MoE export cannot locate the prompt state in a single sequence")
        headers.add(tuple(encoded.prefix[len(bare):]))
    if len(headers) != 1:
        raise ExportError(f"the assistant header tokenizes differently in different prompts ({sorted(headers)}); "
                          f"the MoE export cannot locate the prompt state")
    return list(headers.pop())


# ----------------------------------------------------------------------------- the card


def _find_json(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def default_metrics_path(head_dir: str | Path) -> Path | None:
    """``data/metrics/<experiment>/<variant>.json`` for a head in ``data/models/<experiment>/<variant>``."""
    head_dir = Path(head_dir).resolve()
    if len(head_dir.parents) < 3 or head_dir.parent.parent.name != "models":
        return None
    return head_dir.parents[2] / "metrics" / head_dir.parent.name / f"{head_dir.name}.json"


def model_card(info: dict[str, Any], metrics: dict[str, Any] | None, experts: dict[int, str]) -> str:
    """README.md of an exported folder: what it is, how to load it, what it was trained on."""
    smoe, head = info["smoe"], info["head"]
    extra = head.get("extra", {})
    objective = extra.get("objective") or {}
    lambdas = ", ".join(f"{k} = {objective[k]}" for k in ("lambda_ls", "lambda_gb", "lambda_div") if k in objective)
    lines = ["---", "library_name: transformers", "pipeline_tag: text-classification", "tags: [reward-model, smoe-rm]",
             "---", "", f"# smoe-rm reward model: {extra.get('experiment', '?')} / {extra.get('variant', head['kind'])}",
             "", "| | |", "|---|---|",
             f"| format | `{smoe['format']}` ({'standard ' + info['architecture'] + ', no custom code' if smoe['format'] == 'linear' else 'custom code, `trust_remote_code=True`'}) |",
             f"| backbone | `{smoe['backbone']}` (revision `{smoe['backbone_revision']}`) |",
             f"| data | experiment `{extra.get('experiment', '?')}`, dataset `{extra.get('dataset', '?')}`, cache revision `{extra.get('cache_revision', '?')}` |",
             f"| variant | `{extra.get('variant', '?')}` (head kind `{head['kind']}`) |",
             f"| K (experts) | {head['num_experts']} |",
             f"| λ's | {lambdas or 'none (not the sparse objective)'} |",
             f"| chat template hash | `{head.get('template_hash') or '?'}` |"]
    if smoe["format"] == "linear":
        lines.append(f"| routing (fixed) | {[round(w, 6) for w in smoe['routing_weights']]} |")
        lines.append(f"| reward offset c | {smoe['reward_offset']:.6g} |")
    lines += ["", "## Use", "", "Input is ONE string: the conversation rendered with this folder's chat template "
              "(it already holds the system prompt and settings the model was trained with).", "", "```python",
              "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
              f"tok = AutoTokenizer.from_pretrained(path)",
              f"model = AutoModelForSequenceClassification.from_pretrained(path{', trust_remote_code=True' if smoe['format'] == 'moe' else ''})",
              "messages = [{\"role\": \"user\", \"content\": prompt}, {\"role\": \"assistant\", \"content\": response}]",
              "inputs = tok(tok.apply_chat_template(messages, tokenize=False), return_tensors=\"pt\")",
              "reward = model(**inputs).logits[:, 0]"]
    if smoe["format"] == "moe":
        lines += ["out = model(**inputs)  # also out.expert_rewards [B, K], out.routing_weights [B, K]", "```", "",
                  "The prompt state (the router's input) is read at the last token of the last assistant header "
                  f"(token ids {smoe['assistant_header_ids']}) in the sequence; an input without one is refused. "
                  "`routing_weights=` in the forward call overrides the router (steering)."]
    else:
        lines += ["```", "", "Or `pipeline(\"text-classification\", model=path, function_to_apply=\"none\")` on the "
                  "rendered text, or TRL's `GRPOTrainer(reward_funcs=path)` with conversational data.", "",
                  "### The constant that is not in the logit", "",
                  "smoe-rm's reward is `w'·h + c` with `c = -w'·mean` from the input standardization. The "
                  f"`{info['architecture']}` score head has no bias, so the logit is the reward minus c "
                  f"(`reward = logit + ({smoe['reward_offset']:.6g})`, `smoe.reward_offset` in config.json). c is the "
                  "same for every prompt and response: it changes no preference between two responses "
                  "(Bradley-Terry, RewardBench accuracy, best-of-n) and no group-normalized advantage "
                  "`(r_i - mean r) / std r` (GRPO). Add it back only where absolute reward values matter."]
    if metrics:
        lines += ["", "## Test metrics (smoe-rm evaluate stage)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in sorted(metrics.items()) if isinstance(v, (int, float))]
    if experts:
        lines += ["", "## Experts (smoe-rm interpret stage)", "", "| expert | description |", "|---|---|"]
        lines += [f"| {k} | {d.replace('|', '/')} |" for k, d in sorted(experts.items())]
    lines += ["", "Exported by `smoe export`; checked on probe conversations against smoe-rm's `RewardModel.score`"
              + (f" (max |Δ| = {info['verified']:.2g})." if info.get("verified") is not None else " (check skipped).")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    out: Path
    format: str
    reward_offset: float                 # reward = logit + reward_offset (0 for moe)
    routing_weights: list[float] | None  # linear: the fixed pi
    max_abs_diff: float | None           # verification against RewardModel.score, None if skipped


def _torch_dtype(name: str) -> Any:
    table = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ExportError(f"unknown dtype {name!r}; choose from {', '.join(table)}")
    return table[name]


def tolerance(dtype: torch.dtype) -> float:
    """Allowed |exported - smoe-rm| relative to the reward scale, by the exported dtype:
    float32 differs only by summation order (packed vs plain forward)."""
    return {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}.get(dtype, 1e-2)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Loading a causal-LM checkpoint into a sequence-classification class reports the new
    score head and the unused LM head; both are expected here, so only errors show."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _render_probe(tok: Any, prompt: list[dict[str, str]], response: str) -> str:
    return tok.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)


def verify(out: Path, model: RewardModel, fmt: str, offset: float, routing: list[float] | None,
           trust_remote_code: bool) -> float:
    """Score the probes with the written folder (as a consumer loads it) and with
    ``model``; return max |difference|, raising when it exceeds the dtype's tolerance."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=trust_remote_code).eval()
    texts = [_render_probe(tok, p, r) for p, r in PROBES]
    with torch.inference_mode():
        batch = tok(texts, return_tensors="pt", padding=True)
        result = hf(**batch)
    logits = result.logits[:, 0].double()
    expected = model.score([p for p, _ in PROBES], [r for _, r in PROBES], routing_weights=routing)
    diffs = [(logits + offset - expected.reward.double()).abs()]
    if fmt == "moe":
        diffs += [(result.expert_rewards.double() - expected.expert_rewards.double()).abs(),
                  (result.routing_weights.double() - expected.routing_weights.double()).abs()]
    worst = max(float(d.max()) for d in diffs)
    scale = max(1.0, float(expected.reward.abs().max()), float(expected.expert_rewards.abs().max()))
    dtype = next(hf.parameters()).dtype
    if worst > tolerance(dtype) * scale:
        raise ExportError(f"{out}: the exported model's scores differ from smoe-rm's by {worst:.3g} on the probe "
                          f"conversations (tolerance {tolerance(dtype) * scale:.3g} for {dtype}); this backbone's "
                          f"sequence classifier does not pool the state smoe-rm reads")
    return worst


def _backbone_classes(base: Any) -> tuple[str, str, str]:
    """(config class, base model class, *PreTrainedModel class) names, all importable
    from ``transformers``: what the remote-code file's backbone line imports."""
    import transformers

    model_cls = type(base)
    pretrained = next((c for c in model_cls.__mro__[1:] if c.__name__.endswith("PreTrainedModel")
                       and c.__name__ != "PreTrainedModel"), None)
    names = (type(base.config).__name__, model_cls.__name__, pretrained.__name__ if pretrained else "")
    if not all(names) or not all(hasattr(transformers, n) for n in names):
        raise ExportError(f"backbone class {model_cls.__name__} is not a transformers built-in decoder; "
                          f"the MoE export needs one")
    return names


def write_modeling_file(folder: Path, base: Any) -> Path:
    """Copy the remote-code template into ``folder``, its backbone line naming ``base``'s classes."""
    config_cls, model_cls, pretrained_cls = _backbone_classes(base)
    line = (f"from transformers import {config_cls} as BackboneConfig, {model_cls} as BackboneModel, "
            f"{pretrained_cls} as BackbonePreTrainedModel  # smoe:backbone  # noqa: E501")
    text, count = _BACKBONE_LINE.subn(line, MODELING_TEMPLATE.read_text())
    if count != 1:
        raise RuntimeError(f"{MODELING_TEMPLATE}: expected one `# smoe:backbone` import line, found {count}")
    path = folder / MODELING_FILE
    path.write_text(text)
    return path


def _import_file(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"smoe_export_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(model: RewardModel, out: str | Path, *, fmt: str = "auto", routing_weights: Sequence[float] | None = None,
           expert: int | None = None, dtype: str = "auto", head_dir: str | Path | None = None,
           metrics_path: str | Path | None = None, experts_path: str | Path | None = None,
           check: bool = True, force: bool = False) -> ExportResult:
    """Write ``model`` (backbone + head) to ``out`` as a Hugging Face checkpoint.

    ``fmt``: ``linear`` (fixed routing, standard class), ``moe`` (the router, remote code)
    or ``auto`` (``moe`` for an MoE head without fixed routing, else ``linear``).
    ``routing_weights`` / ``expert`` fix an MoE head's routing (``expert``: one-hot).
    ``head_dir`` locates the default metrics and expert descriptions for the card.
    ``check``: score probe conversations with the written folder and compare.
    The folder is built beside ``out`` and renamed into place when complete."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    head, backbone = model.head, model.backbone
    if routing_weights is not None and expert is not None:
        raise ExportError("give --routing-weights or --expert, not both")
    if expert is not None:
        routing_weights = one_hot(head.num_experts, expert)
    routed = head.router is not None
    if fmt == "auto":
        fmt = "moe" if routed and routing_weights is None else "linear"
    if fmt == "moe" and not routed:
        raise ExportError(f"a {head.config.kind} head has no input-dependent router; export it with --format linear")
    if fmt == "moe" and routing_weights is not None:
        raise ExportError("fixed routing weights make the head linear; use --format linear (or auto)")
    if backbone.pooling != "last":
        raise ExportError(f"the backbone pools by {backbone.pooling!r}; HF sequence classifiers read the last token, "
                          f"so only decoder (last-token) backbones export")
    if fmt == "linear" and backbone.config.trust_remote_code:
        raise ExportError("the backbone itself needs trust_remote_code; a no-custom-code export is impossible")
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    torch_dtype = _torch_dtype(dtype)
    probes = _probe_sequences(backbone)
    head_info = json.loads(json.dumps(vars(head.config), default=str))
    smoe: dict[str, Any] = {"format": fmt, "backbone": backbone.identity.get("backbone"),
                            "backbone_revision": backbone.identity.get("revision"),
                            "template_hash": backbone.template_hash, "head": head_info}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet_transformers():
            hf, architecture, offset = _build(model, fmt, routing_weights, torch_dtype, probes, smoe, tmp)
            hf.save_pretrained(tmp)
            del hf
        check_tokenizer(tmp, probes)
        with _quiet_transformers():
            worst = verify(tmp, model, fmt, offset, smoe["routing_weights"], trust_remote_code=fmt == "moe") \
                if check else None
        metrics = _find_json(Path(metrics_path) if metrics_path else (default_metrics_path(head_dir) if head_dir else None))
        experts_file = Path(experts_path) if experts_path else (default_descriptions_path(head_dir) if head_dir else None)
        experts = load_descriptions(experts_file) if experts_file else {}
        info = {"smoe": smoe, "head": smoe["head"], "architecture": architecture, "verified": worst}
        (tmp / "README.md").write_text(model_card(info, metrics, experts))
        # Last: every file of the folder, so whoever loads it (smoe rewardbench, smoe serve)
        # can tell a damaged export from a good one.
        write_checksums(tmp, [f.name for f in tmp.iterdir() if f.is_file()])
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, fmt, offset, smoe["routing_weights"], worst)


def _build(model: RewardModel, fmt: str, routing_weights: Sequence[float] | None, torch_dtype: Any,
           probes: list[tuple[list[dict[str, str]], str, bb.Encoded]], smoe: dict[str, Any],
           folder: Path) -> tuple[Any, str, float]:
    """The HF model to save (its tokenizer is saved into ``folder`` here), its class name
    and the reward offset; fills ``smoe`` (config.json's ``smoe`` block)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    head, backbone = model.head, model.backbone
    config = backbone.config
    ref = bb.HUB_ALIASES.get(config.model, config.model)
    common = dict(revision=config.revision, trust_remote_code=config.trust_remote_code)
    tok = export_tokenizer(backbone, probes)
    if fmt == "linear":
        collapsed = collapse(head, routing_weights)
        hf = AutoModelForSequenceClassification.from_pretrained(ref, num_labels=1, dtype=torch_dtype, **common)
        score = getattr(hf, "score", None)
        if not isinstance(score, torch.nn.Linear) or score.weight.shape != (1, backbone.hidden_size):
            raise ExportError(f"{type(hf).__name__} has no linear `score` head on the final hidden state; "
                              f"this backbone cannot take a collapsed head")
        offset = collapsed.offset
        with torch.no_grad():
            score.weight.copy_(collapsed.weight.to(score.weight.dtype)[None])
            if score.bias is not None:  # a bias can hold c: nothing is left out
                score.bias.fill_(collapsed.offset)
                offset = 0.0
        smoe.update(routing_weights=collapsed.routing, reward_offset=offset,
                    reward_offset_note="reward = logit + reward_offset; a constant per model: it changes no "
                                       "preference and no group-normalized advantage")
        architecture = type(hf).__name__
    else:
        offset = 0.0
        header = assistant_header_ids(backbone, probes)
        module = _import_file(write_modeling_file(folder, backbone.model))
        cls = getattr(module, MOE_CLASS)
        # the backbone's config under the export's own model type (see SmoeRewardConfig)
        hf_config = module.SmoeRewardConfig.from_dict(AutoConfig.from_pretrained(ref, **common).to_dict())
        hf_config.smoe = {"num_experts": head.num_experts, "router": head.config.router,
                          "router_hidden": head.config.router_hidden, "assistant_header_ids": header}
        hf = cls.from_pretrained(ref, config=hf_config, dtype=torch_dtype, **common)
        loaded = hf.load_state_dict(fold_moe_head(head), strict=False)
        if loaded.unexpected_keys or any(k.startswith("smoe_") for k in loaded.missing_keys):
            raise RuntimeError(f"head weights do not fit the remote-code model: {loaded}")
        entry = f"{MODELING_FILE[:-3]}.{MOE_CLASS}"
        hf.config.auto_map = {"AutoConfig": f"{MODELING_FILE[:-3]}.SmoeRewardConfig",
                              "AutoModelForSequenceClassification": entry, "AutoModel": entry}
        hf.config.architectures = [MOE_CLASS]
        smoe.update(reward_offset=0.0, assistant_header_ids=header, routing_weights=None)
        architecture = MOE_CLASS
    hf.config.num_labels = 1
    hf.config.id2label, hf.config.label2id = {0: "reward"}, {"reward": 0}
    hf.config.problem_type = "regression"  # raw scores: text-classification applies no sigmoid
    hf.config.pad_token_id = tok.pad_token_id
    hf.config.smoe = {**getattr(hf.config, "smoe", {}), **smoe}
    tok.save_pretrained(folder)
    return hf, architecture, offset
