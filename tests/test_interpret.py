"""Expert interpretation: describers, judges, description fidelity (Eq. 19-20), outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from pipeline import describers as D
from pipeline import interpret as I
from pipeline import metrics
from pipeline.backbone import BackboneConfig, load
from pipeline.cache import FeatureCache
from pipeline.split_store import build_stores
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.train import TrainConfig, train_experiment
from stages import common as P
from tests.test_featurize import write_prepared

ROOT = Path(__file__).resolve().parents[1]

BAKING = [
    "How long should I knead bread dough before it rises?",
    "My sourdough bread comes out dense. Is my oven too cold?",
    "What flour is best for baking a soft sandwich bread?",
    "Why does my cake sink in the oven while baking?",
    "Can I bake cookies without butter, and will the dough spread?",
    "How hot should the oven be to bake a crusty baguette?",
    "Is it normal for pizza dough to double overnight in the fridge?",
    "What makes croissant dough flaky when you bake it?",
    "How do I stop my pie crust from burning in the oven?",
    "Why is my banana bread raw in the middle after baking?",
    "Should I proof bread dough in a warm oven?",
    "How much yeast do I need for one loaf of bread?",
]
LAW = [
    "Is a verbal contract legally binding if my landlord breaks it?",
    "Can my employer fire me for filing a lawsuit against them?",
    "What court handles a small claims dispute with a contractor?",
    "Do I need a lawyer to contest a parking ticket in court?",
    "Is my landlord allowed to keep the deposit without a court order?",
    "How do I sue someone who broke a written contract?",
    "Can a lawyer represent both sides of a divorce settlement?",
    "What happens in court if the other party ignores a subpoena?",
    "Is a non-compete clause in my contract enforceable under state law?",
    "Who pays the lawyer fees when a lawsuit is dismissed?",
    "Can I break my lease legally if the landlord never repairs anything?",
    "What does a judge consider when a contract has no signature?",
]
MISC = ["What is a good name for a grey cat?", "Which planet has the most moons?",
        "How many strings does a cello have?", "What colour is a flamingo and why?"]


# ----------------------------------------------------------------------------- keywords


def test_keywords_describer_names_each_experts_topic_deterministically():
    texts = BAKING + LAW + MISC
    k_of = [0] * len(BAKING) + [1] * len(LAW) + [2] * len(MISC)
    rng = np.random.default_rng(0)
    # Each prompt mostly routes to its topic's expert; two pairs share every baking prompt.
    pair_ids, prompt_texts, rows = [], {}, []
    for i, (text, k) in enumerate(zip(texts, k_of)):
        for copy in range(2 if k == 0 else 1):
            pid = f"p{i:03d}{copy}"
            pair_ids.append(pid)
            prompt_texts[pid] = text
            w = np.full(3, 0.05) + rng.uniform(0, 0.02, 3)
            w[k] = 0.9 - 0.01 * i
            rows.append(w / w.sum())
    weights = np.array(rows)
    describer, judge = I.make_backends(I.InterpretConfig())  # the defaults: keywords, 5 terms
    assert judge is describer and describer.num_terms == 5
    descriptions, tops = I.describe_from_weights(weights, pair_ids, prompt_texts, describer, top_n=10)
    # top prompts by weight, distinct texts only (the duplicated baking pairs collapse)
    assert [len(t) for t in tops] == [10, 10, 10]
    assert {t["text"] for t in tops[2][:4]} == set(MISC)
    assert {t["text"] for t in tops[0]} <= set(BAKING) and {t["text"] for t in tops[1]} <= set(LAW)
    assert len({t["text"] for t in tops[0]}) == 10
    assert [t["weight"] for t in tops[0]] == sorted((t["weight"] for t in tops[0]), reverse=True)
    baking_words = {"bread", "dough", "oven", "bake", "baking"}
    law_words = {"contract", "court", "lawyer", "landlord", "lawsuit"}
    d0, d1 = (set(D.KeywordsBackend.keywords(d)) for d in descriptions[:2])
    assert all(d.startswith("keywords: ") for d in descriptions)
    assert len(d0 & baking_words) >= 2 and not d0 & law_words, descriptions
    assert len(d1 & law_words) >= 2 and not d1 & baking_words, descriptions
    assert "the" not in d0 | d1 and "how" not in d0 | d1  # English stop words removed
    assert all(len(D.KeywordsBackend.keywords(d)) <= 5 for d in descriptions)
    # deterministic, also when the pairs come in another order
    perm = rng.permutation(len(pair_ids))
    again, _ = I.describe_from_weights(weights[perm], [pair_ids[i] for i in perm], prompt_texts,
                                       D.make_backend("keywords", num_terms=5), top_n=10)
    assert again == descriptions


def test_keywords_judge_matches_whole_words_case_insensitively():
    judge = D.make_backend("keywords", num_terms=5)
    prompts = ["My DOUGH is too sticky", "A doughnut shop opened", "Read the contract", "Oven fire!"]
    assert judge.judge(0, "keywords: dough, oven", prompts) == [1, 0, 0, 1]
    assert judge.judge(0, "keywords: (none)", prompts) == [0, 0, 0, 0]
    # a free-text description (from an LLM describer) is reduced to its content words
    assert judge.judge(1, "asks about a legal contract", prompts) == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="unknown describer/judge 'gpt'"):
        D.make_backend("gpt")


def test_description_parsing():
    assert D.parse_description('-"asks about baking bread"\n') == "asks about baking bread"
    assert D.parse_description('asks for legal advice"') == "asks for legal advice"  # continues the prompt's -"
    assert D.parse_description('<think>hmm</think>\n\n - "x y"') == "x y"
    assert D.parse_description("  \n ") == ""
    assert [D.parse_judgment(a) for a in ("YES", " no.", '"Yes"', "<think>a</think>NO", "MAYBE", "YES NO")] == \
        [1, 0, 1, 0, None, None]


# ----------------------------------------------------------------------------- config


def test_config_holds_the_paper_defaults_and_params_yaml_states_every_field():
    config = I.InterpretConfig()
    assert (config.describer, config.judge, config.top_n, config.per_stratum, config.seed, config.keywords,
            config.llm_model, config.max_new_tokens, config.device) == \
        ("keywords", "keywords", 20, 100, 0, 5, "gpt-4o-mini", 48, "auto")
    block = yaml.safe_load((ROOT / "params.yaml").read_text())["interpret"]
    assert set(block) == {f.name for f in fields(I.InterpretConfig)}
    assert P.build(I.InterpretConfig, block, "interpret") == config
    with pytest.raises(typer.BadParameter, match=r"interpret: unknown key\(s\) \['describr'\]"):
        P.build(I.InterpretConfig, {"describr": "keywords"}, "interpret")


@pytest.mark.parametrize("values, message", [
    ({"describer": "gpt"}, "unknown describer 'gpt'"),
    ({"judge": "hf:"}, "unknown judge 'hf:'"),
    ({"top_n": 0}, "top_n must be an integer >= 1"),
    ({"per_stratum": 2.5}, "per_stratum must be an integer >= 1"),
    ({"keywords": True}, "keywords must be an integer >= 1"),
    ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"llm_model": " "}, "llm_model must be a model name"),
    ({"device": "gpu"}, "device must be auto, cpu, cuda"),
])
def test_config_rejects_bad_values_with_one_line_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        I.InterpretConfig(**values)
    with pytest.raises(typer.BadParameter, match=f"interpret: {message}"):
        P.build(I.InterpretConfig, values, "interpret")


def test_make_backends_gives_each_backend_its_settings_and_shares_one_for_one_spec():
    url = "http://127.0.0.1:9/v1"  # never contacted: building a backend sends nothing
    config = I.InterpretConfig(describer=f"openai:{url}", judge="keywords", keywords=3, llm_model="m-1")
    describer, judge = I.make_backends(config, D.Connection(api_key_env="SMOE_TEST_KEY", timeout=4.0, retries=1))
    assert isinstance(describer, D.OpenAIBackend) and describer.model == "m-1"
    assert describer.connection == D.Connection(api_key_env="SMOE_TEST_KEY", timeout=4.0, retries=1)
    assert isinstance(judge, D.KeywordsBackend) and judge.num_terms == 3
    same = I.make_backends(I.InterpretConfig(describer=f"openai:{url}", judge=f"openai:{url}"))
    assert same[0] is same[1] and same[0].connection == D.Connection()
    with pytest.raises(ValueError, match="retries >= 0"):
        D.Connection(retries=-1)


# ----------------------------------------------------------------------------- fidelity


class TableJudge(D.Backend):
    """z(x) from a lookup: the description names a set of positive prompts."""

    name = "table"

    def __init__(self, positives: dict[str, set[str]]):
        super().__init__()
        self.positives = positives
        self.calls = 0

    def _judge(self, expert_id, description, prompts):
        self.calls += len(prompts)
        return [int(p in self.positives[description]) for p in prompts]


def two_mode_weights(n: int = 1000, seed: int = 0) -> np.ndarray:
    """pi_0 high (~0.9) on a random 10 % of examples, low (~0.1) elsewhere; pi_1 = 1 - pi_0."""
    rng = np.random.default_rng(seed)
    high = np.zeros(n, dtype=bool)
    high[rng.choice(n, n // 10, replace=False)] = True
    pi0 = np.where(high, 0.9, 0.1) + rng.uniform(-0.05, 0.05, n)
    return np.stack([pi0, 1 - pi0], axis=1)


def test_fidelity_of_a_perfect_description_is_near_one_and_beats_the_shuffled_baseline():
    weights = two_mode_weights()
    prompts = [f"prompt {i}" for i in range(len(weights))]
    positives = {"high0": {p for p, w in zip(prompts, weights[:, 0]) if w > 0.5},
                 "high1": {p for p, w in zip(prompts, weights[:, 1]) if w > 0.5}}
    judge = TableJudge(positives)
    result = I.fidelity(weights, prompts, ["high0", "high1"], judge, I.InterpretConfig(per_stratum=100, seed=0))
    assert result.per_expert[0] > 0.95 and result.per_expert[1] > 0.95
    assert result.overall == pytest.approx(np.mean(result.per_expert))
    assert abs(result.random_overall) < 0.3 and result.random_overall < result.overall - 0.6
    assert judge.calls == 400  # 2 experts x 200 examples; the baseline re-judges nothing
    # seeded: the same sample and numbers again
    again = I.fidelity(weights, prompts, ["high0", "high1"], TableJudge(positives),
                       I.InterpretConfig(per_stratum=100, seed=0))
    assert again.samples == result.samples and again.random_overall == result.random_overall
    other = I.fidelity(weights, prompts, ["high0", "high1"], TableJudge(positives),
                       I.InterpretConfig(per_stratum=100, seed=1))
    assert other.samples != result.samples
    # a description that picks the wrong examples is anti-correlated
    wrong = I.fidelity(weights, prompts, ["high1", "high0"], judge, I.InterpretConfig(per_stratum=100, seed=0))
    assert wrong.overall < -0.9


def test_constant_judgments_or_weights_give_zero_fidelity():
    weights = two_mode_weights(200)
    prompts = [f"prompt {i}" for i in range(200)]
    everything = TableJudge({"all": set(prompts), "none": set()})
    result = I.fidelity(weights, prompts, ["all", "none"], everything, I.InterpretConfig(per_stratum=20))
    assert result.per_expert == [0.0, 0.0] and result.random_per_expert == [0.0, 0.0] and result.overall == 0.0
    assert metrics.pearson_or_zero(np.array([0, 1, 0, 1]), np.full(4, 0.25)) == 0.0
    assert metrics.pearson_or_zero(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.1, 0.9])) == pytest.approx(1.0)


def test_description_fidelity_is_the_mean_of_the_per_expert_correlations():
    z = [np.array([0, 1, 0, 1, 1]), np.array([1, 1, 0, 0, 0]), np.array([1, 1, 1, 1, 1])]
    pi = [np.array([0.1, 0.8, 0.2, 0.7, 0.9]), np.array([0.1, 0.2, 0.9, 0.8, 0.7]), np.linspace(0, 1, 5)]
    overall, per_expert = metrics.description_fidelity(z, pi)
    assert per_expert[0] == pytest.approx(np.corrcoef(z[0], pi[0])[0, 1]) and per_expert[0] > 0.9   # Eq. 19
    assert per_expert[1] == pytest.approx(np.corrcoef(z[1], pi[1])[0, 1]) and per_expert[1] < -0.9
    assert per_expert[2] == 0.0                                                 # constant z: 0, not NaN
    assert overall == pytest.approx(np.mean(per_expert))                       # Eq. 20
    overall, per_expert = metrics.description_fidelity([], [])
    assert np.isnan(overall) and per_expert == []
    with pytest.raises(ValueError, match="expert 0: 2 judgments for 3 routing weights"):
        metrics.description_fidelity([np.array([0, 1])], [np.array([0.1, 0.2, 0.3])])


def test_stratified_sample_takes_per_stratum_from_the_top_ten_percent_and_the_rest():
    rng = np.random.default_rng(0)
    pi = rng.uniform(size=1000)
    top, rest = metrics.stratified_sample(pi, 100, 0.1, rng)
    assert len(top) == 100 and len(rest) == 100 and not set(top) & set(rest)
    assert set(top) == set(np.argsort(-pi)[:100])          # the whole top 10 % (100 examples)
    assert pi[rest].max() < np.sort(pi)[-100]              # the rest lies below it
    top, rest = metrics.stratified_sample(pi, 30, 0.1, np.random.default_rng(1))
    assert len(top) == 30 and len(rest) == 30 and pi[top].min() >= np.sort(pi)[-100]
    # a small split: fewer than per_stratum in a stratum -> all of it
    top, rest = metrics.stratified_sample(pi[:50], 100, 0.1, np.random.default_rng(0))
    assert len(top) == 5 and len(rest) == 45
    top, rest = metrics.stratified_sample(pi[:3], 100, 0.1, np.random.default_rng(0))
    assert len(top) == 1 and len(rest) == 2
    with pytest.raises(ValueError, match="per_stratum >= 1"):
        metrics.stratified_sample(pi, 0, 0.1, np.random.default_rng(0))
    result = I.fidelity(np.stack([pi[:50], 1 - pi[:50]], 1), [str(i) for i in range(50)], ["a", "b"],
                        TableJudge({"a": {"1", "2"}, "b": {"3"}}), I.InterpretConfig(per_stratum=100))
    assert result.num_top == [5, 5] and [len(s) for s in result.samples] == [50, 50]


# ----------------------------------------------------------------------------- hf backend


@pytest.fixture(scope="module")
def hf_backend(tiny_llama):
    return D.make_backend(f"hf:{tiny_llama}", max_new_tokens=8, batch_size=2, device="cpu")


def test_hf_describer_with_a_tiny_random_model(hf_backend, monkeypatch):
    description = hf_backend.describe(0, BAKING[:3])
    assert description.strip()
    # nothing usable generated -> an error naming the expert, not a blank description
    monkeypatch.setattr(hf_backend.tokenizer, "decode", lambda *a, **k: "  \n\n ")
    with pytest.raises(D.InterpretError, match="expert 3: hf:.* generated no description"):
        hf_backend.describe(3, BAKING[:3])


def test_hf_judge_compares_the_likelihood_of_the_whole_yes_and_no_answers(hf_backend):
    prompts = [BAKING[0], LAW[1] + " " + LAW[2], "short?"]  # different lengths: left padding in a batch
    scores = hf_backend.judge_scores("asks about baking", prompts)
    tok, model = hf_backend.tokenizer, hf_backend.model
    # the byte-level test tokenizer splits every answer ("YES" = Y E S): each is scored whole
    assert all(len(a) > 1 for a in hf_backend.yes_answers + hf_backend.no_answers)

    def log_prob(context: list[int], answer: tuple[int, ...]) -> float:  # one plain, unpadded pass
        ids = torch.tensor([context + list(answer)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        return float(sum(logp[len(context) - 1 + j, t] for j, t in enumerate(answer)))

    for i in (0, 2):
        context = tok(hf_backend.render(D.judge_prompt("asks about baking", prompts[i])), add_special_tokens=False).input_ids
        yes = np.logaddexp.reduce([log_prob(context, a) for a in hf_backend.yes_answers])
        no = np.logaddexp.reduce([log_prob(context, a) for a in hf_backend.no_answers])
        assert scores[i] == pytest.approx(yes - no, abs=1e-4)
    assert hf_backend.judge(0, "asks about baking", prompts) == [int(s > 0) for s in scores]
    answers = {tuple(tok(w, add_special_tokens=False).input_ids) for w in ("YES", "Yes", "yes")}
    assert set(hf_backend.yes_answers) == answers


# ----------------------------------------------------------------------------- openai backend

SECRET = "sk-test-0123456789-do-not-leak"


class StubHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if server.mode == "sleep":
            time.sleep(2.0)
        if server.mode in ("fail", "unauthorized"):
            # a careless server that echoes the credentials back
            payload = f"server error, you sent {self.headers.get('Authorization')}".encode()
            self.send_response(500 if server.mode == "fail" else 401)
        else:
            content = body["messages"][0]["content"]
            if content.startswith("You are a binary classifier"):
                text = content.split("Input text:\n", 1)[1].split("\nDecision rule:", 1)[0]
                answer = "MAYBE" if server.mode == "maybe" else ("YES." if "bake" in text else "no")
            else:
                answer = '-"asks about baking bread"'
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.daemon_threads = True
    server.block_on_close = False
    server.handle_error = lambda *a: None  # the client hung up on a sleeping handler: expected
    server.mode, server.requests = "ok", []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def openai(stub, **opts):
    """The backend an ``openai:`` describer spec in params gets, with ``opts`` as its connection."""
    config = I.InterpretConfig(describer=f"openai:{stub.url}", judge=f"openai:{stub.url}", llm_model="stub-model")
    return I.make_backends(config, D.Connection(**{"api_key_env": "SMOE_TEST_KEY", "timeout": 5.0, "retries": 2,
                                                   "backoff": 0.01, **opts}))[0]


def test_openai_describe_and_judge_send_the_paper_prompts(stub, monkeypatch):
    monkeypatch.setenv("SMOE_TEST_KEY", SECRET)
    backend = openai(stub)
    assert backend.describe(0, BAKING[:2]) == "asks about baking bread"
    assert backend.judge(0, "asks about baking bread", ["how do I bake a pie?", "is my lease legal?"]) == [1, 0]
    describe, judge_yes = stub.requests[0], stub.requests[1]
    assert describe["path"] == "/v1/chat/completions"
    assert describe["body"]["model"] == "stub-model" and describe["body"]["temperature"] == 0
    content = describe["body"]["messages"][0]["content"]
    head, tail = D.DESCRIBE_PROMPT.split("{examples}")
    assert content.startswith(head) and content.endswith(tail) and BAKING[0] in content and BAKING[1] in content
    assert "Task Overview You are a machine learning researcher" in content
    content = judge_yes["body"]["messages"][0]["content"]
    assert content == D.JUDGE_PROMPT.format(description="asks about baking bread", input_text="how do I bake a pie?")
    assert describe["headers"]["Authorization"] == f"Bearer {SECRET}"
    # no key in the environment: no Authorization header at all
    monkeypatch.delenv("SMOE_TEST_KEY")
    backend.describe(1, BAKING[:1])
    assert "Authorization" not in stub.requests[-1]["headers"]
    # an answer that is neither YES nor NO is an error naming the expert
    stub.mode = "maybe"
    with pytest.raises(D.InterpretError, match="expert 2: judge answered 'MAYBE', not YES or NO"):
        backend.judge(2, "asks about law", ["what is a tort?"])


def test_openai_http_errors_fail_after_bounded_retries_without_leaking_the_key(stub, monkeypatch, caplog):
    monkeypatch.setenv("SMOE_TEST_KEY", SECRET)
    stub.mode = "fail"
    backend = openai(stub, retries=2)
    with caplog.at_level("DEBUG"), pytest.raises(D.InterpretError) as info:
        backend.describe(3, BAKING[:2])
    message = str(info.value)
    assert message.startswith("expert 3: describe request to ") and "failed after 3 attempts: HTTP 500" in message
    assert len(stub.requests) == 3
    assert SECRET not in message and SECRET not in caplog.text and "***" in message
    assert "attempt 1/3 failed" in caplog.text
    # a non-transient error is not retried
    stub.mode, stub.requests = "unauthorized", []
    with pytest.raises(D.InterpretError, match="expert 4: judge request .* failed after 1 attempt: HTTP 401") as info:
        backend.judge(4, "d", ["x"])
    assert len(stub.requests) == 1 and SECRET not in str(info.value)


def test_openai_timeout_fails_quickly_naming_the_expert(stub):
    stub.mode = "sleep"  # the handler sleeps 2 s before answering
    backend = openai(stub, timeout=0.2, retries=1)
    start = time.monotonic()
    with pytest.raises(D.InterpretError, match=r"expert 5: judge request .* failed after 2 attempts: timed out"):
        backend.judge(5, "asks about baking", ["bake?"])
    assert time.monotonic() - start < 1.5
    assert len(stub.requests) == 2


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def topic_run(tiny_llama, tmp_path_factory):
    """A tiny-Llama cache of baking and law prompts (with categories), its split stores and two trained heads."""
    root = tmp_path_factory.mktemp("interpret")
    rows = []
    for topic, prompts in (("baking", BAKING), ("law", LAW)):
        for p, prompt in enumerate(prompts):
            for k in range(2):
                rows.append({"prompt": prompt, "chosen": f"A careful {topic} answer {p}.{k}.",
                             "rejected": f"no idea {k}", "category": topic,
                             "split": ("train", "train", "validation", "test")[p % 4]})
    prepared = write_prepared(root / "prep", rows)
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    featurize(prepared, root / "cache", backbone, FeaturizeConfig(dtype="float32"), dataset="tiny",
              show_progress=False)
    stores = build_stores(FeatureCache(root / "cache"), root / "stores")
    config = TrainConfig(epochs=2, batch_size=8, block_pairs=64, router_hidden=16, hyre_heads=2)
    train_experiment(stores, root / "models", root / "curves", variants=["single", "sparse"], num_experts=2,
                     lambdas={"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}, config=config,
                     show_progress=False)
    return root, stores, prepared


def test_interpret_variant_writes_the_expert_table(topic_run, tmp_path):
    root, stores, prepared = topic_run
    config = I.InterpretConfig(per_stratum=5)
    report = I.interpret_variant(stores, prepared, root / "models" / "sparse", tmp_path / "sparse", config,
                                 extra={"experiment": "tiny"})
    data = json.loads((tmp_path / "sparse" / "experts.json").read_text())
    assert data == json.loads(json.dumps(report))
    assert data["num_experts"] == 2 and len(data["experts"]) == 2 and data["variant"] == "sparse"
    assert np.isfinite(data["description_fidelity"]) and np.isfinite(data["description_fidelity_random"])
    assert data["specialization_kind"] == "category" and data["num_test_prompts"] == 6
    assert (data["describer"], data["judge"], data["top_n"], data["per_stratum"], data["top_m"], data["seed"]) == \
        ("keywords", "keywords", 20, 5, 0.1, 0)
    validation = {r for r in BAKING[2::4] + LAW[2::4]}
    for e in data["experts"]:
        assert e["description"].startswith("keywords: ") and np.isfinite(e["fidelity"])
        assert e["category"] in ("baking", "law") and np.isfinite(e["specialization"])
        texts = [t["text"] for t in e["top_prompts"]]
        assert len(texts) == len(set(texts)) == 6 and set(texts) == validation  # 6 distinct validation prompts
        assert e["num_judged"] == 6 and e["num_judged_top"] == 1
    table = (tmp_path / "sparse" / "experts.md").read_text().splitlines()
    assert "| ID | Natural Language Description | Description Fidelity | Expert Specialization |" in table
    assert [line.split("|")[1].strip() for line in table if line.startswith("| ") and line[2].isdigit()] == ["0", "1"]
    # a single head has nothing to interpret: an error naming why, nothing written
    with pytest.raises(I.InterpretError, match="single-expert head has no routing"):
        I.interpret_variant(stores, prepared, root / "models" / "single", tmp_path / "single", config)
    assert not (tmp_path / "single").exists()


def test_interpret_stage_command(topic_run, tmp_path):
    from stages import interpret as stage

    root, stores, prepared = topic_run
    params = tmp_path / "params.yaml"

    def invoke(interpret: dict, *extra: str):
        params.write_text(yaml.safe_dump({"experiments": {"tiny": {"dataset": "tiny", "num_experts": 2}},
                                          "interpret": interpret}))
        return CliRunner().invoke(app, ["tiny", "sparse", "--params", str(params), "--stores", str(stores.path),
                                        "--model", str(root / "models" / "sparse"), "--prepared", str(prepared),
                                        "--out", str(out), "--metrics", str(metrics_path), *extra])

    app = typer.Typer()
    app.command()(stage.main)
    out = tmp_path / "out" / "sparse"
    metrics_path = tmp_path / "metrics" / "interpret-sparse.json"
    result = invoke({"per_stratum": 5})  # the sample size comes from params.yaml now
    assert result.exit_code == 0, result.output
    # the DVC metrics file: description fidelity and its random baseline, flat
    assert set(json.loads(metrics_path.read_text())) == {"description_fidelity", "description_fidelity_random"}
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(summary) == {"sparse"} and np.isfinite(summary["sparse"]["description_fidelity"])
    assert (out / "experts.md").exists()
    report = json.loads((out / "experts.json").read_text())
    assert report["experiment"] == "tiny" and report["dataset"] == "tiny" and report["per_stratum"] == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["sparse"]  # the staging folder is gone
    before = {f: (out / f).read_bytes() for f in ("experts.json", "experts.md")}

    # a describer that fails (nothing listens on port 9) keeps the previous outputs whole
    failed = invoke({"per_stratum": 5, "describer": "openai:http://127.0.0.1:9/v1"}, "--retries", "0",
                    "--timeout", "5")
    assert isinstance(failed.exception, I.InterpretError), failed.output
    assert "expert 0: describe request" in str(failed.exception)
    assert {f: (out / f).read_bytes() for f in before} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["sparse"]
    assert sorted(p.name for p in metrics_path.parent.iterdir()) == ["interpret-sparse.json"]  # no staging left

    # a bad params value: refused by the params schema naming the key (click's usage error here,
    # in a plain typer app; one line and exit 1 through the stage runner)
    bad = invoke({"top_n": 0})
    assert bad.exit_code == 2 and "interpret.top_n: must be >= 1, got 0" in bad.output

    # single and hyre have no router: one line on stderr, exit 1, nothing written
    proc = subprocess.run([sys.executable, "-m", "stages.interpret", "tiny", "single", "--params", str(params),
                           "--out", str(tmp_path / "single")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.startswith("error: single has no input-dependent router")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "single").exists()
