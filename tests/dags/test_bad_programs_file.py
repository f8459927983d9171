"""A bad programs file is one import error of the DAG file, carrying the ProgramsFileError message."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _import_errors(monkeypatch, tmp_path: Path, text: str) -> tuple[Path, dict[str, str], list[str]]:
    from airflow.dag_processing.dagbag import DagBag

    path = tmp_path / "programs.yaml"
    path.write_text(text)
    monkeypatch.setenv("LOYALTY_PROGRAMS_FILE", str(path))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    return path, bag.import_errors, list(bag.dag_ids)


def test_an_unknown_key_is_one_import_error_naming_file_program_key_and_fix(monkeypatch, tmp_path):
    path, errors, dag_ids = _import_errors(monkeypatch, tmp_path, (
        "programs:\n  - {id: good, time_zone: UTC}\n  - {id: p1, time_zone: UTC, load_paralelism: 3}\n"))
    assert list(errors) == [str(ROOT / "dags" / "moengage_sync.py")] and dag_ids == []
    [error] = errors.values()
    assert error.rstrip().endswith(
        f"ProgramsFileError: {path}: program 'p1': unknown key 'load_paralelism' (did you mean 'load_parallelism'?)"), error


@pytest.mark.parametrize("entry, line", [
    ('retries: "two"', "program 'p1', key 'retries': input should be a valid integer, got 'two'"),
    ("time_zone: Mars/Olympus", "program 'p1', key 'time_zone': 'Mars/Olympus' is not an IANA time zone"),
    ("load_parallelism: 65", "program 'p1', key 'load_parallelism': must be between 1 and 64"),
])
def test_wrong_values_are_one_import_error_with_the_message(monkeypatch, tmp_path, entry, line):
    zone = "" if entry.startswith("time_zone") else "time_zone: UTC, "
    path, errors, dag_ids = _import_errors(monkeypatch, tmp_path, f"programs:\n  - {{id: p1, {zone}{entry}}}\n")
    assert len(errors) == 1 and dag_ids == []
    assert f"ProgramsFileError: {path}: {line}" in next(iter(errors.values()))


def test_every_problem_of_the_file_is_in_the_one_error(monkeypatch, tmp_path):
    path, errors, _ = _import_errors(monkeypatch, tmp_path,
                                     'programs:\n  - {id: p1, time_zon: UTC, retries: "two"}\n')
    [error] = errors.values()
    assert (f"ProgramsFileError: {path}: program 'p1': missing required key 'time_zone'\n"
            f"{path}: program 'p1', key 'retries': input should be a valid integer, got 'two'\n"
            f"{path}: program 'p1': unknown key 'time_zon' (did you mean 'time_zone'?)") in error, error
