"""A real multi-node run: a Ray head and a second Ray node (separate processes, joined over
127.0.0.1), an S3-compatible object store (moto's server), and the command line as a user runs
it. Everything started here is stopped at the end, by process id.

Run apart from the other tests (`pytest -m cluster`): it starts Ray clusters of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from timedistill.store.storage import Storage

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
BUCKET = "timedistill-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Processes:
    """Background processes, each in its own process group, stopped by process id."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, {}

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
        self.started[name] = (process, log)
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the process group; returns the process's exit status."""
        process, log = self.started.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
        return process.returncode

    def stop_all(self) -> None:
        for name in list(self.started)[::-1]:
            self.stop(name)

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text().splitlines()[-lines:])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("cluster")
    procs = Processes(work)
    gcs_port, s3_port, dashboard_port = free_port(), free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
           "PREFECT_HOME": str(work / "prefect"), "PYTHONUNBUFFERED": "1",
           "RAY_AUTH_MODE": "token",  # clients present the token that `ray start` generated
           # `ray start --block` drains its node for up to 30 s on SIGTERM (for Serve on Kubernetes);
           # the test's nodes stop at once
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{gcs_port}"
    try:
        procs.start("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env, work)
        procs.start("head", [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={gcs_port}", "--num-cpus=1", "--include-dashboard=false",
                             # its API server binds a port even without the dashboard: not 8265, which a
                             # local Ray on this machine may hold
                             f"--dashboard-port={dashboard_port}", "--disable-usage-stats"], env, work)
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", s3_port)) == 0, 30, "the S3 server")
        storage = Storage(f"s3://{BUCKET}", endpoint)
        storage.fs.create_dir(BUCKET)
        wait_for(lambda: subprocess.run([str(BIN / "ray"), "status", f"--address={address}"], env=env,
                                        capture_output=True).returncode == 0, 90, "the Ray head")

        def add_worker(name: str) -> None:
            procs.start(name, [str(BIN / "ray"), "start", "--block", f"--address={address}",
                               "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"], env, work)
            wait_for(lambda: alive_nodes(address, env) >= 2, 90, f"{name} to join")

        add_worker("worker")
        yield {"address": address, "endpoint": endpoint, "env": env, "work": work, "procs": procs,
               "add_worker": add_worker}
    finally:
        procs.stop_all()


def alive_nodes(address: str, env: dict[str, str]) -> int:
    status = subprocess.run([str(BIN / "ray"), "status", f"--address={address}"], env=env, capture_output=True,
                            text=True)
    if status.returncode != 0:
        return 0
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return active.count("node_")


def timedistill(cluster: dict, *args: str, timeout: float = 900) -> dict:
    result = subprocess.run([str(BIN / "timedistill"), *args, "--ray-address", cluster["address"], "--json"],
                            env=cluster["env"], cwd=cluster["work"], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def s3_settings(cluster: dict, prefix: str) -> list[str]:
    return ["--set", f"storage.root=s3://{BUCKET}/{prefix}",
            "--set", f"storage.endpoint_override={cluster['endpoint']}"]


# two horizons, each run one worker with one CPU: on two nodes of one CPU, both fit at once
TWO_HORIZONS = ["--set", "data.horizons=[24, 48]", "--set", "ray.num_workers=1", "--set", "ray.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def parallel_run(cluster) -> dict:
    """The retrain flow on the cluster with horizons in parallel (ray.parallel_runs unset: as
    many as fit), into the bucket under run/."""
    return timedistill(cluster, "retrain", "smoke", *s3_settings(cluster, "run"), *TWO_HORIZONS)


def test_retrain_on_two_nodes_into_object_storage_then_serve_from_it(cluster, parallel_run):
    summary = parallel_run
    # the two horizons' teachers trained at the same time, one on each node
    assert len({node for teacher in summary["teachers"] for node in teacher["worker_nodes"]}) == 2
    assert summary["run_dir"].startswith(f"s3://{BUCKET}/run/runs/smoke/")
    # every artifact landed in the bucket, nothing on the local disk
    storage = Storage(f"s3://{BUCKET}/run", cluster["endpoint"])
    for folder in ("datasets", "teachers", "cache", "runs", "registry", "ray"):
        assert storage.listdir(folder), folder
    assert storage.read_bytes("registry/smoke-24/LATEST").decode().strip() == "v1"
    assert any(name.startswith("teacher-") for name in storage.listdir("ray"))  # Ray Train checkpoints
    assert not (cluster["work"] / "artifacts").exists()

    # serve the registered model straight from the bucket
    port = free_port()
    procs = cluster["procs"]
    procs.start("serve", [str(BIN / "timedistill"), "serve", "smoke", "--ray-address", cluster["address"],
                          *s3_settings(cluster, "run"), "--set", f"serve.port={port}"], cluster["env"], cluster["work"])
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 180, "timedistill serve")
        history = [[float(i % 7 + j) for j in range(7)] for i in range(96)]
        response = httpx.post(f"{url}/v1/forecast", json={"model": "smoke-24", "history": history}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == "v1" and len(response.json()["forecast"]) == 24
    except Exception:
        print(procs.tail("serve"))
        raise
    finally:
        status = procs.stop("serve", signal.SIGTERM, timeout=60)
    assert status == 0, f"timedistill serve did not shut down cleanly on SIGTERM (exit {status})"


def test_horizons_train_at_once_with_the_results_of_one_after_the_other(cluster, parallel_run):
    """The two horizons' teachers, then their students, overlap in time, and score what the same
    config scores with one horizon after the other (ray.parallel_runs=1)."""
    sequential = timedistill(cluster, "retrain", "smoke", *s3_settings(cluster, "sequential"), *TWO_HORIZONS,
                             "--set", "ray.parallel_runs=1")

    def spans(summary: dict, kind: str) -> list[tuple[datetime, datetime]]:
        """When each horizon's run of `kind` began and ended."""
        prefix = summary["run_dir"].split("/runs/")[0]
        storage = Storage(prefix, cluster["endpoint"])
        folder = summary["run_dir"].removeprefix(prefix + "/")
        runs = summary["teachers"] if kind == "teachers" else [
            storage.read_json(f"{folder}/h{horizon}/students.json") for horizon in (24, 48)]
        return [(datetime.fromisoformat(run["started"]), datetime.fromisoformat(run["created"])) for run in runs]

    for kind in ("teachers", "students"):
        (first, second) = spans(parallel_run, kind)
        assert first[0] < second[1] and second[0] < first[1], f"the {kind} of the two horizons did not overlap"
        (first, second) = spans(sequential, kind)
        assert first[1] <= second[0], f"ray.parallel_runs=1 ran the {kind} at once"
    assert [row["horizon"] for row in parallel_run["results"]] == [24, 48]
    for ours, theirs in zip(parallel_run["results"], sequential["results"], strict=True):
        for role in ("teacher", "student", "baseline"):
            assert ours[role]["test_mse"] == pytest.approx(theirs[role]["test_mse"], rel=1e-6), role


def test_losing_a_worker_node_resumes_from_the_last_checkpoint(cluster):
    """The worker node is killed during teacher training; a replacement node joins and Ray Train
    resumes from the last checkpoint in the bucket instead of starting over."""
    storage = Storage(f"s3://{BUCKET}/fault", cluster["endpoint"])
    # enough that the node dies mid-run (it is killed once two checkpoints exist; an epoch takes at
    # least Ray Train's 2 s reporting tick), few enough that the resumed run ends soon after
    EPOCHS = 16
    args = [str(BIN / "timedistill"), "teacher", "smoke", "--ray-address", cluster["address"], "--json",
            *s3_settings(cluster, "fault"), "--set", "ray.num_workers=2", "--set", "ray.cpus_per_worker=1",
            "--set", "data.max_rows=3000", "--set", f"teacher.epochs={EPOCHS}", "--set", f"teacher.patience={EPOCHS}",
            "--set", "teacher.params={d_model: 64, d_ff: 64, n_heads: 2, e_layers: 2}"]
    training = subprocess.Popen(args, env=cluster["env"], cwd=cluster["work"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def checkpoints() -> list[str]:
        runs = [name for name in storage.listdir("ray") if name.startswith("teacher-")]
        return [c for run in runs for c in storage.listdir(f"ray/{run}") if c.startswith("checkpoint_")]

    wait_for(lambda: len(checkpoints()) >= 2 or training.poll() is not None, 600, "the first checkpoints")
    assert training.poll() is None, "training finished before the node could be lost: " + training.stderr.read()
    cluster["procs"].stop("worker", signal.SIGKILL)  # the node dies, with its training worker
    cluster["add_worker"]("replacement")
    out, err = training.communicate(timeout=900)
    assert training.returncode == 0, err[-4000:]
    (row,) = json.loads(out.strip().splitlines()[-1])["results"]
    assert row["epochs"] == EPOCHS
    (key,) = storage.listdir("teachers/smoke")
    meta = storage.read_json(f"teachers/smoke/{key}/teacher.json")
    assert meta["resumed_from"] >= 1  # the final attempt started from a checkpoint, not from epoch 0
    assert [h["epoch"] for h in meta["history"]] == list(range(1, EPOCHS + 1))
