"""The bootstrap interval of an eval's mean score."""

from __future__ import annotations

import pytest

from services.evaluation.stats import bootstrap_ci


def test_the_interval_brackets_the_mean():
    scores = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(scores)
    assert low < 0.3 < high
    # The normal approximation of a proportion: 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 100) = +- 0.09
    assert low == pytest.approx(0.21, abs=0.03) and high == pytest.approx(0.39, abs=0.03)


def test_the_interval_narrows_as_items_grow():
    small = bootstrap_ci([1.0, 0.0] * 10)
    large = bootstrap_ci([1.0, 0.0] * 500)
    assert small[1] - small[0] > 2 * (large[1] - large[0])
    assert large[0] < 0.5 < large[1]


def test_a_wider_level_gives_a_wider_interval():
    scores = [0.2, 0.9, 0.4, 0.7, 1.0, 0.0, 0.5, 0.3]
    low90, high90 = bootstrap_ci(scores, level=0.90)
    low99, high99 = bootstrap_ci(scores, level=0.99)
    assert low99 <= low90 < high90 <= high99


def test_the_same_scores_give_the_same_interval():
    scores = [0.1 * i for i in range(11)]
    assert bootstrap_ci(scores) == bootstrap_ci(list(scores))
    assert bootstrap_ci(scores, seed=1) != bootstrap_ci(scores, seed=2)


@pytest.mark.parametrize(
    "scores, expected",
    [([], (0.0, 0.0)), ([0.7], (0.7, 0.7)), ([1.0] * 5, (1.0, 1.0)), ([0.0] * 5, (0.0, 0.0))],
)
def test_degenerate_cases(scores, expected):
    assert bootstrap_ci(scores) == pytest.approx(expected)


def test_a_level_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.5, 1.0], level=95)
