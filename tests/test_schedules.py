import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunelab.schedules import is_update_step, sparsity_at


def cubic(t, s_f, s_i=0.0, t0=0, t1=100):
    return sparsity_at(t, schedule="cubic", final_sparsity=s_f, initial_sparsity=s_i, start_step=t0, end_step=t1)


@given(t=st.integers(0, 20_000), s_f=st.floats(0, 1), s_i=st.floats(0, 1), t0=st.integers(0, 500), span=st.integers(1, 10_000))
def test_cubic_matches_the_zhu_gupta_formula(t, s_f, s_i, t0, span):
    t1 = t0 + span
    expected = s_f + (s_i - s_f) * (1 - (min(max(t, t0), t1) - t0) / (t1 - t0)) ** 3
    assert cubic(t, s_f, s_i, t0, t1) == pytest.approx(expected, abs=1e-12)


def test_cubic_known_values_and_clamping():
    # the paper's setting: 0 -> s over the first 10k steps
    assert cubic(0, 0.6, t1=10_000) == 0.0
    assert cubic(5_000, 0.6, t1=10_000) == pytest.approx(0.6 * (1 - 0.5**3))
    assert cubic(10_000, 0.6, t1=10_000) == 0.6
    assert cubic(50_000, 0.6, t1=10_000) == 0.6
    assert cubic(3, 0.9, s_i=0.2, t0=10, t1=20) == 0.2


@given(s_f=st.floats(0, 1), a=st.integers(0, 300), b=st.integers(0, 300))
def test_cubic_is_non_decreasing(s_f, a, b):
    lo, hi = sorted((a, b))
    assert cubic(lo, s_f, t0=10, t1=200) <= cubic(hi, s_f, t0=10, t1=200) + 1e-12


def test_update_steps():
    steps = [t for t in range(0, 40) if is_update_step(t, schedule="cubic", start_step=5, end_step=27, every=10)]
    assert steps == [5, 15, 25, 27]
    assert [t for t in range(10) if is_update_step(t, schedule="oneshot", start_step=3)] == [3]
    assert not any(is_update_step(t, schedule="constant") for t in range(10))


def test_oneshot_and_constant_values():
    assert sparsity_at(2, schedule="oneshot", final_sparsity=0.7, start_step=3) == 0.0
    assert sparsity_at(3, schedule="oneshot", final_sparsity=0.7, start_step=3) == 0.7
    assert sparsity_at(0, schedule="constant", final_sparsity=0.4) == 0.4


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; allowed: oneshot, cubic, constant"):
        sparsity_at(0, schedule="linear", final_sparsity=0.5)
