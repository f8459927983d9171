"""A local MoEngage Data API over real HTTP (aiohttp), faithful where our sync depends on it.

One server plays every data centre: ``/dc/{dc}/v1/...`` is ``https://api-{dc}.moengage.com/v1/...``
and plain ``/v1/...`` is the default data centre. A workspace lives on one data centre; calling
another one answers 401 "Invalid APP_ID used in Authentication Header", as a wrong region would.

Order of checks on a data request: injected fault, Basic auth (401), MOE-APPKEY (401), Workspace
ID in the path (409), Content-Type (400/415), size (413), JSON (400), budget (429), elements.
Bulk requests answer 200 even when elements are dropped, like MoEngage; unlike MoEngage, every
drop is recorded with its reason (``GET /sandbox/workspaces/{id}/drops``).

Faults are polite (fail before applying) unless the rude switches of
:mod:`loyalty_moengage_devtools.sandbox.rude` are on: errors after applying, bulk writes that show
late and out of order, partial application, and users erased mid-night (``POST /sandbox/erase``).

The ``/sandbox/...`` inspection API has no authentication: bind it to loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import socket
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from loyalty_moengage.moengage.packing import SINGLE_MAX_BYTES, TRANSITION_MAX_BYTES
from loyalty_moengage_devtools.sandbox import rude
from loyalty_moengage_devtools.sandbox.elements import apply_elements
from loyalty_moengage_devtools.sandbox.state import Faults, SandboxState, Workspace, apply_deferred
from loyalty_moengage_devtools.sandbox.validation import StructuralError, check_element

log = logging.getLogger(__name__)

ACCEPTED = "Your request has been accepted and will be processed soon."
AUTH = "Authentication required"
INVALID_APP_ID = "Invalid APP_ID used in Authentication Header"
_JSON_HEADERS = {"Content-Type": "application/json"}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers={**_JSON_HEADERS, **(headers or {})})


def _fail(status: int, type_: str, message: str, request_id: str, *, attribute: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"type": type_, "message": message, "request_id": request_id}
    if attribute:
        error["attribute"] = attribute
    return _json({"status": "fail", "error": error}, status, headers)


class _Reject(Exception):
    """Carries an error response out of the checks."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


class SandboxApp:
    """The aiohttp application around a :class:`SandboxState`."""

    def __init__(self, state: SandboxState, *, default_dc: str = "03") -> None:
        from loyalty_moengage.moengage.datacenters import parse_data_center

        self.state = state
        self.default_dc = parse_data_center(default_dc)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for prefix in ("", "/dc/{dc}"):
            app.router.add_post(prefix + "/v1/transition/{workspace_id}", self.transition)
            app.router.add_post(prefix + "/v1/customer/{workspace_id}", self.customer)
            app.router.add_post(prefix + "/v1/event/{workspace_id}", self.event)
            app.router.add_post(prefix + "/v1/customers/export", self.export)
            app.router.add_post(prefix + "/v1/integrations/authentication", self.authentication)
        app.router.add_get("/sandbox/workspaces", self.list_workspaces)
        app.router.add_post("/sandbox/workspaces", self.create_workspace)
        app.router.add_get("/sandbox/workspaces/{workspace_id}/users", self.get_users)
        app.router.add_get("/sandbox/workspaces/{workspace_id}/events", self.get_events)
        app.router.add_get("/sandbox/workspaces/{workspace_id}/drops", self.get_drops)
        app.router.add_get("/sandbox/workspaces/{workspace_id}/counters", self.get_workspace_counters)
        app.router.add_post("/sandbox/workspaces/{workspace_id}/seed", self.seed)
        app.router.add_post("/sandbox/workspaces/{workspace_id}/erase", self.post_erase)
        app.router.add_get("/sandbox/workspaces/{workspace_id}/profiles", self.get_profiles)
        app.router.add_post("/sandbox/erase", self.post_erase)
        app.router.add_get("/sandbox/requests", self.get_requests)
        app.router.add_get("/sandbox/counters", self.get_counters)
        app.router.add_get("/sandbox/faults", self.get_faults)
        app.router.add_post("/sandbox/faults", self.post_faults)
        app.router.add_post("/sandbox/reset", self.post_reset)
        self.app = app

    # -- MoEngage endpoints ----------------------------------------------------------------
    async def transition(self, request: web.Request) -> web.StreamResponse:
        return await self._data(request, "transition")

    async def customer(self, request: web.Request) -> web.StreamResponse:
        return await self._data(request, "customer")

    async def event(self, request: web.Request) -> web.StreamResponse:
        return await self._data(request, "event")

    async def export(self, request: web.Request) -> web.StreamResponse:
        return await self._data(request, "export")

    async def authentication(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        dc = request.match_info.get("dc") or self.default_dc
        request_id = state.new_request_id()
        started = time.perf_counter()
        body = await request.read()
        try:
            response = self._authenticate_test(request, dc, body, request_id)
        except _Reject as reject:
            response = reject.response
        self._log({"endpoint": "authentication", "dc": dc, "path": request.path, "status": response.status,
                   "request_id": request_id, "bytes": len(body), "seconds": time.perf_counter() - started,
                   "workspace_id": request.headers.get("MOE-APPKEY"),
                   "peer": request.transport.get_extra_info("peername") if request.transport else None})
        return response

    def _authenticate_test(self, request: web.Request, dc: str, body: bytes, request_id: str) -> web.Response:
        self._check_content_type(request, request_id)
        try:
            doc = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            raise _Reject(_fail(400, "Malformed JSON", "A valid JSON document is required.", request_id))
        app_key = request.headers.get("MOE-APPKEY")
        if not app_key:
            raise _Reject(_fail(401, AUTH, "MOE-APPKEY is missing in Header", request_id))
        user, password = self._basic(request)
        app_id = doc.get("app_id") or user or app_key
        secret = doc.get("app_secret") or password
        with self.state.lock:
            workspace = self.state.workspaces.get(app_id)
        if workspace is None or workspace.dc != dc or app_key != app_id:
            raise _Reject(_fail(401, AUTH, INVALID_APP_ID, request_id))
        if not secret or not hmac.compare_digest(str(secret).encode(), workspace.api_key.encode()):
            raise _Reject(_fail(401, AUTH, "App Secret key mismatch. Please login to the dashboard to verify key", request_id))
        return _json({"status": "success", "app_name": workspace.workspace_id, "request_id": request_id})

    async def _data(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        state = self.state
        dc = request.match_info.get("dc") or self.default_dc
        with state.lock:
            state.data_requests += 1
            number = state.data_requests
            faults = state.faults
            action, delay = faults.decide(number, endpoint)
            index = faults.seen[endpoint]
            partial = rude.partial_share(faults, action, endpoint)
            retry_after = faults.retry_after
        request_id = state.new_request_id()
        entry: dict[str, Any] = {"n": number, "time": time.time(), "endpoint": endpoint, "dc": dc,
                                 "path": request.path, "workspace_id": None, "request_id": request_id,
                                 "bytes": 0, "fault": action,
                                 "peer": request.transport.get_extra_info("peername") if request.transport else None}
        if partial:
            entry["partial"] = partial
        started = time.perf_counter()
        try:
            if delay:
                await asyncio.sleep(delay)
            if action == "drop":
                entry["status"] = "dropped before reading the body"
                return self._drop(request)
            body = await request.read()
            entry["bytes"] = len(body)
            response = self._polite_fault(action, request_id, retry_after)
            if response is None:
                try:
                    response = self._process(request, endpoint, dc, body, request_id, entry, partial)
                except _Reject as reject:
                    response = reject.response
            return self._answer(request, action, response, request_id, entry)
        finally:
            self._erase_due(faults, number, endpoint, index, entry)
            entry["seconds"] = time.perf_counter() - started
            self._log(entry)

    @staticmethod
    def _polite_fault(action: Any, request_id: str, retry_after: float) -> web.Response | None:
        """The injected answer that replaces processing (nothing is applied), or None to process."""
        if action == "fail200":
            return _json({"status": "fail", "error": {"type": "Injected fault", "request_id": request_id,
                          "message": "sandbox fault injection: 200 with status fail"}})
        if action == 429:
            return _fail(429, "Rate limit exceeded", "Rate limit exceeded", request_id,
                         headers={"x-ratelimit-limit": "0", "x-ratelimit-remaining": "0",
                                  "x-ratelimit-reset": _seconds(retry_after)})
        if isinstance(action, int):
            return _fail(action, "Injected fault", f"sandbox fault injection: HTTP {action}", request_id)
        return None

    def _answer(self, request: web.Request, action: Any, response: web.Response, request_id: str,
                entry: dict[str, Any]) -> web.StreamResponse:
        """The processed request's answer, or (rude) an error or hang-up although it was applied."""
        after = rude.after_applying(action)
        if after == "drop":
            entry["status"] = f"dropped after processing (would have been {response.status})"
            return self._drop(request)
        if after is not None:
            entry["applied_status"] = response.status
            response = _fail(int(after), "Injected fault",
                             f"sandbox fault injection: HTTP {after} after applying the request", request_id)
        entry["status"] = response.status
        return response

    def _erase_due(self, faults: Faults, number: int, endpoint: str, index: int, entry: dict[str, Any]) -> None:
        """Run the scripted erasures due after this request, before its answer leaves."""
        with self.state.lock:
            due = rude.due_erasures(faults, number, endpoint, index)
            for spec in due:
                try:
                    erased = self.state.erase(spec["workspace_id"] or entry.get("workspace_id"), spec["customer_ids"],
                                              random_count=spec["random"], by="fault", after_request=number)
                except KeyError as exc:
                    log.warning("sandbox erasure after request %s skipped: %s", number, exc)
                    continue
                entry.setdefault("erased", {}).update(erased)

    def _log(self, entry: dict[str, Any]) -> None:
        with self.state.lock:
            self.state.request_log.append(entry)
            self.state.counters[f"status_{entry.get('status')}"] += 1

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=599)  # never reaches the client

    # -- checks ---------------------------------------------------------------------------
    @staticmethod
    def _basic(request: web.Request) -> tuple[str | None, str | None]:
        header = request.headers.get("Authorization")
        if not header:
            return None, None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            user, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return user, password

    def _authenticate(self, request: web.Request, dc: str, request_id: str, path_workspace: str | None) -> Workspace:
        header = request.headers.get("Authorization")
        if not header:
            raise _Reject(_fail(401, AUTH, "Authentication Header Required", request_id))
        if header.partition(" ")[0].lower() != "basic":
            raise _Reject(_fail(401, AUTH, "Invalid authorization used. MoEngage only supports 'Basic Auth' authorization.", request_id))
        user, password = self._basic(request)
        if user is None:
            raise _Reject(_fail(401, AUTH, "Authorization details are missing", request_id))
        if not user:
            raise _Reject(_fail(401, AUTH, "Username (APP_KEY) is missing in the Basic Auth authorization.", request_id))
        if not password:
            raise _Reject(_fail(401, AUTH, "Password (APP_SECRET) is missing in the Basic Auth authorization.", request_id))
        with self.state.lock:
            workspace = self.state.workspaces.get(user)
        if workspace is None or workspace.dc != dc:
            raise _Reject(_fail(401, AUTH, INVALID_APP_ID, request_id))
        if not hmac.compare_digest(password.encode(), workspace.api_key.encode()):
            raise _Reject(_fail(401, AUTH, "App Secret key mismatch. Please login to the dashboard to verify key", request_id))
        app_key = request.headers.get("MOE-APPKEY")
        if app_key is not None and app_key != user:
            raise _Reject(_fail(401, AUTH, "MOE_APPKEY doesn't match the Username (APP_KEY) used in Basic Auth authorization.", request_id))
        if path_workspace is not None and path_workspace != user:
            raise _Reject(_fail(409, "App key mismatch", "App key mismatch in params and authentication.", request_id))
        return workspace

    @staticmethod
    def _check_content_type(request: web.Request, request_id: str) -> None:
        if not request.headers.get("Content-Type"):
            raise _Reject(_fail(400, "Missing header", "The Content-Type Header is required.", request_id))
        if request.content_type != "application/json":
            raise _Reject(_fail(415, "Unsupported Media Type", "Unsupported Media Type", request_id))

    def _budget(self, workspace: Workspace, request_id: str, **counts: int) -> dict[str, str]:
        """Spend the request's users/events/export budget, or raise a 429; returns x-ratelimit-* headers."""
        budgets = {"users": workspace.users_budget, "events": workspace.events_budget, "export": workspace.export_budget}
        now = time.time()
        with self.state.lock:
            for name in counts:
                budgets[name].roll(now)
            over = [name for name, n in counts.items() if not budgets[name].fits(n)]
            if not over:
                for name, n in counts.items():
                    budgets[name].used += n
            relevant = [name for name, n in counts.items() if n] or list(counts)
            binding = over[0] if over else min(
                relevant, key=lambda k: (budgets[k].limit or 10**12) - budgets[k].used)
            budget = budgets[binding]
            headers = {
                "x-ratelimit-limit": str(budget.limit or 0),
                "x-ratelimit-remaining": str(max(0, (budget.limit or 0) - budget.used)),
                "x-ratelimit-reset": _seconds(budget.reset_in(now)),
            }
        if over:
            workspace.counters["throttled"] += 1
            detail = ", ".join(f"{name} {counts[name]} > {budgets[name].limit - budgets[name].used} left"
                               for name in over if budgets[name].limit is not None)
            raise _Reject(_fail(429, "Rate limit exceeded", f"Rate limit exceeded ({detail})", request_id, headers=headers))
        return headers

    # -- processing -----------------------------------------------------------------------
    def _process(self, request: web.Request, endpoint: str, dc: str, body: bytes, request_id: str,
                 entry: dict[str, Any], partial: float = 0.0) -> web.Response:
        path_workspace = request.match_info.get("workspace_id")
        if endpoint == "export":
            path_workspace = request.query.get("app_id")
            if not path_workspace:
                raise _Reject(_fail(400, "MissingAttributeError", "app_id is required in path/query params.", request_id, attribute="app_id"))
        workspace = self._authenticate(request, dc, request_id, path_workspace)
        entry["workspace_id"] = workspace.workspace_id
        self._check_content_type(request, request_id)
        limit = TRANSITION_MAX_BYTES if endpoint == "transition" else SINGLE_MAX_BYTES
        if len(body) > limit:
            raise _Reject(_fail(413, "Payload Too Large", f"Payload size exceeds {limit // 1000} KB "
                                f"({len(body)} bytes > {limit})", request_id))
        if self.state.count_only and endpoint != "export":
            return self._count_only(workspace, endpoint, body, request_id, entry)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Reject(_fail(400, "Malformed JSON", "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8.", request_id)) from None
        if endpoint == "export":
            return self._export(workspace, doc, request_id)
        if endpoint == "transition":
            elements = self._elements(doc, request_id)
        else:
            elements = [doc]
        users = sum(1 for e in elements if isinstance(e, dict) and e.get("type") == "customer")
        events = sum(len(e["actions"]) for e in elements
                     if isinstance(e, dict) and e.get("type") == "event" and isinstance(e.get("actions"), list))
        entry.update(elements=len(elements), users=users, events=events)
        if endpoint != "transition":
            self._single_structure(doc, endpoint, request_id)
        headers = self._budget(workspace, request_id, users=users, events=events)
        apply_elements(self.state, workspace, elements, request_id, endpoint, partial)
        return _json({"status": "success", "message": ACCEPTED, "request_id": request_id}, headers=headers)

    @staticmethod
    def _elements(doc: Any, request_id: str) -> list[Any]:
        if not isinstance(doc, dict):
            raise _Reject(_fail(400, "Malformed JSON", "A valid JSON document is required.", request_id))
        if doc.get("type") != "transition":
            raise _Reject(_fail(400, "AttributeError", "type should be transition", request_id, attribute="type"))
        if "elements" not in doc:
            raise _Reject(_fail(400, "MissingAttributeError", "elements is not found in the payload", request_id, attribute="elements"))
        elements = doc["elements"]
        if not isinstance(elements, list) or not elements:
            raise _Reject(_fail(400, "MissingAttributeError", "elements cannot be empty array", request_id, attribute="elements"))
        return elements

    def _single_structure(self, doc: Any, endpoint: str, request_id: str) -> None:
        """Single endpoints answer 400 to what a bulk request would silently drop as unreadable."""
        try:
            check_element(doc, now=time.time(), known_events=set(), known_attributes=set(),
                          future_tolerance=float("inf"), expected_type=endpoint)
        except StructuralError as exc:
            raise _Reject(_fail(400, "MissingAttributeError", str(exc), request_id, attribute=exc.attribute)) from None

    def _count_only(self, ws: Workspace, endpoint: str, body: bytes, request_id: str, entry: dict[str, Any]) -> web.Response:
        users = body.count(b'"type":"customer"') + body.count(b'"type": "customer"')
        events = body.count(b'"action":') + body.count(b'"action": ')
        elements = users + body.count(b'"type":"event"') + body.count(b'"type": "event"')
        entry.update(elements=elements, users=users, events=events)
        headers = self._budget(ws, request_id, users=users, events=events)
        with self.state.lock:
            ws.counters["requests"] += 1
            ws.counters["bytes"] += len(body)
            ws.counters["elements"] += elements
            ws.counters["users_counted"] += users
            ws.counters["events_counted"] += events
        return _json({"status": "success", "message": ACCEPTED, "request_id": request_id}, headers=headers)

    def _export(self, ws: Workspace, doc: Any, request_id: str) -> web.Response:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict):
            raise _Reject(_fail(400, "MissingAttributeError", "data is not found in the payload", request_id, attribute="data"))
        identifiers = data.get("identifiers")
        if not isinstance(identifiers, list) or not identifiers:
            raise _Reject(_fail(400, "MissingAttributeError", "identifiers is not found in the payload", request_id, attribute="identifiers"))
        if len(identifiers) > 20:
            raise _Reject(_fail(400, "LimitBreached", "max limit allowed is 20", request_id, attribute="identifiers"))
        fields = data.get("user_fields_to_export")
        if not ws.export_enabled:
            raise _Reject(_fail(403, "Forbidden", "Get User API is not enabled for this workspace", request_id))
        headers = self._budget(ws, request_id, export=len(identifiers))
        found, missing = [], []
        with self.state.lock:
            apply_deferred(ws)
            ws.counters["users_looked_up"] += len(identifiers)
            for item in identifiers:
                kind = item.get("identifier_type") if isinstance(item, dict) else None
                value = item.get("identifier") if isinstance(item, dict) else None
                attributes = ws.users.get(value) if kind == "customer_id" else None
                if attributes is None:
                    missing.append({"identifier_type": kind, "identifier": value})
                    continue
                record = {"customer_id": value, **attributes}
                if isinstance(fields, list) and fields:
                    record = {k: v for k, v in record.items() if k in fields}
                found.append({"user_attributes": record})
        return _json({"status": "success", "type": "export_users",
                      "data": {"users_not_found": missing, "users": found}}, headers=headers)

    # -- inspection API -------------------------------------------------------------------
    @staticmethod
    async def _doc(request: web.Request) -> dict[str, Any]:
        body = await request.read()
        try:
            doc = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(text="a JSON object is required") from None
        if not isinstance(doc, dict):
            raise web.HTTPBadRequest(text="a JSON object is required")
        return doc

    def _workspace_or_404(self, request: web.Request) -> str:
        workspace_id = request.match_info["workspace_id"]
        if workspace_id not in self.state.workspaces:
            raise web.HTTPNotFound(text=f"no workspace {workspace_id!r}")
        return workspace_id

    async def list_workspaces(self, request: web.Request) -> web.Response:
        with self.state.lock:
            return _json([ws.describe() for ws in self.state.workspaces.values()])

    async def create_workspace(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        try:
            ws = self.state.add_workspace(doc.pop("workspace_id"), doc.pop("api_key"), doc.pop("dc", "03"), **doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"cannot add workspace: {exc}") from None
        return _json(ws.describe(), 201)

    async def get_users(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace_or_404(request)
        users = self.state.users(workspace_id)
        origins = self.state.user_origins(workspace_id)
        wanted = request.query.get("customer_id")
        return _json([{"customer_id": cid, "origin": origins.get(cid), "attributes": attrs}
                      for cid, attrs in users.items() if wanted is None or cid == wanted])

    async def get_events(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace_or_404(request)
        return _json(self.state.events(workspace_id, request.query.get("customer_id"), request.query.get("action")))

    async def get_drops(self, request: web.Request) -> web.Response:
        return _json(self.state.drops(self._workspace_or_404(request)))

    async def get_workspace_counters(self, request: web.Request) -> web.Response:
        return _json(self.state.workspace_counters(self._workspace_or_404(request)))

    async def seed(self, request: web.Request) -> web.Response:
        workspace_id = self._workspace_or_404(request)
        doc = await self._doc(request)
        count = self.state.seed_users(workspace_id, doc.get("customer_ids", []), doc.get("attributes"))
        return _json({"seeded": count})

    async def get_requests(self, request: web.Request) -> web.Response:
        rows = self.state.requests(request.query.get("workspace_id"))
        limit = int(request.query.get("limit", 1000))
        return _json(rows[-limit:])

    async def get_counters(self, request: web.Request) -> web.Response:
        return _json(self.state.global_counters())

    async def get_faults(self, request: web.Request) -> web.Response:
        with self.state.lock:
            return _json(self.state.faults.describe())

    async def post_faults(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        unknown = sorted(set(doc) - set(Faults.SETTINGS))
        if unknown:
            raise web.HTTPBadRequest(text=f"unknown fault setting {', '.join(unknown)} "
                                          f"(known: {', '.join(Faults.SETTINGS)})")
        try:
            faults = self.state.set_faults(**doc)
        except TypeError as exc:
            raise web.HTTPBadRequest(text=f"unknown fault setting: {exc}") from None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return _json(faults.describe())

    async def post_erase(self, request: web.Request) -> web.Response:
        """Users deleted mid-night, as an erasure request would: ``{"customer_ids": [...], "random": N}``."""
        doc = await self._doc(request)
        workspace_id = request.match_info.get("workspace_id") or doc.get("workspace_id")
        ids, count = doc.get("customer_ids", []), doc.get("random", 0)
        if not isinstance(ids, list) or not all(isinstance(c, str) and c for c in ids):
            raise web.HTTPBadRequest(text="customer_ids must be a list of customer ids")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise web.HTTPBadRequest(text="random must be a whole number >= 0")
        if not ids and not count:
            raise web.HTTPBadRequest(text="nobody to erase: give customer_ids or random")
        if workspace_id is not None and workspace_id not in self.state.workspaces:
            raise web.HTTPNotFound(text=f"no workspace {workspace_id!r}")
        erased = self.state.erase(workspace_id, ids, random_count=count)
        found = {cid for done in erased.values() for cid in done}
        return _json({"erased": erased, "not_found": [cid for cid in dict.fromkeys(ids) if cid not in found]})

    async def get_profiles(self, request: web.Request) -> web.Response:
        return _json(self.state.profile_stats(self._workspace_or_404(request)))

    async def post_reset(self, request: web.Request) -> web.Response:
        doc = await self._doc(request)
        self.state.reset(workspaces=bool(doc.get("workspaces")))
        return _json({"status": "reset"})


def _seconds(value: float) -> str:
    """Seconds for x-ratelimit-reset: whole seconds like MoEngage when >= 1, else milliseconds precision."""
    return str(int(value + 0.999)) if value >= 1 else f"{value:.3f}"


class SandboxServer:
    """The sandbox on a background thread, for tests and demos.

    ``with SandboxServer(port=0) as sb:`` binds a free loopback port before returning, so
    ``sb.url`` is usable at once.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        count_only: bool = False,
        default_dc: str = "03",
        future_tolerance: float = 0.0,
        request_log_size: int = 100_000,
    ) -> None:
        self.host = host
        self.port = port
        self.state = SandboxState(count_only=count_only, future_tolerance=future_tolerance,
                                  request_log_size=request_log_size)
        self.app = SandboxApp(self.state, default_dc=default_dc)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url_template(self) -> str:
        """For the connection's ``base_url`` extra: the hook substitutes ``{dc}``."""
        return f"{self.url}/dc/{{dc}}"

    def connection_json(self, workspace_id: str, api_key: str, dc: str = "03", **extra: Any) -> str:
        """An ``AIRFLOW_CONN_MOENGAGE_DEFAULT`` value pointing at this sandbox. Its bulk writes show at
        once unless ``bulk_visibility_delay`` is set, so ``visibility_seconds`` defaults to 0; a caller
        that turns the delay on declares it here, as a user would for a real MoEngage."""
        extra = {"base_url": self.base_url_template, "visibility_seconds": 0, **extra}
        return orjson.dumps({"conn_type": "moengage", "login": workspace_id, "password": api_key,
                             "host": f"DC-{dc}", "extra": extra}).decode()

    # delegation, so tests read like the issue
    def add_workspace(self, workspace_id: str, api_key: str, dc: str = "03", **kwargs: Any) -> Workspace:
        return self.state.add_workspace(workspace_id, api_key, dc, **kwargs)

    def seed_users(self, workspace_id: str, customer_ids: Any, attributes: dict[str, Any] | None = None) -> int:
        return self.state.seed_users(workspace_id, customer_ids, attributes)

    def set_faults(self, **kwargs: Any) -> Faults:
        return self.state.set_faults(**kwargs)

    def fail_next(self, *actions: Any) -> None:
        self.state.fail_next(*actions)

    def erase(self, workspace_id: str | None, customer_ids: Any = (), *, random_count: int = 0) -> dict[str, list[str]]:
        return self.state.erase(workspace_id, customer_ids, random_count=random_count)

    def profile_stats(self, workspace_id: str) -> dict[str, Any]:
        return self.state.profile_stats(workspace_id)

    def reset(self, *, workspaces: bool = False) -> None:
        self.state.reset(workspaces=workspaces)

    # lifecycle
    def start(self) -> SandboxServer:
        sock = socket.create_server((self.host, self.port), backlog=1024)
        self.port = sock.getsockname()[1]
        self._socket = sock
        self._thread = threading.Thread(target=self._run, name=f"moengage-sandbox-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"sandbox failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.SockSite(runner, self._socket)
        await site.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def serve_forever(self) -> None:
        """Block until Ctrl-C (the CLI); starts the server unless it already runs."""
        if self._thread is None:
            self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
