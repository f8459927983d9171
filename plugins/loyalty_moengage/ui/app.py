"""The "MoEngage sync" tabs: a FastAPI app the plugin mounts on Airflow's API server.

Airflow applies no auth to plugin apps, so every route here depends on Airflow's own
``requires_access_dag`` (``airflow.api_fastapi.core_api.security``): the user comes from the
API server's JWT (the UI's ``_token`` cookie, which the iframe sends, or an
``Authorization: Bearer`` header), and the configured auth manager decides whether that user
may read this DAG (``GET`` on the DAG; on its runs for the run tab). No token: 401; an invalid
token: 403; a user the auth manager refuses for the DAG: 403. The check runs before the program
is looked up, so an unknown DAG id tells an anonymous caller nothing.

Routes (under the plugin's prefix ``/loyalty-moengage-ui``):
``/dags/{dag_id}`` and ``/dags/{dag_id}/runs/{run_id}`` (HTML, the tabs),
``/dags/{dag_id}/history.json`` and ``/dags/{dag_id}/runs/{run_id}.json`` (the same data).
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse

log = logging.getLogger(__name__)


def _read_dag():
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET"))


def _read_runs():
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", DagAccessEntity.RUN))


def _program(dag_id: str) -> Any:
    from loyalty_moengage.ui.data import program_for_dag

    program = program_for_dag(dag_id)
    if program is None:
        raise HTTPException(404, f"{dag_id} is not a MoEngage sync DAG of the programs file")
    return program


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.id
    return value


def _history_json(h: dict[str, Any]) -> dict[str, Any]:
    nights = [{"night": n.night, "outcome": n.outcome, "runs": [r["run_id"] for r in n.reports],
               "events_by_type": n.events_by_type, "events_sent": n.total("events_sent"),
               "events_already_sent": n.total("events_already_sent"), "members_updated": n.total("members_updated"),
               "quarantined": n.quarantined, "uncertain": n.uncertain, "unsent_batches": n.unsent,
               "duration_seconds": n.duration_s, "budget_floor_seconds": n.floor_s} for n in h["nights"]]
    return _jsonable({"program_id": h["program"].id, "time_zone": h["program"].time_zone, "nights": nights,
                      "missed": h["missed"], "backfill_command": h["backfill_all"],
                      "users_per_minute": h["users_per_minute"], "events_per_minute": h["events_per_minute"]})


def create_app() -> FastAPI:
    from loyalty_moengage.ui import data, pages

    app = FastAPI(title="MoEngage sync views", docs_url=None, redoc_url=None, openapi_url=None)

    def unavailable(exc: Exception, what: str) -> HTMLResponse:
        log.exception("MoEngage sync view %s failed", what)
        return HTMLResponse(pages.error_page("MoEngage sync: cannot read the sync's state",
                                             f"{type(exc).__name__}: {str(exc)[:300]}"), status_code=503)

    @app.get("/dags/{dag_id}", response_class=HTMLResponse, dependencies=[_read_dag()])
    def dag_tab(dag_id: str) -> HTMLResponse:
        program = _program(dag_id)
        try:
            return HTMLResponse(pages.history_page({**data.history(program), "live": data.live_today(program)}))
        except Exception as exc:
            return unavailable(exc, dag_id)

    @app.get("/dags/{dag_id}/history.json", dependencies=[_read_dag()])
    def dag_data(dag_id: str) -> JSONResponse:
        program = _program(dag_id)
        return JSONResponse({**_history_json(data.history(program)), "live": _jsonable(data.live_today(program))})

    @app.get("/dags/{dag_id}/runs/{run_id}.json", dependencies=[_read_runs()])
    def run_data(dag_id: str, run_id: str) -> JSONResponse:
        d = data.run_detail(_program(dag_id), run_id)
        return JSONResponse(_jsonable({k: v for k, v in d.items() if k != "program"}))

    @app.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse, dependencies=[_read_runs()])
    def run_tab(dag_id: str, run_id: str) -> HTMLResponse:
        program = _program(dag_id)
        try:
            return HTMLResponse(pages.run_page(data.run_detail(program, run_id)))
        except Exception as exc:
            return unavailable(exc, f"{dag_id} {run_id}")

    return app
