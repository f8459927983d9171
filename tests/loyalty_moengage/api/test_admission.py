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
