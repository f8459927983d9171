"""Server-rendered HTML of the two tabs: inline CSS and SVG, no script, nothing from the internet.

Airflow shows plugin views in an iframe sandboxed without scripts, so these pages need none.
Every number carries ``data-k`` (and rows ``data-night``) so tests can read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import orjson

from loyalty_moengage.ui.data import local, resolve_commands

COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
           "#bab0ac", "#e15759", "#86bcb6"]
OUTCOME_COLOURS = {"success": "#2e7d32", "incomplete": "#ef6c00", "uncertain": "#c62828", "held": "#6a1b9a",
                   "failed": "#c62828", "missed": "#9e9e9e", "dry run": "#1565c0"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px}
.sub{color:#57606a;margin-bottom:12px}
table{border-collapse:collapse;margin:6px 0 10px} th,td{padding:3px 9px;border-bottom:1px solid #d0d7de;text-align:right;white-space:nowrap}
th{background:#f6f8fa;font-weight:600} td.l,th.l{text-align:left;white-space:normal}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.head{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:8px 0 14px;background:#f6f8fa}
.head.bad{border-color:#c62828;background:#fdecea} .head.ok{border-color:#2e7d32;background:#edf7ee}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f6f8fa;padding:2px 4px;border-radius:4px}
pre{padding:8px;white-space:pre-wrap;word-break:break-all;border:1px solid #d0d7de}
.missed td{color:#9e9e9e} .warn{color:#c62828;font-weight:600}
.legend span{display:inline-block;margin-right:12px;font-size:12px} .legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _n(value: Any) -> str:
    return f"{int(value):,}"


def _badge(outcome: str) -> str:
    return f'<span class="badge" data-k="outcome" style="background:{OUTCOME_COLOURS.get(outcome, "#555")}">{_e(outcome)}</span>'


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}</body></html>")


def _seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:,.0f} s" if s < 120 else f"{s / 60:,.1f} min"


# ---- the DAG tab ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Frame:
    """The chart's geometry and scales, computed once per chart for everything drawn on it."""

    types: list[str]
    colour: dict[str, str]
    step: float
    bar: float
    ev_max: int
    mem_max: int
    duration_max: float
    width: int = 1000
    left: int = 110
    top: int = 14
    plot_h: int = 170

    @classmethod
    def of(cls, nights: list[Any]) -> "_Frame":
        """The frame for ``nights``, oldest first."""
        types = sorted({t for n in nights for t in n.events_by_type})
        step = (cls.width - cls.left - 10) / max(len(nights), 1)
        return cls(types=types, colour={t: COLOURS[i % len(COLOURS)] for i, t in enumerate(types)},
                   step=step, bar=max(step * 0.72, 2),
                   ev_max=max([sum(n.events_by_type.values()) for n in nights] + [1]),
                   mem_max=max([n.total("members_updated") for n in nights if not n.missed] + [1]),
                   duration_max=max([m.duration_s or 0 for m in nights] + [m.floor_s or 0 for m in nights] + [1]))


def _chart(h: dict[str, Any]) -> str:
    nights = list(reversed(h["nights"]))   # oldest first
    f = _Frame.of(nights)
    out = _chart_axes(f)
    points = []
    for i, n in enumerate(nights):
        x = f.left + i * f.step + (f.step - f.bar) / 2
        out += _event_bars(f, n, x)
        if n.missed:
            out.append(f'<text x="{x + f.bar / 2:.1f}" y="{f.top + f.plot_h - 3:.1f}" font-size="10" text-anchor="middle" '
                       f'fill="#9e9e9e">×</text>')
        else:
            points.append((x + f.bar / 2, f.top + f.plot_h * (1 - n.total("members_updated") / f.mem_max)))
        out += _night_strips(f, n, x)
        if i % max(1, len(nights) // 10) == 0 or i == len(nights) - 1:
            out.append(f'<text x="{x + f.bar / 2:.1f}" y="{f.top + f.plot_h + 145}" font-size="10" text-anchor="middle" '
                       f'fill="#57606a">{n.night:%m-%d}</text>')
    out += _members_line(points) + _strip_labels(f) + ["</svg>"]
    return "".join(out) + _chart_legend(f)


def _chart_axes(f: _Frame) -> list[str]:
    """The svg element, the title and the left axis's grid lines."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{f.width}" height="{f.top + f.plot_h + 150}" '
           f'role="img" aria-label="events by type per night" data-k="chart">',
           f'<text x="{f.left}" y="10" font-size="11" fill="#57606a">events by type (bars, left axis {f.ev_max:,}), '
           f'members updated (line, right axis {f.mem_max:,})</text>']
    for frac in (0, 0.5, 1):
        y = f.top + f.plot_h * (1 - frac)
        out.append(f'<line x1="{f.left}" x2="{f.width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
                   f'<text x="{f.left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#57606a">{f.ev_max * frac:,.0f}</text>')
    return out


def _event_bars(f: _Frame, n: Any, x: float) -> list[str]:
    """One night's events, stacked by type from the bottom of the plot."""
    out, y = [], f.top + f.plot_h
    for t in f.types:
        v = n.events_by_type.get(t, 0)
        if not v:
            continue
        hgt = f.plot_h * v / f.ev_max
        y -= hgt
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{f.bar:.1f}" height="{hgt:.1f}" fill="{f.colour[t]}">'
                   f'<title>{_e(n.night)} {_e(t)}: {v:,}</title></rect>')
    return out


def _night_strips(f: _Frame, n: Any, x: float) -> list[str]:
    """Under the plot: the outcome strip, quarantined / uncertain / unsent markers, the duration row."""
    oy = f.top + f.plot_h + 6
    out = [f'<rect x="{x:.1f}" y="{oy}" width="{f.bar:.1f}" height="8" fill="{OUTCOME_COLOURS.get(n.outcome, "#555")}">'
           f'<title>{_e(f"{n.night}: {n.outcome}")}</title></rect>']
    if n.quarantined:
        out.append(f'<circle cx="{x + f.bar / 2:.1f}" cy="{oy + 18}" r="3" fill="#ef6c00"><title>{_e(n.night)}: '
                   f'{n.quarantined:,} quarantined</title></circle>')
    if n.uncertain or n.unsent:
        out.append(f'<circle cx="{x + f.bar / 2:.1f}" cy="{oy + 28}" r="3" fill="#c62828"><title>{_e(n.night)}: '
                   f'{n.uncertain:,} uncertain, {n.unsent:,} unsent</title></circle>')
    if n.duration_s is not None:
        dh = 50 * (n.duration_s / f.duration_max)
        fy = oy + 90 - 50 * ((n.floor_s or 0) / f.duration_max)
        out.append(f'<rect x="{x:.1f}" y="{oy + 90 - dh:.1f}" width="{f.bar:.1f}" height="{dh:.1f}" fill="#8c959f">'
                   f'<title>{_e(n.night)}: took {_seconds(n.duration_s)}, budget floor {_seconds(n.floor_s)}</title></rect>'
                   f'<line x1="{x - 1:.1f}" x2="{x + f.bar + 1:.1f}" y1="{fy:.1f}" y2="{fy:.1f}" stroke="#c62828" stroke-width="2"/>')
    return out


def _members_line(points: list[tuple[float, float]]) -> list[str]:
    out = []
    if len(points) > 1:
        out.append('<polyline fill="none" stroke="#1f2328" stroke-width="1.5" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
    for x, y in points:
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#1f2328"/>')
    return out


def _strip_labels(f: _Frame) -> list[str]:
    oy = f.top + f.plot_h + 6
    return [f'<text x="{f.left - 4}" y="{y}" font-size="10" text-anchor="end" fill="#57606a">{label}</text>'
            for label, y in (("outcome", oy + 7), ("quarantined", oy + 21), ("uncertain/unsent", oy + 31),
                             ("duration | floor", oy + 70))]


def _chart_legend(f: _Frame) -> str:
    legend = "".join(f'<span><i style="background:{f.colour[t]}"></i>{_e(t)}</span>' for t in f.types)
    legend += "".join(f'<span><i style="background:{c}"></i>{o}</span>' for o, c in OUTCOME_COLOURS.items() if o != "dry run")
    legend += '<span><i style="background:#8c959f"></i>duration</span><span><i style="background:#c62828;height:2px"></i>budget floor</span>'
    return f'<div class="legend">{legend}</div>'


def history_page(h: dict[str, Any]) -> str:
    p = h["program"]
    nights = h["nights"]
    types = sorted({t for n in nights for t in n.events_by_type})
    parts = [_history_header(h), _last_night(h), _live_section(h.get("live")), _needs_attention(nights), _missed_section(h),
             "<h2>Chart</h2>" + _chart(h), _nights_table(h, types),
             "<p class=\"sub\">events and members are summed over a night's runs (each report counts its own run's "
             "work); outcome, quarantined, uncertain and unsent come from the night's latest report. Duration is "
             "the latest run's wall time; the budget floor is max(members / users per minute, events / events per "
             "minute), what MoEngage's rate limits allow at best.</p>"]
    return _page(f"MoEngage sync {p.id}", "".join(parts))


def _live_section(live: dict[str, Any] | None) -> str:
    """The live lane: its lag now, today's events sent live and their latency (docs/live.md)."""
    if live is None:
        return ""
    late = live["lag_seconds"] > live["alert_seconds"]
    lat = live["latency"]
    return (f'<h2>Live lane</h2><div class="head {"bad" if late else "ok"}" data-k="live">'
            f'Lag now <b data-k="live_lag">{_seconds(live["lag_seconds"])}</b> (age of the oldest live event not sent'
            f'); today ({live["day"]}) <b data-k="live_events">{_n(live["events_sent"])}</b> events sent live in '
            f'{_n(live["runs"])} run{"" if live["runs"] == 1 else "s"} of <code>{_e(live["dag_id"])}</code>; from event to MoEngage: p50 '
            f'{_e(lat[0.5] or "-")}, p95 {_e(lat[0.95] or "-")}, max {_e(lat[1.0] or "-")}.</div>')


def _history_header(h: dict[str, Any]) -> str:
    p, tz = h["program"], h["program"].time_zone
    return (f"<h1>MoEngage sync: {_e(p.name)}</h1>"
            f'<div class="sub">DAG <code>{_e(p.dag_id)}</code>, nights in {_e(tz)} (each runs at 00:00 {_e(tz)} for the '
            f"day that just ended); last {len(h['nights'])} nights, {h['first']} to {h['newest']}. Budget "
            f"{h['users_per_minute']:,.0f} users/min, {h['events_per_minute']:,.0f} events/min ({_e(h['budget_source'])}).</div>")


def _last_night(h: dict[str, Any]) -> str:
    """The headline: how the newest night went, or nothing when there is no night."""
    if not h["nights"]:
        return ""
    last, tz = h["nights"][0], h["program"].time_zone
    ok = last.outcome == "success"
    if last.missed:
        verdict = "has not run"
    elif ok:
        verdict = (f"went out completely: {_n(last.total('events_sent'))} events sent, "
                   f"{_n(last.total('members_updated'))} members updated, nothing unsent, nothing uncertain "
                   f"(no possible duplicate){' , ' + _n(last.total('events_already_sent')) + ' skipped as already sent' if last.total('events_already_sent') else ''}")
    else:
        verdict = (f"is <b>{_e(last.outcome)}</b>: {_n(last.total('events_sent'))} events sent, {_n(last.unsent)} batches "
                   f"unsent, {_n(last.uncertain)} uncertain (answers lost that receipts could not settle) — open the "
                   "night's run for what to do")
    return (f'<div class="head {"ok" if ok else "bad"}" data-k="headline" data-night="{last.night}">'
            f"Last night, <b>{last.night}</b> ({_e(tz)}): {_badge(last.outcome)} {verdict}.</div>")


def _needs_attention(nights: list[Any]) -> str:
    """What the newest report lists as needing attention (it covers earlier nights too)."""
    latest_with = next((n for n in nights if not n.missed), None)
    if latest_with is None or not latest_with.latest["needs_attention"]:
        return ""
    items = "".join(f"<li>night {_e(a['night'])}: {_n(a['batches'])} batch(es) {_e(a['state'])} "
                    f"({_n(a['events'])} events, {_n(a['users'])} members)</li>"
                    for a in latest_with.latest["needs_attention"])
    return (f'<div class="head bad" data-k="needs_attention"><b>Needs attention</b> (from the report of '
            f"{latest_with.night}):<ul>{items}</ul></div>")


def _missed_section(h: dict[str, Any]) -> str:
    if not h["missed"]:
        return ""
    cmds = "".join(f"<li>{a} to {b}: <pre>{_e(cmd)}</pre></li>" for a, b, cmd in h["backfill_ranges"])
    beyond = ""
    if h["missed_beyond_retention"]:
        beyond = (f"<p>{len(h['missed_beyond_retention'])} missed night(s) are older than the audit retention "
                  f"({h['program'].audit_retention_days} days, before {h['retention_floor']}): the record of what was sent is "
                  "gone, so the sync refuses them.</p>")
    return (f'<h2>Missed nights: <span class="warn" data-k="missed_count">{len(h["missed"])}</span></h2>'
            f"<p>No run report for these nights. Backfill them (nights already sent are safe to include):</p>"
            + (f"<pre data-k=\"backfill_all\">{_e(h['backfill_all'])}</pre>" if h["backfill_all"] else "")
            + (f"<details><summary>by range</summary><ul>{cmds}</ul></details>" if len(h["backfill_ranges"]) > 1 else "")
            + beyond)


def _nights_table(h: dict[str, Any], types: list[str]) -> str:
    p = h["program"]
    head = "".join(f'<th title="{_e(t)}">{_e(t.removeprefix("loyalty_"))}</th>' for t in types)
    rows = []
    for n in h["nights"]:
        if n.missed:
            rows.append(f'<tr class="missed" data-night="{n.night}"><td class="l">{n.night}</td><td class="l">{_badge("missed")}</td>'
                        f'<td colspan="{len(types) + 9}" class="l">no run report</td></tr>')
            continue
        r = n.latest
        run = h["runs"].get(r["run_id"])
        cells = "".join(f'<td data-k="events:{_e(t)}">{_n(n.events_by_type.get(t, 0))}</td>' for t in types)
        rows.append(
            f'<tr data-night="{n.night}"><td class="l">{n.night}</td><td class="l">{_badge(n.outcome)}</td>'
            f'<td data-k="events_sent">{_n(n.total("events_sent"))}</td>{cells}'
            f'<td data-k="events_already_sent">{_n(n.total("events_already_sent"))}</td>'
            f'<td data-k="members_updated">{_n(n.total("members_updated"))}</td>'
            f'<td data-k="quarantined">{_n(n.quarantined)}</td><td data-k="uncertain">{_n(n.uncertain)}</td>'
            f'<td data-k="unsent">{_n(n.unsent)}</td>'
            f'<td data-k="duration">{_seconds(n.duration_s)}</td><td data-k="floor">{_seconds(n.floor_s)}</td>'
            f'<td data-k="runs">{len(n.reports)}</td>'
            f'<td class="l">{_e(local(r["reported_at"], p.time_zone))}{" · " + _e(run["state"]) if run else ""}</td></tr>')
    return ("<h2>Nights</h2><table data-k=\"history\"><tr><th class=\"l\">night</th><th class=\"l\">outcome</th>"
            f"<th>events sent</th>{head}<th>already sent</th><th>members updated</th><th>quarantined</th>"
            "<th>uncertain</th><th>unsent batches</th><th>duration</th><th>budget floor</th><th>runs</th>"
            f"<th class=\"l\">reported ({_e(p.time_zone)})</th></tr>" + "".join(rows) + "</table>")


# ---- the DAG run tab --------------------------------------------------------------------------

def _kv_table(name: str, data: dict[str, Any], key_label: str, value_label: str) -> str:
    if not data:
        return f'<p data-k="{name}">none</p>'
    rows = "".join(f'<tr><td class="l">{_e(k)}</td><td data-k="{name}:{_e(k)}">{_n(v)}</td></tr>' for k, v in data.items())
    return f'<table data-k="{name}"><tr><th class="l">{_e(key_label)}</th><th>{_e(value_label)}</th></tr>{rows}</table>'


def run_page(d: dict[str, Any]) -> str:
    p = d["program"]
    header = _run_header(d)
    if d["dry_run"] is not None:
        return _page(f"MoEngage sync {p.id} dry run", header + _dry_run_section(d["dry_run"]))
    r = d["report"]
    if r is None:
        return _page(f"MoEngage sync {p.id}", header + '<div class="head">No run report yet: the report task '
                                                      "writes it when the run ends.</div>")
    parts = [header, _report_headline(r, p.time_zone),
             "<h2>Events by type</h2>" + _kv_table("events_by_type", r["events_by_type"], "event", "enqueued by this run"),
             _batches_table(r, d.get("batches_now", {})), _quarantine_section(r, d), _attributes_section(r, d),
             _settled_section(d), _uncertain_section(d), _requests_section(r)]
    if r["notes"]:
        parts.append("<h2>Notes</h2><ul data-k=\"notes\">" + "".join(f"<li>{_e(n)}</li>" for n in r["notes"]) + "</ul>")
    return _page(f"MoEngage sync {p.id} night {d['night']}", "".join(parts))


def _run_header(d: dict[str, Any]) -> str:
    """The title, the Airflow run's type, state and times, and its note."""
    p, tz = d["program"], d["program"].time_zone
    a = d["airflow"] or {}
    out = (f"<h1>MoEngage sync: {_e(p.name)}, night {_e(d['night'] or '?')}</h1>"
           f'<div class="sub">run <code>{_e(d["run_id"])}</code>'
           + (f", {_e(a['run_type'])}, {_e(a['state'])}, started {_e(local(a['start_date'], tz))}"
              f"{', ended ' + _e(local(a['end_date'], tz)) if a.get('end_date') else ''}" if a else "")
           + f"; times in {_e(tz)}</div>")
    if a.get("note"):
        out += f'<div class="sub">note: <span data-k="note">{_e(a["note"])}</span></div>'
    return out


def _report_headline(r: dict[str, Any], tz: str) -> str:
    ok = r["outcome"] == "success"
    return (f'<div class="head {"ok" if ok else "bad"}">{_badge(r["outcome"])} '
            f'events sent <b data-k="events_sent">{_n(r["events_sent"])}</b> '
            f'(enqueued <span data-k="events_enqueued">{_n(r["events_enqueued"])}</span>, skipped as already sent '
            f'<span data-k="events_already_sent">{_n(r["events_already_sent"])}</span>'
            + (f', of earlier nights <span data-k="events_sent_other_nights">{_n(r["events_sent_other_nights"])}</span>'
               if r.get("events_sent_other_nights") else "")
            + f'), members updated <b data-k="members_updated">{_n(r["members_updated"])}</b> of '
            f'<span data-k="members_extracted">{_n(r["members_extracted"])}</span> extracted, uncertain batches '
            f'<b data-k="uncertain_batches">{_n(r["uncertain_batches"])}</b>. Reported '
            f'{_e(local(datetime_of(r["reported_at"]), tz))}.</div>')


def _batches_table(r: dict[str, Any], now: dict[str, int]) -> str:
    """The night's batches by state, at the report and now (a resend or resolve moves them)."""
    states = sorted(set(r["batches_by_state"]) | set(now))
    rows = "".join(f'<tr><td class="l">{_e(s)}</td><td data-k="batches_by_state:{_e(s)}">{_n(r["batches_by_state"].get(s, 0))}</td>'
                   f'<td data-k="batches_now:{_e(s)}">{_n(now.get(s, 0))}</td></tr>' for s in states)
    return ('<h2>Batches of the night by state</h2><table data-k="batches_by_state"><tr><th class="l">state</th>'
            f"<th>at the report</th><th>now</th></tr>{rows}</table>")


def _quarantine_section(r: dict[str, Any], d: dict[str, Any]) -> str:
    q = r["quarantined_by_reason"]
    out = f'<h2>Quarantined rows by reason: <span data-k="quarantined">{_n(sum(q.values()))}</span></h2>'
    if not q:
        return out + "<p>none</p>"
    rows = []
    for reason, n in q.items():
        samples = "".join(f"<li><code>{_e(s['row_key'] or '')}</code> {_e(s['detail'] or s['template'])}</li>"
                          for s in d.get("quarantine_samples", {}).get(reason, []))
        rows.append(f'<tr><td class="l">{_e(reason)}</td><td data-k="quarantined_by_reason:{_e(reason)}">{_n(n)}</td>'
                    f'<td class="l"><ul style="margin:0;padding-left:16px">{samples}</ul></td></tr>')
    return (out + '<table data-k="quarantined_by_reason"><tr><th class="l">reason</th><th>rows</th><th class="l">sample rows</th></tr>'
            + "".join(rows) + "</table>"
            + f"<p class=\"sub\">All rows: <code>SELECT template, reason, row_data->>'_reason' FROM moengage_sync.quarantine "
              f"WHERE program_id = '{_e(d['program'].id)}' AND night = '{_e(d['night'])}'</code></p>")


def _attributes_section(r: dict[str, Any], d: dict[str, Any]) -> str:
    """Whether the attribute refresh ran, and the values left out of what was sent."""
    left_out = {k: v for k, v in r["quarantined_by_reason"].items() if k.endswith("(attribute left out)")}
    why = d.get("plan", {}).get("skip_reason") or next(
        (n.split(": ", 1)[1] for n in r["notes"] if n.startswith("attribute refresh skipped: ")), None)
    return ("<h2>Attributes skipped</h2>"
            + (f'<p data-k="attributes_skipped">The attribute refresh was skipped: {_e(why or "see the notes")}. '
               "This night's events were still sent.</p>" if r["attributes_skipped"]
               else '<p data-k="attributes_skipped">The attribute refresh ran (members updated above).</p>')
            + (f"<p>Values left out of member or event elements (the rest was sent): "
               + ", ".join(f"{_e(k)} {_n(v)}" for k, v in left_out.items()) + "</p>" if left_out else ""))


def _settled_section(d: dict[str, Any]) -> str:
    """The night's lost answers that settled themselves, without a person."""
    settled = d.get("settled") or {}
    if not settled:
        return ""
    what = {"receipt": "events batch(es) whose answer was lost: their receipts were seen in MoEngage, so they "
                       "count as sent",
            "absence": "events batch(es) whose answer was lost: their receipts stayed absent, so MoEngage had not "
                       "applied them and they were sent again",
            "resend": "users batch(es) whose answer was lost: sent again (attributes are last-write-wins)",
            "operator": "batch(es) settled by a person (resend or resolve)"}
    items = "".join(f'<li><b data-k="settled_{_e(by)}">{_n(n)}</b> {what.get(by, _e(by))}'
                    + (f" ({_n(e)} events)" if e else "") + "</li>" for by, (n, e) in sorted(settled.items()))
    return f'<h2>Lost answers, settled</h2><ul data-k="settled">{items}</ul>'


def _uncertain_section(d: dict[str, Any]) -> str:
    """Batches of any night whose outcome is unknown, with the commands that settle them."""
    p, tz = d["program"], d["program"].time_zone
    unc = d.get("uncertain", [])
    out = f'<h2>Uncertain batches (any night): <span data-k="uncertain_now">{len(unc)}</span></h2>'
    if not unc:
        return out + "<p>none: no batch of any night has an unknown outcome.</p>"
    rows = "".join(f'<tr><td>{b["batch_id"]}</td><td class="l">{b["night"]}</td><td class="l">{_e(b["kind"])}</td>'
                   f'<td>{_n(b["events"])}</td><td>{_n(b["users"])}</td><td>{b["attempts"]}</td>'
                   f'<td>{_e(b["http_status"] or "")}</td><td class="l">{_e(b["error"] or "")}</td>'
                   f'<td class="l">{_e(local(b["updated_at"], tz))}</td></tr>' for b in unc)
    cmds = "".join(f"<li>night {n}: if MoEngage is missing them<pre>{_e(c['resend'])}</pre>if they arrived"
                   f"<pre>{_e(c['resolve'])}</pre></li>"
                   for n, c in ((n, resolve_commands(p.id, n)) for n in sorted({b['night'] for b in unc})))
    return (out + '<table data-k="uncertain"><tr><th>batch</th><th class="l">night</th><th class="l">kind</th><th>events</th>'
            '<th>members</th><th>attempts</th><th>HTTP</th><th class="l">error</th><th class="l">updated</th></tr>'
            f"{rows}</table><p>Their answers were lost and their receipts could not settle them (the error "
            "column says what was seen), so MoEngage may or may not have these. Check the night's events in "
            f"MoEngage, then:</p><ul>{cmds}</ul>")


def _requests_section(r: dict[str, Any]) -> str:
    return ("<h2>Requests</h2>"
            f'<p>requests <span data-k="requests">{_n(r["requests"])}</span>, 429s <span data-k="throttled">{_n(r["throttled"])}</span>, '
            f'retries <span data-k="retries">{_n(r["retries"])}</span>, bytes sent <span data-k="bytes_sent">{_n(r["bytes_sent"])}</span>; '
            "seconds by stage: " + ", ".join(f"{_e(k)} {v:.2f}" for k, v in r["stage_seconds"].items()) + "</p>")


def datetime_of(value: Any) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _dry_run_section(s: dict[str, Any]) -> str:
    parts = [f'<div class="head">{_badge("dry run")} nothing was enqueued or sent and no event key was consumed. '
             f'It would send <b data-k="events">{_n(s["events"])}</b> events and <b data-k="members">{_n(s["members"])}</b> '
             f'member updates in <b data-k="requests">{_n(s["requests"])}</b> requests ({_n(s["bytes"])} bytes), '
             f'<b data-k="minutes_at_budget">{s["minutes_at_budget"]:.2f}</b> minutes at the workspace budget '
             f'({s["users_per_minute"]:,.0f} users/min, {s["events_per_minute"]:,.0f} events/min, {_e(s["budget_source"])}).'
             f' {_n(s["events_already_sent"])} events were already sent by earlier runs.</div>']
    if s.get("customer_lookups"):
        parts.append(f"<p>{_n(s['customer_lookups'])} customers were looked up with the Get User API; the answers are "
                     "cached, so the real run spends none of that budget again.</p>")
    if not s["attributes_refresh"]:
        parts.append(f"<p>Attribute refresh: skipped ({_e(s['attributes_skip_reason'])}).</p>")
    parts.append("<h2>Events by type</h2>" + _kv_table("events_by_type", s["events_by_type"], "event", "would be sent"))
    parts.append(f'<h2>Would be quarantined, by reason: <span data-k="quarantined">{_n(s["quarantined"])}</span></h2>'
                 + _kv_table("quarantined_by_reason", s["quarantined_by_reason"], "reason", "rows"))
    parts.append("<h2>Sample payloads</h2>")
    for name, items in s["samples"].items():
        parts.append(f"<h3 style=\"font-size:14px\">{_e(name)}</h3>"
                     + "".join(f"<pre>{_e(orjson.dumps(i).decode())}</pre>" for i in items))
    return "".join(parts)


def error_page(title: str, message: str) -> str:
    return _page(title, f"<h1>{_e(title)}</h1><p>{_e(message)}</p>")


__all__ = ["history_page", "run_page", "error_page"]
