"""Evaluation metrics (App. A) against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import metrics as M

# 6 examples, 3 experts. Expert 2 is never any example's top choice.
W = np.array([[0.9, 0.1, 0.0],   # A
              [0.8, 0.1, 0.1],   # A
              [0.1, 0.8, 0.1],   # B
              [0.2, 0.7, 0.1],   # B
              [0.5, 0.3, 0.2],   # C
              [0.6, 0.2, 0.2]])  # C
CATS = np.array(["A", "A", "B", "B", "C", "C"])
# sign of each expert's margin per example (+ = this expert alone ranks the pair right)
SIGNS = np.array([[+1, -1, -1],
                  [+1, +1, -1],
                  [-1, +1, +1],
                  [-1, +1, -1],
                  [+1, -1, +1],
                  [+1, -1, +1]], dtype=float)


def test_accuracy_counts_ties_as_wrong():
    assert M.accuracy(np.array([1.0, -2.0, 0.0, 3.0])) == 0.5


def test_entropies_at_their_extremes():
    one_hot = np.eye(4)
    assert M.routing_entropy(one_hot) == 0.0
    assert M.global_entropy(one_hot) == pytest.approx(1.0)       # all experts used equally
    uniform = np.full((3, 4), 0.25)
    assert M.routing_entropy(uniform) == pytest.approx(1.0)
    collapsed = np.tile([1.0, 0.0, 0.0, 0.0], (5, 1))
    assert M.global_entropy(collapsed) == 0.0
    # H([0.5, 0.5, 0, 0]) / log 4 = log 2 / log 4 = 0.5
    assert M.routing_entropy(np.array([[0.5, 0.5, 0.0, 0.0]])) == pytest.approx(0.5)


def test_expert_correlation_by_hand_and_with_a_constant_expert():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    margins = np.stack([a, -a, 2 * a + 1], axis=1)          # corr: -1, +1, -1 -> mean -1/3
    assert M.expert_correlation(margins) == pytest.approx(-1 / 3)
    with_dead = np.stack([a, -a, np.full(4, 7.0)], axis=1)  # the constant expert has no correlation
    assert M.expert_correlation(with_dead) == pytest.approx(-1.0)
    assert math.isnan(M.expert_correlation(a[:, None]))


def test_assign_categories_by_majority_of_top_examples():
    # expert 0: x0, x1 (A, A); expert 1: x2, x3 (B, B); expert 2 (never the top choice):
    # 0.2 at x4, x5 (C, C)
    assert M.assign_categories(W, CATS, top_n=2) == ["A", "B", "C"]
    assert M.category_coverage(["A", "B", "C"], CATS) == 1.0
    assert M.category_coverage(["A", "A", "B"], CATS) == pytest.approx(2 / 3)


def test_assignment_ties_go_to_the_larger_routing_mass_then_the_name():
    w = np.array([[0.0, 0.3], [0.0, 0.2], [1.0, 0.1], [1.0, 0.0]])
    cats = np.array(["B", "A", "A", "B"])
    # expert 1's top 2 are x0 (B, 0.3) and x1 (A, 0.2): one vote each, B has more weight
    assert M.assign_categories(w, cats, top_n=2)[1] == "B"
    # expert 0's top 2 are x2, x3 (stable order on the tie 1.0, 1.0): A and B with equal
    # mass 1.0 each -> the first name in sorted order
    assert M.assign_categories(w, cats, top_n=2)[0] == "A"


def test_expert_purity_over_top_examples():
    # top 3: e0 -> x0, x1, x5 (A, A, C); e1 -> x2, x3, x4 (B, B, C);
    # e2 -> x4, x5, then the tie at 0.1 keeps input order: x1 (C, C, A)
    overall, per_expert = M.expert_purity(W, CATS, ["A", "B", "C"], top_n=3)
    assert per_expert == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert overall == pytest.approx(2 / 3)
    # a wrong assignment scores 0 for that expert
    assert M.expert_purity(W, CATS, ["B", "B", "C"], top_n=2)[1] == pytest.approx([0.0, 1.0, 1.0])


def test_category_specialization_eq11():
    # per category, each expert's accuracy:  A: (1, .5, 0)  B: (0, 1, .5)  C: (1, 0, 1)
    # Spec_0 = 1 - .5, Spec_1 = 1 - .5, Spec_2 = 1 - 2/3
    overall, per_expert = M.category_specialization(SIGNS, CATS, ["A", "B", "C"])
    assert per_expert == pytest.approx([0.5, 0.5, 1 / 3])
    assert overall == pytest.approx(4 / 9)


def test_topm_specialization_eq12():
    # m = 1/3 of 6 examples = the top 2 per expert: the same sets as the categories above
    overall, per_expert = M.topm_specialization(W, SIGNS, m=1 / 3)
    assert per_expert == pytest.approx([0.5, 0.5, 1 / 3])
    assert overall == pytest.approx(4 / 9)
    # an expert that is right exactly where all the others are: specialization 0
    same = np.ones((6, 3))
    assert M.topm_specialization(W, same, m=0.5)[0] == 0.0


def test_per_category_table():
    table = M.per_category_table(W, SIGNS, CATS)
    assert list(table) == ["A", "B", "C"]
    assert table["A"]["num_pairs"] == 2
    assert table["A"]["expert_routing_weight"] == pytest.approx([0.85, 0.1, 0.05])
    assert table["C"]["expert_accuracy"] == pytest.approx([1.0, 0.0, 1.0])
    # mixture margin on A: x0 .9-.1-0 > 0, x1 .8+.1-.1 > 0 -> accuracy 1
    assert table["A"]["accuracy"] == 1.0
