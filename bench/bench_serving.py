"""Serving benchmark: Ray Serve against a bare single-process FastAPI + uvicorn server running the
same model (an ETTh1-shaped student: lookback 720, horizon 96, 7 variables, D=512), side by side
in one run, on loopback, at 1, 16 and 64 concurrent clients, for JSON and binary (.npy) bodies,
single histories and batches of 64.

    python -m bench.bench_serving [--seconds 8]

The load generator is an asyncio + httpx client in this process; its own CPU use is reported
(it shares the machine's cores with both servers). Throughput counts forecasts (histories), so a
batch request of 64 counts 64.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

from bench.report import markdown_table, write_section
from conf import load_config

ROOT = Path(__file__).resolve().parent / ".artifacts" / "serving"
MODEL = "bench-96"
KINDS = ["json single", "npy single", "json batch", "npy batch"]
BATCH = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_registry() -> None:
    """A registry with one student of the benchmark's shape (random weights: the cost is the same)."""
    import models
    from tasks.storage import Storage

    shutil.rmtree(ROOT, ignore_errors=True)
    storage = Storage(str(ROOT))
    torch.manual_seed(0)
    student = models.build_model("mlp", lookback=720, horizon=96, n_vars=7)
    buffer = io.BytesIO()
    torch.save(student.state_dict(), buffer)
    folder = f"registry/{MODEL}/v1"
    variables = [f"x{i}" for i in range(7)]
    storage.write_bytes(f"{folder}/student.pt", buffer.getvalue())
    storage.write_json(
        f"{folder}/config.json",
        {
            "model": MODEL,
            "version": "v1",
            "student": "mlp",
            "hparams": {},
            "lookback": 720,
            "horizon": 96,
            "variables": variables,
        },
    )
    storage.write_json(f"{folder}/scaler.json", {"variables": variables, "mean": [5.0] * 7, "std": [2.0] * 7})
    metric = {"test_mse": 0.0, "test_mae": 0.0, "params": student.num_params(), "latency_ms": 0.0}
    storage.write_json(f"{folder}/metrics.json", {"student": metric})
    storage.write_bytes(f"{folder}/_SUCCESS", b"")
    storage.write_bytes(f"registry/{MODEL}/LATEST", b"v1\n")


def requests_for(kind: str, history: np.ndarray) -> tuple[str, dict, int]:
    """(path, httpx kwargs, forecasts per request) of one request of a kind. Bodies are encoded once,
    so that the load generator spends its CPU on HTTP, not on re-encoding the same payload."""
    if kind.startswith("json"):
        single = kind == "json single"
        body = {"model": MODEL, "history": history.tolist()} if single else {
            "model": MODEL, "histories": np.repeat(history[None], BATCH, 0).tolist()}
        kwargs = {"content": orjson.dumps(body), "headers": {"content-type": "application/json"}}
        return ("/v1/forecast" if single else "/v1/forecast/batch"), kwargs, 1 if single else BATCH
    buffer = io.BytesIO()
    array = history[None].repeat(BATCH, 0) if kind == "npy batch" else history
    np.save(buffer, array.astype(np.float32))
    headers = {"content-type": "application/x-npy"}
    return (
        "/v1/forecast/npy",
        {"params": {"model": MODEL}, "content": buffer.getvalue(), "headers": headers},
        BATCH if kind == "npy batch" else 1,
    )


async def load(url: str, kind: str, clients: int, seconds: float, history: np.ndarray) -> dict[str, float]:
    path, kwargs, per_request = requests_for(kind, history)
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await client.post(path, **kwargs)  # warm up (model load on first use)

        async def one_client() -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    response = await client.post(path, **kwargs)
                except httpx.TransportError:  # a dropped connection counts as a failed request
                    failures += 1
                    continue
                if response.status_code != 200:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - began)

        cpu = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - began
        used = resource.getrusage(resource.RUSAGE_SELF)
    generator_cpu = (used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime) / wall
    return {
        "p50": 1000 * statistics.median(latencies),
        "p99": 1000 * float(np.percentile(latencies, 99)),
        "forecasts_s": len(latencies) * per_request / wall,
        "requests": len(latencies),
        "failures": failures,
        "generator_cpu": generator_cpu,
    }


# Server-side processes by role, found by a part of their command line (Ray names its workers
# ray::<class>). Linux only: read from /proc.
ROLES = {
    "ProxyActor": "Ray Serve HTTP proxy",
    "ForecastAPI": "Ray Serve ingress",
    "ModelPool": "Ray Serve model pool",
    "ServeController": "Ray Serve controller",
    "bench.serve_bare": "bare server",
}
PROFILED = ("json single", 16)  # the cell of the parity target


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by the servers' processes, summed per role."""
    used: dict[str, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        role = next((name for key, name in ROLES.items() if key in command), None)
        if role is not None:
            used[role] = used.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def direct_ingress_url(app_name: str) -> str:
    """Where the ingress replica itself listens (Ray Serve's direct ingress, which production puts
    behind a load balancer such as HAProxy): the first HTTP target of the application."""
    import ray
    from ray.serve.context import _get_global_client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app_name))
        for group in groups:
            # until a replica runs, the targets are the proxies, in groups of no application
            if group.app_name == app_name and group.protocol == "HTTP" and group.targets:
                return f"http://127.0.0.1:{group.targets[0].port}"
        time.sleep(1)
    raise RuntimeError(f"no direct ingress target for application {app_name!r}")


def wait_healthy(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", nargs="*", type=int, default=[1, 16, 64])
    parser.add_argument("--kinds", nargs="*", default=KINDS, choices=KINDS)
    parser.add_argument("--set", action="append", default=[], help="a Ray Serve config override, e.g. "
                        "serve.min_replicas=2")
    args = parser.parse_args()
    make_registry()
    history = np.random.default_rng(0).normal(5, 2, (720, 7))

    bare_port, serve_port = free_port(), free_port()
    env = {**os.environ, "TIMEDISTILL_STORAGE": str(ROOT), "OMP_NUM_THREADS": "1"}
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.serve_bare:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
        ],
        env=env,
        start_new_session=True,
    )
    # Direct ingress has the ingress replica serve HTTP itself besides the proxy, so one cluster
    # gives both paths; it must be set before Ray starts (the replicas inherit the environment).
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    from ray import serve

    from serving.app import APP_NAME, build_app
    from tasks.runtime import ray_session

    config = load_config(None, [f"storage.root={ROOT}", f"serve.port={serve_port}", *args.set])
    settings = config.serve
    results = []
    try:
        with ray_session(config):
            serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
            serve.run(build_app(config), name=APP_NAME, route_prefix="/")
            servers = {
                "Ray Serve": f"http://127.0.0.1:{serve_port}",
                "Ray Serve direct": direct_ingress_url(APP_NAME),
                "bare FastAPI": f"http://127.0.0.1:{bare_port}",
            }
            for url in servers.values():
                wait_healthy(url)
            for kind in args.kinds:
                for clients in args.clients:
                    for name, url in servers.items():  # side by side: same kind, same clients, one after the other
                        before = cpu_by_role() if (kind, clients) == PROFILED else {}
                        stats = asyncio.run(load(url, kind, clients, args.seconds, history))
                        results.append({"server": name, "kind": kind, "clients": clients, **stats})
                        if before:
                            after = cpu_by_role()
                            results[-1]["cpu_ms_per_request"] = {
                                role: 1000 * (after[role] - before.get(role, 0.0)) / max(stats["requests"], 1)
                                for role in after if (role == "bare server") == (name == "bare FastAPI")}
                        print(json.dumps(results[-1]), flush=True)
            serve.shutdown()
    finally:
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait(30)

    if set(args.kinds) != set(KINDS) or 16 not in args.clients:
        return  # a partial run: printed above, BENCHMARKS.md left alone

    def lookup(server: str, kind: str, clients: int) -> dict:
        return next(r for r in results if (r["server"], r["kind"], r["clients"]) == (server, kind, clients))

    rows = [
        [
            r["kind"],
            r["clients"],
            r["server"],
            f"{r['p50']:.1f}",
            f"{r['p99']:.1f}",
            f"{r['forecasts_s']:,.0f}",
            r["failures"],
            f"{100 * r['generator_cpu']:.0f}%",
        ]
        for r in results
    ]
    cpu_rows = [[server, role, f"{ms:.1f}"] for server in ("Ray Serve", "Ray Serve direct", "bare FastAPI")
                for role, ms in lookup(server, *PROFILED)["cpu_ms_per_request"].items() if ms >= 0.05]
    throughput_mode = "on" if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1" else "off"
    single = lookup("Ray Serve", "json single", 16)["forecasts_s"]
    batch = lookup("Ray Serve", "npy batch", 16)["forecasts_s"]
    bare16 = lookup("bare FastAPI", "json single", 16)["forecasts_s"]
    ratio16 = single / bare16
    direct16 = lookup("Ray Serve direct", "json single", 16)["forecasts_s"] / bare16
    text = "\n".join(
        [
            "## Serving (loopback; ETTh1-shaped student, lookback 720, horizon 96, 7 variables)",
            "",
            f"Command: `python -m bench.bench_serving --seconds {args.seconds:g}"
            f"{''.join(f' --set {o}' for o in args.set)}` ({date.today()}, {platform.machine()}, "
            f"{os.cpu_count()} cores; servers and load generator share them). Ray Serve: ingress + model pool, "
            f"{settings.num_cpus:g} CPU per replica, {settings.min_replicas} to {settings.max_replicas} replicas "
            f"each, @serve.batch up to {settings.max_batch_size}, Ray Serve's throughput mode "
            f"(`RAY_SERVE_THROUGHPUT_OPTIMIZED`) {throughput_mode}. Bare: one uvicorn process, the model in the "
            "handler. 'Ray Serve direct' is the same application called on its ingress replica's own port "
            "(`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`, set for the whole run; no HTTP proxy in the path, no load "
            "balancer in front). 'generator CPU' is the load generator's own CPU use (100% = one core); request bodies "
            "are encoded once, before the clock starts.",
            "",
            markdown_table(
                ["request", "clients", "server", "p50 ms", "p99 ms", "forecasts / s", "failed", "generator CPU"], rows
            ),
            "",
            "Server CPU per request, single JSON histories at 16 clients (CPU time of each process from /proc over "
            "the run, divided by the requests answered):",
            "",
            markdown_table(["server", "process", "CPU ms / request"], cpu_rows),
            "",
            f"- Ray Serve vs bare at 16 clients, single JSON histories: **{ratio16:.2f}x** the bare server's "
            f"throughput through the HTTP proxy, **{direct16:.2f}x** with direct ingress.",
            f"- Ray Serve binary batches (.npy, 64 histories) vs single JSON requests at 16 clients: "
            f"**{batch / single:.1f}x** the forecasts per second.",
        ]
    )
    print(text)
    write_section("serving", text)


if __name__ == "__main__":
    main()
