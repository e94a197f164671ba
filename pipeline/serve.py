"""`smoe serve`: an HTTP reward server, one backbone loaded once, one or more heads.

    server = RewardServer(load_models({"sparse": "data/models/categories/sparse",
                                       "alice": "out/alice"}, BackboneConfig(model="data/backbone")))
    run(server, host="127.0.0.1", port=8000)

Endpoints (every error is ``{"error": "<one line naming the field>"}`` with a 4xx/5xx):

- ``POST /get_reward``: OpenRLHF's remote reward-model contract (``--remote_rm_url
  http://host:port/get_reward``). Checked against OpenRLHF's own code (commit 3c3be62):
  ``openrlhf/utils/agent.py`` (``SingleTurnAgentExecutor._fetch_rewards_via_http``) posts
  ``{"query": [...], "prompts": [...], "labels": [...]}`` with aiohttp, 180 s total timeout,
  5 tries, one list entry per sample, where a query is
  ``tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)``: the chat-
  template-rendered prompt (``prompts_dataset.py``: ``apply_chat_template(...,
  add_generation_prompt=True)``) followed by the generated response and its end-of-turn
  token. It reads ``rewards`` (advantages), ``scores`` (dynamic filtering; falls back to
  ``rewards``) and ``extra_logs`` (``samples_generator.py`` turns each key into one logged
  number per sample, so every value here is a flat list aligned with ``query``).
  ``openrlhf/cli/serve_rm.py`` (FastAPI + uvicorn) answers with ``scores = rewards``; so
  do we. The query is split into (prompt messages, response) by the given prompt (a
  prefix of the query) or, without prompts, at the template's last assistant header; the
  prompt is mapped back to chat messages so the sequence is encoded exactly as
  ``featurize`` encodes it (see :class:`QuerySplitter`). A named head: ``"model"`` in the
  body or ``?model=NAME`` in the URL.
- ``POST /score``: native. ``{"pairs": [{"prompt": text | [{"role", "content"}, ...],
  "response": text}, ...], "model": NAME?, "routing_weights": [K floats]?}`` ->
  ``{"model", "results": [{"reward", "expert_rewards", "routing_weights"}, ...]}``.
  ``routing_weights`` replace the router for every pair (steering, App. A Eq. 14-18).
- ``GET /health``: 200 while serving, 503 while shutting down. ``GET /models``: the heads.

Under load, requests are not scored one by one: a single batcher task collects what is
queued (waiting a few ms after the first arrival so that concurrent requests can join),
runs ONE :meth:`RewardModel.states` call for all of it in a worker thread (which packs
the sequences into token-budget batches, sharing prompt prefixes), applies each request's
head and routing override to its own rows and resolves each request's future with its
own slice. The event loop never runs the model, so it keeps accepting, validating and
rejecting requests while a batch computes. Requests are bounded (pairs per request, body
bytes), the queue is bounded in pairs (503 when full) and each request has a deadline
(504). An exception inside the model fails only the requests of that batch (500); the
batcher keeps going. On SIGTERM/SIGINT uvicorn stops accepting, lets the in-flight
requests finish (the batcher drains the queue), then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline import backbone as bb
from pipeline.errors import UserError
from pipeline.models import RewardHead
from pipeline.pairs import Messages, as_messages
from pipeline.reward_model import RewardModel

log = logging.getLogger("smoe.serve")


# ----------------------------------------------------------------------------- errors


class RequestError(UserError, ValueError):
    """A request the client must fix: answered with ``status`` and one line naming the field."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class Overloaded(RuntimeError):
    """The queue is full: 503, the client should retry later (OpenRLHF retries 5 times)."""


class ModelFailure(RuntimeError):
    """An exception inside the model while scoring a batch: 500 for that batch's requests."""


# ----------------------------------------------------------------------------- models


@dataclass
class ServeConfig:
    max_pairs_per_request: int = 256
    max_body_bytes: int = 8 * 1024 * 1024
    max_queued_pairs: int = 4096       # over this, new requests get 503
    max_batch_pairs: int = 256         # pairs per batcher step (one `states` call)
    batch_wait_ms: float = 5.0         # how long the first queued request waits for others to join
    request_timeout_s: float = 120.0   # below OpenRLHF's 180 s client timeout, so it sees our 504

    def __post_init__(self) -> None:
        for name in ("max_pairs_per_request", "max_body_bytes", "max_queued_pairs", "max_batch_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("batch_wait_ms must be >= 0 and request_timeout_s > 0")


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """``["sparse=data/models/x/sparse", "out/alice"]`` -> {name: folder}; a bare folder is
    named after itself. Order is kept (the first one is the default)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        name = name.strip()
        if not name or not path:
            raise UserError(f"--model {spec!r}: expected NAME=FOLDER or FOLDER")
        if name in out:
            raise UserError(f"--model {spec!r}: the name {name!r} is used twice; give each head its own NAME=")
        out[name] = path
    if not out:
        raise UserError("no --model given: name at least one trained head folder")
    return out


def load_models(heads: Mapping[str, str | Path], backbone: bb.BackboneConfig, token_budget: int = 4096
                ) -> dict[str, RewardModel]:
    """One backbone, loaded once, shared by a :class:`RewardModel` per head; each head is
    checked against it (hidden size, backbone, chat-template hash) as ``RewardModel`` does."""
    loaded = {name: RewardHead.load(path) for name, path in heads.items()}
    shared = bb.load(backbone)
    models = {}
    for name, head in loaded.items():
        try:
            models[name] = RewardModel(shared, head, token_budget=token_budget)
        except UserError as e:
            raise UserError(f"--model {name}={heads[name]}: {e}") from None
    return models


def describe(name: str, model: RewardModel, default: bool, path: str | None = None) -> dict[str, Any]:
    """What ``GET /models`` says about one head."""
    cfg = model.head.config
    return {"name": name, "default": default, "path": path,
            "variant": cfg.extra.get("variant"), "kind": cfg.kind, "num_experts": cfg.num_experts,
            "backbone": model.backbone.identity.get("backbone"), "hidden_size": cfg.hidden_size,
            # Heads written by `smoe adapt` / personalize carry what they were adapted from and on.
            "adapted": {k: cfg.extra[k] for k in ("adapted_from", "adaptation_examples", "group",
                                                  "adaptation_pairs", "seed") if k in cfg.extra} or None}


# ----------------------------------------------------------------------------- query splitting

_SENTINEL = "\u0000smoe-probe\u0000"  # cannot occur in rendered template boilerplate


class SplitError(ValueError):
    """A query that cannot be split; ``field`` is the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class QuerySplitter:
    """Turns an OpenRLHF query (prompt rendered in the chat template + response + end of
    turn) back into (prompt messages, response text).

    Why not score the raw query text: the head was trained on states of sequences that
    ``Backbone.encode`` builds from messages, and the prompt state is read at the end of the
    assistant header. Mapping the text back to messages and re-encoding gives exactly those
    sequences. The template's pieces are found by rendering probe conversations with a
    sentinel as the content (what a message of each role looks like first and after a user
    turn, and the generation header); a prompt is parsed greedily with them and accepted
    only if rendering the parsed messages reproduces it character for character.
    """

    ROLES = ("system", "user", "assistant")

    def __init__(self, backbone: bb.Backbone):
        self.chat = backbone.pooling == "last"
        self.eos = backbone.tokenizer.eos_token
        self.pad = backbone.tokenizer.pad_token
        if not self.chat:  # encoders: no template; a prompt is plain user text
            return
        self._render = backbone.render  # the same rendering (system prompt, pinned date) encode uses
        probe = [{"role": "user", "content": "probe"}]
        closed, opened = self._render(probe, False), self._render(probe, True)
        if not opened.startswith(closed) or opened == closed:
            raise bb.BackboneError("the chat template has no generation header after the conversation; "
                                   "cannot find the prompt/response boundary in a query")
        self.generation_header = opened[len(closed):]
        self.first: dict[str, tuple[str, str]] = {}  # role -> (text before, text after) the content
        self.later: dict[str, tuple[str, str]] = {}
        for role in self.ROLES:
            self.first.update(self._pieces(role, [], ""))
            self.later.update(self._pieces(role, probe, closed))
        # What follows the response in a full conversation ("<|im_end|>\n" for ChatML).
        self.response_tail = self.later.get("assistant", ("", self.eos or ""))[1]

    def _pieces(self, role: str, before: Messages, rendered_before: str) -> dict[str, tuple[str, str]]:
        try:
            text = self._render([*before, {"role": role, "content": _SENTINEL}], False)
        except Exception:  # templates may refuse a role (e.g. no system) or an order
            return {}
        if not text.startswith(rendered_before) or text.count(_SENTINEL) != 1:
            return {}
        head, tail = text[len(rendered_before):].split(_SENTINEL)
        return {role: (head, tail)}

    def messages(self, prompt: str) -> Messages:
        """The chat messages whose rendering (with the generation header) is ``prompt``."""
        if not self.chat:
            return [{"role": "user", "content": prompt}]
        if not prompt.endswith(self.generation_header):
            raise SplitError("prompts", f"does not end with the chat template's assistant header "
                             f"{self.generation_header!r}")
        body = prompt[:len(prompt) - len(self.generation_header)]
        messages: list[dict[str, str]] = []
        pos, table = 0, self.first
        while pos < len(body) or not messages:
            for role, (head, tail) in sorted(table.items(), key=lambda kv: -len(kv[1][0])):
                if not body.startswith(head, pos):
                    continue
                start = pos + len(head)
                end = body.find(tail, start) if tail else len(body)
                if end < 0:
                    continue
                messages.append({"role": role, "content": body[start:end]})
                pos = end + len(tail)
                break
            else:
                raise SplitError("prompts", f"is not a conversation rendered with this backbone's chat "
                                 f"template (no message starts at character {pos})")
            table = self.later
        if self._render(messages, True) != prompt:
            raise SplitError("prompts", "is not a conversation rendered with this backbone's chat template "
                             "(re-rendering the parsed messages differs)")
        return messages

    def response(self, rest: str) -> str:
        """The response's content: the query after the prompt, less the end-of-turn text
        that the template adds again when encoding (and any right padding)."""
        if self.pad and self.pad != self.eos:
            while rest.endswith(self.pad):
                rest = rest[:-len(self.pad)]
        for tail in (self.response_tail, self.response_tail.rstrip(), self.eos):
            if tail and rest.endswith(tail):
                return rest[:-len(tail)]
        return rest

    def split(self, query: str, prompt: str | None) -> tuple[Messages, str]:
        if prompt is None:
            if not self.chat:
                raise SplitError("prompts", "an encoder backbone has no chat template to split by; send 'prompts'")
            cut = query.rfind(self.generation_header)
            if cut < 0:
                raise SplitError("query", f"no assistant turn: the chat template's assistant header "
                                 f"{self.generation_header!r} does not occur")
            prompt = query[:cut + len(self.generation_header)]
        elif not query.startswith(prompt):
            raise SplitError("query", "does not start with its prompt (prompts[i] must be a prefix of query[i])")
        return self.messages(prompt), self.response(query[len(prompt):])


# ----------------------------------------------------------------------------- request validation


def _where(path: str, i: int | None = None, key: str | None = None) -> str:
    return path + (f"[{i}]" if i is not None else "") + (f".{key}" if key is not None else "")


def _type(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _prompt(value: Any, where: str) -> str | Messages:
    if isinstance(value, str):
        if not value.strip():
            raise RequestError(f"{where}: empty")
        return value
    if not isinstance(value, list) or not value:
        raise RequestError(f"{where}: expected text or a non-empty array of {{role, content}} messages, "
                           f"got {_type(value)}")
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"{where}[{j}]: expected an object with 'role' and 'content', got {_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise RequestError(f"{where}[{j}].{key}: missing")
            if not isinstance(m[key], str):
                raise RequestError(f"{where}[{j}].{key}: not a string ({_type(m[key])})")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _list(body: dict[str, Any], key: str, limit: int, required: bool = True) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(f"{key}: missing" if key not in body else f"{key}: expected an array, got null")
        return None
    if not isinstance(value, list):
        raise RequestError(f"{key}: expected an array, got {_type(value)}")
    if not value and required:
        raise RequestError(f"{key}: empty")
    if len(value) > limit:
        raise RequestError(f"{key}: {len(value)} entries; at most {limit} per request", status=413)
    return value


@dataclass
class Job:
    """One request's work: its pairs, which head, an optional routing override."""

    prompts: list[str | Messages]
    responses: list[str]
    model: str
    routing_weights: tuple[float, ...] | None = None
    field: str = "pairs"  # what the client calls its pairs, for error messages
    future: asyncio.Future | None = dc_field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.responses)


# ----------------------------------------------------------------------------- the server


class RewardServer:
    """The loaded models, the batcher and the ASGI app (:meth:`app`)."""

    def __init__(self, models: Mapping[str, RewardModel], default: str | None = None,
                 config: ServeConfig | None = None, paths: Mapping[str, str | Path] | None = None):
        if not models:
            raise UserError("no models to serve")
        backbones = {id(m.backbone) for m in models.values()}
        if len(backbones) != 1:
            raise UserError("every served head must share one loaded backbone (use load_models)")
        self.models = dict(models)
        self.default = default or next(iter(self.models))
        if self.default not in self.models:
            raise UserError(f"--default {self.default!r} is not a loaded model; loaded: {', '.join(self.models)}")
        self.config = config or ServeConfig()
        self.paths = {name: str(path) for name, path in (paths or {}).items()}
        first = self.models[self.default]
        self.backbone = first.backbone
        self.splitter = QuerySplitter(self.backbone)
        # The batcher's state; created on the server's event loop in `start`.
        self._pending: deque[Job] = deque()
        self._queued_pairs = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.in_flight_pairs = 0   # pairs in the batch being computed (observable by tests)
        self.batches = 0           # batcher steps run so far
        self.batched_pairs = 0     # pairs scored so far

    # --------------------------------------------------------------- validation

    def _model(self, body: Mapping[str, Any], override: str | None) -> str:
        name = body.get("model", override)
        if name is None:
            return self.default
        if not isinstance(name, str):
            raise RequestError(f"model: not a string ({_type(name)})")
        if name not in self.models:
            raise RequestError(f"model: unknown model {name!r}; loaded: {', '.join(self.models)}", status=404)
        return name

    def _routing(self, body: Mapping[str, Any], model: str) -> tuple[float, ...] | None:
        value = body.get("routing_weights")
        if value is None:
            return None
        k = self.models[model].head.num_experts
        if not isinstance(value, list):
            raise RequestError(f"routing_weights: expected an array of {k} numbers, got {_type(value)}")
        if len(value) != k:
            raise RequestError(f"routing_weights: {len(value)} entries; model {model!r} has {k} experts")
        for i, w in enumerate(value):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise RequestError(f"routing_weights[{i}]: expected a finite number >= 0, got {w!r}")
        if abs(sum(value) - 1.0) > 1e-4:
            raise RequestError(f"routing_weights: must sum to 1, sum is {sum(value):.6g}")
        return tuple(float(w) for w in value)

    def parse_score(self, body: Any, model_param: str | None = None) -> Job:
        """Validate a ``POST /score`` body; raises :class:`RequestError` naming the field."""
        if not isinstance(body, dict):
            raise RequestError(f"body: expected a JSON object, got {_type(body)}", status=400)
        unknown = sorted(set(body) - {"pairs", "model", "routing_weights"})
        if unknown:
            raise RequestError(f"{unknown[0]}: unknown field; known: pairs, model, routing_weights")
        pairs = _list(body, "pairs", self.config.max_pairs_per_request)
        prompts, responses = [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                raise RequestError(f"pairs[{i}]: expected an object with 'prompt' and 'response', got {_type(pair)}")
            for key in ("prompt", "response"):
                if key not in pair:
                    raise RequestError(f"pairs[{i}].{key}: missing")
            if not isinstance(pair["response"], str):
                raise RequestError(f"pairs[{i}].response: not a string ({_type(pair['response'])})")
            prompts.append(_prompt(pair["prompt"], f"pairs[{i}].prompt"))
            responses.append(pair["response"])
        model = self._model(body, model_param)
        return Job(prompts, responses, model, self._routing(body, model))

    def parse_get_reward(self, body: Any, model_param: str | None = None) -> Job:
        """Validate an OpenRLHF ``POST /get_reward`` body and split its queries."""
        if not isinstance(body, dict):
            raise RequestError(f"body: expected a JSON object, got {_type(body)}", status=400)
        limit = self.config.max_pairs_per_request
        queries = _list(body, "query", limit)
        prompts = _list(body, "prompts", limit, required=False)
        labels = _list(body, "labels", limit, required=False)  # ground truth for rule-based rewards: unused
        for key, other in (("prompts", prompts), ("labels", labels)):
            if other is not None and len(other) != len(queries):
                raise RequestError(f"{key}: {len(other)} entries but query has {len(queries)}")
        out_prompts, responses = [], []
        for i, query in enumerate(queries):
            if not isinstance(query, str):
                raise RequestError(f"query[{i}]: not a string ({_type(query)})")
            prompt = None if prompts is None else prompts[i]
            if prompt is not None and not isinstance(prompt, str):
                raise RequestError(f"prompts[{i}]: not a string ({_type(prompt)})")
            try:
                messages, response = self.splitter.split(query, prompt)
            except SplitError as e:
                # Without prompts the prompt part is read from the query itself.
                where = "query" if prompt is None else e.field
                raise RequestError(f"{where}[{i}]: {e}") from None
            out_prompts.append(messages)
            responses.append(response)
        model = self._model(body, model_param)
        return Job(out_prompts, responses, model, self._routing(body, model), field="query")

    # --------------------------------------------------------------- batcher

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="smoe-batcher")

    async def stop(self) -> None:
        """Drain: everything already queued is still scored, then the batcher ends."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def ready(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    async def submit(self, job: Job) -> list[dict[str, Any]]:
        """Queue ``job`` and wait for its own results (one dict per pair)."""
        if not self.ready:
            raise Overloaded("shutting down")
        if self._queued_pairs + len(job) > self.config.max_queued_pairs:
            raise Overloaded(f"queue full ({self._queued_pairs} pairs waiting, at most "
                             f"{self.config.max_queued_pairs}); retry later")
        job.future = asyncio.get_running_loop().create_future()
        self._pending.append(job)
        self._queued_pairs += len(job)
        self._wakeup.set()
        try:
            # shield: a timeout cancels only our wait; the batcher sees `future.cancelled()`.
            return await asyncio.wait_for(asyncio.shield(job.future), self.config.request_timeout_s)
        except asyncio.TimeoutError:
            job.future.cancel()  # a job still queued is skipped, not scored
            raise

    def _take(self) -> list[Job]:
        """Pop queued jobs up to the batch size (always at least one)."""
        batch, pairs = [], 0
        while self._pending and (not batch or pairs + len(self._pending[0]) <= self.config.max_batch_pairs):
            job = self._pending.popleft()
            self._queued_pairs -= len(job)
            if job.future.cancelled():  # timed out while waiting
                continue
            batch.append(job)
            pairs += len(job)
        return batch

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # A few ms for concurrent requests to join this batch, unless it is already full.
            if self._queued_pairs < self.config.max_batch_pairs and self.config.batch_wait_ms > 0 \
                    and not self._stopping:
                await asyncio.sleep(self.config.batch_wait_ms / 1000)
            batch = self._take()
            if not batch:
                continue
            self.in_flight_pairs = sum(map(len, batch))
            try:
                # The model runs in a worker thread so the event loop stays responsive.
                results = await asyncio.to_thread(self.compute, batch)
            except BaseException as e:  # noqa: BLE001 -- must not kill the batcher
                if isinstance(e, asyncio.CancelledError):
                    raise
                log.exception("model failure on a batch of %d request(s)", len(batch))
                failure = ModelFailure(f"model failure: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                results = [failure] * len(batch)
            finally:
                self.in_flight_pairs = 0
            self.batches += 1
            self.batched_pairs += sum(map(len, batch))
            for job, result in zip(batch, results):
                if job.future.done():  # timed out while computing
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def compute(self, batch: Sequence[Job]) -> list[list[dict[str, Any]] | Exception]:
        """Score a batch of jobs with one ``states`` call; per job its results (or its
        :class:`RequestError` when one of its sequences cannot be encoded)."""
        encoder = self.models[self.default]
        prompts = [p for job in batch for p in job.prompts]
        responses = [r for job in batch for r in job.responses]
        try:
            prompt_states, response_states = encoder.states(prompts, responses)
        except (ValueError, UserError):
            # A sequence the backbone refuses (e.g. a response longer than max_length):
            # find its job and fail only that one.
            if len(batch) == 1:
                return [self._encoding_error(batch[0])]
            return [out for job in batch for out in self.compute([job])]
        results: list[list[dict[str, Any]] | Exception] = []
        start = 0
        with torch.inference_mode():
            for job in batch:
                rows = slice(start, start + len(job))
                start += len(job)
                head = self.models[job.model].head
                device = self.backbone.device
                weights = None if job.routing_weights is None else torch.tensor(job.routing_weights, device=device)
                out = head(prompt_states[rows].to(device), response_states[rows].to(device), weights)
                results.append(_rows(out))
        return results

    def _encoding_error(self, job: Job) -> Exception:
        for i, (p, r) in enumerate(zip(job.prompts, job.responses)):
            try:
                self.backbone.encode(as_messages(p), r)
            except (ValueError, UserError) as e:
                reason = {"response_too_long": f"the response alone is longer than the backbone's max_length "
                                               f"({self.backbone.config.max_length} tokens)",
                          "over_length": f"longer than the backbone's max_length "
                                         f"({self.backbone.config.max_length} tokens)"}.get(str(e), str(e))
                return RequestError(f"{job.field}[{i}]: {reason}")
        return ModelFailure("model failure: the batch could not be encoded")

    # --------------------------------------------------------------- ASGI app

    def app(self) -> Starlette:
        """The Starlette application (routes, error mapping, lifespan running the batcher)."""
        def error(status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message}, status_code=status)

        async def read_json(request: Request) -> Any:
            limit = self.config.max_body_bytes
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise RequestError(f"body: {int(declared)} bytes; at most {limit}", status=413)
            chunks, size = [], 0
            async for chunk in request.stream():  # counted as it arrives: no unbounded read
                size += len(chunk)
                if size > limit:
                    raise RequestError(f"body: more than {limit} bytes", status=413)
                chunks.append(chunk)
            try:
                return json.loads(b"".join(chunks))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
                raise RequestError(f"body: not valid JSON ({msg}{where})", status=400) from None

        async def answer(request: Request, parse: Callable[[Any, str | None], Job],
                         shape: Callable[[Job, list[dict[str, Any]]], dict[str, Any]]) -> JSONResponse:
            try:
                job = parse(await read_json(request), request.query_params.get("model"))
                results = await self.submit(job)
            except RequestError as e:
                return error(e.status, str(e))
            except Overloaded as e:
                return error(503, str(e))
            except asyncio.TimeoutError:
                return error(504, f"timed out after {self.config.request_timeout_s:g} s")
            except ModelFailure as e:
                return error(500, str(e))
            return JSONResponse(shape(job, results))

        def score_shape(job: Job, results: list[dict[str, Any]]) -> dict[str, Any]:
            return {"model": job.model, "results": results}

        def openrlhf_shape(job: Job, results: list[dict[str, Any]]) -> dict[str, Any]:
            rewards = [r["reward"] for r in results]
            k = len(results[0]["expert_rewards"])
            extra = {"reward": rewards}
            for e in range(k if k > 1 else 0):  # flat per-sample lists: OpenRLHF logs one number per key
                extra[f"expert_{e}_reward"] = [r["expert_rewards"][e] for r in results]
                extra[f"expert_{e}_weight"] = [r["routing_weights"][e] for r in results]
            return {"rewards": rewards, "scores": rewards, "extra_logs": extra}

        async def score(request: Request) -> JSONResponse:
            return await answer(request, self.parse_score, score_shape)

        async def get_reward(request: Request) -> JSONResponse:
            return await answer(request, self.parse_get_reward, openrlhf_shape)

        async def health(request: Request) -> JSONResponse:
            body = {"status": "ok" if self.ready else "shutting down", "queued_pairs": self._queued_pairs,
                    "batches": self.batches, "pairs_scored": self.batched_pairs}
            return JSONResponse(body, status_code=200 if self.ready else 503)

        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"models": [describe(n, m, n == self.default, self.paths.get(n)) for n, m in self.models.items()]})

        async def not_found(request: Request, exc: Exception) -> JSONResponse:
            return error(404, f"{request.url.path}: no such endpoint; POST /get_reward, POST /score, "
                              f"GET /health, GET /models")

        async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
            return error(405, f"{request.method} {request.url.path}: method not allowed")

        async def internal(request: Request, exc: Exception) -> JSONResponse:
            log.exception("unhandled error on %s", request.url.path)
            return error(500, f"internal error: {type(exc).__name__}")

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()  # after uvicorn has let in-flight requests finish

        return Starlette(routes=[Route("/get_reward", get_reward, methods=["POST"]),
                                 Route("/score", score, methods=["POST"]),
                                 Route("/health", health, methods=["GET"]),
                                 Route("/models", models, methods=["GET"])],
                         exception_handlers={404: not_found, 405: wrong_method, Exception: internal},
                         lifespan=lifespan)


def _rows(out: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    reward, experts, weights = (out[k].float().cpu() for k in ("reward", "expert_rewards", "routing_weights"))
    return [{"reward": float(r), "expert_rewards": e.tolist(), "routing_weights": w.tolist()}
            for r, e, w in zip(reward, experts, weights)]


def uvicorn_server(server: RewardServer, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info", graceful_s: float | None = None) -> uvicorn.Server:
    """A ``uvicorn.Server`` for ``server``'s app; ``.run()`` serves until SIGTERM/SIGINT
    (or ``.should_exit = True``), then finishes in-flight requests before exiting."""
    config = uvicorn.Config(server.app(), host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_s, access_log=False)
    return uvicorn.Server(config)


def run(server: RewardServer, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT."""
    uvicorn_server(server, host, port, log_level).run()
