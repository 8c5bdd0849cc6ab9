"""Admission by expected wait, with known numbers: when a request may queue for an engine and
when it gets 429 with a retry-after instead."""

from __future__ import annotations

from services.common.errors import ResourceExhausted
from services.gateway.admission import (
    AdmissionPolicy,
    EngineBusy,
    ServiceTime,
    expected_wait,
)


def test_service_time_is_an_exponentially_weighted_mean():
    service = ServiceTime(alpha=0.5)
    assert service.seconds is None
    service.observe(10.0)
    assert service.seconds == 10.0
    service.observe(20.0)
    assert service.seconds == 15.0
    service.observe(-1.0)  # a clock step never makes a negative estimate
    assert service.seconds == 7.5


def test_a_free_slot_means_no_wait():
    assert expected_wait([5.0, 5.0], waiting=0, slots=4, service_s=10.0) == 0.0


def test_a_burst_waits_for_the_whole_batch():
    # Four slots taken by requests that started together and end in 10 s: the fifth waits
    # 10 s, the ninth 20 s (two batches), not the 2.5 s per slot a smooth flow would give.
    assert expected_wait([10.0] * 4, waiting=0, slots=4, service_s=10.0) == 10.0
    assert expected_wait([10.0] * 4, waiting=3, slots=4, service_s=10.0) == 10.0
    assert expected_wait([10.0] * 4, waiting=4, slots=4, service_s=10.0) == 20.0
    assert expected_wait([10.0] * 4, waiting=11, slots=4, service_s=10.0) == 30.0


def test_spread_out_requests_free_a_slot_every_service_time_over_slots():
    remaining = [2.5, 5.0, 7.5, 10.0]
    assert expected_wait(remaining, waiting=0, slots=4, service_s=10.0) == 2.5
    assert expected_wait(remaining, waiting=1, slots=4, service_s=10.0) == 5.0
    assert expected_wait(remaining, waiting=4, slots=4, service_s=10.0) == 12.5


def test_requests_past_their_expected_end_free_their_slot_now():
    assert expected_wait([-3.0, 4.0], waiting=0, slots=2, service_s=4.0) == 0.0
    assert expected_wait([-3.0, 4.0], waiting=1, slots=2, service_s=4.0) == 4.0


def _service(seconds: float | None) -> ServiceTime:
    return ServiceTime(seconds=seconds)


def test_admits_while_the_expected_wait_is_within_the_limit():
    policy = AdmissionPolicy(slots=4, max_queue=512, max_wait_s=15.0)
    started = [100.0] * 4  # a burst that took all four slots at t=100
    busy = _service(12.0)
    # At t=100: slots free at 112; waiting 0..3 wait 12 s, 4..7 wait 24 s.
    decision = policy.decide(started, waiting=3, now=100.0, service=busy)
    assert decision.admit and decision.wait_s == 12.0
    decision = policy.decide(started, waiting=4, now=100.0, service=busy)
    assert not decision.admit and decision.wait_s == 24.0
    assert decision.retry_after_s == 9  # 24 s - 15 s: back under the limit by then
    # Five seconds later the same line is five seconds shorter.
    later = policy.decide(started, waiting=4, now=105.0, service=busy)
    assert not later.admit and later.wait_s == 19.0 and later.retry_after_s == 4


def test_nothing_known_yet_admits_up_to_the_queue_bound():
    policy = AdmissionPolicy(slots=1, max_queue=2, max_wait_s=1.0)
    assert policy.decide([0.0], waiting=1, now=50.0, service=_service(None)).admit
    full = policy.decide([0.0], waiting=2, now=50.0, service=_service(None))
    assert not full.admit and full.retry_after_s == 1


def test_without_a_time_limit_only_the_queue_bound_refuses():
    policy = AdmissionPolicy(slots=2, max_queue=3, max_wait_s=None)
    slow = _service(60.0)
    assert policy.decide([0.0, 0.0], waiting=2, now=0.0, service=slow).admit
    full = policy.decide([0.0, 0.0], waiting=3, now=0.0, service=slow)
    assert not full.admit
    assert full.retry_after_s == 30  # one slot frees every 60 s / 2 slots


def test_the_refusal_is_a_429_in_our_words_with_its_retry_after():
    policy = AdmissionPolicy(slots=4, max_queue=512, max_wait_s=15.0)
    decision = policy.decide([0.0] * 4, waiting=8, now=0.0, service=_service(12.0))
    err = policy.refusal(decision)
    assert isinstance(err, EngineBusy) and isinstance(err, ResourceExhausted)
    assert err.mapping.http_status == 429
    assert err.retry_after_s == decision.retry_after_s == 21
    assert err.code == "engine_overloaded"
    assert "wait about 36 s" in err.message and "limit is 15 s" in err.message
    assert "engine" not in err.message.lower()


def test_an_idle_engine_admits_even_with_a_slow_estimate():
    policy = AdmissionPolicy(slots=4, max_queue=512, max_wait_s=0.5)
    assert policy.decide([], waiting=0, now=0.0, service=_service(30.0)).admit


def test_engine_concurrency_defaults_to_what_the_device_serves_at_once(monkeypatch):
    """Unset, a CPU engine admits 8 at once (so backpressure can refuse before the engine
    queues a minute's work), a GPU engine 256; an explicit value always wins."""
    from services.gateway import settings as gateway_settings

    monkeypatch.setattr(gateway_settings, "nvidia_gpu_visible", lambda: False)
    assert gateway_settings.GatewaySettings().engine_concurrency == 8
    monkeypatch.setattr(gateway_settings, "nvidia_gpu_visible", lambda: True)
    assert gateway_settings.GatewaySettings().engine_concurrency == 256
    explicit = gateway_settings.GatewaySettings(max_concurrent_per_engine=3)
    assert explicit.engine_concurrency == 3
