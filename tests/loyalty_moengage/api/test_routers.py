"""Each router on an app of its own: the routes need nothing from create_app but an
``ApiState`` in ``app.state.api`` (real Postgres, real uvicorn, keys from a test key ring)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Route

from loyalty_moengage.api.app import add_error_handlers, create_app, lifespan
from loyalty_moengage.api.auth import store_from_store_key
from loyalty_moengage.api.errors import ApiError
from loyalty_moengage.api.keys import KeyRing, ProgramKeys
from loyalty_moengage.api.responses import json_response
from loyalty_moengage.api.routes import customers, points
from loyalty_moengage.api.settings import Settings
from loyalty_moengage.api.state import ApiState
from tests.loyalty_moengage.api.conftest import API_KEY, STORE_KEY, WRITE_KEY, counts, serve

RING = KeyRing({"demo": ProgramKeys("demo", API_KEY, {"A123": STORE_KEY}, write_keys=(WRITE_KEY,))})
KEYS = {"api_key": API_KEY, "store_key": STORE_KEY}


def make_state(dsn: str, **settings) -> ApiState:
    return ApiState(Settings(dsn=dsn, pool_min=1, pool_max=2, **settings), key_loader=lambda: RING)


def router_app(router: APIRouter, dsn: str, **settings) -> FastAPI:
    """Only ``router``, the error handlers and a test state: no other route of the API."""
    app = FastAPI(lifespan=lifespan)
    app.state.api = make_state(dsn, **settings)
    add_error_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
def client_of():
    """Factory: serve an app on uvicorn, return an httpx client for it; all stopped at the end."""
    stack = []

    def start(app: FastAPI) -> httpx.Client:
        cm = serve(app)
        client = httpx.Client(base_url=cm.__enter__(), timeout=10.0)
        stack.append((cm, client))
        return client

    yield start
    for cm, client in reversed(stack):
        client.close()
        cm.__exit__(None, None, None)


def test_points_router_alone_answers_from_its_apps_state(seeded_db, client_of):
    client = client_of(router_app(points.router, seeded_db))
    r = client.get(points.POINTS_PATH, params={**KEYS, "customer_phone": "+91 98765 43210"})
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == "REL-0001" and r.json()["points_available"] == 1020
    assert r.headers["cache-control"] == "no-store"
    r = client.get(points.POINTS_PATH, params={**KEYS, "customer_id": "NOPE"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "customer_id"
    r = client.get(points.POINTS_PATH, params={**KEYS, "api_key": "x" * 20, "customer_id": "REL-0001"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "api_key"
    # the other router is not on this app
    assert client.post(customers.ADD_CUSTOMER_PATH, params=KEYS, json={}).status_code == 404


def test_points_route_is_a_plain_starlette_route():
    """FastAPI's parameter machinery stays off the hot route (bench-api measured the cost)."""
    for routes in (points.router.routes, create_app(Settings(dsn="postgresql://unused")).routes):
        [route] = [r for r in routes if r.path == points.POINTS_PATH]
        assert type(route) is Route and not isinstance(route, APIRoute)
        assert route.endpoint is points.get_points and route.methods == {"GET", "HEAD"}


def call_get_points(state: ApiState, query: str):
    """``get_points`` awaited on a bare Starlette Request whose app holds only ``state``."""
    scope = {"type": "http", "method": "GET", "path": points.POINTS_PATH, "headers": [],
             "query_string": query.encode(), "app": SimpleNamespace(state=SimpleNamespace(api=state))}

    async def run():
        try:
            return await points.get_points(Request(scope))
        finally:
            await state.close()

    return asyncio.run(run())


def test_get_points_is_a_function_of_the_request_alone(seeded_db):
    response = call_get_points(make_state(seeded_db), f"api_key={API_KEY}&store_key={STORE_KEY}&customer_id=REL-0001")
    assert response.status_code == 200 and response.media_type == "application/json"
    assert json.loads(response.body)["points_available"] == 1020
    with pytest.raises(ApiError) as info:
        call_get_points(make_state(seeded_db), f"api_key={API_KEY}&store_key={STORE_KEY}")
    assert info.value.status == 422 and info.value.field == "customer_phone"


def test_customers_router_alone_enrolls_once_per_idempotency_key(seeded_db, client_of):
    client = client_of(router_app(customers.router, seeded_db))
    before = counts(seeded_db)
    body = {"customer_details": {"number": "9123456780", "store_id": "A123", "amount": "100"}}
    first = client.post(customers.ADD_CUSTOMER_PATH, params={"api_key": WRITE_KEY}, json=body,
                        headers={"Idempotency-Key": "router-test-1"})
    assert first.status_code == 200, first.text
    assert first.headers["idempotent-replayed"] == "false"
    assert first.json()["results"][0]["points_credited"] == 10
    again = client.post(customers.ADD_CUSTOMER_PATH, params={"api_key": WRITE_KEY}, json=body,
                        headers={"Idempotency-Key": "router-test-1"})
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    after = counts(seeded_db)
    assert after["loyalty.members"] == before["loyalty.members"] + 1
    assert after["loyalty.points_ledger"] == before["loyalty.points_ledger"] + 1
    assert client.get(points.POINTS_PATH, params={**KEYS, "customer_id": "REL-0001"}).status_code == 404


def test_customers_router_takes_its_limits_from_the_states_settings(seeded_db, client_of):
    client = client_of(router_app(customers.router, seeded_db, max_body_bytes=64))
    body = {"customer_details": {"number": "9123456780", "store_id": "A123", "name": "N" * 64}}
    r = client.post(customers.ADD_CUSTOMER_PATH, params={"api_key": WRITE_KEY}, json=body)
    assert r.status_code == 413 and r.json()["error"] == {"field": "body", "message": "is larger than 64 bytes"}


def test_auth_dependencies_guard_any_route(seeded_db, client_of):
    router = APIRouter()

    @router.get("/whoami")
    async def whoami(who: tuple[str, str] = Depends(store_from_store_key)):
        return json_response({"program": who[0], "store": who[1]})

    client = client_of(router_app(router, seeded_db))
    assert client.get("/whoami", params=KEYS).json() == {"program": "demo", "store": "A123"}
    r = client.get("/whoami", params={**KEYS, "store_key": "s" * 20})
    assert r.status_code == 401 and r.json()["error"]["field"] == "store_key"
