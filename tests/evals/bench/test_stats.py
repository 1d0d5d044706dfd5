import pytest

from opsagent.errors import InputError
from opsagent.evals.bench.stats import Summary, Target, percentile, ratio, throughput


def test_percentile_interpolates_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("values,q", [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_bad_input(values, q):
    with pytest.raises(InputError):
        percentile(values, q)


def test_summary_and_empty_summary():
    s = Summary.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.n, s.p50, s.mean) == (5, 3.0, 3.0)
    assert s.p99 == pytest.approx(4.96)
    assert Summary.of([]) == Summary(n=0)


def test_ratio_and_throughput_handle_missing_and_zero():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None
    assert throughput(10, 4.0) == 2.5 and throughput(3, 0.0) is None


def test_target_met_both_directions():
    assert Target(name="p50", measured=1.9, limit=2.0, at_most=True).met is True
    assert Target(name="p50", measured=2.1, limit=2.0, at_most=True).met is False
    assert Target(name="x16", measured=4.0, limit=4.0, at_most=False).met is True
    assert Target(name="x16", measured=None, limit=4.0, at_most=False).met is None
