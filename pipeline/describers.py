"""Describers and judges of experts (paper §6.1, Fig. 4-5): pluggable backends.

A describer turns an expert's top prompts into a short description of what they share; a
judge says, per prompt, whether it matches a description (z(x) in {0, 1}), which
:mod:`pipeline.interpret` correlates with the routing weights (Eq. 19-20). A backend is
both, selected by a spec string (:func:`make_backend`):

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
    generation: z = 1 iff the model is likelier to answer YES than NO right after the
    generation prompt: log sum over the answers YES / Yes / yes of P(answer) against the same
    over NO / No / no, each answer scored as its whole token sequence (teacher-forced), since
    a tokenizer may split one of them (SmolLM2: "YES" = "Y" + "ES", "NO" is one token, so
    comparing first tokens would weigh the letter "Y" against the word "NO"). Case is
    ignored as in :func:`parse_judgment`. Left-padded batches.
``openai:<base_url>``
    Any OpenAI-compatible chat-completions endpoint (``POST <base_url>/chat/completions``,
    ``temperature: 0``), over the standard library. The key is read from an environment
    variable (:class:`Connection`; unset = no Authorization header) and is never logged
    nor put into an error. Timeouts and retries are bounded; a failed call raises
    :class:`InterpretError` naming the expert.

The settings that change what a backend answers (terms per description, model, tokens,
device) have their defaults in ``pipeline.interpret.InterpretConfig``, the one place the
pipeline's params are checked; the constructors here take them without defaults.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import UserError

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
# The answers an hf judge's YES and NO stand for (scored by likelihood, case ignored).
YES_ANSWERS = ("YES", "Yes", "yes")
NO_ANSWERS = ("NO", "No", "no")
# Characters of one prompt shown to an LLM (describe and judge): 20 long prompts must fit a
# small model's context, and one pasted document must not crowd out the others.
MAX_PROMPT_CHARS = 2000


class InterpretError(UserError, RuntimeError):
    """Interpretation cannot go on: a describer or judge failed, or a head has no
    input-dependent routing. The message names the expert or head (never an API key)."""


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

    def __init__(self, num_terms: int):
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

    def __init__(self, model: str, *, max_new_tokens: int, device: str, batch_size: int = 8, dtype: str = "auto",
                 max_prompt_chars: int | None = MAX_PROMPT_CHARS, revision: str | None = None,
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
        def answers(words: tuple[str, ...]) -> list[tuple[int, ...]]:
            return sorted({ids for ids in (tuple(tok(w, add_special_tokens=False).input_ids) for w in words) if ids})

        self.yes_answers, self.no_answers = answers(YES_ANSWERS), answers(NO_ANSWERS)
        if not self.yes_answers or not self.no_answers or set(self.yes_answers) & set(self.no_answers):
            raise InterpretError(f"{self.name}: the tokenizer does not tell YES from NO; cannot judge by likelihood")
        # every token prefix an answer is scored after: () for the first token, ("Y",) for "ES" ...
        self._prefixes = sorted({a[:j] for a in self.yes_answers + self.no_answers for j in range(len(a))})

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

    def _last_log_probs(self, sequences: list[list[int]]) -> "torch.Tensor":
        """log-softmax of the next-token logits after each sequence [len, vocab], one
        left-padded forward pass (every sequence ends at the last column)."""
        import torch

        tok = self.tokenizer
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                      position_ids=positions.to(self.device))
        with torch.inference_mode():
            try:  # only the last position's logits: a [batch, length, vocab] tensor can be GBs
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
            except TypeError:  # a model class without logits_to_keep
                logits = self.model(**inputs).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def judge_scores(self, description: str, prompts: list[str]) -> np.ndarray:
        """log P(YES-like answer) - log P(NO-like answer) after each Fig. 5 prompt (see the
        module docstring): > 0 means YES."""
        import torch

        tok = self.tokenizer
        texts = [self.render(judge_prompt(description, p, self.max_prompt_chars)) for p in prompts]
        encoded = [tok(t, add_special_tokens=False).input_ids for t in texts]
        scores = np.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            after = {prefix: self._last_log_probs([encoded[i] + list(prefix) for i in idx]) for prefix in self._prefixes}

            def answer_log_prob(answer: tuple[int, ...]) -> torch.Tensor:  # [batch]
                return sum(after[answer[:j]][:, answer[j]] for j in range(len(answer)))

            yes = torch.logsumexp(torch.stack([answer_log_prob(a) for a in self.yes_answers]), dim=0)
            no = torch.logsumexp(torch.stack([answer_log_prob(a) for a in self.no_answers]), dim=0)
            scores[idx] = (yes - no).double().numpy()
        return scores

    def _judge(self, expert_id: int, description: str, prompts: list[str]) -> list[int]:
        return [int(s > 0) for s in self.judge_scores(description, prompts)]


RETRY_STATUS = {408, 409, 425, 429}


@dataclass(frozen=True)
class Connection:
    """How an ``openai:`` backend reaches its endpoint. None of it changes an answer, so it
    is a command-line matter (the interpret stage's ``--api-key-env``, ``--timeout``,
    ``--retries``), not a param DVC tracks; these are its defaults."""

    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never logged)
    timeout: float = 30.0                # seconds per request
    retries: int = 2                     # extra attempts after a transient failure
    backoff: float = 1.0                 # seconds before the first retry, doubling after each

    def __post_init__(self) -> None:
        if self.retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise ValueError(f"need retries >= 0, timeout > 0 and backoff >= 0, got "
                             f"{self.retries}, {self.timeout}, {self.backoff}")


class OpenAIBackend(Backend):
    """An OpenAI-compatible chat-completions endpoint; see the module docstring.

    ``connection.retries`` extra attempts follow a transient failure (timeout, connection
    error, HTTP 408/409/425/429/5xx, malformed JSON), after ``backoff * 2**i`` seconds; any
    other HTTP error fails at once. Every failure raises :class:`InterpretError` naming the
    expert; the API key is removed from anything that is raised or logged."""

    def __init__(self, base_url: str, *, model: str, connection: Connection = Connection(),
                 max_tokens: int | None = None, max_prompt_chars: int | None = MAX_PROMPT_CHARS):
        super().__init__()
        self.name = f"openai:{base_url}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.connection = connection
        self.max_tokens = max_tokens
        self.max_prompt_chars = max_prompt_chars

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.connection.api_key_env)
        return text.replace(key, "***") if key else text

    def _request(self, content: str) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                "temperature": 0}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.connection.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.connection.timeout) as response:
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
        attempts = self.connection.retries + 1
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
                problem = f"timed out after {self.connection.timeout:g} s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
                transient = True
            except _Malformed as e:
                problem, transient = str(e), True
            problem = self._redact(problem)
            if not transient or attempt == attempts:
                raise InterpretError(f"expert {expert_id}: {what} request to {self.url} failed after {attempt} "
                                     f"attempt{'s' if attempt > 1 else ''}: {problem}") from None
            delay = self.connection.backoff * 2 ** (attempt - 1)
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


def backend_kind(spec: str, what: str = "describer/judge") -> str:
    """``keywords``, ``hf`` or ``openai`` for a valid spec string, without loading anything
    (a config checks its specs up front); else ValueError naming ``what``."""
    kind, _, target = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if (kind == "keywords" and not target) or (kind in ("hf", "openai") and target.strip()):
        return kind
    raise ValueError(f"unknown {what} {spec!r}; use {BACKEND_FORMS}")


def make_backend(spec: str, **opts: Any) -> Backend:
    """A backend from its spec string (``keywords``, ``hf:<model>``, ``openai:<base_url>``);
    ``opts`` go to its constructor (:class:`KeywordsBackend`, :class:`HFBackend`,
    :class:`OpenAIBackend`)."""
    kind = backend_kind(spec)
    if kind == "keywords":
        return KeywordsBackend(**opts)
    target = spec.partition(":")[2]
    return HFBackend(target, **opts) if kind == "hf" else OpenAIBackend(target, **opts)
