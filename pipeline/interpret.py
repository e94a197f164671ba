"""Expert interpretation and description fidelity (paper §6.1, App. A Eq. 19-20, Fig. 4-5).

For every expert k of a trained MoE head:

1. **Describe.** Take its top-``top_n`` (paper: 20) VALIDATION prompts by routing weight
   pi_k(x) and summarize what they share (:func:`describe_experts`).
2. **Judge.** On TEST prompts, stratified as in App. A (``per_stratum`` = 100 drawn from
   the top 10 % by pi_k, 100 from the other 90 %), ask a judge whether each prompt matches
   the description, z_k(x) in {0, 1}, and correlate: DF_k = corr(z_k(x), pi_k(x)) (Eq. 19),
   DF = mean_k DF_k (Eq. 20) (:func:`fidelity`). The random baseline correlates the same
   judgments of a shuffled example list with the unshuffled router weights.

What a "prompt" is here: the text of the user's LAST message (the turn the response
answers; for a multi-turn prompt without a user turn, the last message). Pairs that share
a prompt share their router input, so prompts are de-duplicated by text before ranking
and before sampling; specialization (Eq. 11-13) is still computed over all test pairs.

Describers and judges are pluggable backends, selected by a string (:func:`make_backend`):

``keywords``
    Offline and deterministic. Describe: class-based TF-IDF (c-TF-IDF, as in BERTopic) with
    one document per expert (its top prompts concatenated) plus one background document
    (the other validation prompts), English stop words removed; the description is
    ``"keywords: a, b, c"``, the expert document's highest-scoring terms. Judge: z = 1 iff
    the prompt contains one of the description's keywords (case-insensitive, whole word);
    a free-text description is reduced to its non-stop words.
``hf:<model name or local path>``
    A local transformers causal LM. Describe: the Fig. 4 prompt as one user turn through
    the tokenizer's chat template, greedy generation (bounded ``max_new_tokens``), the
    ``-"..."`` answer parsed (else the first non-empty line). Judge: the Fig. 5 prompt; no
    generation: z = 1 iff the next-token logit of "YES" exceeds that of "NO" (first token
    of each) after the generation prompt, in left-padded batches.
``openai:<base_url>``
    Any OpenAI-compatible chat-completions endpoint (``POST <base_url>/chat/completions``,
    ``temperature: 0``), over the standard library. The key is read from an environment
    variable (default ``OPENAI_API_KEY``; unset = no Authorization header) and is never
    logged nor put into an error. Timeouts and retries are bounded; a failed call raises
    :class:`InterpretError` naming the expert.

Outputs (:func:`interpret_variant`): ``experts.md`` (a Table-11-style table: id,
description, fidelity, specialization) and ``experts.json`` (the same plus
``description_fidelity``, ``description_fidelity_random`` and each expert's top prompts).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import metrics, pairs
from pipeline.cache import FeatureCache, write_json
from pipeline.evaluate import split_specialization
from pipeline.models import RewardHead, check_compatible
from pipeline.pair_states import PairStates
from pipeline.train import predict

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- prompts
#
# Verbatim from the paper (Figure 4 and Figure 5, adapted there from Movva et al. 2026),
# line breaks as in the paper's text; the figure titles are not part of the prompts.

DESCRIBE_PROMPT = (
    "Task Overview You are a machine learning researcher analyzing a sparse mixture-of-experts reward model. "
    "The model contains a router that assigns each input prompt to one or more experts. You are trying to "
    "understand what feature of the input prompt causes a specific expert to receive high routing weight. "
    "Each dataset example consists only of a user prompt. These prompts were selected because this expert was "
    "strongly activated for them, meaning the router assigned this expert a high weight. Your goal is to "
    "identify the common feature shared by these prompts, and to describe this feature as a concise, natural "
    "language concept. Instructions First, inspect each prompt and consider what concrete property it has.\n"
    "Then, synthesize the single feature that is most consistently shared across the prompts.\n"
    "The feature should describe the input prompt itself, not the model, the router, or the expert. For "
    "example, the common feature might be: \"asks for emotionally supportive advice\" \"requests factual "
    "explanation of a technical concept\" \"asks for creative writing or brainstorming\" \"contains a "
    "safety-sensitive or potentially harmful request\" \"asks for evaluation of competing options\" If the "
    "prompts do not share a clear topic, focus on the type of user intent, task format, reasoning style, "
    "domain, constraint, or interaction pattern that best explains why the expert fires. Additional Rules "
    "Rules about the feature you identify: The feature should be objective and concrete. Err on the side of "
    "being concise. The feature should be an attribute that could be present in an individual prompt. Do not "
    "refer to \"the expert\", \"the router\", \"activation\", or \"these examples\" in the final answer. Do "
    "not use vague descriptions such as \"is helpful\", \"is complex\", or \"is high quality\". Avoid overly "
    "broad concepts such as \"general question\" unless no more specific feature is apparent. If the shared "
    "feature is a negation, describe it directly, e.g., \"does not specify a concrete task or goal\". Prompts "
    "----------------\n"
    "{examples}\n"
    "----------------\n"
    "Output Do not output anything besides the feature.\n"
    "Output exactly one description, starting with \"-\" and surrounded by quotes.\n"
    "Your response is:-\""
)

JUDGE_PROMPT = (
    "You are a binary classifier. Task:\n"
    "Determine whether the input text expresses the feature described below.\n"
    "Feature description:\n"
    "{description}\n"
    "Input text:\n"
    "{input_text}\n"
    "Decision rule:\n"
    "Answer YES if the input text clearly matches or expresses the feature description.\n"
    "Answer NO otherwise.\n"
    "Output format:\n"
    "Return exactly one token: YES or NO.\n"
    "Answer:"
)

KEYWORDS_PREFIX = "keywords:"
NO_KEYWORDS = "(none)"
# Words of two or more letters (no digits or underscores): ids and numbers make poor keywords.
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"
SKIPPED_KINDS = "single-expert and hyre heads"


class InterpretError(RuntimeError):
    """A describer or judge failed; the message names the expert (never an API key)."""


def _clip(text: str, max_chars: int | None) -> str:
    return text if not max_chars or len(text) <= max_chars else text[:max_chars] + " ..."


def format_examples(prompts: list[str], max_chars: int | None = None) -> str:
    """The ``{examples}`` block of the Fig. 4 prompt: numbered prompts, blank line between."""
    return "\n\n".join(f"Prompt {i}:\n{_clip(p, max_chars)}" for i, p in enumerate(prompts, start=1))


def describe_prompt(prompts: list[str], max_chars: int | None = None) -> str:
    return DESCRIBE_PROMPT.format(examples=format_examples(prompts, max_chars))


def judge_prompt(description: str, text: str, max_chars: int | None = None) -> str:
    return JUDGE_PROMPT.format(description=description, input_text=_clip(text, max_chars))


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)


def parse_description(answer: str) -> str:
    """The feature from a Fig. 4 answer: the text of ``-"..."`` if present, else the first
    non-empty line with leading dashes and surrounding quotes removed. The prompt ends in
    ``-"``, so a model that continues it answers ``feature"``, which the fallback handles."""
    answer = _THINK.sub("", answer)
    match = re.search(r'-\s*"([^"\n]*\S[^"\n]*)"', answer)
    if match:
        return match.group(1).strip()
    for line in answer.splitlines():
        line = line.strip().lstrip("-").strip().strip('"').strip()
        if line:
            return line
    return ""


def parse_judgment(answer: str) -> int | None:
    """1 for YES, 0 for NO (case, quotes, punctuation and a <think> block ignored), else None."""
    match = re.fullmatch(r"\W*(YES|NO)\W*", _THINK.sub("", answer).strip(), flags=re.IGNORECASE)
    return None if match is None else int(match.group(1).upper() == "YES")


# ----------------------------------------------------------------------------- backends


class Backend:
    """A describer and judge. Subclasses implement :meth:`describe` and :meth:`_judge`;
    judgments are memoized per (description, prompt), so the same example judged twice
    (another expert's sample, a rerun in the same process) costs one call."""

    name = "backend"

    def __init__(self) -> None:
        self._judged: dict[tuple[str, str], int] = {}

    def describe(self, expert_id: int, prompts: list[str]) -> str:
        raise NotImplementedError

    def describe_all(self, groups: list[list[str]], background: list[str] | None = None) -> list[str]:
        """One description per expert from its top prompts. ``background``: the other
        prompts of the split (only the keywords backend uses them)."""
        return [self.describe(k, prompts) for k, prompts in enumerate(groups)]

    def judge(self, expert_id: int, description: str, prompts: list[str]) -> list[int]:
        """z(x) in {0, 1} for each prompt: does it match ``description``?"""
        todo = list(dict.fromkeys(p for p in prompts if (description, p) not in self._judged))
        if todo:
            values = self._judge(expert_id, description, todo)
            if len(values) != len(todo):
                raise InterpretError(f"expert {expert_id}: {self.name} judge returned {len(values)} "
                                     f"judgments for {len(todo)} prompts")
            for p, z in zip(todo, values):
                self._judged[(description, p)] = int(z)
        return [self._judged[(description, p)] for p in prompts]

    def _judge(self, expert_id: int, description: str, prompts: list[str]) -> list[int]:
        raise NotImplementedError


def _analyzer():
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(stop_words="english", token_pattern=TOKEN_PATTERN, lowercase=True)


def class_tfidf(documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """c-TF-IDF (Grootendorst 2022): ``scores[c, t] = tf(t, c) * log(1 + A / f_t)`` with
    tf normalized by the class's word count, f_t the term's count over all classes and A
    the mean word count per class. Returns (scores [classes, terms], terms)."""
    vectorizer = _analyzer()
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # no term at all survives stop-word removal
        return np.zeros((len(documents), 0)), np.array([], dtype=object)
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    idf = np.log1p((counts.sum() / len(documents)) / np.maximum(counts.sum(axis=0), 1.0))
    return tf * idf, vectorizer.get_feature_names_out()


class KeywordsBackend(Backend):
    """The offline default; see the module docstring."""

    name = "keywords"

    def __init__(self, num_terms: int = 5):
        super().__init__()
        if num_terms < 1:
            raise ValueError(f"num_terms must be >= 1, got {num_terms}")
        self.num_terms = num_terms

    def describe_all(self, groups: list[list[str]], background: list[str] | None = None) -> list[str]:
        mine = {p for g in groups for p in g}
        rest = [p for p in (background or []) if p not in mine]
        documents = ["\n".join(g) for g in groups] + (["\n".join(rest)] if rest else [])
        scores, terms = class_tfidf(documents)
        out = []
        for k in range(len(groups)):
            row = scores[k] if scores.shape[1] else np.zeros(0)
            # Highest score first; ties by term, so the description is deterministic.
            ranked = sorted((i for i in range(len(row)) if row[i] > 0), key=lambda i: (-row[i], terms[i]))
            words = [str(terms[i]) for i in ranked[: self.num_terms]]
            out.append(f"{KEYWORDS_PREFIX} {', '.join(words) if words else NO_KEYWORDS}")
        return out

    def describe(self, expert_id: int, prompts: list[str]) -> str:
        return self.describe_all([prompts])[0]

    @staticmethod
    def keywords(description: str) -> list[str]:
        """The words a description stands for: the list after ``keywords:``, or the
        non-stop words of a free-text description."""
        text = description.strip()
        if text.lower().startswith(KEYWORDS_PREFIX):
            body = text[len(KEYWORDS_PREFIX):].strip()
            return [] if body == NO_KEYWORDS else [w.strip().lower() for w in body.split(",") if w.strip()]
        return list(dict.fromkeys(_analyzer().build_analyzer()(text)))

    def _judge(self, expert_id: int, description: str, prompts: list[str]) -> list[int]:
        words = self.keywords(description)
        if not words:
            return [0] * len(prompts)
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
        return [int(pattern.search(p) is not None) for p in prompts]


class HFBackend(Backend):
    """A local transformers causal LM; see the module docstring."""

    def __init__(self, model: str, *, max_new_tokens: int = 48, batch_size: int = 8, device: str = "auto",
                 dtype: str = "auto", max_prompt_chars: int | None = 2000, revision: str | None = None,
                 trust_remote_code: bool = False):
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"hf:{model}"
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_prompt_chars = max_prompt_chars
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        torch_dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                       "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        common = dict(revision=revision, trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(model, **common)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **common).to(self.device).eval()
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.yes_id, self.no_id = (tok(w, add_special_tokens=False).input_ids[0] for w in ("YES", "NO"))
        if self.yes_id == self.no_id:
            raise InterpretError(f"{self.name}: 'YES' and 'NO' start with the same token; cannot judge by logits")

    def render(self, content: str) -> str:
        """One user turn through the chat template, ending with the generation prompt (a
        tokenizer without a template gets the content as is)."""
        if not self.tokenizer.chat_template:
            return content
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def describe(self, expert_id: int, prompts: list[str]) -> str:
        import torch
        from transformers import GenerationConfig

        tok = self.tokenizer
        enc = tok(self.render(describe_prompt(prompts, self.max_prompt_chars)), add_special_tokens=False,
                  return_tensors="pt").to(self.device)
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                  eos_token_id=self.model.generation_config.eos_token_id)
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=config)
        answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        description = parse_description(answer)
        if not description:
            raise InterpretError(f"expert {expert_id}: {self.name} generated no description (answer {answer[:80]!r})")
        return description

    def judge_scores(self, description: str, prompts: list[str]) -> np.ndarray:
        """logit("YES") - logit("NO") at the next token after each Fig. 5 prompt."""
        import torch

        tok = self.tokenizer
        texts = [self.render(judge_prompt(description, p, self.max_prompt_chars)) for p in prompts]
        encoded = [tok(t, add_special_tokens=False).input_ids for t in texts]
        scores = np.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: every prompt ends at the last column
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            inputs = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                          position_ids=positions.to(self.device))
            with torch.inference_mode():
                try:  # only the last position's logits: a [batch, length, vocab] tensor can be GBs
                    logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
                except TypeError:  # a model class without logits_to_keep
                    logits = self.model(**inputs).logits[:, -1]
            diff = (logits[:, self.yes_id] - logits[:, self.no_id]).float().cpu().numpy()
            scores[idx] = diff
        return scores

    def _judge(self, expert_id: int, description: str, prompts: list[str]) -> list[int]:
        return [int(s > 0) for s in self.judge_scores(description, prompts)]


RETRY_STATUS = {408, 409, 425, 429}


class OpenAIBackend(Backend):
    """An OpenAI-compatible chat-completions endpoint; see the module docstring.

    ``retries`` extra attempts follow a transient failure (timeout, connection error,
    HTTP 408/409/425/429/5xx, malformed JSON), after ``backoff * 2**i`` seconds; any other
    HTTP error fails at once. Every failure raises :class:`InterpretError` naming the
    expert; the API key is removed from anything that is raised or logged."""

    def __init__(self, base_url: str, *, model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 30.0, retries: int = 2, backoff: float = 1.0, max_tokens: int | None = None,
                 max_prompt_chars: int | None = 2000):
        super().__init__()
        if retries < 0 or timeout <= 0:
            raise ValueError(f"need retries >= 0 and timeout > 0, got {retries}, {timeout}")
        self.name = f"openai:{base_url}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.max_prompt_chars = max_prompt_chars

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _request(self, content: str) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                "temperature": 0}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        try:
            answer = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Malformed(f"malformed response ({type(e).__name__}: {raw[:200]!r})") from None
        if not isinstance(answer, str):
            raise _Malformed(f"malformed response (content is {type(answer).__name__})")
        return answer

    def chat(self, expert_id: int, what: str, content: str) -> str:
        """One chat completion, with bounded retries; raises InterpretError naming the expert."""
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._request(content)
            except urllib.error.HTTPError as e:
                try:
                    detail = e.read()[:200].decode("utf-8", "replace")
                except Exception:  # no body, or the connection broke while reading it
                    detail = ""
                problem = f"HTTP {e.code}" + (f" ({detail.strip()})" if detail.strip() else "")
                transient = e.code in RETRY_STATUS or e.code >= 500
            except urllib.error.URLError as e:
                problem, transient = f"connection failed ({e.reason})", True
            except (TimeoutError, OSError) as e:  # socket timeouts while reading, resets
                problem = f"timed out after {self.timeout:g} s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
                transient = True
            except _Malformed as e:
                problem, transient = str(e), True
            problem = self._redact(problem)
            if not transient or attempt == attempts:
                raise InterpretError(f"expert {expert_id}: {what} request to {self.url} failed after {attempt} "
                                     f"attempt{'s' if attempt > 1 else ''}: {problem}") from None
            delay = self.backoff * 2 ** (attempt - 1)
            log.warning("expert %d: %s request attempt %d/%d failed: %s; retrying in %.2f s",
                        expert_id, what, attempt, attempts, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def describe(self, expert_id: int, prompts: list[str]) -> str:
        answer = self.chat(expert_id, "describe", describe_prompt(prompts, self.max_prompt_chars))
        description = parse_description(answer)
        if not description:
            raise InterpretError(f"expert {expert_id}: {self.name} returned no description "
                                 f"(answer {self._redact(answer[:80])!r})")
        return description

    def _judge(self, expert_id: int, description: str, prompts: list[str]) -> list[int]:
        out = []
        for p in prompts:
            answer = self.chat(expert_id, "judge", judge_prompt(description, p, self.max_prompt_chars))
            z = parse_judgment(answer)
            if z is None:
                raise InterpretError(f"expert {expert_id}: judge answered {self._redact(answer[:80])!r}, "
                                     f"not YES or NO")
            out.append(z)
        return out


class _Malformed(Exception):
    pass


BACKEND_FORMS = "'keywords', 'hf:<model name or local path>' or 'openai:<base_url>'"


def make_backend(spec: str, **opts: Any) -> Backend:
    """A backend from its spec string (``keywords``, ``hf:<model>``, ``openai:<base_url>``);
    ``opts`` go to its constructor (:class:`KeywordsBackend`, :class:`HFBackend`,
    :class:`OpenAIBackend`)."""
    kind, _, target = spec.partition(":")
    if kind == "keywords" and not target:
        return KeywordsBackend(**opts)
    if kind == "hf" and target:
        return HFBackend(target, **opts)
    if kind == "openai" and target:
        return OpenAIBackend(target, **opts)
    raise ValueError(f"unknown describer/judge {spec!r}; use {BACKEND_FORMS}")


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
                top_n: int = 20) -> list[list[dict[str, Any]]]:
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
                          describer: Backend, top_n: int = 20) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """(descriptions, top prompts) for routing weights over a split's pairs."""
    tops = top_prompts(weights, pair_ids, prompt_texts, top_n)
    background = sorted({prompt_texts[p] for p in pair_ids})
    descriptions = describer.describe_all([[t["text"] for t in top] for top in tops], background)
    for k, d in enumerate(descriptions):
        if not d or not d.strip():
            raise InterpretError(f"expert {k}: {describer.name} returned an empty description")
    return descriptions, tops


def describe_experts(head: RewardHead, validation_states: PairStates, prompt_texts: dict[str, str],
                     describer: Backend | str, top_n: int = 20) -> list[str]:
    """One description per expert of ``head`` from its top-``top_n`` validation prompts."""
    describer = make_backend(describer) if isinstance(describer, str) else describer
    weights, _ = predict(head, validation_states)
    return describe_from_weights(weights, validation_states.pair_ids, prompt_texts, describer, top_n)[0]


# ----------------------------------------------------------------------------- fidelity


def stratified_sample(weights_k: np.ndarray, per_stratum: int = 100, top_fraction: float = 0.10,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """App. A's stratified sample for one expert: (indices drawn from the top ``top_fraction``
    of examples by pi_k, indices drawn from the rest), ``per_stratum`` each without
    replacement, or the whole stratum when it is smaller (a small test split is used in
    full). The top stratum has ``max(1, round(top_fraction * N))`` examples, the size
    ``metrics.topm_specialization`` uses; ties keep the input order."""
    if per_stratum < 1 or not 0 < top_fraction < 1:
        raise ValueError(f"need per_stratum >= 1 and 0 < top_fraction < 1, got {per_stratum}, {top_fraction}")
    rng = rng if rng is not None else np.random.default_rng(0)
    n = len(weights_k)
    ranked = metrics.top_examples(np.asarray(weights_k).reshape(-1, 1), 0, n)
    n_top = min(n, max(1, int(round(top_fraction * n))))
    top, rest = ranked[:n_top], ranked[n_top:]

    def draw(pool: np.ndarray) -> np.ndarray:
        if len(pool) <= per_stratum:
            return np.sort(pool)
        return np.sort(rng.choice(pool, size=per_stratum, replace=False))

    return draw(top), draw(rest)


def pearson_or_zero(z: np.ndarray, pi: np.ndarray) -> float:
    """Eq. 19's correlation. If z or pi is constant over the sample (a judge that says YES
    to everything, a router that weights every sampled example alike) the correlation is
    undefined; it is taken as 0: the description then tells nothing about the routing."""
    z, pi = np.asarray(z, dtype=np.float64), np.asarray(pi, dtype=np.float64)
    if len(z) < 2 or z.std() < 1e-12 or pi.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(z, pi)[0, 1])


@dataclass
class FidelityResult:
    overall: float                      # DF, Eq. 20
    per_expert: list[float]             # DF_k, Eq. 19
    random_overall: float               # the shuffled-example baseline
    random_per_expert: list[float]
    samples: list[list[int]] = field(default_factory=list)     # per expert, judged example indices
    judgments: list[list[int]] = field(default_factory=list)   # per expert, z in sample order
    num_top: list[int] = field(default_factory=list)           # per expert, how many came from the top stratum


def fidelity(weights: np.ndarray, prompts: list[str], descriptions: list[str], judge: Backend | str, *,
             per_stratum: int = 100, top_fraction: float = 0.10, seed: int = 0) -> FidelityResult:
    """Description fidelity (Eq. 19-20) on examples with router weights ``weights`` [N, K]
    and texts ``prompts`` [N] (pass distinct prompts: duplicates would be judged and
    counted twice).

    Per expert k: a stratified sample (:func:`stratified_sample`, seeded by (seed, k)),
    judged once; DF_k = corr(z_k, pi_k) over it (0 when either is constant). The random
    baseline keeps the weights and the judged examples but shuffles the examples (seeded by
    (seed, k, 1)) before pairing them with the weights: corr(z_k[perm], pi_k). A judgment
    depends only on (description, example), so the shuffled list's judgments are the
    permuted ones and the baseline costs no extra judge calls."""
    judge = make_backend(judge) if isinstance(judge, str) else judge
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(prompts), len(descriptions)):
        raise ValueError(f"weights {weights.shape} do not match {len(prompts)} prompts x {len(descriptions)} descriptions")
    result = FidelityResult(0.0, [], 0.0, [])
    for k, description in enumerate(descriptions):
        top, rest = stratified_sample(weights[:, k], per_stratum, top_fraction, np.random.default_rng([seed, k]))
        sample = np.concatenate([top, rest])
        z = np.array(judge.judge(k, description, [prompts[i] for i in sample]), dtype=np.float64)
        if len(z) != len(sample) or not np.isin(z, (0.0, 1.0)).all():
            raise InterpretError(f"expert {k}: judge must return one 0/1 per example, got {z.tolist()[:10]}")
        pi = weights[sample, k]
        perm = np.random.default_rng([seed, k, 1]).permutation(len(sample))
        result.per_expert.append(pearson_or_zero(z, pi))
        result.random_per_expert.append(pearson_or_zero(z[perm], pi))
        result.samples.append(sample.tolist())
        result.judgments.append(z.astype(int).tolist())
        result.num_top.append(len(top))
    result.overall = float(np.mean(result.per_expert)) if descriptions else float("nan")
    result.random_overall = float(np.mean(result.random_per_expert)) if descriptions else float("nan")
    return result


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


def _specialization(val_weights: np.ndarray, val_states: PairStates, weights: np.ndarray, margins: np.ndarray,
                    states: PairStates, top_n: int, top_m: float) -> tuple[str, list[float], list[str] | None]:
    """Per-expert specialization on the test split, exactly as the evaluate stage computes it
    (Eq. 11 with validation-assigned categories when every pair has one, else Eq. 12)."""
    spec = split_specialization(val_states, val_weights, states, weights, margins, top_n=top_n, top_m=top_m)
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


@dataclass
class SplitData:
    """What every variant of one cache shares: the two splits' states and prompt texts."""
    validation: PairStates
    test: PairStates
    prompt_texts: dict[str, str]

    @classmethod
    def build(cls, cache: FeatureCache, prepared_pairs: str | Path, scratch: str | Path) -> "SplitData":
        validation = PairStates.build(cache, "validation", Path(scratch))
        test = PairStates.build(cache, "test", Path(scratch))
        texts = pairs.prompt_texts(prepared_pairs, set(validation.pair_ids) | set(test.pair_ids))
        return cls(validation, test, texts)


def interpret_variant(cache: FeatureCache, prepared_pairs: str | Path, model_dir: str | Path, out_dir: str | Path,
                      describer: Backend | str = "keywords", judge: Backend | str = "keywords", *, top_n: int = 20,
                      per_stratum: int = 100, top_fraction: float = 0.10, seed: int = 0, category_top_n: int = 50,
                      scratch: str | Path | None = None, data: SplitData | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe and judge every expert of the head in ``model_dir``; write
    ``out_dir/experts.md`` and ``out_dir/experts.json`` and return the report. A head with
    nothing to interpret (single, hyre) writes nothing and returns ``{"skipped": reason}``.
    ``data`` (:meth:`SplitData.build`) shares the split states between variants; without
    it they are built in ``scratch``."""
    head = RewardHead.load(model_dir)
    variant = str(head.config.extra.get("variant", Path(model_dir).name))
    reason = skip_reason(head)
    if reason is not None:
        log.warning("%s: skipped: %s", model_dir, reason)
        return {"variant": variant, "skipped": reason}
    check_compatible(head.config, cache.manifest, f"{model_dir} on {cache.path}")
    if data is None:
        if scratch is None:
            raise ValueError("interpret_variant needs `scratch` (a temporary folder) or prebuilt `data`")
        data = SplitData.build(cache, prepared_pairs, scratch)
    describer = make_backend(describer) if isinstance(describer, str) else describer
    judge = make_backend(judge) if isinstance(judge, str) else judge

    val_weights, _ = predict(head, data.validation)
    descriptions, tops = describe_from_weights(val_weights, data.validation.pair_ids, data.prompt_texts,
                                               describer, top_n)
    weights, margins = predict(head, data.test)
    rows = _distinct(data.test.pair_ids, data.prompt_texts)
    texts = [data.prompt_texts[data.test.pair_ids[i]] for i in rows]
    fid = fidelity(weights[rows], texts, descriptions, judge, per_stratum=per_stratum,
                   top_fraction=top_fraction, seed=seed)
    kind, spec, assigned = _specialization(val_weights, data.validation, weights, margins, data.test,
                                           category_top_n, top_fraction)
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
              "top_n": top_n, "per_stratum": per_stratum, "top_m": top_fraction, "seed": seed,
              "num_test_prompts": len(rows), "num_validation_pairs": len(data.validation), "experts": experts}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "experts.json", report)
    (out_dir / "experts.md").write_text(experts_markdown(report))
    return report


def interpret_experiment(cache: FeatureCache, prepared_pairs: str | Path, models_dir: str | Path,
                         variants: list[str], out_dir: str | Path, describer: Backend | str = "keywords",
                         judge: Backend | str = "keywords", *, scratch: str | Path, **kwargs: Any) -> dict[str, dict]:
    """:func:`interpret_variant` for each variant (``<out_dir>/<variant>/``), building the
    split states, prompt texts and backends once."""
    data = SplitData.build(cache, prepared_pairs, scratch)
    describer = make_backend(describer) if isinstance(describer, str) else describer
    if isinstance(judge, str):  # the same spec as the describer: one backend (one model load)
        judge = describer if judge == describer.name else make_backend(judge)
    return {name: interpret_variant(cache, prepared_pairs, Path(models_dir) / name, Path(out_dir) / name,
                                    describer, judge, data=data, **kwargs)
            for name in variants}
