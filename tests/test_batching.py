"""Bulk batch planning: sorted by length, cut by rows and padded-token budget."""
import numpy as np
import pytest

from postemb_rt import ValidationError
from postemb_rt.batching import padding_ratio, plan_batches


@pytest.mark.parametrize("batch_size, budget", [(1, 10_000), (4, 64), (64, 4096), (1000, 100)])
def test_every_row_in_exactly_one_batch_within_limits(batch_size, budget):
    lengths = np.random.default_rng(1).integers(2, 120, size=500)
    batches = plan_batches(lengths, batch_size, budget)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= batch_size
        assert len(b) * lengths[b].max() <= budget or len(b) == 1


def test_rows_longer_than_the_budget_go_alone():
    batches = plan_batches([300, 5, 5], 64, 256)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_sorted_batches_pad_less_than_input_order():
    lengths = np.random.default_rng(2).integers(2, 200, size=1000)
    sorted_plan = plan_batches(lengths, 32, 10**9)
    naive = [np.arange(i, min(i + 32, 1000)) for i in range(0, 1000, 32)]
    assert padding_ratio(lengths, sorted_plan) < padding_ratio(lengths, naive) / 4


def test_padding_ratio_of_equal_lengths_is_zero():
    assert padding_ratio([5, 5, 5], [np.array([0, 1, 2])]) == 0.0


@pytest.mark.parametrize("kwargs, match", [({"max_batch_size": 0}, "`batch_size` must be >= 1. Given: 0"),
                                           ({"max_batch_tokens": 0}, "`max_batch_tokens` must be >= 1. Given: 0")])
def test_bad_limits_are_named(kwargs, match):
    args = {"max_batch_size": 8, "max_batch_tokens": 100, **kwargs}
    with pytest.raises(ValidationError, match=match):
        plan_batches([1, 2], **args)
