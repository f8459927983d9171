"""A night run by hand (``loyalty-moengage run`` / ``plan``): a line per task on the terminal as it
ends, Airflow's own records in a log file.

``dag.test()`` runs every task in this process, and Airflow's logging writes each record to this
process's standard output: the root logger's handler through the stream it was configured with,
structlog's writers through the one they were first given. Rebinding ``sys.stdout`` would miss
some, so for the run file descriptors 1 and 2 point at a pipe, and so do ``sys.stdout``,
``sys.stderr`` and the root logger's stream handlers; a thread passes every line through
Airflow's secrets maskers into ``$AIRFLOW_HOME/logs/by-hand/<program>-<night>-<UTC time>.log``.
The terminal keeps a duplicate of its descriptor for the task lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, TextIO

#: Under ``$AIRFLOW_HOME``: where the by-hand runs' Airflow records go.
LOG_FOLDER = Path("logs") / "by-hand"
#: Seconds the copier may take to drain the pipe once the run is over (a child process that
#: inherited the pipe and outlives the run would otherwise hold it open for ever).
DRAIN_SECONDS = 10.0


def log_path(program_id: str, night: date, *, now: datetime | None = None) -> Path:
    """``$AIRFLOW_HOME/logs/by-hand/<program>-<night>-<UTC timestamp>.log``: one file per run, never reused."""
    from loyalty_moengage.paths import state_dir

    home = Path(os.environ.get("AIRFLOW_HOME") or state_dir() / "airflow")
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = home / LOG_FOLDER / f"{program_id}-{night.isoformat()}-{stamp}.log"
    again = 1
    while path.exists():   # a second run in the same second
        again += 1
        path = path.with_name(f"{program_id}-{night.isoformat()}-{stamp}-{again}.log")
    return path


def redact(text: str) -> str:
    """``text`` through Airflow's secrets maskers: the SDK's (which ``mask_secret`` and the
    connections a task reads fill) and the core's; what a task log would hide, the file hides."""
    from airflow._shared.secrets_masker import redact as core_redact
    from airflow.sdk._shared.secrets_masker import redact as sdk_redact

    return str(core_redact(sdk_redact(text)))


@dataclass(frozen=True)
class TaskLine:
    """One task try as it ended: what the terminal shows of the night's progress."""

    task_id: str
    map_index: int
    state: str
    seconds: float | None = None
    rendered: str | None = None

    def __str__(self) -> str:
        label = self.task_id + (f"[{self.map_index}]" if self.map_index >= 0 else "")
        if self.rendered:
            label += f" ({self.rendered})"
        took = "" if self.seconds is None else f"{self.seconds:8.1f} s"
        return f"  {label:<34} {self.state:<16}{took}".rstrip()


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


@contextmanager
def task_lines(say: Callable[[TaskLine], None]) -> Iterator[None]:
    """Call ``say`` as each task ``dag.test()`` runs ends (a retry is a try of its own).

    ``dag.test()`` runs a task through its module's ``_run_task``, which returns when the task
    has ended with the task instance in its final state: the one place that knows both. An
    Airflow without it gets no line as tasks end, only ``never_ran``'s lines at the end."""
    import airflow.sdk.definitions.dag as dag_module

    run_task = getattr(dag_module, "_run_task", None)
    if run_task is None:
        yield
        return

    def timed(*, ti: Any, task: Any, run_triggerer: bool = False) -> Any:
        started = time.perf_counter()
        result = run_task(ti=ti, task=task, run_triggerer=run_triggerer)
        rendered = getattr(getattr(result, "ti", None), "rendered_map_index", None)
        say(TaskLine(task_id=ti.task_id, map_index=ti.map_index, state=_state(ti.state),
                     seconds=time.perf_counter() - started, rendered=rendered))
        return result

    dag_module._run_task = timed
    try:
        yield
    finally:
        dag_module._run_task = run_task


def never_ran(dag_run: Any, said: set[tuple[str, int]]) -> list[TaskLine]:
    """The run's tasks no line was said for (upstream failed, skipped), in the DAG's order."""
    tis = sorted(dag_run.get_task_instances(), key=lambda ti: (ti.priority_weight * -1, ti.task_id, ti.map_index))
    return [TaskLine(task_id=ti.task_id, map_index=ti.map_index, state=_state(ti.state) if ti.state else "not run")
            for ti in tis if (ti.task_id, ti.map_index) not in said]


@contextmanager
def airflow_output_to(path: Path, terminal: TextIO) -> Iterator[TextIO]:
    """For the block, everything this process writes to stdout or stderr goes, masked, into
    ``path``; the block gets a stream to where ``terminal`` (stdout or stderr) wrote before it.

    What can fail (the maskers' imports, the file) fails here, before anything is redirected.
    The stream the block's writers were given stays open after it: Airflow's structlog loggers
    keep the stream they were first used with, and it then writes to descriptor 1 again."""
    redact("")
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("a", encoding="utf-8")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    terminal, own_terminal = _terminal(terminal)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    read_end, write_end = os.pipe()
    copier = threading.Thread(target=_copy_masked, args=(read_end, log), name="by-hand log", daemon=True)
    copier.start()
    streams = sys.stdout, sys.stderr
    # Airflow's root handler is a plain StreamHandler; subclasses (files, a test's capture) keep their streams.
    handlers = [(h, h.stream) for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    into_pipe = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stdout = sys.stderr = into_pipe
    for handler, before in handlers:
        with suppress(OSError, ValueError):   # a stream closed under its handler (a finished capture)
            before.flush()
        handler.stream = into_pipe
    try:
        yield terminal
    finally:
        try:
            with suppress(OSError, ValueError):
                into_pipe.flush()
            for handler, stream in handlers:
                handler.stream = stream
        finally:
            sys.stdout, sys.stderr = streams
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            copier.join(DRAIN_SECONDS)
            if own_terminal:
                terminal.close()


def _terminal(stream: TextIO) -> tuple[TextIO, bool]:
    """A stream to where ``stream`` writes that survives descriptors 1 and 2 being repointed,
    and whether it is ours to close (``stream`` itself when it is neither: a test's capture)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream, False
    if fd not in (1, 2):
        return stream, False
    return open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                errors="backslashreplace"), True


def _copy_masked(read_end: int, log: TextIO) -> None:
    """Drain the pipe into ``log`` until the run closes it, whatever happens to a line: a copier
    that stopped would leave the run writing into a pipe nobody reads."""
    with open(read_end, "rb") as pipe, log:
        for raw in pipe:
            try:
                text = redact(raw.decode("utf-8", "backslashreplace"))
            except Exception:  # noqa: BLE001 - an unmasked line is never written
                text = "[a line withheld: masking it failed]\n"
            with suppress(OSError, ValueError):
                log.write(text)
                log.flush()


@dataclass(frozen=True)
class ByHandRun:
    """A night run by hand: its DagRun, and the file holding Airflow's records (None when verbose)."""

    dag_run: Any
    log: Path | None


def run_night(program: Any, night: date, *, conf: dict[str, Any] | None, verbose: bool,
              terminal: TextIO | None = None) -> ByHandRun:
    """Run ``program``'s night in-process; quiet unless ``verbose`` (which is Airflow's own output).
    The task lines go to ``terminal`` (default: stdout)."""
    from loyalty_moengage.sync.ops import runner

    if verbose:
        return ByHandRun(dag_run=runner.run_night(program.id, night, program.time_zone, conf=conf), log=None)
    path = log_path(program.id, night)
    said: set[tuple[str, int]] = set()
    with airflow_output_to(path, terminal or sys.stdout) as out:
        print(f"{program.dag_id}: night {night} in-process (dag.test); a line per task as it ends", file=out,
              flush=True)

        def say(line: TaskLine) -> None:
            said.add((line.task_id, line.map_index))
            print(redact(str(line)), file=out, flush=True)

        with task_lines(say):
            dag_run = runner.run_night(program.id, night, program.time_zone, conf=conf)
        for line in never_ran(dag_run, said):
            print(redact(str(line)), file=out, flush=True)
    return ByHandRun(dag_run=dag_run, log=path)


def say_log(run: ByHandRun, stream: TextIO | None = None) -> None:
    """The last line of a quiet run: where Airflow's records of it are."""
    if run.log is not None:
        print(f"Airflow's log of this run: {run.log}", file=stream or sys.stdout)
