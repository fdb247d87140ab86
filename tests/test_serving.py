"""The forecasting API through a real Ray Serve on loopback, serving the smoke run's registry; and
the same API in this process (no Ray) over a registry of tiny models, for its edges: fuzzed
requests, and registry faults."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import smoke_overrides
from timedistill.conf import load_config
from timedistill.store.forecaster import ForecastModel
from timedistill.store.registry import latest
from timedistill.store.series import standardized_series
from timedistill.store.weights import load_trained
from timedistill.tasks.registry import register

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


QUANTILE_MODEL = "quantile-24"  # the quantile run's version, served beside smoke-24


@pytest.fixture(scope="module")
def served(smoke_pipeline, quantile_run, session_root, smoke_csv):
    """Ray Serve on the smoke registry, with the quantile run's model copied in as QUANTILE_MODEL
    (trained first: a training run waits for the CPUs that Serve's replicas hold)."""
    from ray import serve

    from timedistill.serving.app import APP_NAME, build_app, http_options
    from timedistill.store.storage import Storage

    source, folder = Storage(str(quantile_run.root)), f"registry/{quantile_run.model}/v1"
    for name in source.listdir(folder):
        smoke_pipeline.storage.write_bytes(f"registry/{QUANTILE_MODEL}/v1/{name}",
                                                source.read_bytes(f"{folder}/{name}"))
    smoke_pipeline.storage.write_bytes(f"registry/{QUANTILE_MODEL}/LATEST", b"v1\n")
    port = free_port()
    config = load_config("smoke", [*smoke_overrides(session_root, smoke_csv), f"serve.port={port}",
                                   f"serve.auth_token={TOKEN}", "serve.reload_interval_s=0.5",
                                   "serve.request_timeout_s=3",
                                   "serve.min_replicas=1"])  # the shared 2-CPU Ray has other work
    serve.start(http_options=http_options(config.serve))
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60)
    yield {"client": client, "config": config, "run": smoke_pipeline, "port": port}
    client.close()
    serve.shutdown()


@pytest.fixture(scope="module")
def history(smoke_pipeline):
    """A real history of the smoke series (data units): the last 96 rows before the test split."""
    dataset = smoke_pipeline.dataset
    z = standardized_series(smoke_pipeline.storage, dataset)
    start = dataset.splits["test"][0]
    return dataset.scaler.unstandardize(z[start - 96 : start].astype(np.float64))


def test_health_models_and_openapi(served):
    client = served["client"]
    assert httpx.get(f"http://127.0.0.1:{served['port']}/healthz").json() == {"status": "ok"}  # no token
    listing = client.get("/v1/models").json()["models"]
    (smoke,) = [m for m in listing if m["name"] == "smoke-24"]
    assert smoke["lookback"] == 96 and smoke["horizon"] == 24 and len(smoke["variables"]) == 7
    assert {"teacher", "student", "baseline"} <= set(smoke["metrics"])
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/forecast", "/v1/forecast/batch", "/v1/forecast/npy", "/v1/models"} <= set(paths)


def test_served_forecast_equals_the_in_process_model(served, history):
    client, pipe = served["client"], served["run"]
    response = client.post("/v1/forecast", json={"model": "smoke-24", "history": history.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "smoke-24" and body["horizon"] == 24
    local = ForecastModel.from_registry(pipe.storage, "smoke-24", body["version"])
    expected = local.forecast(history[None])[0]
    assert np.allclose(body["forecast"], expected, rtol=1e-5, atol=1e-5)
    # in the units of the history: the served model inverts exactly the scaler it was trained with
    students = served["run"].students
    if body["version"] == "v1":
        import torch

        mean, std = np.asarray(pipe.dataset.scaler.mean), np.asarray(pipe.dataset.scaler.std)
        z = (history - mean) / std
        with torch.no_grad():
            raw = load_trained(pipe.storage, students, "student")(torch.from_numpy(z[None]).float()).prediction[0]
            raw = raw.double()
        assert np.allclose(body["forecast"], raw.numpy() * std + mean, rtol=1e-4, atol=1e-4)


def test_batch_and_binary_forms(served, history):
    client = served["client"]
    histories = np.stack([history, history * 1.01, history * 0.99])
    single = [client.post("/v1/forecast", json={"model": "smoke-24", "history": h.tolist()}).json()["forecast"]
              for h in histories]
    batch = client.post("/v1/forecast/batch", json={"model": "smoke-24", "histories": histories.tolist()})
    assert batch.status_code == 200 and np.allclose(batch.json()["forecasts"], single, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    np.save(buffer, histories.astype(np.float32))
    binary = client.post("/v1/forecast/npy", params={"model": "smoke-24"}, content=buffer.getvalue(),
                         headers={"content-type": "application/x-npy"})
    assert binary.status_code == 200 and binary.headers["x-horizon"] == "24"
    result = np.load(io.BytesIO(binary.content), allow_pickle=False)
    assert result.shape == (3, 24, 7) and np.allclose(result, single, rtol=1e-3, atol=1e-3)


def test_a_quantile_model_answers_its_quantiles_and_a_point_model_as_before(served, history):
    """/v1/models lists a quantile model's levels; its single (gathered) and batch answers carry
    `quantiles` by level, shaped like the forecast, ordered around it, and equal to the in-process
    model's; .npy answers the point alone; a point model's answers and listing hold no `quantiles`
    key; the client reads them into columns beside the forecast."""
    from timedistill import Client

    client, storage = served["client"], served["run"].storage
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models[QUANTILE_MODEL]["quantiles"] == [0.1, 0.5, 0.9] and "quantiles" not in models["smoke-24"]

    histories = np.stack([history, history * 1.01])
    single = client.post("/v1/forecast", json={"model": QUANTILE_MODEL, "history": history.tolist()}).json()
    batch = client.post("/v1/forecast/batch", json={"model": QUANTILE_MODEL, "histories": histories.tolist()}).json()
    assert list(single["quantiles"]) == list(batch["quantiles"]) == ["0.1", "0.5", "0.9"]
    point, quantiles = ForecastModel.from_registry(storage, QUANTILE_MODEL).forecast_quantiles(histories)
    for answer, key, rows in ((single, "forecast", 0), (batch, "forecasts", slice(None))):
        forecast = np.asarray(answer[key])  # [S, C] or [N, S, C]
        levels = {level: np.asarray(values) for level, values in answer["quantiles"].items()}
        assert all(values.shape == forecast.shape for values in levels.values())
        np.testing.assert_allclose(forecast, point[rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.stack(list(levels.values()), axis=-3), quantiles[rows], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(levels["0.5"], forecast, rtol=1e-6, atol=1e-6)
        assert (levels["0.1"] <= forecast + 1e-6).all() and (forecast <= levels["0.9"] + 1e-6).all()
    buffer = io.BytesIO()
    np.save(buffer, histories)
    binary = client.post("/v1/forecast/npy", params={"model": QUANTILE_MODEL}, content=buffer.getvalue(),
                         headers={"content-type": "application/x-npy"})  # the point forecasts only
    assert binary.status_code == 200 and np.allclose(np.load(io.BytesIO(binary.content)), point, atol=1e-3)
    for path, body in (("/v1/forecast", {"history": history.tolist()}),
                       ("/v1/forecast/batch", {"histories": histories.tolist()})):
        assert "quantiles" not in client.post(path, json={"model": "smoke-24", **body}).json()

    with Client(str(client.base_url), token=TOKEN) as typed:
        result = typed.forecast(QUANTILE_MODEL, history)
        assert set(result.quantiles) == {0.1, 0.5, 0.9} and result.quantiles[0.9].shape == (24, 7)
        frame = result.to_polars()
        assert {"OT_q0.1", "OT_q0.9"} <= set(frame.columns) and "OT_q0.5" not in frame.columns
        assert (frame["OT_q0.1"] <= frame["OT"] + 1e-6).all() and typed.forecast("smoke-24", history).quantiles is None


def npy_header(shape: tuple, descr: str = "<f8", data: bytes = b"") -> bytes:
    """A .npy body whose header declares `shape` (whatever it is), followed by `data`."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
    return stream.getvalue() + data


def bad_requests(history):
    rows = history.tolist()
    npy, npz, objects = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.save(npy, np.array(["a", "b"]))
    np.savez(npz, history=history)
    np.save(objects, np.array([[object()] * 7] * 96), allow_pickle=True)
    huge = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float64))
    huge["shape"] = (10**6, 10**6, 7)  # 56 TB declared, 16 bytes sent: must fail before allocating
    lying = io.BytesIO()
    np.lib.format.write_array_header_1_0(lying, huge)
    lying.write(b"\0" * 16)
    overflow = [list(row) for row in rows]
    overflow[5][2] = 1e308  # finite, but not once standardized into float32
    return {
        "malformed JSON": ("post", "/v1/forecast", {"content": b'{"model": "smoke-24", "history": [[1,'}, 422),
        "too few rows": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": rows[:50]}}, 422),
        "too few columns": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": [r[:3] for r in rows]}},
                            422),
        "ragged rows": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": [[1, 2], [3]]}}, 422),
        "NaN": ("post", "/v1/forecast", {"content": b'{"model": "smoke-24", "history": [[NaN, 1]]}'}, 422),
        "infinity": ("post", "/v1/forecast", {"content": b'{"model": "smoke-24", "history": [[1e999, 1]]}'}, 422),
        "unknown model": ("post", "/v1/forecast", {"json": {"model": "nope-1", "history": rows}}, 404),
        "unknown version": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": rows, "version": "v99"}},
                            404),
        "traversal in name": ("post", "/v1/forecast", {"json": {"model": "../../etc/passwd", "history": rows}}, 400),
        "traversal in version": ("post", "/v1/forecast",
                                 {"json": {"model": "smoke-24", "history": rows, "version": "../../x"}}, 404),
        "traversal in npy query": ("post", "/v1/forecast/npy", {"params": {"model": "a/../b"}, "content": b"x"}, 400),
        "not an npy body": ("post", "/v1/forecast/npy", {"params": {"model": "smoke-24"}, "content": b"garbage"}, 400),
        "npy of strings": ("post", "/v1/forecast/npy", {"params": {"model": "smoke-24"}, "content": npy.getvalue()},
                           422),
        "extra field": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": rows, "x": 1}}, 422),
        "empty batch": ("post", "/v1/forecast/batch", {"json": {"model": "smoke-24", "histories": []}}, 422),
        "oversized body": ("post", "/v1/forecast", {"content": b" " * (16 * 2**20 + 1)}, 413),
        "1e308 in a history": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": overflow}}, 422),
        ".npz body": ("post", "/v1/forecast/npy", {"params": {"model": "smoke-24"}, "content": npz.getvalue()}, 400),
        "lying .npy header": ("post", "/v1/forecast/npy", {"params": {"model": "smoke-24"},
                                                            "content": lying.getvalue()}, 400),
        "pickled objects": ("post", "/v1/forecast/npy", {"params": {"model": "smoke-24"},
                                                          "content": objects.getvalue()}, 422),
        "start near 9999-12-31": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": rows,
                                                                    "start": "9999-12-28T00:00:00"}}, 422),
        "timestamps near 9999-12-31": ("post", "/v1/forecast", {"json": {"model": "smoke-24", "history": rows,
                                                                         "timestamps": late_hours(len(rows))}}, 422),
        "batch starts near 9999-12-31": ("post", "/v1/forecast/batch", {"json": {
            "model": "smoke-24", "histories": [rows], "starts": ["9999-12-31T00:00:00"]}}, 422),
        "batch timestamps near 9999-12-31": ("post", "/v1/forecast/batch", {"json": {
            "model": "smoke-24", "histories": [rows], "timestamps": [late_hours(len(rows))]}}, 422),
        ".npy shape whose product overflows": ("post", "/v1/forecast/npy", {
            "params": {"model": "smoke-24"}, "content": npy_header((4294967296, 4294967296, 7))}, 400),
        ".npy of negative dimensions": ("post", "/v1/forecast/npy", {
            "params": {"model": "smoke-24"}, "content": npy_header((-1, -96, 7), data=bytes(96 * 7 * 8))}, 422),
        ".npy of negative dimensions, 2-d": ("post", "/v1/forecast/npy", {
            "params": {"model": "smoke-24"}, "content": npy_header((-96, -7), data=bytes(96 * 7 * 8))}, 422),
    }


def late_hours(count: int) -> list[str]:
    """`count` hourly timestamps ending an hour before the end of 9999."""
    end = datetime(9999, 12, 31, 22)
    return [(end - timedelta(hours=count - 1 - i)).isoformat() for i in range(count)]


def test_bad_input_is_a_4xx_never_a_500(served, history):
    client = served["client"]
    for case, (method, path, kwargs, status) in bad_requests(history).items():
        if "content" in kwargs and path == "/v1/forecast":
            kwargs = {**kwargs, "headers": {**AUTH, "content-type": "application/json"}}
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (case, response.status_code, response.text)
        assert response.json()["detail"], case  # a message that says what is wrong


def test_bearer_token_is_required(served, history):
    anonymous = httpx.post(f"http://127.0.0.1:{served['port']}/v1/forecast",
                           json={"model": "smoke-24", "history": history.tolist()})
    assert anonymous.status_code == 401
    wrong = httpx.get(f"http://127.0.0.1:{served['port']}/v1/models", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_a_new_version_is_picked_up_without_failed_requests(served, history):
    client, run = served["client"], served["run"]
    pipe = run
    before = latest(pipe.storage, "smoke-24")
    outcomes: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=str(client.base_url), headers=AUTH, timeout=60) as own:
            while not stop.is_set():
                response = own.post("/v1/forecast", json={"model": "smoke-24", "history": history.tolist()})
                version = response.json().get("version") if response.status_code == 200 else None
                outcomes.append((response.status_code, version))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    config = load_config("smoke", ["registry.gate=always"])
    decision = register(config, pipe.storage, pipe.dataset, run.students, run.row, run_id="hot-swap")
    assert decision.registered
    deadline = time.time() + 60
    while time.time() < deadline and not any(v == decision.version for _, v in outcomes[-20:]):
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    statuses = {status for status, _ in outcomes}
    versions_seen = [v for _, v in outcomes]
    assert statuses == {200}, f"failed requests during the swap: {[o for o in outcomes if o[0] != 200][:5]}"
    assert before in versions_seen and decision.version in versions_seen
    assert versions_seen[-1] == decision.version  # once switched, it stays switched
    assert len(outcomes) >= 20


def test_a_model_that_fails_to_load_fails_only_its_own_requests(served, history):
    """Single histories of different models share the ingress's batches; one model's error must
    not reach the requests of the others."""
    client, storage = served["client"], served["run"].storage
    source = f"registry/smoke-24/{latest(storage, 'smoke-24')}"
    for name in storage.listdir(source):
        data = b"not a checkpoint" if name == "student.pt" else storage.read_bytes(f"{source}/{name}")
        storage.write_bytes(f"registry/broken-24/v1/{name}", data)
    storage.write_bytes("registry/broken-24/LATEST", b"v1\n")

    def status(model: str) -> tuple[str, int]:
        response = client.post("/v1/forecast", json={"model": model, "history": history.tolist()})
        return model, response.status_code

    with ThreadPoolExecutor(8) as threads:
        outcomes = list(threads.map(status, ["smoke-24", "broken-24"] * 12))
    assert {code for model, code in outcomes if model == "smoke-24"} == {200}, outcomes
    assert {code for model, code in outcomes if model == "broken-24"} == {503}, outcomes  # held out, and why


def test_the_python_client_against_the_server(served, history):
    """timedistill.Client: longer histories, dated forecasts, named variables, .npy batches,
    the server's message on a 4xx; the API declares its responses and its bearer scheme."""
    from datetime import datetime, timedelta

    from timedistill import Client
    from timedistill.client import RequestError

    longer = np.concatenate([history[:24], history])  # 120 rows: the last 96 are used
    stamps = [datetime(2020, 1, 1) + timedelta(hours=h) for h in range(len(longer))]
    with Client(str(served["client"].base_url), token=TOKEN, npy_min_batch=2) as client:
        assert "smoke-24" in {m.name for m in client.models()}
        dated = client.forecast("smoke-24", longer, timestamps=stamps)
        plain = client.forecast("smoke-24", history, version=dated.version)
        assert np.allclose(dated.values, plain.values, rtol=1e-6) and plain.timestamps is None
        assert dated.timestamps[0] == stamps[-1] + timedelta(hours=1) and len(dated.timestamps) == 24
        assert dated.variables[-1] == "OT" and dated.to_polars().columns[0] == "date"  # the data's time column
        started = client.forecast("smoke-24", history, start=stamps[0], version=dated.version)
        assert started.timestamps[0] == stamps[0] + timedelta(hours=96)
        batch = client.forecast_batch("smoke-24", [history, history * 1.01], version=dated.version)  # as .npy
        assert batch.shape == (2, 24, 7) and np.allclose(batch[0], plain.values, rtol=1e-3, atol=1e-3)
        with pytest.raises(RequestError, match="not registered") as raised:
            client.forecast("nope-1", history)
        assert raised.value.status == 404
    spec = served["client"].get("/openapi.json").json()
    assert any(scheme["type"] == "http" and scheme["scheme"] == "bearer"
               for scheme in spec["components"]["securitySchemes"].values())
    answer = spec["paths"]["/v1/forecast"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/ForecastResponse")


@pytest.fixture(scope="module")
def named_history(smoke_pipeline, smoke_csv):
    """The smoke rows before the test split as a frame with names, the date column as text."""
    import polars as pl

    start = smoke_pipeline.dataset.splits["test"][0]
    return pl.read_csv(smoke_csv).slice(start - 120, 120)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]))
def test_any_column_order_gives_the_same_forecast_through_the_client(served, named_history, order):
    """A frame is sent with its names and matched by them on the server: reversed or shuffled
    columns give the forecast load_model gives (the date column, text, dates it)."""
    import timedistill
    from timedistill import Client

    expected = timedistill.load_model("smoke-24", version="v1", storage=served["run"].storage.root).predict(
        named_history)
    with Client(str(served["client"].base_url), token=TOKEN) as client:
        got = client.forecast("smoke-24", named_history.select(order), version="v1").to_polars()
        batch = client.forecast_batch("smoke-24", [named_history.select(order)] * 2, version="v1")
    assert got.columns == expected.columns and got["date"].to_list() == expected["date"].to_list()
    assert np.allclose(got.drop("date").to_numpy(), expected.drop("date").to_numpy(), rtol=1e-6)
    assert np.allclose(batch[1], expected.drop("date").to_numpy(), rtol=1e-6)


def test_named_histories_over_http(served, named_history):
    """JSON with names, as an object of columns or as records; what does not match is a 422 that
    names it; a long frame answers in the long layout through the client."""
    from datetime import datetime, timedelta

    client, expected = served["client"], None
    first = datetime.fromisoformat(named_history["date"][-1]) + timedelta(hours=1)
    columns = {name: named_history[name].to_list() for name in reversed(named_history.columns)}
    records = named_history.select(reversed(named_history.columns)).to_dicts()
    answers = [client.post("/v1/forecast", json={"model": "smoke-24", "version": "v1", "history": history})
               for history in (columns, records)]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["time_column"] == "date" and body["timestamps"][0] == first.isoformat()
        expected = expected if expected is not None else body["forecast"]
        assert np.allclose(body["forecast"], expected)
    for broken, message in (({k: v for k, v in columns.items() if k != "OT"}, "lacks 'OT'"),
                            ({**columns, "Oil": columns["OT"]}, "'Oil' is not a variable"),
                            ({**columns, "date": columns["date"][::-1]}, "not in increasing order"),
                            ({**columns, "OT": [None, *columns["OT"][1:]]}, None)):
        response = client.post("/v1/forecast", json={"model": "smoke-24", "version": "v1", "history": broken})
        if message is None:  # a missing value before the last lookback rows is not read
            assert response.status_code == 200, response.text
            continue
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    both = client.post("/v1/forecast", json={"model": "smoke-24", "history": columns,
                                             "start": "2020-01-01T00:00:00"})
    assert both.status_code == 422 and "time column" in both.json()["detail"]
    from timedistill import Client

    long = named_history.unpivot(index="date", variable_name="unique_id", value_name="y").rename({"date": "ds"})
    with Client(str(client.base_url), token=TOKEN) as python_client:
        result = python_client.forecast("smoke-24", long, version="v1")
    assert result.to_polars("long").columns == ["unique_id", "ds", "y"]
    assert np.allclose(result.values, np.asarray(expected))


def test_a_rollback_is_picked_up_like_a_new_version(served, history):
    from timedistill.tasks.registry import rollback

    client, run = served["client"], served["run"]
    storage = run.storage
    config = load_config("smoke", ["registry.gate=always"])
    newer = register(config, storage, run.dataset, run.students, run.row, run_id="rollback-test")
    older = rollback(storage, "smoke-24", "v1")
    assert older == newer.version
    def served_version() -> str:
        return client.post("/v1/forecast", json={"model": "smoke-24", "history": history.tolist()}).json()["version"]

    deadline = time.time() + 30
    while time.time() < deadline and served_version() != "v1":
        time.sleep(0.5)
    assert served_version() == "v1"

def copy_version(storage, source: str, target: str, broken: dict[str, bytes] | None = None) -> None:
    for name in storage.listdir(source):
        data = (broken or {}).get(name, storage.read_bytes(f"{source}/{name}"))
        storage.write_bytes(f"{target}/{name}", data)


def test_a_broken_registry_entry_never_takes_serving_down(served, history):
    """A LATEST that does not load falls back to the newest version that does; a model with no
    good version is unavailable (503) and reported, and every other model keeps serving."""
    client, storage = served["client"], served["run"].storage
    good = f"registry/smoke-24/{latest(storage, 'smoke-24')}"
    weights = storage.read_bytes(f"{good}/student.pt")
    copy_version(storage, good, "registry/fallback-24/v1")
    copy_version(storage, good, "registry/fallback-24/v2", {"student.pt": weights[: len(weights) // 2]})
    storage.write_bytes("registry/fallback-24/LATEST", b"v2\n")
    storage.write_bytes("registry/dangling-24/LATEST", b"v5\n")  # no such version
    config = storage.read_bytes(f"{good}/config.json")
    copy_version(storage, good, "registry/badconfig-24/v1", {"config.json": config[: len(config) // 2]})
    storage.write_bytes("registry/badconfig-24/LATEST", b"v1\n")

    fallback = client.post("/v1/forecast", json={"model": "fallback-24", "history": history.tolist()})
    assert fallback.status_code == 200 and fallback.json()["version"] == "v1", fallback.text
    listing = client.get("/v1/models")
    assert listing.status_code == 200
    body = listing.json()
    models = {m["name"]: m for m in body["models"]}
    assert models["fallback-24"]["version"] == "v1" and "does not load" in models["fallback-24"]["broken"]["v2"]
    assert "smoke-24" in models and {"dangling-24", "badconfig-24"} <= set(body["unavailable"])
    assert "v5" in body["unavailable"]["dangling-24"] and "do not read" in body["unavailable"]["badconfig-24"]
    for name in ("dangling-24", "badconfig-24"):
        refused = client.post("/v1/forecast", json={"model": name, "history": history.tolist()})
        assert refused.status_code == 503 and refused.json()["detail"], refused.text
    assert client.post("/v1/forecast", json={"model": "smoke-24", "history": history.tolist()}).status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and set(ready.json()["unavailable"]) >= {"dangling-24", "badconfig-24"}
    assert "v2" in ready.json()["broken"]["fallback-24"]
    assert client.post("/v1/reload").status_code == 200


def test_a_stalled_body_times_out(served):
    """A request whose body never finishes is answered or dropped within serve.request_timeout_s."""
    port = served["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /v1/forecast HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                           b"authorization: Bearer " + TOKEN.encode() + b"\r\ncontent-length: 100000\r\n\r\n{\"model")
        began = time.monotonic()
        answer = connection.recv(4096)  # a status line, or b"" when the server closes
        waited = time.monotonic() - began
    assert waited < 3 + 10, (waited, answer[:100])



def test_overload_is_a_503_with_retry_after_and_a_full_replica_evicts_its_least_recent_model(
        served, history, session_root, smoke_csv):
    """A second application with room for one request in flight and one queued, and one model per
    pool replica: three models asked for in turn each evict the one before and still answer; a
    burst beyond the queue is refused at once with 503 and Retry-After, not queued forever."""
    from ray import serve

    from timedistill.serving.app import build_app

    client, storage = served["client"], served["run"].storage
    good = f"registry/smoke-24/{latest(storage, 'smoke-24')}"
    for name in ("lru-a-24", "lru-b-24"):
        copy_version(storage, good, f"registry/{name}/v1")
        storage.write_bytes(f"registry/{name}/LATEST", b"v1\n")
    tight = [f"serve.{key}={value}" for key, value in {
        "min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1, "max_models_per_replica": 1,
        "max_ongoing_requests": 1, "max_queued_requests": 1, "max_batch_size": 1, "auth_token": TOKEN,
        "ingress_models": 0}.items()]  # every request to the pool: its eviction is what is tested
    config = load_config("smoke", [*smoke_overrides(session_root, smoke_csv), *tight])
    serve.run(build_app(config), name="tight", route_prefix="/tight")
    try:
        expected = ForecastModel.from_registry(storage, "smoke-24").forecast(history[None])[0]
        for model in ["smoke-24", "lru-a-24", "lru-b-24"] * 2:  # each one loads where only one fits
            answer = client.post("/tight/v1/forecast", json={"model": model, "history": history.tolist()})
            assert answer.status_code == 200, (model, answer.text)
            np.testing.assert_allclose(np.asarray(answer.json()["forecast"]), expected, rtol=1e-5, atol=1e-5)

        def forecast(_: int) -> httpx.Response:
            return client.post("/tight/v1/forecast", json={"model": "smoke-24", "history": history.tolist()})

        with ThreadPoolExecutor(32) as threads:
            answers = list(threads.map(forecast, range(96)))
        codes = [answer.status_code for answer in answers]
        assert set(codes) == {200, 503}, codes
        refused = next(answer for answer in answers if answer.status_code == 503)
        assert refused.headers["retry-after"] == "1", refused.headers
    finally:
        serve.delete("tight")


def test_the_ingress_keeps_the_models_in_use_and_loads_others_beside_the_pool(served, history):
    """ResidentModels: a first request finds nothing (the pool answers it) and starts the load;
    then the model answers here, the least recently used one leaves beyond capacity, a model that
    does not load stays with the pool, and capacity 0 keeps nothing."""
    import asyncio

    from timedistill.serving.app import ResidentModels
    from timedistill.serving.registry_view import ModelRef
    from timedistill.store.registry import version_files

    storage = served["run"].storage
    ids = [ModelRef(name, version, version_files(storage, name, version))
           for name, version in (("smoke-24", latest(storage, "smoke-24")), (QUANTILE_MODEL, "v1"))]
    missing = ModelRef("no-such-model", "v1", "")

    async def scenario(capacity: int, requests: list[ModelRef]) -> tuple[list[bool], list[ModelRef]]:
        resident, found = ResidentModels(storage, capacity), []
        for model_id in requests:
            found.append(resident.get(model_id) is not None)
            await asyncio.sleep(0)
            while resident.loading:
                await asyncio.sleep(0.01)
        return found, list(resident.models)

    assert asyncio.run(scenario(1, [ids[0], ids[0], ids[1], ids[1], ids[0]])) == (
        [False, True, False, True, False], [ids[0]])
    assert asyncio.run(scenario(2, [ids[0], ids[1], ids[0], ids[1]])) == ([False, False, True, True], ids)
    assert asyncio.run(scenario(0, [ids[0], ids[0]])) == ([False, False], [])
    assert asyncio.run(scenario(2, [missing, missing])) == ([False, False], [])

    async def tried_once() -> set[ModelRef]:
        resident = ResidentModels(storage, 2)
        resident.get(missing)
        while resident.loading:
            await asyncio.sleep(0.01)
        resident.get(missing)
        assert not resident.loading  # not loaded again
        return resident.failed

    assert asyncio.run(tried_once()) == {missing}


def test_weights_broken_after_verification_are_a_503_never_a_500_and_served_again_once_repaired(served, history):
    """A version verified and in use whose weights are truncated on disk: within the reload
    interval its requests are a 503 naming why (the ingress, or a replica loading it, notices that
    its files changed), /readyz is not ready, and once the files are repaired the version serves
    again without a reload."""
    client, storage = served["client"], served["run"].storage
    copy_version(storage, f"registry/smoke-24/{latest(storage, 'smoke-24')}", "registry/late-24/v1")
    storage.write_bytes("registry/late-24/LATEST", b"v1\n")
    body = {"model": "late-24", "history": history.tolist()}
    assert client.post("/v1/forecast", json=body).status_code == 200
    weights = storage.read_bytes("registry/late-24/v1/student.pt")
    storage.write_bytes("registry/late-24/v1/student.pt", weights[: len(weights) // 3])
    time.sleep(1)  # serve.reload_interval_s=0.5
    answers = [client.post("/v1/forecast", json=body) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [503] * 3, [answer.text for answer in answers]
    assert all(answer.headers["retry-after"] for answer in answers)
    assert "does not load" in answers[-1].json()["detail"] or "changed" in answers[-1].json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "late-24" in ready.json()["unavailable"], ready.text
    storage.write_bytes("registry/late-24/v1/student.pt", weights)
    deadline = time.time() + 30
    while time.time() < deadline and client.post("/v1/forecast", json=body).status_code != 200:
        time.sleep(0.5)
    assert client.post("/v1/forecast", json=body).status_code == 200
    storage.delete("registry/late-24")


# ---- the API in this process, over a registry of tiny models -----------------------------------

TINY = "tiny-4"  # lookback 8, horizon 4, two variables, random weights
TINY_HISTORY = np.linspace(3.0, 7.0, 16).reshape(8, 2).tolist()


def tiny_registry(root) -> object:
    """A registry of two tiny models (TINY and other-4), each v1 and LATEST."""
    import torch

    from bench.bench_serving import register_random
    from timedistill.store.records import ModelSpec
    from timedistill.store.storage import Storage

    storage = Storage(str(root))
    torch.manual_seed(0)
    for name in (TINY, "other-4"):
        register_random(storage, name, ModelSpec(name="mlp", lookback=8, horizon=4, n_vars=2))
    return storage


class InProcessClient:
    """A blocking client of an ASGI application in this process (httpx's ASGI transport, on an
    event loop of its own); an exception in the application is a 500, as a server answers it."""

    def __init__(self, app) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                      base_url="http://api")

    def __enter__(self) -> InProcessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.http.get(url, **kwargs))

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.http.post(url, **kwargs))


def api_client(storage, ttl: float) -> InProcessClient:
    """The API as `create_api` builds it for Ray Serve, in this process, with the bare benchmark
    server's backend (the model loaded in the request handler): no Ray."""
    from bench.serve_bare import InProcess
    from timedistill.conf import ServeConfig
    from timedistill.serving.api import create_api
    from timedistill.serving.registry_view import RegistryView

    return InProcessClient(create_api(ServeConfig(), RegistryView(storage, ttl=ttl), InProcess(storage)))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    with api_client(tiny_registry(tmp_path_factory.mktemp("fuzz")), ttl=60) as client:
        yield client


def test_dates_the_server_cannot_represent_are_a_422_naming_the_field(tmp_path):
    with api_client(tiny_registry(tmp_path), ttl=60) as client:
        cases = {
            "start": ("/v1/forecast", {"history": TINY_HISTORY, "start": "9999-12-31T20:00:00"}),
            "timestamps": ("/v1/forecast", {"history": TINY_HISTORY, "timestamps": late_hours(8)}),
            "starts[1]": ("/v1/forecast/batch", {"histories": [TINY_HISTORY] * 2,
                                                 "starts": ["2020-01-01T00:00:00", "9999-12-31T20:00:00+14:00"]}),
            "timestamps[0]": ("/v1/forecast/batch", {"histories": [TINY_HISTORY], "timestamps": [late_hours(8)]}),
        }
        for field, (path, body) in cases.items():
            answer = client.post(path, json={"model": TINY, **body})
            assert answer.status_code == 422, (field, answer.text)
            assert answer.json()["detail"].startswith(f"{field}: ") and "cannot represent" in answer.json()["detail"]
        last = client.post("/v1/forecast", json={"model": TINY, "history": TINY_HISTORY,
                                                   "start": "9999-12-31T12:00:00"})  # its last step is 23:00
        assert last.status_code == 200 and last.json()["timestamps"][-1] == "9999-12-31T23:00:00", last.text


JSON_NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(),
                         st.sampled_from([10**400, -(10**400), 1e308, 5e-324]))
MOMENTS = st.one_of(st.datetimes(), st.datetimes(min_value=datetime(9999, 12, 31)),
                    st.datetimes(max_value=datetime(1, 1, 2)))
ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
DATES = st.builds(lambda moment, zone: moment.replace(tzinfo=zone).isoformat(), MOMENTS, ZONES)


@st.composite
def histories(draw) -> list[list]:
    """Rows of numbers: mostly rectangular and near TINY's shape (8 rows of 2), sometimes ragged."""
    rows, columns = draw(st.sampled_from([0, 1, 7, 8, 9, 12])), draw(st.sampled_from([0, 1, 2, 2, 2, 3]))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.lists(st.lists(JSON_NUMBERS, max_size=3), min_size=rows, max_size=rows))
    return draw(st.lists(st.lists(JSON_NUMBERS, min_size=columns, max_size=columns), min_size=rows, max_size=rows))


ROWS = histories()
MODELS = st.one_of(st.just(TINY), st.sampled_from(["nope-4", "../tiny-4", "Tiny-4", ""]))  # TINY half the time
VERSIONS = st.one_of(st.sampled_from([None, "v1"]),
                     st.sampled_from(["v0", "v2", "v999999999", "v" + "9" * 5000, "../v1", "1"]))


@st.composite
def json_requests(draw) -> tuple[str, bytes]:
    """A request to a JSON route: mostly well formed, with edges in every field."""
    if draw(st.booleans()):
        history = draw(ROWS)
        body = {"model": draw(MODELS), "history": history}
        if draw(st.booleans()):
            body["start"] = draw(DATES)
        if draw(st.booleans()):
            body["timestamps"] = draw(st.lists(DATES, min_size=len(history), max_size=len(history) + 1))
        path = "/v1/forecast"
    else:
        histories = draw(st.lists(ROWS, min_size=0, max_size=3))
        body = {"model": draw(MODELS), "histories": histories}
        if draw(st.booleans()):
            body["starts"] = draw(st.lists(DATES, min_size=len(histories), max_size=len(histories)))
        if draw(st.booleans()):
            body["timestamps"] = [draw(st.lists(DATES, min_size=len(h), max_size=len(h))) for h in histories]
        path = "/v1/forecast/batch"
    if (version := draw(VERSIONS)) is not None:
        body["version"] = version
    return path, json.dumps(body).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=json_requests())
def test_fuzzed_json_requests_are_never_a_500(fuzzed, request):
    path, body = request
    answer = fuzzed.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code in (200, 400, 404, 413, 422), (answer.status_code, answer.text, body[:300])
    assert answer.status_code == 200 or answer.json()["detail"]


DIMENSIONS = st.one_of(st.integers(-3, 40), st.integers(-(2**64), 2**64),
                       st.sampled_from([2**31, 2**32, 2**62, 2**63, -(2**32), -(2**63)]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(DIMENSIONS, min_size=0, max_size=4),
       descr=st.sampled_from(["<f8", "<f4", ">f8", "<f2", "<i8", "|u1", "|b1", "<c16", "<U3", "|O", "|V8"]),
       sized=st.booleans(), data=st.binary(max_size=600), version=VERSIONS)
def test_fuzzed_npy_bodies_are_never_a_500(fuzzed, shape, descr, sized, data, version):
    """Headers of any shape and dtype, followed by random bytes or, half the time, by as many
    bytes as the header's dimensions would take if their signs were dropped."""
    if sized:
        declared = abs(int(np.prod(np.array(shape, dtype=object)))) * np.dtype(descr).itemsize
        data = bytes(declared) if declared <= 2**16 else data
    params = {"model": TINY} | ({"version": version} if version else {})
    answer = fuzzed.post("/v1/forecast/npy", params=params, content=npy_header(tuple(shape), descr, data))
    assert answer.status_code in (200, 400, 404, 422), (answer.status_code, answer.text, shape, descr, len(data))


LATEST_FAULTS = {  # a model's LATEST content -> what its reason says
    "not-utf8-4": (b"\xff\xfev1\n", "not UTF-8"),
    "empty-4": (b"", "empty"),
    "folder-4": (None, "folder"),
    "garbage-4": (b"the newest one\n", "not a version"),
    "nowhere-4": (b"v7\n", "v7"),  # dangling: no version at all
}


def test_any_latest_content_makes_that_model_alone_unavailable(tmp_path):
    """Whatever a LATEST holds, /v1/models lists the model as unavailable with the reason,
    /readyz is not ready and says why, its forecasts are a 503, and the other models answer;
    a dangling LATEST over older good versions falls back to the newest of them."""
    storage = tiny_registry(tmp_path)
    for name, (content, _) in LATEST_FAULTS.items():
        copy_version(storage, f"registry/{TINY}/v1", f"registry/{name}/v1")
        if name == "nowhere-4":
            storage.delete(f"registry/{name}/v1")
        if content is None:
            storage.write_bytes(f"registry/{name}/LATEST/v1", b"v1\n")
        else:
            storage.write_bytes(f"registry/{name}/LATEST", content)
    copy_version(storage, f"registry/{TINY}/v1", "registry/ahead-4/v1")
    storage.write_bytes("registry/ahead-4/LATEST", b"v3\n")  # dangling, with v1 before it
    with api_client(storage, ttl=60) as client:
        listing = client.get("/v1/models")
        assert listing.status_code == 200, listing.text
        unavailable, served = listing.json()["unavailable"], {m["name"]: m for m in listing.json()["models"]}
        assert set(unavailable) == set(LATEST_FAULTS), unavailable
        for name, (_, reason) in LATEST_FAULTS.items():
            assert reason in unavailable[name], (name, unavailable[name])
            refused = client.post("/v1/forecast", json={"model": name, "history": TINY_HISTORY})
            assert refused.status_code == 503 and reason in refused.json()["detail"], refused.text
        assert set(served) == {TINY, "other-4", "ahead-4"} and served["ahead-4"]["version"] == "v1"
        assert "v3" in served["ahead-4"]["broken"]["v3"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and set(ready.json()["unavailable"]) == set(LATEST_FAULTS)
        for name in (TINY, "other-4", "ahead-4"):
            assert client.post("/v1/forecast", json={"model": name, "history": TINY_HISTORY}).status_code == 200


def test_an_empty_latest_is_not_ready_with_zero_models(tmp_path):
    storage = tiny_registry(tmp_path)
    storage.delete("registry/other-4")
    storage.write_bytes(f"registry/{TINY}/LATEST", b"")
    with api_client(storage, ttl=60) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["models"] == 0 and TINY in ready.json()["unavailable"]
        assert client.post("/v1/forecast", json={"model": TINY, "history": TINY_HISTORY}).status_code == 503


def test_no_verdict_outlives_a_change_of_the_files(tmp_path):
    """Weights truncated after verification: within the reload interval the version is verified
    again and held out (503 and not ready, never a 500); repaired, it serves again. With a long
    interval, the backend notices the change when it loads the version, and the next request
    verifies it again; a reload verifies everything at once."""
    storage = tiny_registry(tmp_path)
    weights_path = f"registry/{TINY}/v1/student.pt"
    weights = storage.read_bytes(weights_path)
    request = {"model": TINY, "history": TINY_HISTORY}
    with api_client(storage, ttl=0.2) as client:
        assert client.post("/v1/forecast", json=request).status_code == 200
        storage.write_bytes(weights_path, weights[: len(weights) // 2])
        time.sleep(0.3)
        broken = client.post("/v1/forecast", json=request)
        assert broken.status_code == 503 and "does not load" in broken.json()["detail"], broken.text
        assert client.get("/readyz").status_code == 503
        storage.write_bytes(weights_path, weights)
        time.sleep(0.3)
        assert client.post("/v1/forecast", json=request).status_code == 200
        assert client.get("/readyz").status_code == 200

    with api_client(storage, ttl=600) as client:
        assert client.get("/readyz").status_code == 200  # verified; not loaded by the backend yet
        storage.write_bytes(weights_path, weights[: len(weights) // 2])
        changed = client.post("/v1/forecast", json=request)
        assert changed.status_code == 503 and "changed since it was verified" in changed.json()["detail"], changed.text
        again = client.post("/v1/forecast", json=request)
        assert again.status_code == 503 and "does not load" in again.json()["detail"], again.text
        storage.write_bytes(weights_path, weights)
        assert client.post("/v1/forecast", json=request).status_code == 503  # the verdict holds for 600 s ...
        assert client.post("/v1/reload").status_code == 200  # ... unless reloaded
        assert client.post("/v1/forecast", json=request).status_code == 200


def test_a_rollback_onto_a_repaired_version_serves_it(tmp_path):
    """A version refused while broken, repaired on disk and rolled back to, is verified again."""
    from timedistill.tasks.registry import rollback

    storage = tiny_registry(tmp_path)
    copy_version(storage, f"registry/{TINY}/v1", f"registry/{TINY}/v2")
    storage.write_bytes(f"registry/{TINY}/LATEST", b"v2\n")
    weights = storage.read_bytes(f"registry/{TINY}/v1/student.pt")
    storage.write_bytes(f"registry/{TINY}/v1/student.pt", b"truncated")
    with api_client(storage, ttl=0.2) as client:
        refused = client.post("/v1/forecast", json={"model": TINY, "history": TINY_HISTORY, "version": "v1"})
        assert refused.status_code == 503, refused.text
        storage.write_bytes(f"registry/{TINY}/v1/student.pt", weights)
        assert rollback(storage, TINY, "v1") == "v2"
        time.sleep(0.3)
        answer = client.post("/v1/forecast", json={"model": TINY, "history": TINY_HISTORY})
        assert answer.status_code == 200 and answer.json()["version"] == "v1", answer.text
