"""The "MoEngage sync" tabs on a real Airflow stack: access through Airflow's auth manager, and in a
real browser (Debian's chromium driven by Playwright), the numbers on the pages equal
``moengage_sync.run_reports``; screenshots go to docs/img/.

One stack for the module: a generated program, the scheduled run of its newest night (the two
nights before it are missed), then a dry run. The auth checks always run; the browser test is
skipped, saying why, when Chromium or Playwright is missing (``make test-ui`` installs both).
"""

from __future__ import annotations

import json
import os
import tempfile
import re
import shutil
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from loyalty_moengage_devtools.airflow_stack import airflow_stack
from loyalty_moengage_devtools.drills import program_env, scheduled_run, today_in

pytestmark = pytest.mark.scheduler

PROGRAM = "uitabs"
TZ = "Asia/Kolkata"
USERS = {"viewer": "viewer-password-1", "outsider": "outsider-password-1"}
ROOT = Path(__file__).resolve().parents[3]
# `make test-ui` keeps the screenshots for the README (LOYALTY_UI_SHOTS=docs/img); `make test` does not
# rewrite tracked files.
SHOTS = Path(os.environ.get("LOYALTY_UI_SHOTS") or tempfile.mkdtemp(prefix="lm-ui-shots-")).resolve()
UI = "/loyalty-moengage-ui"
# the program starts three nights ago: the newest night runs, the two before it show as missed
START = today_in(TZ) - timedelta(days=3)


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def ui_stack(pg_server, template_db, tmp_path_factory):
    from tests.conftest import _with_database

    name = f"lm_ui_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    dsn = _with_database(pg_server, name)
    work = tmp_path_factory.mktemp("ui")
    passwords = work / "passwords.json"
    passwords.write_text(json.dumps(USERS))
    auth_env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:viewer" for u in USERS),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__AUTH_MANAGER": "loyalty_moengage_devtools.auth_manager.DagScopedSimpleAuthManager",
        "LOYALTY_DEV_DENIED_DAGS": f"outsider=moengage_sync_{PROGRAM}",
    }
    try:
        with program_env(dsn, work, program_id=PROGRAM, time_zone=TZ, members=300, days=4, seed=11,
                         settings={"reject_threshold": 0.5, "start_date": START.isoformat(),
                                   "live": {"enabled": True, "lookback_minutes": 0}}) as env, \
                airflow_stack(pg_server, root=work / "airflow", env=auth_env, dag_ids=[env.dag_id]) as stack:
            # The first bulk request's answer is lost after MoEngage applied it: the night settles it itself.
            env.sandbox.set_faults(drop_after_body_rate=1.0, endpoints=("transition",), limit=1)
            first = scheduled_run(stack, env)
            env.sandbox.set_faults()
            dry_id = stack.trigger(env.dag_id, run_id=f"manual__dry_run_{uuid.uuid4().hex[:6]}", conf={"dry_run": True})
            runs = {r["run_id"]: r for r in stack.wait_runs(env.dag_id, timeout=240)}
            live = _one_live_run(dsn, env)
            yield {"env": env, "stack": stack, "dsn": dsn, "run": first, "dry_run_id": dry_id, "runs": runs,
                   "live": live}
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


LIVE_ROWS = 12


def _one_live_run(dsn: str, env) -> dict:
    """Purchases recorded after the night, sent by one live run (in-process): the tab's live section."""
    from loyalty_moengage.config.programs import get_program
    from loyalty_moengage.moengage.hook import MoEngageHook
    from loyalty_moengage.sync.live.run import LiveRun, run_live
    from loyalty_moengage_devtools.live_writer import commit_recent

    with psycopg.connect(dsn) as conn:
        # the live lane starts here: the generated history is the nights'
        conn.execute("INSERT INTO moengage_sync.live_watermark (program_id, read_to, run_id) "
                     "VALUES (%s, now() - interval '5 seconds', 'seed')", (PROGRAM,))
        members = [r[0] for r in conn.execute("SELECT member_id FROM loyalty.members WHERE program_id = %s AND "
                                              "relation_reference IS NOT NULL ORDER BY member_id LIMIT %s",
                                              (PROGRAM, LIVE_ROWS))]
    commit_recent(dsn, PROGRAM, members)
    program = get_program(PROGRAM)
    hook = MoEngageHook(moengage_conn_id=program.moengage_conn_id, share=1.0)
    return run_live(LiveRun.of(program, "manual__live_ui", 1, dsn, dsn), hook=hook, lookup=hook.existing_customers)


def _token(stack, user: str) -> str:
    r = httpx.post(f"{stack.api_url}/auth/token", json={"username": user, "password": USERS[user]}, timeout=20)
    assert r.status_code in (200, 201), r.text
    return r.json()["access_token"]


def _report(dsn: str, run_id: str) -> dict:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM moengage_sync.run_reports WHERE run_id = %s", (run_id,)).fetchone()


def test_runs_are_noted_with_night_and_outcome(ui_stack):
    stack, env = ui_stack["stack"], ui_stack["env"]
    run_id = ui_stack["run"]["run_id"]
    report = _report(ui_stack["dsn"], run_id)
    assert report is not None and ui_stack["runs"][run_id]["state"] == "success", stack.describe_runs(env.dag_id)
    notes = {r["run_id"]: r["content"] for r in stack.query(
        "SELECT d.run_id, n.content FROM dag_run d JOIN dag_run_note n ON n.dag_run_id = d.id WHERE d.dag_id = %s",
        (env.dag_id,))}
    q = sum(report["quarantined_by_reason"].values())
    assert notes[run_id] == (f"night {report['night']} ({TZ}): {report['events_sent']:,} events, "
                             f"{report['members_updated']:,} members, {q:,} quarantined, 0 uncertain: success")
    assert notes[ui_stack["dry_run_id"]].startswith(f"DRY RUN night {report['night']} ({TZ}): ")
    assert notes[ui_stack["dry_run_id"]].endswith("nothing sent")


def test_tabs_need_a_user_allowed_to_read_the_dag(ui_stack):
    stack, env = ui_stack["stack"], ui_stack["env"]
    run_id = ui_stack["run"]["run_id"]
    base = f"{stack.api_url}{UI}/dags/{env.dag_id}"
    paths = ["", "/history.json", f"/runs/{run_id}", f"/runs/{run_id}.json"]
    viewer = {"Authorization": f"Bearer {_token(stack, 'viewer')}"}
    outsider = {"Authorization": f"Bearer {_token(stack, 'outsider')}"}
    with httpx.Client(timeout=30) as http:
        for path in paths:
            assert http.get(base + path).status_code == 401, path                      # anonymous
            assert http.get(base + path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403, path
            assert http.get(base + path, cookies={"_token": "not-a-jwt"}).status_code == 403, path
            assert http.get(base + path, headers=outsider).status_code == 403, path   # may not read this DAG
            assert http.get(base + path, headers=viewer).status_code == 200, path
        # an unknown DAG id tells an anonymous caller nothing
        assert http.get(f"{stack.api_url}{UI}/dags/nope").status_code == 401
        assert http.get(f"{stack.api_url}{UI}/dags/nope", headers=viewer).status_code == 404
        # the views are registered for the DAG and the DAG run pages
        plugins = http.get(f"{stack.api_url}/api/v2/plugins", headers=viewer).json()["plugins"]
        views = [v for p in plugins for v in p.get("external_views", [])]
        assert {(v["destination"], v["href"]) for v in views if v["name"] == "MoEngage sync"} == {
            ("dag", f"{UI}/dags/{{DAG_ID}}"), ("dag_run", f"{UI}/dags/{{DAG_ID}}/runs/{{RUN_ID}}")}
        history = http.get(base + "/history.json", headers=viewer).json()
    report = _report(ui_stack["dsn"], run_id)
    newest = history["nights"][0]
    assert newest["night"] == report["night"].isoformat() and newest["outcome"] == "success"
    assert newest["events_sent"] == report["events_sent"] and newest["members_updated"] == report["members_updated"]
    assert set(env.nights[:-1]) <= {date.fromisoformat(d) for d in history["missed"]}
    live = history["live"]
    assert ui_stack["live"]["events_sent"] == LIVE_ROWS
    assert live["runs"] == 1 and live["events_sent"] == LIVE_ROWS and live["dag_id"] == f"moengage_live_{PROGRAM}"
    assert live["latency"]["0.5"] == "<= 15 s" and live["lag_seconds"] < 60


def _num(text: str) -> int:
    return int(re.sub(r"[^\d-]", "", text))


def test_tabs_in_a_real_browser(ui_stack):
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; `make test-ui` does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (`make test-ui` installs requirements-ui.txt)")
    stack, env, dsn = ui_stack["stack"], ui_stack["env"], ui_stack["dsn"]
    run_id, dry_id = ui_stack["run"]["run_id"], ui_stack["dry_run_id"]
    report = _report(dsn, run_id)
    night = report["night"].isoformat()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(30_000)
        # log in through Airflow's own login form
        page.goto(f"{stack.api_url}/auth/login")
        page.fill("input[name=username]", "viewer")
        page.fill("input[name=password]", USERS["viewer"])
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))
        assert any(c["name"] == "_token" for c in page.context.cookies())

        # the DAG's tab
        page.goto(f"{stack.api_url}/dags/{env.dag_id}/plugin/moengage-sync")
        frame = page.frame_locator("iframe[title='MoEngage sync']")
        row = frame.locator(f"tr[data-night='{night}']")
        row.locator("[data-k=events_sent]").wait_for()
        assert _num(row.locator("[data-k=events_sent]").inner_text()) == report["events_sent"]
        assert _num(row.locator("[data-k=members_updated]").inner_text()) == report["members_updated"]
        assert _num(row.locator("[data-k=quarantined]").inner_text()) == sum(report["quarantined_by_reason"].values())
        assert _num(row.locator("[data-k=uncertain]").inner_text()) == report["uncertain_batches"]
        assert row.locator("[data-k=outcome]").inner_text() == report["outcome"]
        for name, n in report["events_by_type"].items():
            assert _num(row.locator(f"[data-k='events:{name}']").inner_text()) == n, name
        for missed in env.nights[:-1]:
            assert frame.locator(f"tr[data-night='{missed}'] [data-k=outcome]").inner_text() == "missed"
        assert "airflow backfill create --dag-id " + env.dag_id in frame.locator("[data-k=backfill_all]").inner_text()
        assert frame.locator("svg[data-k=chart]").count() == 1
        assert _num(frame.locator("[data-k=live_events]").inner_text()) == LIVE_ROWS      # the live lane today
        page.wait_for_timeout(300)
        page.screenshot(path=str(SHOTS / "moengage-sync-dag-tab.png"), full_page=True)

        # the run's tab
        page.goto(f"{stack.api_url}/dags/{env.dag_id}/runs/{run_id}/plugin/moengage-sync-run")
        frame = page.frame_locator("iframe[title='MoEngage sync']")
        frame.locator("[data-k=events_sent]").wait_for()
        for key in ("events_sent", "events_enqueued", "events_already_sent", "members_updated", "members_extracted",
                    "uncertain_batches", "requests", "bytes_sent"):
            assert _num(frame.locator(f"[data-k={key}]").first.inner_text()) == report[key], key
        for state, n in report["batches_by_state"].items():
            assert _num(frame.locator(f"[data-k='batches_by_state:{state}']").inner_text()) == n, state
        for reason, n in report["quarantined_by_reason"].items():
            assert _num(frame.locator(f"[data-k=\"quarantined_by_reason:{reason}\"]").inner_text()) == n, reason
        assert frame.locator("[data-k=outcome]").first.inner_text() == "success"
        # The batch whose answer was lost settled itself: by its receipt (events) or a resend (users).
        with psycopg.connect(dsn) as conn:
            settled = dict(conn.execute("SELECT settled_by, count(*) FROM moengage_sync.batches WHERE night = %s "
                                        "AND settled_by IS NOT NULL GROUP BY 1", (report["night"],)).fetchall())
        assert settled and set(settled) <= {"receipt", "resend"}, settled
        for by, n in settled.items():
            assert _num(frame.locator(f"[data-k=settled_{by}]").inner_text()) == n, by
        assert _num(frame.locator("[data-k=uncertain_now]").inner_text()) == 0
        page.screenshot(path=str(SHOTS / "moengage-sync-run-tab.png"), full_page=True)

        # the dry run's tab
        with psycopg.connect(dsn) as conn:
            dry = conn.execute("SELECT stats FROM moengage_sync.dry_runs WHERE run_id = %s AND task_key = 'report'",
                               (dry_id,)).fetchone()[0]
        page.goto(f"{stack.api_url}/dags/{env.dag_id}/runs/{dry_id}/plugin/moengage-sync-run")
        frame = page.frame_locator("iframe[title='MoEngage sync']")
        frame.locator("[data-k=requests]").wait_for()
        assert _num(frame.locator("[data-k=events]").inner_text()) == dry["events"]
        assert _num(frame.locator("[data-k=requests]").inner_text()) == dry["requests"]
        page.screenshot(path=str(SHOTS / "moengage-sync-dry-run-tab.png"), full_page=True)

        # the run's own page shows its note: the night and its outcome
        page.goto(f"{stack.api_url}/dags/{env.dag_id}/runs/{run_id}")
        page.get_by_text(f"night {night} ({TZ}): ").first.wait_for()
        page.screenshot(path=str(SHOTS / "moengage-sync-run-note.png"), full_page=False)

        # the tabs' own content, whole (the iframe scrolls inside Airflow's page)
        for path, shot in ((f"/dags/{env.dag_id}", "moengage-sync-dag-tab-content.png"),
                           (f"/dags/{env.dag_id}/runs/{run_id}", "moengage-sync-run-tab-content.png")):
            page.goto(f"{stack.api_url}{UI}{path}")
            page.screenshot(path=str(SHOTS / shot), full_page=True)
        browser.close()
