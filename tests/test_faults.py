"""Commands as a user runs them on one machine, and the faults of docs/operations.md:
a local `timedistill serve`, in either ingress mode (Ray Serve's proxy, or HAProxy, whose mode is
fixed when Ray starts), forecasts what the model does in process and listens on loopback only,
and two of them share a machine; Ctrl-C or SIGTERM, to a command or to its whole process group,
stops `retrain` (mid-teacher) and `serve` within 10 s with one line, leaving no process of theirs
running (Ray's, HAProxy, Prefect's temporary server) and no port open; after SIGKILL nothing of
theirs outlives them by more than 10 s; a serve whose ingress cannot start says so in one line; a
replica killed under load costs the requests in flight on it. Run apart from the other tests
(`pytest -m cluster`): each command starts a Ray of its own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.bench_serving import MODEL, free_port, make_registry, register_random, wait_healthy
from tests.conftest import ROOT
from tests.processes import Tagged
from timedistill.store.forecaster import ForecastModel
from timedistill.store.storage import Storage
from timedistill.store.weights import resolve_spec

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def started(args: list[str], tag: Tagged, log: Path) -> subprocess.Popen:
    env = tag.env(OMP_NUM_THREADS="1")
    env.pop("PREFECT_API_URL", None)  # the command's own temporary Prefect server, as for a user
    with open(log, "w") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stopped(process: subprocess.Popen, signum: int, *, group: bool = False, within: float = 120) -> int:
    """Signal the command (or its whole process group, as systemd and supervisors stop a service)
    and wait for its exit."""
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        subprocess.run(["kill", "-9", f"-{process.pid}"], check=False)
        pytest.fail(f"the command did not exit within {within} s of the signal")


def said_after(log: Path, mark: int) -> list[str]:
    """What the command printed from `mark` (a length of its log) on, but its progress lines
    (indented): what a stop printed."""
    return [line for line in log.read_text()[mark:].splitlines() if line.strip() and not line.startswith("  ")]


def wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {text!r}: {content[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} within {timeout} s: {log.read_text()[-3000:]}")


def assert_nothing_left(tag: Tagged, log: Path, grace: float = 15) -> None:
    assert not tag.left_running(grace), f"left running: {tag.pids()}; {log.read_text()[-2000:]}"
    assert not tag.listeners()


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone
        return b""


def haproxy_folders(tag: Tagged) -> set[Path]:
    """The folders of the command's HAProxy (its configuration, admin socket and state), from the
    configuration it was started with (`-f`)."""
    folders = set()
    for pid, command in tag.pids().items():
        args = command_line(pid).split(b"\0")
        if command == "haproxy" and b"-f" in args:
            folders.add(Path(args[args.index(b"-f") + 1].decode()).parent)
    return folders


def announced_ports(log: Path) -> tuple[int, int]:
    """HAProxy's stats and metrics ports, as the start-up line of `timedistill serve` names them."""
    found = re.search(r"HAProxy stats http://127\.0\.0\.1:(\d+)/stats, metrics http://127\.0\.0\.1:(\d+)/metrics",
                      log.read_text())
    assert found, log.read_text()[-3000:]
    return int(found.group(1)), int(found.group(2))


def forecast_answers(port: int) -> httpx.Response:
    history = np.random.default_rng(0).normal(size=(720, 7)).tolist()
    return httpx.post(f"http://127.0.0.1:{port}/v1/forecast", json={"model": MODEL, "history": history}, timeout=60)


def started_serve(tmp_path: Path, *settings: str) -> tuple[subprocess.Popen, int, Tagged, Path]:
    """`timedistill serve` on a registry of the serving benchmark's models; returns the process,
    its port, its tag and its log."""
    root = tmp_path / "artifacts"
    make_registry(root)
    port, tag, log = free_port(), Tagged(), tmp_path / "serve.log"
    overrides = [f"storage.root={root}", f"serve.port={port}", *settings]
    command = [str(BIN / "timedistill"), "serve", *[arg for item in overrides for arg in ("--set", item)]]
    return started(command, tag, log), port, tag, log


def test_two_servers_share_a_host_and_each_stops_alone(tmp_path):
    """Two `timedistill serve` in HAProxy mode on one machine (each on its own serve.port) both
    answer, each with HAProxy ports of its own. The first stops within 10 s of SIGTERM to its whole
    process group, with one line, leaving nothing; the second, killed outright, leaves nothing 10 s
    later; neither stop touches the other server."""
    first_folder, second_folder = tmp_path / "first", tmp_path / "second"
    first_folder.mkdir(), second_folder.mkdir()
    first, first_port, first_tag, first_log = started_serve(first_folder, "serve.ingress=haproxy")
    second = None
    try:
        wait_healthy(f"http://127.0.0.1:{first_port}", first)
        second, second_port, second_tag, second_log = started_serve(second_folder, "serve.ingress=haproxy")
        wait_healthy(f"http://127.0.0.1:{second_port}", second)
        wait_for(first_log, "Ctrl-C stops", first)
        wait_for(second_log, "Ctrl-C stops", second)
        assert [forecast_answers(port).status_code for port in (first_port, second_port)] == [200, 200]
        first_ports, second_ports = announced_ports(first_log), announced_ports(second_log)
        assert not set(first_ports) & set(second_ports)
        for stats, _ in (first_ports, second_ports):
            assert "HAProxy" in httpx.get(f"http://127.0.0.1:{stats}/stats", timeout=5).text
        first_folders, second_folders = haproxy_folders(first_tag), haproxy_folders(second_tag)
        second_tag.pids()  # learns its Ray's session folder (where its agents are found)

        mark = len(first_log.read_text())
        assert stopped(first, signal.SIGTERM, group=True, within=10) == 0, first_log.read_text()[-3000:]
        assert said_after(first_log, mark) == ["shutting down Ray Serve"], first_log.read_text()[mark:]
        assert_nothing_left(first_tag, first_log, grace=5)
        assert not any(folder.exists() for folder in first_folders)
        assert forecast_answers(second_port).status_code == 200  # the other server still answers

        second.kill()
        second.wait(10)
        assert_nothing_left(second_tag, second_log, grace=10)
        assert not any(folder.exists() for folder in second_folders)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_serve_whose_ingress_cannot_start_exits_with_one_line(tmp_path):
    """serve.port held by another program: HAProxy cannot bind it, and `serve` says so in one line
    and exits 1, leaving nothing running (not an 80-line traceback, not a server that answers
    nothing)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server, _, tag, log = started_serve(tmp_path, "serve.ingress=haproxy", f"serve.port={taken}")
        try:
            status = server.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"serve did not give up: {log.read_text()[-3000:]}")
    printed = [line for line in log.read_text().splitlines() if line.strip() and " INFO " not in line]
    assert status == 1, log.read_text()[-3000:]
    assert len(printed) == 1 and printed[0].startswith("error: the HTTP ingress (HAProxy) did not start: "), printed
    assert f"127.0.0.1:{taken}" in printed[0] and "Address already in use" in printed[0]
    assert_nothing_left(tag, log)


def retrain_command(root: Path) -> list[str]:
    """`timedistill retrain smoke` with a teacher that trains long enough to be interrupted."""
    return [str(BIN / "timedistill"), "retrain", str(ROOT / "conf" / "smoke.yaml"), "--set", f"storage.root={root}",
            "--set", "teacher.epochs=200", "--set", "teacher.patience=1000"]


def test_an_interrupted_retrain_stops_with_one_line_and_resumes_from_its_checkpoint(tmp_path):
    command = retrain_command(tmp_path / "artifacts")
    first, log = Tagged(), tmp_path / "first.log"
    retrain = started(command, first, log)
    mark = len(wait_for(log, "epoch 2/200", retrain))
    assert stopped(retrain, signal.SIGINT, within=10) == 130, log.read_text()[-3000:]
    said = said_after(log, mark)
    assert len(said) == 1 and said[0].startswith("interrupted; nothing half written; rerun resumes from "), said
    checkpoint = Path(said[0].rsplit(" ", 1)[1])
    assert checkpoint.is_dir() and any(checkpoint.glob("checkpoint_*"))
    assert "Traceback" not in log.read_text()
    assert_nothing_left(first, log)

    again, log = Tagged(), tmp_path / "again.log"
    retrain = started(command, again, log)
    text = wait_for(log, "/200: val MSE", retrain)
    first_epoch = int(re.search(r"epoch (\d+)/200: val MSE", text).group(1))
    assert first_epoch > 1, text[-2000:]  # resumed from the first run's checkpoint, not from scratch
    # SIGTERM to the whole process group, as systemd or a supervisor stops it: the signal reaches
    # Ray's GCS, raylet and Prefect's server too, and the command stops all the same
    mark = len(log.read_text())
    assert stopped(retrain, signal.SIGTERM, group=True, within=10) == 130, log.read_text()[-3000:]
    said = said_after(log, mark)
    assert len(said) == 1 and said[0].startswith("interrupted; nothing half written"), said
    assert "Traceback" not in log.read_text()
    assert_nothing_left(again, log, grace=5)


def test_nothing_outlives_a_killed_retrain_by_10_s(tmp_path):
    """SIGKILL leaves the command no say: what it started (Prefect's temporary server, Ray's node
    and agents) is ended by its watchdog (tasks/lifetime.py)."""
    tag, log = Tagged(), tmp_path / "retrain.log"
    retrain = started(retrain_command(tmp_path / "artifacts"), tag, log)
    wait_for(log, "epoch 2/200", retrain)
    running = tag.pids()  # also learns its Ray's session folder, where its agents are found
    assert any(b"uvicorn" in command_line(pid) for pid in running), running  # Prefect's temporary server
    retrain.kill()
    retrain.wait(10)
    assert_nothing_left(tag, log, grace=10)


def test_sigterm_stops_schedule_and_its_temporary_prefect_server(tmp_path):
    tag, log = Tagged(), tmp_path / "schedule.log"
    schedule = started([str(BIN / "timedistill"), "schedule", str(ROOT / "conf" / "smoke.yaml"), "--cron",
                        "0 3 * * *", "--set", f"storage.root={tmp_path / 'artifacts'}"], tag, log)
    wait_for(log, "polling for scheduled runs", schedule)  # printed by Prefect just before its runner starts
    time.sleep(3)  # the runner is up: a signal before it has installed its handler can be lost in Prefect
    assert stopped(schedule, signal.SIGTERM) == 130, log.read_text()[-3000:]
    assert_nothing_left(tag, log)


def replica_pids(tag: Tagged, deployment: str) -> list[int]:
    found = []
    for pid in tag.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"ServeReplica:timedistill:{deployment}".encode() in command:
            found.append(pid)
    return found


async def load_and_kill(url: str, history: list, clients: int, kill: int, seconds: float) -> tuple[float, list]:
    """`clients` clients send forecasts for `seconds`; after 4 s, `kill` is killed. Returns the
    kill's time and every request's (start, end, outcome), times from the start of the load."""
    began = time.monotonic()
    outcomes: list[tuple[float, float, int | str]] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as session:
            while time.monotonic() - began < seconds:
                start = time.monotonic() - began
                try:
                    status: int | str = (await session.post("/v1/forecast", json={"model": MODEL,
                                                                                  "history": history})).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                outcomes.append((start, time.monotonic() - began, status))

    load = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(4)
    killed_at = time.monotonic() - began
    os.kill(kill, signal.SIGKILL)
    await asyncio.gather(*load)
    return killed_at, outcomes


def two_replicas(tag: Tagged, deployment: str) -> list[int]:
    """The pids of the deployment's two replicas (the default where the machine has the CPUs: 2
    here, as on CI), once both are running (Serve replaces a killed one within seconds)."""
    deadline = time.monotonic() + 60
    while len(replicas := replica_pids(tag, deployment)) != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(replicas) == 2, replicas
    return replicas


def test_losing_a_replica_under_load_costs_only_the_requests_in_flight_on_it(tmp_path):
    """One server, two losses one after the other: an ingress replica (ForecastAPI), then a pool
    replica (ModelPool), each killed under load from 8 clients."""
    server, port, tag, _ = started_serve(tmp_path, "serve.access_log=false")
    clients = 8
    lost = {}
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        history = np.random.default_rng(0).normal(size=(720, 7)).tolist()
        for deployment in ("ForecastAPI", "ModelPool"):
            lost[deployment] = asyncio.run(load_and_kill(f"http://127.0.0.1:{port}", history, clients,
                                                         two_replicas(tag, deployment)[0], seconds=12))
    finally:
        stopped(server, signal.SIGTERM)
    for deployment, (killed_at, outcomes) in lost.items():
        failed = [outcome for outcome in outcomes if outcome[2] != 200]
        assert len(failed) <= clients, (deployment, failed)  # at most one request per client: those in flight
        assert all(start < killed_at + 0.5 for start, _, _ in failed), (deployment, killed_at, failed)
        answered = sorted(end for start, end, status in outcomes if status == 200 and end > killed_at)
        assert answered and answered[0] - killed_at < 5, (deployment, killed_at, answered[:3])  # one replica: ~10 s
        assert len(answered) > 10 * clients, deployment  # and it kept answering


class Recorded(httpx.AsyncHTTPTransport):
    """httpx's transport, recording each answer's status and Retry-After."""

    def __init__(self, answers: list[tuple[int, str | None]]) -> None:
        super().__init__()
        self.answers = answers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.answers.append((response.status_code, response.headers.get("retry-after")))
        return response


SLOW = "slow-96"  # a TimeMixer teacher: about 0.5 s of CPU for a batch of 32 histories


async def pool_load_and_kill(url: str, replicas: list[int],
                             seconds: float) -> tuple[list[tuple[int, str | None]], list[str]]:
    """`timedistill.AsyncClient`s send batches of 32 histories for the SLOW model (each keeps a
    pool replica computing for a while, so that requests are in flight when it dies) for
    `seconds`; after 4 s, the first of `replicas` seen computing is killed (Serve routes a model's
    requests to the replica that holds it, which need not be either one in particular). Returns
    every answer the clients got (status, Retry-After), retries included, and the errors they
    raised."""
    from timedistill import AsyncClient

    began = time.monotonic()
    histories = np.random.default_rng(0).normal(size=(32, 720, 7)).astype(np.float32)
    answers: list[tuple[int, str | None]] = []
    errors: list[str] = []

    async def client() -> None:
        async with AsyncClient(url, timeout=60, retries=5, transport=Recorded(answers)) as session:
            while time.monotonic() - began < seconds:
                try:
                    assert (await session.forecast_batch(SLOW, histories)).shape == (32, 96, 7)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    load = [asyncio.create_task(client()) for _ in range(8)]
    await asyncio.sleep(4)
    os.kill(await computing(replicas), signal.SIGKILL)
    await asyncio.gather(*load)
    return answers, errors


async def computing(pids: list[int], timeout: float = 8) -> int:
    """The first of `pids` seen computing (it used most of a CPU over the last 50 ms: a forecast in
    flight); after `timeout`, the one that used the most CPU meanwhile."""

    def cpu_ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks (1/100 s)

    deadline = time.monotonic() + timeout
    first = before = {pid: cpu_ticks(pid) for pid in pids}
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = {pid: cpu_ticks(pid) for pid in pids}
        if busy := [pid for pid in pids if now[pid] - before[pid] >= 3]:
            return busy[0]
        before = now
    return max(pids, key=lambda pid: before[pid] - first[pid])


@pytest.mark.parametrize("ingress", ["proxy", "haproxy"])
def test_a_local_serve_listens_on_loopback_only_survives_a_lost_pool_replica_and_stops_on_sigterm(tmp_path, ingress):
    """Every port of a local serve is on loopback (HAProxy's stats and metrics too, the stats on the
    port asked for, its admin socket for its owner only). It forecasts what the model does in
    process and refuses a bad model name. With serve.ingress_models=0 every forecast is computed in
    the model pool: a pool replica killed under load costs the requests in flight on it a 503 with
    Retry-After, never a 500, and the Python client sends them again. SIGTERM then stops it,
    leaving nothing (HAProxy's folder included)."""
    stats = free_port()
    server, port, tag, log = started_serve(tmp_path, "serve.access_log=false", "serve.ingress_models=0",
                                           f"serve.ingress={ingress}", *(
                                               [f"serve.haproxy_stats_port={stats}"] if ingress == "haproxy" else []))
    root = tmp_path / "artifacts"
    try:
        register_random(Storage(str(root)), SLOW, resolve_spec(
            "teacher", "timemixer", lookback=720, horizon=96, n_vars=7, preset="etth1", params={}))
        wait_healthy(f"http://127.0.0.1:{port}", server)
        history = np.random.default_rng(1).normal(5, 2, (720, 7))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            answer = client.post("/v1/forecast", json={"model": MODEL, "history": history.tolist()})
            bad = client.post("/v1/forecast", json={"model": "../etc", "history": history.tolist()})
        assert answer.status_code == 200, answer.text
        expected = ForecastModel.from_registry(Storage(str(root)), MODEL).forecast(history[None])[0]
        np.testing.assert_allclose(np.asarray(answer.json()["forecast"]), expected, rtol=1e-5, atol=1e-5)
        assert bad.status_code == 400, bad.text
        wait_for(log, "Ctrl-C stops", server)
        if ingress == "haproxy":
            assert announced_ports(log)[0] == stats  # the port asked for (serve.haproxy_stats_port)
            assert "HAProxy" in httpx.get(f"http://127.0.0.1:{stats}/stats", timeout=5).text
        listeners, folders = tag.listeners(), haproxy_folders(tag)
        sockets = [folder / "admin.sock" for folder in folders]
        modes = [stat.S_IMODE(path.stat().st_mode) for path in sockets]
        answers, errors = asyncio.run(pool_load_and_kill(f"http://127.0.0.1:{port}", two_replicas(tag, "ModelPool"),
                                                         seconds=12))
    finally:
        status = stopped(server, signal.SIGTERM)
    assert any(listener.port == port for listener in listeners), [str(item) for item in listeners]
    assert len({listener.pid for listener in listeners}) >= 5  # Ray's GCS, raylet, agents, replicas: all found
    if ingress == "haproxy":  # its stats page and Prometheus endpoint too (serving/ingress.py, loopback_haproxy)
        assert set(announced_ports(log)) <= {listener.port for listener in listeners if listener.command == "haproxy"}
        # its admin socket reconfigures the ingress: for its owner only, in a folder removed at the stop
        assert len(sockets) == 1 and modes == [0o600], (sockets, [oct(mode) for mode in modes])
        assert not any(folder.exists() for folder in folders)
    exposed = [str(item) for item in listeners if not item.loopback]
    assert not exposed, exposed

    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 8, statuses
    assert 503 in statuses, "no request was in flight on the killed replica"
    assert all(retry_after for status, retry_after in answers if status == 503), answers
    assert not errors, errors  # each 503 was sent again, and answered

    assert status == 0, log.read_text()[-3000:]
    assert_nothing_left(tag, log)
