"""Maintenance windows (issue 21 item 2): the pure ``is_open`` / ``next_open``, parsing, and DST nights."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.devices.decision import NewOffer, NoOffer, Resend, decide
from server.rollouts import windows as w
from tests.server.test_decision import KEY, POLICY, V1, V2, device, line, offer, poll, rollout

BERLIN = ZoneInfo("Europe/Berlin")
NIGHTS = [w.parse({"days": "mon-fri", "start": "01:00", "end": "05:00", "tz": "Europe/Berlin"})]


def _berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN).replace(fold=fold)  # type: ignore[misc]


def test_weekday_night_window_is_open_inside_and_closed_outside_and_on_weekends() -> None:
    assert w.is_open(NIGHTS, _berlin(2026, 12, 7, 1, 0))  # Monday 01:00
    assert w.is_open(NIGHTS, _berlin(2026, 12, 7, 4, 59))
    assert not w.is_open(NIGHTS, _berlin(2026, 12, 7, 5, 0))  # end is exclusive
    assert not w.is_open(NIGHTS, _berlin(2026, 12, 7, 0, 59))
    assert not w.is_open(NIGHTS, _berlin(2026, 12, 12, 2, 0))  # Saturday
    assert w.is_open([], _berlin(2026, 12, 12, 2, 0))  # no windows: always open


def test_window_crossing_midnight_belongs_to_the_day_it_opens() -> None:
    fri_night = [w.parse({"days": "fri", "start": "22:00", "end": "02:00", "tz": "UTC"})]
    assert w.is_open(fri_night, datetime(2026, 12, 11, 23, 0, tzinfo=UTC))  # Friday 23:00
    assert w.is_open(fri_night, datetime(2026, 12, 12, 1, 59, tzinfo=UTC))  # Saturday 01:59
    assert not w.is_open(fri_night, datetime(2026, 12, 12, 23, 0, tzinfo=UTC))  # Saturday night
    assert not w.is_open(fri_night, datetime(2026, 12, 11, 1, 0, tzinfo=UTC))  # Friday early (Thursday's night)


def test_time_zone_is_the_windows_not_utc() -> None:
    # 00:30 UTC on a winter Monday is 01:30 in Berlin: open; 04:30 UTC is 05:30 there: closed
    assert w.is_open(NIGHTS, datetime(2026, 12, 7, 0, 30, tzinfo=UTC))
    assert not w.is_open(NIGHTS, datetime(2026, 12, 7, 4, 30, tzinfo=UTC))


def test_next_open_is_the_coming_opening_over_a_weekend() -> None:
    sat = _berlin(2026, 12, 12, 12, 0)
    assert w.next_open(NIGHTS, sat) == _berlin(2026, 12, 14, 1, 0)
    inside = _berlin(2026, 12, 14, 3, 0)
    assert w.next_open(NIGHTS, inside) == inside


def test_spring_forward_night_window_lasts_three_real_hours_and_the_skipped_hour_never_opens() -> None:
    # 2026-03-29 (Sunday): Berlin clocks go 02:00 CET -> 03:00 CEST
    nightly = [w.parse({"days": "daily", "start": "01:00", "end": "05:00", "tz": "Europe/Berlin"})]
    opens = _berlin(2026, 3, 29, 1, 0).astimezone(UTC)
    closes = _berlin(2026, 3, 29, 5, 0).astimezone(UTC)
    assert closes - opens == timedelta(hours=3)
    assert w.is_open(nightly, closes - timedelta(seconds=1)) and not w.is_open(nightly, closes)
    gap = [w.parse({"days": "sun", "start": "02:00", "end": "03:00", "tz": "Europe/Berlin"})]
    t = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    while t < datetime(2026, 3, 29, 4, 0, tzinfo=UTC):
        assert not w.is_open(gap, t), t
        t += timedelta(minutes=5)
    assert w.next_open(gap, datetime(2026, 3, 28, 23, 0, tzinfo=UTC)) == _berlin(2026, 4, 5, 2, 0)


def test_a_start_inside_the_skipped_hour_opens_when_the_clock_jumps() -> None:
    half_past_two = [w.parse({"days": "sun", "start": "02:30", "end": "05:00", "tz": "Europe/Berlin"})]
    assert w.next_open(half_past_two, _berlin(2026, 3, 29, 0, 0)) == _berlin(2026, 3, 29, 3, 0)


def test_fall_back_night_window_lasts_five_real_hours() -> None:
    # 2026-10-25 (Sunday): Berlin clocks go 03:00 CEST -> 02:00 CET; 02:30 happens twice
    nightly = [w.parse({"days": "sun", "start": "01:00", "end": "05:00", "tz": "Europe/Berlin"})]
    opens = _berlin(2026, 10, 25, 1, 0).astimezone(UTC)
    closes = _berlin(2026, 10, 25, 5, 0).astimezone(UTC)
    assert closes - opens == timedelta(hours=5)
    assert w.is_open(nightly, _berlin(2026, 10, 25, 2, 30, fold=0))
    assert w.is_open(nightly, _berlin(2026, 10, 25, 2, 30, fold=1))
    assert w.next_open(nightly, _berlin(2026, 10, 24, 12, 0)) == opens


@pytest.mark.parametrize(("bad", "field"), [
    ({"days": "mon-fry", "start": "01:00", "end": "05:00", "tz": "UTC"}, "days"),
    ({"days": "mon", "start": "1:00", "end": "05:00", "tz": "UTC"}, "start"),
    ({"days": "mon", "start": "01:00", "end": "25:00", "tz": "UTC"}, "end"),
    ({"days": "mon", "start": "01:00", "end": "01:00", "tz": "UTC"}, "end"),
    ({"days": "mon", "start": "01:00", "end": "05:00", "tz": "Mars/Olympus"}, "tz"),
    ({"days": "mon", "start": "01:00", "end": "05:00", "tz": "../../etc/passwd"}, "tz"),
    ({"days": "mon", "start": "01:00", "end": "05:00"}, "tz"),
    ({"days": "mon", "start": "01:00", "end": "05:00", "tz": "UTC", "x": "1"}, "x"),
])
def test_bad_windows_name_the_field(bad: dict[str, str], field: str) -> None:
    with pytest.raises(w.WindowError) as e:
        w.parse(bad)
    assert e.value.field == field


def test_day_ranges_wrap_and_lists_combine() -> None:
    assert w.parse({"days": "fri-mon", "start": "00:00", "end": "24:00", "tz": "UTC"}).days == {4, 5, 6, 0}
    assert w.parse({"days": "sat,sun", "start": "00:00", "end": "24:00", "tz": "UTC"}).days == {5, 6}
    assert w.parse_text("mon-fri 01:00-05:00 Europe/Berlin") == {
        "days": "mon-fri", "start": "01:00", "end": "05:00", "tz": "Europe/Berlin"}
    with pytest.raises(w.WindowError):
        w.parse_text("mon-fri 01:00 Europe/Berlin")


# -- the poll decision on a closed rollout (pure) -------------------------------------------------------------
def _decide_at(now: datetime, *, offered: bool) -> object:
    closed = replace(rollout(V2), windows=tuple(NIGHTS))
    dev = device(offers={KEY: offer(expires_at=now + timedelta(hours=1))} if offered else None)
    return decide(dev, line(V1, closed), poll(), now, POLICY)


def test_a_closed_rollout_makes_no_new_offer_but_resends_the_one_a_car_already_has() -> None:
    saturday = _berlin(2026, 12, 12, 12, 0).astimezone(UTC)
    assert isinstance(_decide_at(saturday, offered=False), NoOffer)
    assert isinstance(_decide_at(saturday, offered=True), Resend)  # a car already downloading goes on
    monday_night = _berlin(2026, 12, 14, 2, 0).astimezone(UTC)
    assert isinstance(_decide_at(monday_night, offered=False), NewOffer)


def test_a_rollout_before_its_start_makes_no_new_offer() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    later = replace(rollout(V2), starts_at=now + timedelta(seconds=1))
    assert isinstance(decide(device(), line(V1, later), poll(), now, POLICY), NoOffer)
    assert isinstance(decide(device(), line(V1, later), poll(), now + timedelta(seconds=1), POLICY), NewOffer)
