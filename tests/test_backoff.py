"""The retry policy (agent/backoff.py): properties of any Backoff, and the three named policies."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.backoff import (
    FORWARDER,
    MQTT,
    SERIAL,
    SERIAL_RECONNECT_MAX_S,
    Backoff,
    Retries,
    serial_policy,
)
from agent.config import SerialSourceConfig

seconds = st.floats(min_value=0.001, max_value=1e4, allow_nan=False, allow_infinity=False)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)  # random.random's range
attempts = st.integers(min_value=0, max_value=5000)  # far past any cap, and past float overflow


@st.composite
def policies(draw: st.DrawFn) -> Backoff:
    return Backoff(
        base=draw(seconds),
        factor=draw(st.floats(min_value=1.0, max_value=10.0)),
        cap=draw(seconds),
        jitter=draw(st.floats(min_value=0.0, max_value=1.0)),
        max_server_wait=draw(st.floats(min_value=0.0, max_value=1e4)),
        # 0, or at least a millisecond: a subnormal span (5e-324 s) has no 0.999 of itself
        stable_after=draw(st.just(0.0) | st.floats(min_value=1e-3, max_value=100.0)),
    )


# -- any policy --------------------------------------------------------------------------------


@given(policies(), attempts, draws)
def test_never_above_the_cap(policy: Backoff, attempt: int, u: float) -> None:
    assert policy.delay(attempt, rand=lambda: u) <= policy.cap


@given(policies(), attempts, draws, st.floats(min_value=0.0, max_value=1e6))
def test_never_below_a_servers_minimum_up_to_max_server_wait(
    policy: Backoff, attempt: int, u: float, server_min: float
) -> None:
    wait = policy.delay(attempt, server_min=server_min, rand=lambda: u)
    floor = min(server_min, policy.max_server_wait)
    assert wait >= floor
    # The server may lengthen a wait past the cap, never past its capped request.
    assert wait <= max(policy.cap, floor)


@given(policies(), st.integers(min_value=0, max_value=2000))
def test_waits_grow_by_factor_until_the_cap(policy: Backoff, attempt: int) -> None:
    assert policy.nominal(0) == min(policy.base, policy.cap)
    here, after = policy.nominal(attempt), policy.nominal(attempt + 1)
    assert after == pytest.approx(min(policy.cap, here * policy.factor), rel=1e-9)
    assert after >= here


@given(policies(), attempts, draws)
def test_jitter_only_shortens_and_never_to_zero(policy: Backoff, attempt: int, u: float) -> None:
    nominal = policy.nominal(attempt)
    wait = policy.delay(attempt, rand=lambda: u)
    assert (1 - policy.jitter) * nominal * (1 - 1e-12) <= wait <= nominal
    assert wait > 0


@given(policies(), attempts)
def test_the_draw_spans_the_jitter_range(policy: Backoff, attempt: int) -> None:
    nominal = policy.nominal(attempt)
    assert policy.delay(attempt, rand=lambda: 0.0) == nominal
    low = policy.delay(attempt, rand=lambda: 0.999999)
    assert low == pytest.approx((1 - policy.jitter * 0.999999) * nominal)


def test_a_long_outage_stays_at_the_cap() -> None:
    policy = Backoff(base=0.5, factor=2.0, cap=30.0)
    assert policy.nominal(10**6) == 30.0  # 2.0 ** 10**6 is out of the float range


@pytest.mark.parametrize(
    "kw",
    [
        {"base": 0.0},
        {"cap": 0.0},
        {"factor": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"max_server_wait": -1.0},
        {"stable_after": float("inf")},
        {"cap": float("nan")},
    ],
)
def test_a_policy_that_cannot_work_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**{"base": 0.5, "factor": 2.0, "cap": 30.0, **kw})


# -- the attempt counter -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0  # from zero, adding to it is exact enough for ">= stable_after"

    def __call__(self) -> float:
        return self.now


@given(policies(), st.integers(min_value=1, max_value=20), st.floats(min_value=0.0, max_value=1.0))
def test_a_link_up_for_the_stable_period_starts_over_at_the_base(
    policy: Backoff, failures: int, beyond: float
) -> None:
    clock = Clock()
    retries = Retries(policy, rand=lambda: 0.0, clock=clock)
    waits = [retries.next_delay() for _ in range(failures)]
    assert waits == [policy.nominal(n) for n in range(failures)]
    retries.up()
    clock.now += policy.stable_after + beyond
    assert retries.next_delay() == policy.nominal(0)
    assert retries.attempt == 1


@given(policies(), st.integers(min_value=1, max_value=20), st.floats(min_value=0.0, max_value=1.0))
def test_a_link_that_drops_early_keeps_growing(
    policy: Backoff, failures: int, fraction: float
) -> None:
    assume(policy.stable_after > 0)  # with 0, every up() is stable (the test above)
    clock = Clock()
    retries = Retries(policy, rand=lambda: 0.0, clock=clock)
    for _ in range(failures):
        retries.next_delay()
    retries.up()
    clock.now += policy.stable_after * fraction * 0.999
    assert retries.next_delay() == policy.nominal(failures)
    assert retries.attempt == failures + 1


def test_retries_pass_the_server_minimum_on() -> None:
    retries = Retries(FORWARDER.with_cap(3.0), rand=lambda: 0.0)
    assert retries.next_delay(server_min=9.0) == 9.0
    assert retries.next_delay() == 1.0  # the attempt was counted


# -- the named policies --------------------------------------------------------------------------


def top(policy: Backoff, n: int) -> list[float]:
    """The longest wait of each of the first n attempts."""
    return [policy.delay(attempt, rand=lambda: 0.0) for attempt in range(n)]


def test_forwarder_full_jitter_and_retry_after() -> None:
    assert FORWARDER.jitter == 1.0
    assert top(FORWARDER.with_cap(3.0), 5) == [0.5, 1, 2, 3, 3]
    assert FORWARDER.with_cap(3.0).delay(0, server_min=9, rand=lambda: 0.0) == 9
    assert FORWARDER.delay(30, server_min=1e6) == 3600  # Retry-After honoured up to an hour
    # Full jitter: the draw decides where in (0, d] a wait falls.
    assert FORWARDER.delay(3, rand=lambda: 0.75) == pytest.approx(1.0)


def test_mqtt_doubles_from_half_a_second_and_never_waits_past_30_s() -> None:
    assert top(MQTT, 8) == [0.5, 1, 2, 4, 8, 16, 30, 30]
    # Before agent.backoff, ±25 % jitter on the 30 s cap allowed waits up to 37.5 s.
    assert MQTT.delay(40, rand=lambda: 0.0) == 30.0
    assert MQTT.delay(40, rand=lambda: 0.999999) == pytest.approx(22.5, rel=1e-5)


@given(seconds, attempts, draws)
def test_serial_reads_again_within_reconnect_max(
    reconnect_max: float, attempt: int, u: float
) -> None:
    policy = serial_policy(reconnect_max)
    assert 0 < policy.delay(attempt, rand=lambda: u) < reconnect_max


def test_serial_default_doubles_from_0_2_s_to_just_under_5_s() -> None:
    assert SerialSourceConfig.model_fields["reconnect_max"].default == SERIAL_RECONNECT_MAX_S
    assert top(SERIAL, 7) == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 4.75, 4.75])
    assert SERIAL.delay(40, rand=lambda: 0.999999) == pytest.approx(0.8 * 4.75, rel=1e-5)
