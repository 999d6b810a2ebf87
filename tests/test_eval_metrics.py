"""Top-k error and per-class error on hand-made arrays with known answers, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from delving.evaluation.metrics import per_class_error, topk_errors, true_class_rank


def test_ranks_and_errors_on_known_rows() -> None:
    probs = np.array(
        [
            [0.1, 0.6, 0.2, 0.05, 0.05, 0.0],  # label 1: rank 0
            [0.1, 0.6, 0.2, 0.05, 0.05, 0.0],  # label 2: rank 1
            [0.3, 0.25, 0.2, 0.15, 0.1, 0.0],  # label 5: rank 5 (last)
            [0.3, 0.25, 0.2, 0.15, 0.1, 0.0],  # label 4: rank 4 (5th: top-5 right, top-1 wrong)
        ]
    )
    labels = np.array([1, 2, 5, 4])
    np.testing.assert_array_equal(true_class_rank(probs, labels), [0, 1, 5, 4])
    errors = topk_errors(probs, labels, ks=(1, 2, 5))
    assert errors == {1: 75.0, 2: 50.0, 5: 25.0}


def test_ties_go_to_the_lower_class_index() -> None:
    uniform = np.full((3, 7), 1 / 7)
    # All tied: class c has rank c, so labels 0 and 4 are within the top 5 and label 6 is not.
    np.testing.assert_array_equal(true_class_rank(uniform, np.array([0, 4, 6])), [0, 4, 6])
    assert topk_errors(uniform, np.array([0, 4, 6])) == {1: pytest.approx(200 / 3), 5: pytest.approx(100 / 3)}
    # A tie with a higher-index class does not push the true class down; one with a lower index does.
    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    np.testing.assert_array_equal(true_class_rank(probs, np.array([0, 1])), [0, 1])
    assert topk_errors(probs, np.array([0, 1]), ks=(1,)) == {1: 50.0}


def test_k_beyond_the_class_count_is_always_right() -> None:
    probs = np.array([[0.5, 0.3, 0.2]])
    assert topk_errors(probs, np.array([2]), ks=(1, 5)) == {1: 100.0, 5: 0.0}


def test_per_class_error() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.7, 0.3, 0.0]])
    errors = per_class_error(probs, np.array([0, 1, 1, 1]), num_classes=3, k=1)
    np.testing.assert_allclose(errors[:2], [0.0, 200 / 3])
    assert np.isnan(errors[2])  # no image of class 2


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        true_class_rank(np.ones((2, 3)) / 3, np.array([0, 3]))
    with pytest.raises(ValueError, match="need probs"):
        true_class_rank(np.ones((2, 3)) / 3, np.array([0]))
