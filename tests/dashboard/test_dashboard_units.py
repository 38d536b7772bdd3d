"""The dashboards' pure pieces: number formatting, the session cookie, and chart series replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.dashboard import session
from server.dashboard.format import ago, duration, human_bytes, percent
from server.dashboard.series import cumulative_by_group, state_counts_over_time

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("n", "text"), [(None, "—"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"),
                                         (17445, "17.0 KB"), (2421166, "2.3 MB"), (150 * 1024 ** 2, "150 MB"),
                                         (3 * 1024 ** 3, "3.0 GB")])
def test_bytes_read_in_binary_units(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def test_percentages_durations_and_ages_read_like_a_person_would_say_them() -> None:
    assert percent(None) == "—" and percent(0.99334) == "99.3%" and percent(1.0, 2) == "100.00%"
    assert duration(1) == "1 s" and duration(90) == "1 min 30 s" and duration(1800) == "30 min"
    assert duration(7200) == "2 h" and duration(5400) == "1 h 30 min"
    assert ago(None) == "never" and ago(T0 - timedelta(seconds=5), T0) == "5 s ago"
    assert ago(T0 - timedelta(minutes=7), T0) == "7 min ago" and ago(T0 - timedelta(days=3), T0) == "3 d ago"
    assert ago(T0.replace(tzinfo=None) - timedelta(hours=2), T0) == "2 h ago"  # SQLite's naive UTC


def test_session_is_refused_when_expired_revoked_forged_or_the_admin_token_rotated() -> None:
    now = T0
    sid = session.new_session_id()
    stored = {"stored_mac": session.token_mac("admin-token", sid), "expires_at": now + timedelta(seconds=60),
              "revoked_at": None, "session_id": sid}
    assert session.still_valid(**stored, admin_token="admin-token", now=now + timedelta(seconds=59))
    assert not session.still_valid(**stored, admin_token="admin-token", now=now + timedelta(seconds=61))  # expired
    assert not session.still_valid(**stored, admin_token="rotated-token", now=now)  # new admin token: all out
    assert not session.still_valid(**stored, admin_token=None, now=now)
    assert not session.still_valid(**{**stored, "revoked_at": now}, admin_token="admin-token", now=now)  # logout
    assert not session.still_valid(**{**stored, "stored_mac": "0" * 64}, admin_token="admin-token", now=now)
    assert session.digest(sid) != sid and len(session.digest(sid)) == 64  # the server stores only the digest


def test_login_throttle_waits_until_the_oldest_failure_leaves_the_window() -> None:
    fails = [T0 + timedelta(seconds=s) for s in (0, 10, 20, 30, 40)]
    assert session.retry_after_s(fails[:4], now=T0 + timedelta(seconds=41), limit=5, window_s=60) is None
    assert session.retry_after_s(fails, now=T0 + timedelta(seconds=41), limit=5, window_s=60) == 19
    assert session.retry_after_s(fails, now=T0 + timedelta(seconds=59.9), limit=5, window_s=60) == 1


def test_state_history_replays_each_update_through_its_states_and_ends_at_now() -> None:
    events = [(T0, 1, "offered"), (T0, 2, "offered"), (T0 + timedelta(seconds=10), 1, "downloading"),
              (T0 + timedelta(seconds=10, milliseconds=300), 1, "installed"),  # same second: merged
              (T0 + timedelta(seconds=20), 2, "failed")]
    s = state_counts_over_time(events, ("installed", "downloading", "offered", "failed"),
                               until=T0 + timedelta(seconds=60))
    assert s.xs == [T0.timestamp(), T0.timestamp() + 10, T0.timestamp() + 20, T0.timestamp() + 60]
    assert s.ys == {"installed": [0, 1, 1, 1], "downloading": [0, 0, 0, 0], "offered": [2, 1, 0, 0],
                    "failed": [0, 0, 1, 1]}
    chart = s.as_chart("devices", stacked=True)
    assert chart["names"] == ["installed", "downloading", "offered", "failed"] and chart["stacked"]
    assert chart["data"][0] == s.xs and chart["data"][1] == s.ys["installed"]


def test_cumulative_bytes_per_group_keep_every_group_aligned_on_the_same_times() -> None:
    s = cumulative_by_group([(T0 + timedelta(seconds=5), "lte", 300), (T0, "wifi", 1000), (T0, "lte", 100)])
    assert s.xs == [T0.timestamp(), T0.timestamp() + 5]
    assert s.ys == {"lte": [100, 400], "wifi": [1000, 1000]}
    assert cumulative_by_group([]).xs == []


def test_quality_charts_draw_agreement_per_kind_with_the_gate_lines_and_classes_by_label() -> None:
    from server.dashboard.series import quality_charts

    quality = {
        "gates": ["agreement>=0.97", "min_frames=500", "latency_p99_ratio<=1.3", "not a gate"],
        "history": [
            {"at": "2026-12-08T10:00:00+00:00", "kind": "shadow", "frames": 100, "agreement": 0.99,
             "latency_p99_ratio": 1.1, "class_shift": 0.01},
            {"at": "2026-12-08T10:00:05+00:00", "kind": "shadow", "frames": 600, "agreement": 0.9,
             "latency_p99_ratio": 1.2, "class_shift": 0.05},
            {"at": "2026-12-08T10:00:09+00:00", "kind": "live", "frames": 50, "agreement": None,
             "latency_p99_ratio": None, "class_shift": None},
        ],
        "summaries": {"shadow": {"class_counts": {"candidate": [5, 1], "baseline": [3, 2, 1]}}, "live": None},
    }
    charts = quality_charts(quality, ["stop", "yield"])
    agreement = charts["agreement"]
    assert agreement["thresholds"] == [{"value": 0.97, "label": "gate agreement>=0.97"}]
    assert agreement["series"]["names"] == ["shadow", "live"]
    xs, shadow, live = agreement["series"]["data"]
    assert len(xs) == 3 and shadow == [0.99, 0.9, None] and live == [None, None, None]
    assert charts["latency_p99_ratio"]["thresholds"] == [{"value": 1.3, "label": "gate latency_p99_ratio<=1.3"}]
    classes = charts["classes"]["series"]
    assert classes["bars"] == ["stop", "yield", "class 2"]
    assert classes["data"][1:] == [[5.0, 1.0, 0.0], [3.0, 2.0, 1.0]]
    assert quality_charts({"gates": ["agreement>=0.9"], "history": [], "summaries": {}}, []) == {}
