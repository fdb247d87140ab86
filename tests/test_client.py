"""timedistill.Client and AsyncClient against a scripted server (httpx.MockTransport): retries on
503 after Retry-After, the server's message on a 4xx, the .npy route for large batches. The same
clients against the real Ray Serve application are in tests/test_serving.py."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import numpy as np
import pytest

from timedistill.client import AsyncClient, Client, RequestError, ServerUnavailable

ANSWER = {"model": "m-2", "version": "v3", "horizon": 2, "variables": ["a", "OT"],
          "forecast": [[1.0, 2.0], [3.0, 4.0]], "timestamps": ["2024-01-01T02:00:00", "2024-01-01T03:00:00"]}


class Script:
    """Answers requests from a list, and records them."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers, self.requests = list(answers), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)


def test_a_503_is_retried_after_its_retry_after(monkeypatch):
    waits = []
    monkeypatch.setattr("timedistill.client.time.sleep", waits.append)
    script = Script(httpx.Response(503, headers={"retry-after": "2"}, json={"detail": "busy"}),
                    httpx.Response(200, json=ANSWER))
    with Client("http://server", token="t", transport=httpx.MockTransport(script)) as client:
        result = client.forecast("m-2", np.ones((4, 2)), timestamps=[f"2024-01-01T0{h}:00" for h in range(-2, 2)])
    assert waits == [2.0] and len(script.requests) == 2
    assert script.requests[0].headers["authorization"] == "Bearer t"
    sent = json.loads(script.requests[1].content)
    assert sent["history"] == np.ones((4, 2)).tolist() and len(sent["timestamps"]) == 4
    assert result.variables == ["a", "OT"] and result.values.shape == (2, 2)
    assert result.timestamps[0].hour == 2 and result.to_polars().columns == ["timestamp", "a", "OT"]


def test_every_retry_spent_is_server_unavailable(monkeypatch):
    monkeypatch.setattr("timedistill.client.time.sleep", lambda _: None)
    script = Script(*[httpx.Response(503, json={"detail": "busy"})] * 3)
    with Client("http://server", retries=2, transport=httpx.MockTransport(script)) as client, \
            pytest.raises(ServerUnavailable, match="503"):
        client.models()
    assert len(script.requests) == 3


def test_a_4xx_carries_the_servers_message():
    script = Script(httpx.Response(422, json={"detail": "history has 3 rows; model m-2 needs at least 4"}))
    with Client("http://server", transport=httpx.MockTransport(script)) as client, \
            pytest.raises(RequestError, match="needs at least 4") as raised:
        client.forecast("m-2", np.ones((3, 2)))
    assert raised.value.status == 422


def test_large_batches_travel_as_npy_and_small_ones_as_json():
    forecasts = np.arange(16 * 2 * 2, dtype=np.float32).reshape(16, 2, 2)
    buffer = io.BytesIO()
    np.save(buffer, forecasts)
    script = Script(httpx.Response(200, content=buffer.getvalue(), headers={"content-type": "application/x-npy"}),
                    httpx.Response(200, json={**ANSWER, "forecasts": forecasts[:2].tolist()}))
    with Client("http://server", npy_min_batch=16, transport=httpx.MockTransport(script)) as client:
        assert np.array_equal(client.forecast_batch("m-2", [np.ones((4, 2))] * 16), forecasts)
        assert np.array_equal(client.forecast_batch("m-2", [np.ones((4, 2))] * 2), forecasts[:2])
    binary, plain = script.requests
    assert binary.url.path == "/v1/forecast/npy" and binary.url.params["model"] == "m-2"
    assert np.load(io.BytesIO(binary.content)).shape == (16, 4, 2)
    assert plain.url.path == "/v1/forecast/batch" and len(json.loads(plain.content)["histories"]) == 2


def test_the_async_client_does_the_same(monkeypatch):
    async def no_wait(_):
        return None

    monkeypatch.setattr("timedistill.client.asyncio.sleep", no_wait)
    script = Script(httpx.Response(503), httpx.Response(200, json=ANSWER), httpx.Response(404, json={"detail": "no"}))

    async def run():
        async with AsyncClient("http://server", transport=httpx.MockTransport(script)) as client:
            result = await client.forecast("m-2", np.ones((4, 2)))
            with pytest.raises(RequestError, match="404: no"):
                await client.forecast("nope-1", np.ones((4, 2)))
            return result

    assert asyncio.run(run()).version == "v3" and len(script.requests) == 3


def test_a_quantile_answer_becomes_columns_beside_the_forecast():
    levels = {"0.1": [[0.5, 1.5], [2.5, 3.5]], "0.5": ANSWER["forecast"], "0.9": [[1.5, 2.5], [3.5, 4.5]]}
    script = Script(httpx.Response(200, json={**ANSWER, "quantiles": levels}), httpx.Response(200, json=ANSWER))
    with Client("http://server", transport=httpx.MockTransport(script)) as client:
        result, point = client.forecast("m-2", np.ones((4, 2))), client.forecast("m-2", np.ones((4, 2)))
    assert list(result.quantiles) == [0.1, 0.5, 0.9] and np.array_equal(result.quantiles[0.9], levels["0.9"])
    frame = result.to_polars()
    assert frame.columns == ["timestamp", "a", "OT", "a_q0.1", "a_q0.9", "OT_q0.1", "OT_q0.9"]
    assert frame["OT_q0.9"].to_list() == [2.5, 4.5] and list(result.to_pandas().columns) == frame.columns
    assert point.quantiles is None and point.to_polars().columns == ["timestamp", "a", "OT"]
