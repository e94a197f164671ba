"""Unit tests for ``pipeline/losses.py`` (Eqs. 1, 3-7 of the paper and MiCRo's regularizer).

Each loss is compared with an independent, deliberately naive float64 transcription of its
equation (plain Python loops over probabilities, no log-space tricks), and on extreme inputs
with a 60-digit ``decimal`` reference, where the naive formula itself breaks down.

Notation: ``logits`` [B, K] router pre-softmax scores, ``log_weights`` = log_softmax(logits)
= log pi(x), ``margins`` [B, K] = Delta_k(x) = r_k(x, y_w) - r_k(x, y_l).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch

from pipeline import losses

EXPERTS = (2, 3, 5, 20)
BATCHES = (1, 7, 64)
SEEDS = (0, 1, 2)
# Per seed: (router logit scale, margin scale), from nearly uniform routing to confident routing.
SCALES = {0: (0.5, 1.0), 1: (3.0, 3.0), 2: (10.0, 10.0)}

RTOL64, ATOL64 = 1e-10, 1e-12
RTOL32, ATOL32 = 1e-5, 1e-6


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: intra-op threading only adds overhead (gradcheck runs
    thousands of them). Restored afterwards so other test modules are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Naive float64 transcriptions of the equations (Python floats, loops, probability space)
# --------------------------------------------------------------------------------------------

def naive_softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def naive_sigmoid(d: float) -> float:
    try:
        return 1.0 / (1.0 + math.exp(-d))
    except OverflowError:  # exp(-d) > 1.8e308: IEEE float64 would give 1 / inf = 0.0
        return 0.0


def ref_bradley_terry(margin: list) -> float:
    """Eq. 1: -(1/B) sum_x log sigma(margin); [B, H] margins: the per-head means are summed."""
    rows = [m if isinstance(m, list) else [m] for m in margin]
    heads = len(rows[0])
    return sum(-sum(math.log(naive_sigmoid(r[h])) for r in rows) / len(rows) for h in range(heads))


def ref_mixture_bt(pi: list[list[float]], delta: list[list[float]]) -> float:
    """Eq. 3: -(1/B) sum_x log sum_k pi_k(x) sigma(Delta_k(x))."""
    total = 0.0
    for p_row, d_row in zip(pi, delta):
        total += math.log(sum(p * naive_sigmoid(d) for p, d in zip(p_row, d_row)))
    return -total / len(pi)


def ref_entropy(p_row: list[float]) -> float:
    """H(p) = -sum_k p_k log p_k, with 0 log 0 = 0."""
    return -sum(p * math.log(p) for p in p_row if p > 0.0)


def ref_local_sparsity(pi: list[list[float]]) -> float:
    """Eq. 4: (1/B) sum_x H(pi(x)) / log K (0 for K = 1)."""
    k = len(pi[0])
    if k == 1:
        return 0.0
    return sum(ref_entropy(row) for row in pi) / len(pi) / math.log(k)


def ref_global_balance(pi: list[list[float]]) -> float:
    """Eq. 5: -H((1/B) sum_x pi(x)) / log K (0 for K = 1)."""
    k = len(pi[0])
    if k == 1:
        return 0.0
    mean = [sum(row[j] for row in pi) / len(pi) for j in range(k)]
    return -ref_entropy(mean) / math.log(k)


def ref_pearson(a: list[float], b: list[float]) -> float:
    """Pearson correlation over the batch; a zero-variance column correlates 0 with anything."""
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va == 0.0 or vb == 0.0:
        return 0.0
    return cov / math.sqrt(va * vb)


def ref_diversity(delta: list[list[float]]) -> float:
    """Eq. 6: 2 / (K (K-1)) sum_{i<j} corr(Delta_i, Delta_j)^2."""
    k = len(delta[0])
    if k < 2:
        return 0.0
    cols = [[row[j] for row in delta] for j in range(k)]
    total = sum(ref_pearson(cols[i], cols[j]) ** 2 for i in range(k) for j in range(i + 1, k))
    return 2.0 * total / (k * (k - 1))


def ref_micro(pi: list[list[float]]) -> float:
    """MiCRo: (1/B) sum_x sum_k p_k log p_k (0 log 0 = 0)."""
    return sum(-ref_entropy(row) for row in pi) / len(pi)


# --------------------------------------------------------------------------------------------
# 60-digit references for the extreme (stable-path) tests
# --------------------------------------------------------------------------------------------

def dec_mixture_bt(log_weights: torch.Tensor, margins: torch.Tensor) -> tuple[float, list, list]:
    """Eq. 3 in 60-digit decimal arithmetic, from the exact float64 inputs. Also returns the
    analytic gradients: d/dDelta_k = -(1/B) w_k (1 - sigma_k) and, through log_softmax,
    d/dlogit_k = -(1/B) (w_k - pi_k), with w_k = pi_k sigma_k / sum_j pi_j sigma_j."""
    with localcontext() as ctx:
        ctx.prec = 60
        batch = log_weights.shape[0]
        total = Decimal(0)
        g_margin, g_logit = [], []
        for lw_row, d_row in zip(log_weights.tolist(), margins.tolist()):
            pi = [Decimal(v).exp() for v in lw_row]
            norm = sum(pi)
            pi = [p / norm for p in pi]  # renormalize: exp of rounded log-probs sums to 1 +- 1e-16
            sig = [1 / (1 + (-Decimal(d)).exp()) for d in d_row]
            mix = sum(p * s for p, s in zip(pi, sig))
            total += mix.ln()
            w = [p * s / mix for p, s in zip(pi, sig)]
            g_margin.append([float(-wk * (1 - s) / batch) for wk, s in zip(w, sig)])
            g_logit.append([float(-(wk - p) / batch) for wk, p in zip(w, pi)])
        return float(-total / batch), g_margin, g_logit


def dec_bradley_terry(margin: list[float]) -> float:
    with localcontext() as ctx:
        ctx.prec = 60
        total = sum((1 + (-Decimal(m)).exp()).ln() for m in margin)
        return float(total / len(margin))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def random_inputs(seed: int, batch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 router logits and expert margins, with a per-seed scale."""
    rng = np.random.default_rng(1000 * seed + 10 * k + batch)
    logit_scale, margin_scale = SCALES[seed]
    logits = torch.from_numpy(rng.normal(size=(batch, k)) * logit_scale)
    margins = torch.from_numpy(rng.normal(size=(batch, k)) * margin_scale)
    return logits, margins


def probs(logits: torch.Tensor) -> list[list[float]]:
    return [naive_softmax(row) for row in logits.tolist()]


def log_pi(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1)


def close(actual: torch.Tensor | float, expected: float, rtol: float = RTOL64, atol: float = ATOL64) -> None:
    value = float(actual.detach()) if isinstance(actual, torch.Tensor) else float(actual)
    assert math.isfinite(value), value
    assert value == pytest.approx(expected, rel=rtol, abs=atol)


def all_finite(t: torch.Tensor | None) -> bool:
    return t is not None and bool(torch.isfinite(t).all())


# --------------------------------------------------------------------------------------------
# 1. Random inputs vs the naive float64 transcription (float64 tight, float32 ~1e-5)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("heads", (None, 1, 4))
def test_bradley_terry_matches_eq1(batch, heads):
    # Eq. 1: [B] margins, and [B, H] margins whose per-head means are summed.
    for seed in SEEDS:
        rng = np.random.default_rng(seed + 100 * batch)
        shape = (batch,) if heads is None else (batch, heads)
        margin = torch.from_numpy(rng.normal(size=shape) * SCALES[seed][1])
        expected = ref_bradley_terry(margin.tolist())
        close(losses.bradley_terry_loss(margin), expected)
        close(losses.bradley_terry_loss(margin.float()), expected, RTOL32, ATOL32)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", EXPERTS)
def test_mixture_bt_matches_eq3(k, batch):
    # Eq. 3, against -log(sum_k pi_k sigma(Delta_k)) computed in probability space.
    for seed in SEEDS:
        logits, margins = random_inputs(seed, batch, k)
        expected = ref_mixture_bt(probs(logits), margins.tolist())
        close(losses.mixture_bt_loss(log_pi(logits), margins), expected)
        close(losses.mixture_bt_loss(log_pi(logits.float()), margins.float()), expected, RTOL32, ATOL32)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", EXPERTS)
def test_entropy_matches_definition(k, batch):
    # H(p) = -sum p log p per row, the building block of Eqs. 4, 5 and MiCRo.
    for seed in SEEDS:
        logits, _ = random_inputs(seed, batch, k)
        got = losses.entropy(log_pi(logits))
        assert got.shape == (batch,)
        for value, row in zip(got.tolist(), probs(logits)):
            close(value, ref_entropy(row))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", EXPERTS)
def test_local_sparsity_matches_eq4(k, batch):
    # Eq. 4: mean normalized per-example routing entropy.
    for seed in SEEDS:
        logits, _ = random_inputs(seed, batch, k)
        expected = ref_local_sparsity(probs(logits))
        close(losses.local_sparsity_loss(log_pi(logits)), expected)
        close(losses.local_sparsity_loss(log_pi(logits.float())), expected, RTOL32, ATOL32)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", EXPERTS)
def test_global_balance_matches_eq5(k, batch):
    # Eq. 5: minus the normalized entropy of the batch-mean routing distribution.
    for seed in SEEDS:
        logits, _ = random_inputs(seed, batch, k)
        expected = ref_global_balance(probs(logits))
        close(losses.global_balance_loss(log_pi(logits)), expected)
        close(losses.global_balance_loss(log_pi(logits.float())), expected, RTOL32, ATOL32)


@pytest.mark.parametrize("batch", (3, 7, 64))
@pytest.mark.parametrize("k", EXPERTS)
def test_diversity_matches_eq6(k, batch):
    # Eq. 6: mean squared Pearson correlation over distinct expert pairs.
    # The library adds eps = 1e-8 to each variance (for zero-variance stability), which biases
    # corr^2 by a relative ~eps (1/var_i + 1/var_j). So: rtol 1e-6 at unit scale, and the tight
    # 1e-10 on margins scaled by 1e3 (variance >= ~1e4, bias <= ~1e-12).
    for seed in SEEDS:
        _, margins = random_inputs(seed, batch, k)
        margins = margins / SCALES[seed][1]  # unit scale
        close(losses.diversity_loss(margins), ref_diversity(margins.tolist()), 1e-6, 1e-9)
        big = margins * 1e3
        expected = ref_diversity(big.tolist())
        close(losses.diversity_loss(big), expected)
        close(losses.diversity_loss(big.float()), expected, RTOL32, ATOL32)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("k", EXPERTS)
def test_micro_matches_definition(k, batch):
    # MiCRo's regularizer (without alpha): mean_x sum_k p_k log p_k.
    for seed in SEEDS:
        logits, _ = random_inputs(seed, batch, k)
        expected = ref_micro(probs(logits))
        close(losses.micro_loss(log_pi(logits)), expected)
        close(losses.micro_loss(log_pi(logits.float())), expected, RTOL32, ATOL32)


# --------------------------------------------------------------------------------------------
# 2. Extreme inputs on the stable path (Eq. 3 and Eq. 1)
# --------------------------------------------------------------------------------------------

def test_mixture_bt_dominant_expert_with_margin_minus_1000():
    # Eq. 3: expert 0 has all the weight (pi_1 = e^-2000 underflows) and margin -1000, so
    # sum_k pi_k sigma(Delta_k) = e^-1000 + e^-2000 and the loss is 1000 - O(e^-1000) = 1000.
    logits = torch.tensor([[1000.0, -1000.0]], dtype=torch.float64, requires_grad=True)
    margins = torch.tensor([[-1000.0, 1000.0]], dtype=torch.float64, requires_grad=True)

    # The naive transcription cannot represent e^-1000: sigma(-1000) and pi_1 are both 0.0.
    pi = naive_softmax(logits.tolist()[0])
    assert pi[1] == 0.0
    with pytest.raises(ValueError):  # math.log(0.0): "math domain error"
        ref_mixture_bt([pi], margins.tolist())
    naive_torch = -torch.log((torch.softmax(logits, -1) * torch.sigmoid(margins)).sum(-1)).mean()
    assert torch.isinf(naive_torch)

    loss = losses.mixture_bt_loss(log_pi(logits), margins)
    expected, g_margin, g_logit = dec_mixture_bt(log_pi(logits).detach(), margins.detach())
    assert expected == 1000.0
    close(loss, expected)
    loss.backward()
    # Exact gradients: d/dDelta = -(w_k (1 - sigma_k)) = [-1, 0]; d/dlogit = -(w_k - pi_k) ~ 0.
    assert all_finite(margins.grad) and all_finite(logits.grad)
    np.testing.assert_allclose(margins.grad.numpy(), g_margin, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(margins.grad.numpy(), [[-1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(logits.grad.numpy(), g_logit, atol=1e-12)

    # float32 path: same answer.
    loss32 = losses.mixture_bt_loss(log_pi(logits.detach().float()), margins.detach().float())
    close(loss32, 1000.0, RTOL32)


def test_mixture_bt_float32_underflow_of_router_weight():
    # Eq. 3 with logits +-80 in float32: pi_0 = e^-160 underflows to 0 in float32, and the
    # dominant expert has sigma(-1000) = 0, so the naive float32 formula gives log(0) = -inf.
    # True value: -log(e^-160 * sigma(1000) + (1 - e^-160) * sigma(-1000)) = 160 (to 1e-70).
    logits = torch.tensor([[-80.0, 80.0]], dtype=torch.float32, requires_grad=True)
    margins = torch.tensor([[1000.0, -1000.0]], dtype=torch.float32, requires_grad=True)
    naive32 = -torch.log((torch.softmax(logits, -1) * torch.sigmoid(margins)).sum(-1)).mean()
    assert not torch.isfinite(naive32)

    loss = losses.mixture_bt_loss(log_pi(logits), margins)
    expected, _, _ = dec_mixture_bt(log_pi(logits.double()).detach(), margins.double().detach())
    assert expected == pytest.approx(160.0, rel=1e-12)
    close(loss, expected, RTOL32)
    loss.backward()
    assert all_finite(logits.grad) and all_finite(margins.grad)
    # All the posterior weight w sits on expert 0: d/dDelta_0 = -(1 - sigma(1000)) ~ 0,
    # d/dlogit = -(w - pi) = [-1, +1].
    np.testing.assert_allclose(logits.grad.numpy(), [[-1.0, 1.0]], atol=1e-5)


@pytest.mark.parametrize("k", (2, 5, 20))
@pytest.mark.parametrize("logit_scale", (80.0, 1000.0))
def test_mixture_bt_extreme_random_matches_high_precision(k, logit_scale):
    # Eq. 3 on random logits in +-logit_scale and margins in +-1e3: many pi_k and sigma(Delta_k)
    # underflow in float64. Compared with a 60-digit reference, loss and gradients.
    rng = np.random.default_rng(int(logit_scale) + k)
    batch = 32
    logits = torch.from_numpy(rng.uniform(-logit_scale, logit_scale, size=(batch, k))).requires_grad_(True)
    margins = torch.from_numpy(rng.uniform(-1e3, 1e3, size=(batch, k)))
    margins[0] = -1e3  # one example where every expert's margin is -1000: naive sum is 0.0
    margins.requires_grad_(True)

    naive = -torch.log((torch.softmax(logits, -1) * torch.sigmoid(margins)).sum(-1)).mean()
    assert not torch.isfinite(naive)

    log_weights = log_pi(logits)
    loss = losses.mixture_bt_loss(log_weights, margins)
    expected, g_margin, g_logit = dec_mixture_bt(log_weights.detach(), margins.detach())
    assert expected > 1000.0 / batch  # example 0 alone contributes 1000 / B
    close(loss, expected, 1e-10, 1e-10)
    loss.backward()
    assert all_finite(logits.grad) and all_finite(margins.grad)
    np.testing.assert_allclose(margins.grad.numpy(), g_margin, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(logits.grad.numpy(), g_logit, rtol=1e-8, atol=1e-12)

    loss32 = losses.mixture_bt_loss(log_pi(logits.detach().float()), margins.detach().float())
    close(loss32, expected, RTOL32, 1e-4)


def test_bradley_terry_extreme_margins():
    # Eq. 1 at |margin| = 1e3: -log sigma(-1000) = 1000 exactly in float64, where the naive
    # log(sigmoid(-1000)) = log(0) = -inf.
    margin = torch.tensor([-1000.0, 1000.0, -800.0, 5.0], dtype=torch.float64, requires_grad=True)
    assert torch.isinf(torch.log(torch.sigmoid(margin))).any()
    loss = losses.bradley_terry_loss(margin)
    expected = dec_bradley_terry(margin.tolist())
    assert expected == pytest.approx((1000.0 + 800.0 + math.log1p(math.exp(-5.0))) / 4, rel=1e-15)
    close(loss, expected)
    loss.backward()
    # d/dm = -(1 - sigma(m)) / B
    expected_grad = [-(1.0 - naive_sigmoid(m)) / 4 for m in (-1000.0, 1000.0, -800.0, 5.0)]
    np.testing.assert_allclose(margin.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-300)


def test_entropy_terms_finite_with_underflowed_weights():
    # Eqs. 4, 5 and MiCRo with logits +-1000: pi_k = e^-2000 is exactly 0.0 in float64, and
    # 0 log 0 must count as 0 (not 0 * -2000 -> anything else), with finite gradients.
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0]],
                          dtype=torch.float64, requires_grad=True)
    pi = probs(logits.detach())
    for fn, ref in ((losses.local_sparsity_loss, ref_local_sparsity),
                    (losses.global_balance_loss, ref_global_balance),
                    (losses.micro_loss, ref_micro)):
        logits.grad = None
        value = fn(log_pi(logits))
        close(value, ref(pi))
        value.backward()
        assert all_finite(logits.grad), fn.__name__
    # row 0 is one-hot (entropy 0), row 1 is uniform over two experts (entropy log 2)
    close(losses.local_sparsity_loss(log_pi(logits)), (0.0 + math.log(2)) / 2 / math.log(3))


# --------------------------------------------------------------------------------------------
# 3. Diversity (Eq. 6): degenerate and hand-computed cases
# --------------------------------------------------------------------------------------------

def test_diversity_zero_variance_column_is_finite():
    # A dead expert (constant margin) has undefined Pearson correlation; it must count as 0,
    # leaving the loss = (sum of the other pairs' corr^2) / (K (K-1) / 2), with finite gradients.
    rng = np.random.default_rng(7)
    margins = torch.from_numpy(rng.normal(size=(16, 4)))
    margins[:, 2] = 5.0
    margins.requires_grad_(True)
    loss = losses.diversity_loss(margins)
    cols = margins.detach().T.tolist()
    pairs = [(0, 1), (0, 3), (1, 3)]
    expected = sum(ref_pearson(cols[i], cols[j]) ** 2 for i, j in pairs) / 6
    close(loss, expected, 1e-6, 1e-9)
    close(loss, ref_diversity(margins.tolist()), 1e-6, 1e-9)
    loss.backward()
    assert all_finite(margins.grad)


@pytest.mark.parametrize("shape", ((16, 3), (1, 5), (2, 2)))
def test_diversity_constant_batch_is_zero_with_finite_grad(shape):
    # Every column zero-variance (identical pairs, or a batch of one): loss 0, gradients finite.
    margins = torch.full(shape, 0.25, dtype=torch.float64, requires_grad=True)
    loss = losses.diversity_loss(margins)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert all_finite(margins.grad)


def test_diversity_perfectly_correlated_columns_give_one():
    # corr = +-1 for every pair (affine copies, including a negative scale): loss = 1.
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(32, 1)))
    margins = torch.cat([x, 3.0 * x + 2.0, -x, 0.5 * x - 7.0], dim=1)
    close(losses.diversity_loss(margins), 1.0, 1e-7)


def test_diversity_single_expert_is_zero():
    margins = torch.randn(8, 1, dtype=torch.float64)
    assert float(losses.diversity_loss(margins)) == 0.0


def test_diversity_hand_computed_k3():
    # a = [1,-1,1,-1], b = [1,1,-1,-1] are centered and orthogonal; c = a + b + ab with
    # ab = [1,-1,-1,1] orthogonal to both. corr(a,b) = 0, corr(a,c) = corr(b,c) = 1/sqrt(3).
    # Eq. 6: 2/(3*2) * (0 + 1/3 + 1/3) = 2/9.
    a = [1.0, -1.0, 1.0, -1.0]
    b = [1.0, 1.0, -1.0, -1.0]
    c = [x + y + x * y for x, y in zip(a, b)]
    margins = torch.tensor([a, b, c], dtype=torch.float64).T
    close(losses.diversity_loss(margins), 2.0 / 9.0, 1e-7)
    # And with c replaced by the product column: all three are uncorrelated, loss 0.
    margins0 = torch.tensor([a, b, [x * y for x, y in zip(a, b)]], dtype=torch.float64).T
    close(losses.diversity_loss(margins0), 0.0, 0.0, 1e-15)
    # pairwise_correlation itself: the full 3x3 matrix.
    corr = losses.pairwise_correlation(margins)
    s = 1.0 / math.sqrt(3.0)
    np.testing.assert_allclose(corr.numpy(), [[1, 0, s], [0, 1, s], [s, s, 1]], rtol=1e-7, atol=1e-12)


def test_diversity_invariant_to_per_column_affine_maps():
    # Pearson correlation ignores each column's offset and (nonzero) scale.
    rng = np.random.default_rng(11)
    margins = torch.from_numpy(rng.normal(size=(20, 5)))
    scale = torch.tensor([2.0, -0.5, 10.0, 1.0, -3.0], dtype=torch.float64)
    shift = torch.tensor([1.0, -4.0, 0.0, 100.0, 2.5], dtype=torch.float64)
    close(losses.diversity_loss(margins * scale + shift), ref_diversity(margins.tolist()), 1e-6)


# --------------------------------------------------------------------------------------------
# 4. Entropy-based terms (Eqs. 4, 5, MiCRo): closed-form cases
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", EXPERTS)
def test_one_hot_and_uniform_routing(k):
    batch = 2 * k
    one_hot = torch.full((batch, k), -1000.0, dtype=torch.float64)
    one_hot[torch.arange(batch), torch.arange(batch) % k] = 1000.0  # every expert used twice
    uniform = torch.zeros(batch, k, dtype=torch.float64)
    collapsed = torch.full((batch, k), -1000.0, dtype=torch.float64)
    collapsed[:, 0] = 1000.0  # everybody on expert 0

    # Eq. 4: one-hot -> 0, uniform -> 1.
    close(losses.local_sparsity_loss(log_pi(one_hot)), 0.0)
    close(losses.local_sparsity_loss(log_pi(uniform)), 1.0)
    # Eq. 5: one-hot on distinct experts covering all K -> -1, uniform -> -1, collapsed -> 0.
    close(losses.global_balance_loss(log_pi(one_hot)), -1.0)
    close(losses.global_balance_loss(log_pi(uniform)), -1.0)
    close(losses.global_balance_loss(log_pi(collapsed)), 0.0)
    # MiCRo: sum p log p = 0 for one-hot, -log K for uniform.
    close(losses.micro_loss(log_pi(one_hot)), 0.0)
    close(losses.micro_loss(log_pi(uniform)), -math.log(k))


def test_global_balance_is_entropy_of_the_batch_mean_not_mean_entropy():
    # Eq. 5 averages pi over the batch BEFORE the entropy: two confident examples on
    # different experts are perfectly balanced (-1) although each has zero entropy.
    log_weights = log_pi(torch.tensor([[50.0, -50.0], [-50.0, 50.0]], dtype=torch.float64))
    close(losses.global_balance_loss(log_weights), -1.0)
    close(losses.local_sparsity_loss(log_weights), 0.0, 0.0, 1e-12)
    # Unequal use: mean pi = (3/4, 1/4) -> -H / log 2.
    log_weights = log_pi(torch.tensor([[50.0, -50.0]] * 3 + [[-50.0, 50.0]], dtype=torch.float64))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    close(losses.global_balance_loss(log_weights), -h / math.log(2))


def test_single_expert_gives_zero_not_nan():
    # K = 1: nothing to route; Eqs. 4, 5, 6 and MiCRo are 0, and Eq. 3 reduces to Eq. 1.
    log_weights = log_pi(torch.randn(6, 1, dtype=torch.float64))
    margins = torch.from_numpy(np.random.default_rng(5).normal(size=(6, 1)) * 3)
    assert float(losses.local_sparsity_loss(log_weights)) == 0.0
    assert float(losses.global_balance_loss(log_weights)) == 0.0
    assert float(losses.micro_loss(log_weights)) == 0.0
    assert float(losses.diversity_loss(margins)) == 0.0
    close(losses.mixture_bt_loss(log_weights, margins), ref_bradley_terry(margins[:, 0].tolist()))
    loss, terms = losses.total_loss(log_weights, margins, lambda_ls=1.0, lambda_gb=1.0,
                                    lambda_div=1.0, micro_alpha=1.0)
    assert all(math.isfinite(v) for v in terms.values())
    close(loss, ref_bradley_terry(margins[:, 0].tolist()))


# --------------------------------------------------------------------------------------------
# 5. Eq. 7: total_loss
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", (2, 5))
def test_total_loss_is_weighted_sum(k):
    logits, margins = random_inputs(1, 24, k)
    logits.requires_grad_(True)
    margins = (margins * 10.0).requires_grad_(True)  # std ~30: Eq. 6's eps bias ~1e-11
    weights = dict(lambda_ls=0.3, lambda_gb=0.7, lambda_div=1.9, micro_alpha=0.5)

    loss, terms = losses.total_loss(log_pi(logits), margins, **weights)

    pi, delta = probs(logits.detach()), margins.tolist()
    ref_terms = {"rm": ref_mixture_bt(pi, delta), "ls": ref_local_sparsity(pi),
                 "gb": ref_global_balance(pi), "div": ref_diversity(delta), "micro": ref_micro(pi)}
    assert set(terms) == set(ref_terms)
    # detached 0-d tensors (no per-step device sync for logging)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in terms.values())
    for name, value in ref_terms.items():
        close(float(terms[name]), value)
    close(loss, ref_terms["rm"] + 0.3 * ref_terms["ls"] + 0.7 * ref_terms["gb"]
          + 1.9 * ref_terms["div"] + 0.5 * ref_terms["micro"])

    # The dict matches the individual library functions, and gradients flow through every term.
    individual = {"rm": losses.mixture_bt_loss(log_pi(logits), margins),
                  "ls": losses.local_sparsity_loss(log_pi(logits)),
                  "gb": losses.global_balance_loss(log_pi(logits)),
                  "div": losses.diversity_loss(margins),
                  "micro": losses.micro_loss(log_pi(logits))}
    for name, value in individual.items():
        assert float(terms[name]) == pytest.approx(float(value.detach()), rel=1e-14, abs=1e-15)
    summed = (individual["rm"] + 0.3 * individual["ls"] + 0.7 * individual["gb"]
              + 1.9 * individual["div"] + 0.5 * individual["micro"])
    g_total = torch.autograd.grad(loss, (logits, margins))
    g_summed = torch.autograd.grad(summed, (logits, margins))
    for a, b in zip(g_total, g_summed):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_total_loss_defaults_to_mixture_bt_only():
    # Vanilla MoE: all weights 0, so Eq. 7 is Eq. 3 alone (the other terms are still logged).
    logits, margins = random_inputs(2, 10, 3)
    loss, terms = losses.total_loss(log_pi(logits), margins)
    pi = probs(logits)
    close(loss, ref_mixture_bt(pi, margins.tolist()))
    close(terms["ls"], ref_local_sparsity(pi))
    assert terms["ls"] > 0.0  # a term that is logged but not added


# --------------------------------------------------------------------------------------------
# 6. Gradient checks (float64 finite differences); log_weights = log_softmax(leaf)
# --------------------------------------------------------------------------------------------

def _leaves(k: int, batch: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, k, dtype=torch.float64, generator=gen, requires_grad=True)
    margins = (2 * torch.randn(batch, k, dtype=torch.float64, generator=gen)).requires_grad_(True)
    return logits, margins


@pytest.mark.parametrize("k", (2, 4))
def test_gradcheck(k):
    logits, margins = _leaves(k)
    gradcheck = torch.autograd.gradcheck
    assert gradcheck(lambda l, m: losses.mixture_bt_loss(torch.log_softmax(l, -1), m), (logits, margins))
    assert gradcheck(lambda l: losses.local_sparsity_loss(torch.log_softmax(l, -1)), (logits,))
    assert gradcheck(lambda l: losses.global_balance_loss(torch.log_softmax(l, -1)), (logits,))
    assert gradcheck(lambda l: losses.micro_loss(torch.log_softmax(l, -1)), (logits,))
    assert gradcheck(losses.diversity_loss, (margins,))
    assert gradcheck(losses.bradley_terry_loss, (margins,))
    assert gradcheck(lambda l, m: losses.total_loss(torch.log_softmax(l, -1), m, lambda_ls=0.3, lambda_gb=0.7,
                                                    lambda_div=1.9, micro_alpha=0.5)[0], (logits, margins))


def test_gradcheck_diversity_with_dead_expert():
    # Eq. 6's gradient stays correct (not just finite) next to a zero-variance column.
    _, margins = _leaves(3, batch=6, seed=1)
    margins = margins.detach().clone()
    margins[:, 1] = 0.5
    margins.requires_grad_(True)
    assert torch.autograd.gradcheck(losses.diversity_loss, (margins,))
