"""`smoe serve` on loopback: a real uvicorn server (in a thread, or `python -m stages.serve`
in a subprocess) and a real HTTP client (http.client), tiny random Llama + random heads."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from pipeline import backbone as bb
from pipeline.errors import UserError
from pipeline.models import HeadConfig, RewardHead
from pipeline.serve import QuerySplitter, RewardServer, ServeConfig, load_models, parse_model_specs, uvicorn_server
from tests.conftest import CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
K = 3
MAX_LENGTH = 256
EOS = "<|im_end|>"


def make_head(path: Path, *, seed: int, hidden: int = 32, kind: str = "moe", k: int = K) -> Path:
    torch.manual_seed(seed)
    head = RewardHead(HeadConfig(kind=kind, hidden_size=hidden, num_experts=k))
    with torch.no_grad():  # the router starts exactly uniform: randomize it so routing depends on the prompt
        for p in head.parameters():
            p.normal_(0.0, 0.5)
    head.save(path, variant="sparse" if kind == "moe" else kind)
    return path


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("heads")
    return {"main": str(make_head(root / "main", seed=1)), "alice": str(make_head(root / "alice", seed=2))}


@pytest.fixture(scope="module")
def models(tiny_llama, heads):
    return load_models(heads, bb.BackboneConfig(model=str(tiny_llama), max_length=MAX_LENGTH))


@contextmanager
def serving(server: RewardServer):
    """uvicorn on a loopback socket we bound ourselves (no port race), in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn_server(server, log_level="warning")
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield Client(port), uv, thread
    finally:
        uv.should_exit = True
        thread.join(30)
        sock.close()


class Client:
    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()  # one keep-alive connection per client thread

    def request(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
                resp = conn.getresponse()
                break
            except OSError as e:
                conn.close()
                self.local.conn = None
                # uvicorn closes a keep-alive connection idle for 5 s: reconnect once, as pools do
                stale = isinstance(e, (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected))
                if attempt or not stale:
                    raise
        payload = resp.read()
        if resp.getheader("connection", "").lower() == "close":
            conn.close()
            self.local.conn = None
        return resp.status, json.loads(payload)

    def post(self, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
        return self.request("POST", path, body, raw)


@pytest.fixture(scope="module")
def live(models, heads):
    server = RewardServer(models, config=ServeConfig(max_pairs_per_request=64, max_body_bytes=64 * 1024),
                          paths=heads)
    with serving(server) as (client, _, _):
        yield client, server


def openrlhf_query(tokenizer, prompt, response: str) -> tuple[str, str]:
    """(query, prompt) as OpenRLHF builds them: the prompt rendered with the tokenizer's chat
    template and add_generation_prompt, the response decoded after it with its EOS token."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered + response + EOS, rendered


PROMPTS = ["How do I proof dough?", "Explain tides briefly.",
           [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a prime."}],
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2+2?"}]]
RESPONSES = ["Knead, rest 1 h, shape, bake.", "The moon pulls the oceans.", "Seven.", "Four, of course."]


def close(got, expected, atol: float = 1e-4) -> bool:
    return torch.allclose(torch.tensor(got, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64),
                          atol=atol, rtol=1e-4)


# ----------------------------------------------------------------------------- correctness


def test_scores_equal_reward_model_score(live, models):
    client, _ = live
    expected = models["main"].score(PROMPTS, RESPONSES)
    status, out = client.post("/score", {"pairs": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]})
    assert status == 200 and out["model"] == "main"
    assert close([r["reward"] for r in out["results"]], expected.reward)
    assert close([r["expert_rewards"] for r in out["results"]], expected.expert_rewards)
    assert close([r["routing_weights"] for r in out["results"]], expected.routing_weights)
    # routing depends on the prompt (else the per-pair slices would not be tested)
    assert not torch.allclose(expected.routing_weights[0], expected.routing_weights[1], atol=1e-3)

    # OpenRLHF's contract, split by the given prompts and by the template alone
    tok = models["main"].backbone.tokenizer
    queries, prompts = zip(*(openrlhf_query(tok, p, r) for p, r in zip(PROMPTS, RESPONSES)))
    for body in ({"query": list(queries), "prompts": list(prompts), "labels": [None] * 4}, {"query": list(queries)}):
        status, out = client.post("/get_reward", body)
        assert status == 200, out
        assert close(out["rewards"], expected.reward) and out["scores"] == out["rewards"]
        assert close(out["extra_logs"]["expert_1_weight"], expected.routing_weights[:, 1])
        assert all(len(v) == 4 for v in out["extra_logs"].values())  # one number per sample, as OpenRLHF logs

    # a personalized head by name, and steering
    alice = models["alice"].score(PROMPTS, RESPONSES, routing_weights=[0.2, 0.0, 0.8])
    status, out = client.post("/score", {"pairs": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)],
                                         "model": "alice", "routing_weights": [0.2, 0, 0.8]})
    assert status == 200 and out["model"] == "alice"
    assert close([r["reward"] for r in out["results"]], alice.reward)
    assert all(r["routing_weights"] == pytest.approx([0.2, 0, 0.8]) for r in out["results"])
    status, out = client.post("/get_reward?model=alice", {"query": list(queries)})
    assert status == 200 and close(out["rewards"], models["alice"].score(PROMPTS, RESPONSES).reward)


def test_health_and_models(live, heads):
    client, _ = live
    status, out = client.request("GET", "/health")
    assert status == 200 and out["status"] == "ok"
    status, out = client.request("GET", "/models")
    assert status == 200
    assert [(m["name"], m["default"], m["num_experts"], m["variant"], m["path"]) for m in out["models"]] == \
        [("main", True, K, "sparse", heads["main"]), ("alice", False, K, "sparse", heads["alice"])]
    assert all(m["backbone"] for m in out["models"])


def test_sixteen_concurrent_clients(live, models):
    """16 clients x 50 requests, 1-3 distinct pairs each: every request answered, each with
    the scores of its own pairs, and requests shared forward passes."""
    client, server = live
    clients, per_client = 16, 50
    plan = {(c, i): [(f"Client {c} asks question {i}, part {j}?", f"Answer {j} to {i} for {c}.")
                     for j in range(1 + (c + i) % 3)] for c in range(clients) for i in range(per_client)}
    flat = [pair for pairs in plan.values() for pair in pairs]
    expected_all = models["main"].score([p for p, _ in flat], [r for _, r in flat]).reward.tolist()
    expected, at = {}, 0
    for key, pairs in plan.items():
        expected[key] = expected_all[at:at + len(pairs)]
        at += len(pairs)
    batches_before = server.batches

    def run_client(c: int) -> list[tuple[tuple[int, int], int, list[float]]]:
        got = []
        for i in range(per_client):
            pairs = plan[(c, i)]
            if i % 2:  # half through OpenRLHF's endpoint, half through the native one
                tok = models["main"].backbone.tokenizer
                status, out = client.post("/get_reward", {"query": [openrlhf_query(tok, p, r)[0] for p, r in pairs]})
                rewards = out.get("rewards")
            else:
                status, out = client.post("/score", {"pairs": [{"prompt": p, "response": r} for p, r in pairs]})
                rewards = [r["reward"] for r in out.get("results", [])]
            got.append(((c, i), status, rewards))
        return got

    with ThreadPoolExecutor(clients) as pool:
        answers = [a for chunk in pool.map(run_client, range(clients)) for a in chunk]
    assert len(answers) == clients * per_client
    assert all(status == 200 for _, status, _ in answers)
    for key, _, rewards in answers:
        assert len(rewards) == len(plan[key]) and close(rewards, expected[key]), key
    batches = server.batches - batches_before
    assert batches < clients * per_client, "no request shared a batch"


# ----------------------------------------------------------------------------- bad input


def _good_query(models) -> str:
    return openrlhf_query(models["main"].backbone.tokenizer, "Hi", "Yo")[0]


BAD = [
    # (path, body or raw bytes, status, the line's start)
    ("/score", b"{not json", 400, "body: not valid JSON"),
    ("/get_reward", b'{"query": ["a",]}', 400, "body: not valid JSON"),
    ("/score", [1, 2], 400, "body: expected a JSON object"),
    ("/score", {}, 422, "pairs: missing"),
    ("/score", {"pairs": "x"}, 422, "pairs: expected an array"),
    ("/score", {"pairs": []}, 422, "pairs: empty"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": 3}]}, 422,
     "pairs[1].response: not a string"),
    ("/score", {"pairs": [{"response": "b"}]}, 422, "pairs[0].prompt: missing"),
    ("/score", {"pairs": [{"prompt": [{"role": "user"}], "response": "b"}]}, 422, "pairs[0].prompt[0].content: missing"),
    ("/score", {"pairs": [{"prompt": 5, "response": "b"}]}, 422, "pairs[0].prompt: expected text or"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}], "modle": "x"}, 422, "modle: unknown field"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}], "model": "bob"}, 404, "model: unknown model 'bob'"),
    ("/get_reward?model=bob", {"query": "GOOD"}, 404, "model: unknown model 'bob'"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}], "routing_weights": [0.5, 0.5]}, 422,
     "routing_weights: 2 entries"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}], "routing_weights": [0.5, 0.4, 0.3]}, 422,
     "routing_weights: must sum to 1"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}], "routing_weights": [1.5, -0.5, 0]}, 422,
     "routing_weights[1]: expected a finite number"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}], "routing_weights": "0,1,0"}, 422,
     "routing_weights: expected an array"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b"}] * 65}, 413, "pairs: 65 entries; at most 64"),
    ("/score", {"pairs": [{"prompt": "a", "response": "b" * 70_000}]}, 413, "body: "),
    ("/score", {"pairs": [{"prompt": "a", "response": "x" * 300}]}, 422, "pairs[0]: the response alone is longer"),
    ("/get_reward", {"prompts": ["a"]}, 422, "query: missing"),
    ("/get_reward", {"query": ["GOOD", "GOOD", "GOOD", 7]}, 422, "query[3]: not a string"),
    ("/get_reward", {"query": ["GOOD", "GOOD"], "prompts": ["x"]}, 422, "prompts: 1 entries but query has 2"),
    ("/get_reward", {"query": ["GOOD"], "labels": ["a", "b"]}, 422, "labels: 2 entries but query has 1"),
    ("/get_reward", {"query": ["GOOD"], "prompts": [3]}, 422, "prompts[0]: not a string"),
    ("/get_reward", {"query": ["GOOD"], "prompts": ["something else"]}, 422, "query[0]: does not start with"),
    ("/get_reward", {"query": ["Human: hi\nAssistant: yo"], "prompts": ["Human: hi\nAssistant: "]}, 422,
     "prompts[0]: does not end with the chat template's assistant header"),
    ("/get_reward", {"query": ["plain text, no template"]}, 422, "query[0]: no assistant turn"),
    ("/get_reward", {"query": ["GOOD"], "routing_weights": [1, 0]}, 422, "routing_weights: 2 entries"),
]


@pytest.mark.parametrize("path,body,status,line", BAD, ids=[f"{i}-{b[3][:28]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_4xx_with_one_line_naming_the_field(live, models, path, body, status, line):
    client, _ = live
    if isinstance(body, dict) and "query" in body:
        good = _good_query(models)
        body = {**body, "query": [good if q == "GOOD" else q for q in body["query"]]
                if isinstance(body["query"], list) else [good]}
    got, out = client.post(path, raw=body) if isinstance(body, bytes) else client.post(path, body)
    assert got == status, out
    assert list(out) == ["error"] and "\n" not in out["error"] and out["error"].startswith(line), out


def test_unknown_endpoint_and_method(live):
    client, _ = live
    assert client.post("/reward", {})[0] == 404
    status, out = client.request("GET", "/get_reward")
    assert status == 405 and out["error"].startswith("GET /get_reward")


def test_model_failure_is_a_5xx_and_the_server_keeps_serving(live, models, monkeypatch):
    client, server = live
    body = {"pairs": [{"prompt": "a", "response": "b"}]}
    real_states = models["main"].states
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected failure\nsecond line")
        return real_states(*args, **kwargs)

    monkeypatch.setattr(models["main"], "states", failing_once)
    status, out = client.post("/score", body)
    assert status == 500 and out == {"error": "model failure: RuntimeError: injected failure"}
    status, out = client.post("/score", body)
    assert status == 200 and close([out["results"][0]["reward"]], models["main"].score(["a"], ["b"]).reward)
    assert client.request("GET", "/health")[0] == 200


# ----------------------------------------------------------------------------- load limits, shutdown


def _slow(monkeypatch, model, seconds: list[float]):
    """Make each backbone pass take ``seconds[0]`` longer (a list, so a test can change it)."""
    real = model.states

    def slow(*args, **kwargs):
        time.sleep(seconds[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "states", slow)


def test_queue_full_is_503_and_timeout_is_504(models, monkeypatch):
    server = RewardServer(models, config=ServeConfig(max_queued_pairs=2, max_batch_pairs=2, request_timeout_s=2.0))
    delay = [0.5]
    _slow(monkeypatch, models["main"], delay)
    body = {"pairs": [{"prompt": "q", "response": "r1"}, {"prompt": "q", "response": "r2"}]}
    expected = models["main"].score(["q", "q"], ["r1", "r2"]).reward
    with serving(server) as (client, _, _):
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: client.post("/score", body), range(6)))
        statuses = sorted(s for s, _ in answers)
        assert 503 in statuses and set(statuses) <= {200, 503} and 200 in statuses, answers
        for status, out in answers:
            if status == 503:
                assert out["error"].startswith("queue full")
            else:
                assert close([r["reward"] for r in out["results"]], expected)
        delay[0] = 3.0
        status, out = client.post("/score", body)
        assert status == 504 and out == {"error": "timed out after 2 s"}
        delay[0] = 0.0
        while server.in_flight_pairs:  # the timed-out batch still finishes in its thread
            time.sleep(0.05)
        status, out = client.post("/score", body)
        assert status == 200 and close([r["reward"] for r in out["results"]], expected)


def test_graceful_shutdown_finishes_in_flight_requests(models, monkeypatch):
    server = RewardServer(models, config=ServeConfig(max_batch_pairs=1))
    _slow(monkeypatch, models["main"], [0.3])
    texts = [f"response {i}" for i in range(4)]
    expected = models["main"].score(["p"] * 4, texts).reward
    with serving(server) as (client, uv, thread):
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.post, "/score", {"pairs": [{"prompt": "p", "response": t}]})
                       for t in texts]
            while not server.in_flight_pairs:
                time.sleep(0.01)
            uv.should_exit = True  # what uvicorn's SIGTERM/SIGINT handler does
            answers = [f.result(timeout=30) for f in futures]
        thread.join(30)
        assert not thread.is_alive()
    assert [s for s, _ in answers] == [200] * 4  # one pair per batch: 3 were still queued at the signal
    assert close([out["results"][0]["reward"] for _, out in answers], expected)
    assert server.batches == 4 and not server.ready


def test_cli_serves_and_exits_on_sigterm(tiny_llama, heads):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "stages.serve", "--model", f"main={heads['main']}", "--model", heads["alice"],
           "--default", "alice", "--backbone", str(tiny_llama), "--params", "no-such-params.yaml",
           "--port", str(port), "--log-level", "info"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        client, deadline = Client(port), time.monotonic() + 60
        while True:
            try:
                status, out = client.request("GET", "/models")
                break
            except (ConnectionError, OSError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        assert status == 200 and [(m["name"], m["default"]) for m in out["models"]] == \
            [("main", False), ("alice", True)]
        status, out = client.post("/get_reward", {"query": ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo"
                                                            "<|im_end|>"]})
        assert status == 200 and len(out["rewards"]) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "Application shutdown complete" in err and proc.returncode in (0, -signal.SIGTERM), err


def test_cli_help_and_model_specs():
    from typer.testing import CliRunner

    from stages.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "/get_reward" in result.output and "--model" in result.output
    assert parse_model_specs(["a=x/y", "x/alice"]) == {"a": "x/y", "alice": "x/alice"}
    with pytest.raises(UserError, match="used twice"):
        parse_model_specs(["a=x", "a=y"])


# ----------------------------------------------------------------------------- query splitting

SMOL_TEMPLATE = (  # SmolLM2-Instruct's template: a default system prompt when none is given
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.mark.parametrize("template,system_prompt", [(CHAT_TEMPLATE, None), (SMOL_TEMPLATE, None),
                                                    (SMOL_TEMPLATE, "Be brief.")])
def test_query_splitter_recovers_the_encoded_sequence(tiny_llama, template, system_prompt):
    backbone = bb.load(bb.BackboneConfig(model=str(tiny_llama), system_prompt=system_prompt))
    backbone.tokenizer.chat_template = template
    splitter = QuerySplitter(backbone)
    for prompt, response in zip(PROMPTS, RESPONSES):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        # what the server encodes equals what featurize encodes for (messages, response)
        want = backbone.encode(messages, response)
        rendered = backbone.render(messages, True)
        for query, given in ((rendered + response + EOS, rendered), (rendered + response + EOS + "\n", None),
                             (rendered + response, None)):
            got_messages, got_response = splitter.split(query, given)
            got = backbone.encode(got_messages, got_response)
            assert (got.prefix, got.response) == (want.prefix, want.response), (query, got_messages, got_response)
    with pytest.raises(ValueError, match="re-rendering|no message starts"):
        splitter.messages("<|im_start|>robot\nhi<|im_end|>\n<|im_start|>assistant\n")
