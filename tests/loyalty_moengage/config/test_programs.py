"""The programs file: defaults, strict types, and errors that name the file, the program and the key."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from loyalty_moengage.config.programs import Program, ProgramsFileError, get_program, load_programs
from loyalty_moengage.paths import include_dir


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "programs.yaml"
    path.write_text(text)
    return path


def one(tmp_path: Path, extra: str = "", defaults: str = "") -> Program:
    head = f"defaults:\n{defaults}" if defaults else ""
    return load_programs(write(tmp_path, head + "programs:\n  - id: p1\n    time_zone: Asia/Kolkata\n" + extra))[0]


def error_of(tmp_path: Path, extra: str = "", defaults: str = "") -> str:
    with pytest.raises(ProgramsFileError) as info:
        one(tmp_path, extra, defaults)
    return str(info.value)


def test_the_shipped_file_loads():
    programs = load_programs(include_dir() / "programs.yaml")
    assert [p.id for p in programs] == ["demo"]
    demo = programs[0]
    assert (demo.dag_id, demo.state_conn, demo.start) == ("moengage_sync_demo", "loyalty_db", date(2026, 1, 1))


def test_defaults_of_a_program_that_sets_nothing(tmp_path):
    p = one(tmp_path)
    assert p.name == "p1" and p.enabled and not p.catchup
    assert (p.loyalty_conn_id, p.moengage_conn_id, p.state_conn_id, p.state_conn) == (
        "loyalty_db", "moengage_default", None, "loyalty_db")
    assert (p.retries, p.retry_delay_seconds, p.chunk_members, p.load_parallelism) == (2, 120, 50_000, 2)
    assert (p.reject_threshold, p.uncertain_policy, p.min_members, p.max_event_drop_pct) == (0.01, "hold", 1, 80.0)
    assert (p.anomaly_lookback_nights, p.audit_retention_days, p.keep_sent_bodies, p.verify_customers) == (
        7, 30, False, True)
    assert (p.alert_email, p.alert_slack_conn_id, p.start_date, p.start) == ([], None, "2026-01-01", date(2026, 1, 1))


def test_program_keys_override_defaults(tmp_path):
    p = one(tmp_path, "    retries: 5\n    state_conn_id: state_db\n", defaults="  retries: 1\n  load_parallelism: 3\n")
    assert (p.retries, p.load_parallelism, p.state_conn) == (5, 3, "state_db")


def test_yaml_spellings_the_old_loader_accepted(tmp_path):
    path = write(tmp_path, "programs:\n  - id: 42\n    time_zone: UTC\n    start_date: 2026-02-03\n"
                           "    alert_email: ops@example.com\n    max_event_drop_pct: 50\n    reject_threshold: 0\n")
    p = load_programs(path)[0]
    assert (p.id, p.start_date, p.start, p.alert_email) == ("42", "2026-02-03", date(2026, 2, 3), ["ops@example.com"])
    assert p.max_event_drop_pct == 50.0 and isinstance(p.max_event_drop_pct, float) and p.reject_threshold == 0.0


@pytest.mark.parametrize("line, key", [
    ('    load_parallelism: "2"\n', "load_parallelism"),
    ('    retries: "two"\n', "retries"),
    ("    retries: 2.5\n", "retries"),
    ("    catchup: \"no\"\n", "catchup"),
    ('    reject_threshold: "0.1"\n', "reject_threshold"),
    ("    alert_email: [1]\n", "alert_email"),
    ("    chunk_members: true\n", "chunk_members"),
])
def test_wrong_types_name_the_file_program_and_key(tmp_path, line, key):
    message = error_of(tmp_path, line)
    assert message.startswith(f"{tmp_path / 'programs.yaml'}: program 'p1', key {key!r}: "), message
    assert "got" in message


def test_a_wrong_type_under_defaults_says_so(tmp_path):
    message = error_of(tmp_path, defaults='  retries: "two"\n')
    assert "program 'p1', key 'retries' (set under defaults): " in message and "'two'" in message


@pytest.mark.parametrize("line, key, words", [
    ("    time_zone: Mars/Olympus\n", "time_zone", "not an IANA time zone"),
    ("    uncertain_policy: maybe\n", "uncertain_policy", "must be one of hold, resend"),
    ("    chunk_members: 99\n", "chunk_members", "must be at least 100"),
    ("    load_parallelism: 65\n", "load_parallelism", "must be between 1 and 64"),
    ("    load_parallelism: 0\n", "load_parallelism", "must be between 1 and 64"),
    ("    reject_threshold: 1.5\n", "reject_threshold", "is a share between 0 and 1"),
    ("    start_date: yesterday\n", "start_date", "must be a date like 2026-01-01"),
    ("    late_row_lookback_nights: 8\n", "late_row_lookback_nights", "must be between 0 and 7 nights"),
    ("    late_row_lookback_nights: -1\n", "late_row_lookback_nights", "must be between 0 and 7 nights"),
])
def test_out_of_range_values(tmp_path, line, key, words):
    path = write(tmp_path, "programs:\n  - id: p1\n" + (line if key == "time_zone" else "    time_zone: UTC\n" + line))
    with pytest.raises(ProgramsFileError) as info:
        load_programs(path)
    assert str(info.value).startswith(f"{path}: program 'p1', key {key!r}: ")
    assert words in str(info.value)


def test_every_problem_is_listed_one_line_each(tmp_path):
    message = error_of(tmp_path, '    load_parallelism: "2"\n', defaults='  retries: "two"\n')
    lines = message.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{tmp_path / 'programs.yaml'}: program 'p1', key ") for line in lines)
    assert "'retries' (set under defaults)" in lines[0] and "'load_parallelism': " in lines[1]


def test_bad_id(tmp_path):
    path = write(tmp_path, "programs:\n  - id: Bad-Id\n    time_zone: UTC\n")
    with pytest.raises(ProgramsFileError, match="program 'Bad-Id', key 'id': use 1-40 lowercase"):
        load_programs(path)


def test_unknown_keys_are_refused_with_the_closest_valid_key(tmp_path):
    path = tmp_path / "programs.yaml"
    assert error_of(tmp_path, "    load_paralelism: 3\n") == (
        f"{path}: program 'p1': unknown key 'load_paralelism' (did you mean 'load_parallelism'?)")
    assert error_of(tmp_path, defaults="  retrys: 1\n") == f"{path}: defaults: unknown key 'retrys' (did you mean 'retries'?)"
    far = error_of(tmp_path, "    colour: red\n")
    assert far.startswith(f"{path}: program 'p1': unknown key 'colour' (valid keys: id, name, time_zone, ")
    assert "load_parallelism" in far
    with pytest.raises(Exception, match="Extra inputs"):
        Program(id="p1", time_zone="UTC", colour="red")


def test_a_misspelt_required_key_is_reported_as_missing_and_unknown(tmp_path):
    path = write(tmp_path, "programs:\n  - id: p1\n    time_zon: UTC\n")
    with pytest.raises(ProgramsFileError) as info:
        load_programs(path)
    assert str(info.value).splitlines() == [f"{path}: program 'p1': missing required key 'time_zone'",
                                            f"{path}: program 'p1': unknown key 'time_zon' (did you mean 'time_zone'?)"]


def test_a_program_without_id_is_named_by_position(tmp_path):
    path = write(tmp_path, "programs:\n  - {id: a, time_zone: UTC}\n  - time_zone: UTC\n")
    with pytest.raises(ProgramsFileError) as info:
        load_programs(path)
    assert str(info.value) == f"{path}: programs[1]: missing required key 'id'"


def test_a_non_string_key_is_unknown(tmp_path):
    assert f"{tmp_path / 'programs.yaml'}: program 'p1': unknown key '1' (valid keys: " in error_of(tmp_path, "    1: x\n")


def test_duplicate_ids_and_lookup(tmp_path):
    dup = write(tmp_path, "programs:\n  - {id: a, time_zone: UTC}\n  - {id: a, time_zone: UTC}\n")
    with pytest.raises(ProgramsFileError, match="program id 'a' appears twice"):
        load_programs(dup)
    two = write(tmp_path, "programs:\n  - {id: a, time_zone: UTC}\n  - {id: b, time_zone: UTC, enabled: false}\n")
    assert get_program("b", two).enabled is False
    with pytest.raises(ProgramsFileError, match="no program with id 'c'"):
        get_program("c", two)


def test_malformed_files_name_the_file(tmp_path):
    for text, words in (("programs: [", "not valid YAML"), ("- a\n- b\n", "expected a mapping"),
                        ("programs: {id: a}\n", "'programs' must be a list"),
                        ("programs:\n  - just-a-string\n", "programs[0]: expected a mapping")):
        path = write(tmp_path, text)
        with pytest.raises(ProgramsFileError) as info:
            load_programs(path)
        assert str(info.value).startswith(str(path)) and words in str(info.value)


def test_programs_are_immutable(tmp_path):
    p = one(tmp_path)
    with pytest.raises(Exception, match="frozen"):
        p.retries = 3  # type: ignore[misc]
    assert p == one(tmp_path)


def test_env_var_points_at_another_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LOYALTY_PROGRAMS_FILE", str(write(tmp_path, "programs:\n  - {id: other, time_zone: UTC}\n")))
    assert [p.id for p in load_programs()] == ["other"]


def test_import_stays_cheap_for_dag_parsing():
    code = ("import sys; import loyalty_moengage.config.programs; "
            "bad = [m for m in ('pandas', 'pyarrow', 'psycopg', 'requests', 'numpy') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_late_row_lookback_defaults_to_the_previous_night_and_takes_0_to_7(tmp_path):
    assert one(tmp_path).late_row_lookback_nights == 1
    assert one(tmp_path, "    late_row_lookback_nights: 0\n").late_row_lookback_nights == 0
    assert one(tmp_path, "    late_row_lookback_nights: 7\n").late_row_lookback_nights == 7
    assert "late_row_lookback_nights" in error_of(tmp_path, '    late_row_lookback_nights: "1"\n')


def test_presence_lifetime_defaults_to_a_week_and_takes_1_to_30_days(tmp_path):
    """A week: the Get User budget (1,000/min, 1.44M a day) cannot re-check a million active customers daily."""
    assert one(tmp_path).presence_lifetime_hours == 168
    assert one(tmp_path, "    presence_lifetime_hours: 24\n").presence_lifetime_hours == 24
    assert one(tmp_path, "    presence_lifetime_hours: 720\n").presence_lifetime_hours == 720
    assert one(tmp_path, defaults="  presence_lifetime_hours: 72\n").presence_lifetime_hours == 72
    too_short = error_of(tmp_path, "    presence_lifetime_hours: 23\n")
    assert "key 'presence_lifetime_hours': " in too_short and "greater than or equal to 24, got 23" in too_short
    assert "less than or equal to 720, got 721" in error_of(tmp_path, "    presence_lifetime_hours: 721\n")
    assert "presence_lifetime_hours" in error_of(tmp_path, '    presence_lifetime_hours: "168"\n')


def test_programs_on_one_workspace_must_share_a_state_database_for_receipts(tmp_path):
    """Their receipts take carriers per workspace through the state database: two databases cannot
    see each other's unsettled receipts, so program B could overwrite A's and A would resend."""
    head = "programs:\n  - id: a\n    time_zone: Asia/Kolkata\n  - id: b\n    time_zone: Asia/Kolkata\n"
    with pytest.raises(ProgramsFileError, match=r"programs a \(loyalty_db\), b \(other_state\).*one state_conn_id"):
        load_programs(write(tmp_path, head + "    state_conn_id: other_state\n"))
    own_attribute = head + "    state_conn_id: other_state\n    receipt_attribute: loyalty_receipt_b\n"
    assert [p.id for p in load_programs(write(tmp_path, own_attribute))] == ["a", "b"]
    assert [p.id for p in load_programs(write(tmp_path, head))] == ["a", "b"]     # one state database


def test_a_load_task_has_a_time_limit(tmp_path):
    assert one(tmp_path).load_timeout_minutes == 360
    assert "load_timeout_minutes" in error_of(tmp_path, "    load_timeout_minutes: 1\n")


def test_the_live_block_is_off_by_default_and_takes_the_night_s_share_when_on(tmp_path):
    off = one(tmp_path)
    assert not off.live.enabled and off.load_share == 1 / off.pool_slots
    on = one(tmp_path, "    load_parallelism: 4\n    live:\n      enabled: true\n      budget_share: 0.1\n")
    assert on.live.enabled and on.live.every_minutes == 1 and on.live_dag_id == "moengage_live_p1"
    assert on.load_share == pytest.approx(0.9 / 4)     # the night's 4 slots and the live lane: the whole budget


def test_a_misspelt_or_wrong_live_key_names_the_block(tmp_path):
    assert "unknown key 'live.every_minute' (did you mean 'every_minutes'?)" in error_of(
        tmp_path, "    live:\n      every_minute: 2\n")
    assert "live.budget_share" in error_of(tmp_path, "    live:\n      budget_share: 0.9\n")
