"""`timedistill serve` as users start it, in Ray Serve's high-throughput mode (serve.ingress=haproxy):
a local Ray of its own with HAProxy in front of the ingress replicas. Run apart from the other tests
(`pytest -m cluster`): the mode is fixed when Ray starts, so it cannot share their Ray.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.bench_serving import MODEL, free_port, make_registry, start, stop, wait_healthy
from timedistill.store.forecaster import ForecastModel
from timedistill.store.storage import Storage

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def stats_page(log: Path, timeout: float = 120) -> str:
    """HAProxy's stats page (only there in this mode), as the start-up line names it."""
    deadline = time.monotonic() + timeout
    while not (found := re.search(r"HAProxy stats (http://127\.0\.0\.1:\d+/stats)", log.read_text())):
        if time.monotonic() > deadline:
            pytest.fail(f"no HAProxy stats page in the start-up line: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    return found.group(1)


def test_serve_command_in_haproxy_mode(tmp_path):
    root = tmp_path / "artifacts"
    make_registry(root)
    port, stats = free_port(), free_port()
    server = start([str(BIN / "timedistill"), "serve", "--set", f"storage.root={root}", "--set",
                    f"serve.port={port}", "--set", "serve.ingress=haproxy", "--set",
                    f"serve.haproxy_stats_port={stats}"], tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, server)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}: {(tmp_path / 'serve.log').read_text()[-3000:]}")
        page = stats_page(tmp_path / "serve.log")
        assert page == f"http://127.0.0.1:{stats}/stats"  # the port asked for (serve.haproxy_stats_port)
        assert "HAProxy" in httpx.get(page, timeout=5).text

        history = np.random.default_rng(1).normal(5, 2, (720, 7))
        with httpx.Client(base_url=url, timeout=60) as client:
            answers = [client.post("/v1/forecast", json={"model": MODEL, "history": history.tolist()})
                       for _ in range(3)]
            bad = client.post("/v1/forecast", json={"model": "../etc", "history": history.tolist()})
        assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
        expected = ForecastModel.from_registry(Storage(str(root)), MODEL).forecast(history[None])[0]
        for answer in answers:
            np.testing.assert_allclose(np.asarray(answer.json()["forecast"]), expected, rtol=1e-5, atol=1e-5)
        assert bad.status_code == 400, bad.text
    finally:
        status = stop(server)
    assert status == 0, f"no clean shutdown on SIGTERM (exit {status}): {(tmp_path / 'serve.log').read_text()[-3000:]}"
