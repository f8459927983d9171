"""Past LOYALTY_API_MAX_IN_FLIGHT requests in flight, a fast 503 with Retry-After (api/admission.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from loyalty_moengage.api.admission import Admission


def _slow_app(release: asyncio.Event):
    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def test_requests_past_the_limit_get_a_fast_503_and_the_others_their_answer():
    async def scenario():
        release = asyncio.Event()
        admission = Admission(_slow_app(release), limit=2)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admission), base_url="http://api") as client:
            held = [asyncio.create_task(client.get("/api/loyalty/points")) for _ in range(2)]
            while admission.in_flight < 2:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            refused = await client.get("/api/loyalty/points")
            refused_in = time.perf_counter() - started
            release.set()
            answered = await asyncio.gather(*held)
            after = await client.get("/api/loyalty/points")   # the limit is on requests in flight, not a count
        return refused, refused_in, answered, after, admission

    refused, refused_in, answered, after, admission = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1" and refused_in < 0.5
    assert orjson.loads(refused.content)["error"]["message"].startswith("busy")
    assert [r.status_code for r in answered] == [200, 200] and after.status_code == 200
    assert admission.shed == 1 and admission.in_flight == 0


def test_the_limit_is_a_setting_and_zero_turns_it_off(monkeypatch):
    from loyalty_moengage.api.settings import Settings

    monkeypatch.setenv("LOYALTY_API_MAX_IN_FLIGHT", "0")
    assert Settings.from_env().max_in_flight == 0
    monkeypatch.delenv("LOYALTY_API_MAX_IN_FLIGHT")
    assert Settings.from_env().max_in_flight == 1000


def test_reads_and_writes_have_budgets_of_their_own():
    """Stalled or slow writes (the webhook) never take the slots of reads (the Content API)."""
    async def scenario():
        release = asyncio.Event()
        admission = Admission(_slow_app(release), limit=2, write_limit=1)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admission), base_url="http://api") as client:
            write = asyncio.create_task(client.post("/api/customers/add"))
            while admission.writes.in_flight < 1:
                await asyncio.sleep(0.01)
            second_write = await client.post("/api/customers/add")
            reads = [asyncio.create_task(client.get("/api/loyalty/points")) for _ in range(2)]
            while admission.reads.in_flight < 2:
                await asyncio.sleep(0.01)
            third_read = await client.get("/api/loyalty/points")
            release.set()
            answered = await asyncio.gather(write, *reads)
        return second_write, third_read, answered, admission

    second_write, third_read, answered, admission = asyncio.run(scenario())
    assert second_write.status_code == 503 and second_write.headers["retry-after"] == "1"
    assert third_read.status_code == 503 and third_read.headers["retry-after"] == "1"
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert (admission.reads.shed, admission.writes.shed, admission.in_flight) == (1, 1, 0)


def test_a_budget_of_zero_is_no_limit():
    async def scenario():
        release = asyncio.Event()
        admission = Admission(_slow_app(release), limit=1, write_limit=0)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admission), base_url="http://api") as client:
            writes = [asyncio.create_task(client.post("/api/customers/add")) for _ in range(5)]
            await asyncio.sleep(0.05)
            read = asyncio.create_task(client.get("/api/loyalty/points"))
            await asyncio.sleep(0.05)
            release.set()
            return await asyncio.gather(*writes, read)

    assert [r.status_code for r in asyncio.run(scenario())] == [200] * 6


def test_the_write_budget_is_a_setting(monkeypatch):
    from loyalty_moengage.api.app import create_app
    from loyalty_moengage.api.settings import Settings

    monkeypatch.setenv("LOYALTY_API_MAX_IN_FLIGHT_WRITES", "7")
    app = create_app(Settings.from_env(dsn="postgresql://unused"))
    [admission] = [m for m in app.user_middleware if m.cls is Admission]
    assert admission.kwargs == {"limit": 1000, "write_limit": 7}
