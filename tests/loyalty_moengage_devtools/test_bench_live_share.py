"""The night-beside-live benchmark's verdict: the night beside live traffic may be slower than
alone by at most what the live lane's share takes from its pacing, with no 429 and live events
actually sent beside it."""

from __future__ import annotations

from loyalty_moengage_devtools.bench.live_share import figures, render


def _night(seconds: float, throttled: int = 0, live: dict | None = None) -> dict:
    return {"pipeline_s": seconds, "throttled": throttled, "members": 12_000, "events": 9_000,
            **({"live": live} if live is not None else {})}


LIVE = {"rate_per_s": 5.0, "rows_written": 700, "live_runs": 7, "live_events_sent": 690, "shares": [0.05],
        "live_429s": 0, "errors": []}


def test_a_night_slowed_by_the_live_share_holds():
    f = figures(_night(120.0), _night(126.0, live=LIVE), share=0.05)
    assert (f["slower_pct"], f["allowed_pct"], f["throughput_loss_pct"], f["held"]) == (5.0, 5.26, 4.76, True)


def test_a_night_slowed_more_than_the_share_a_429_or_no_live_traffic_does_not_hold():
    assert not figures(_night(120.0), _night(135.0, live=LIVE), share=0.05)["held"]
    assert not figures(_night(120.0), _night(121.0, throttled=1, live=LIVE), share=0.05)["held"]
    assert not figures(_night(120.0), _night(121.0, live={**LIVE, "live_events_sent": 0}), share=0.05)["held"]
    assert not figures(_night(120.0), _night(121.0, live={**LIVE, "errors": ["boom"]}), share=0.05)["held"]


def test_the_report_prints_the_lowered_budget_and_the_verdict():
    r = {"started_at": "t", "command": "c", "budget_per_minute": 6_000, "members": 12_000, "share": 0.05,
         "workers": 2, "commit": "abc", "alone": _night(120.0), "beside_live": _night(126.0, live=LIVE)}
    r["figures"] = figures(r["alone"], r["beside_live"], share=0.05)
    text = render(r)
    assert "6,000 users and 6,000 events a minute" in text and "| verdict | held |" in text
    assert "| slower by (allowed: 1 / (1 - share) - 1) | 5.0 % (5.26 %) |" in text
