"""Serving benchmark: Ray Serve against a bare single-process FastAPI + uvicorn server running the
same model (an ETTh1-shaped student: lookback 720, horizon 96, 7 variables, D=512), side by side
in one run, on loopback, at 1, 16 and 64 concurrent clients, for JSON and binary (.npy) bodies,
single histories and batches of 64.

    python -m bench.bench_serving [--seconds 8]

Ray Serve is `timedistill serve` as users start it, once with each `serve.ingress` (Ray Serve's
default Python proxy, then its HAProxy high-throughput mode), each on a local Ray of its own. Every
cell runs Ray Serve and then the bare server, so each ratio compares two measurements taken one
after the other. The load generator is an asyncio + httpx client in this process; its own CPU use
is reported (it shares the machine's cores with the servers). Throughput counts forecasts
(histories), so a batch request of 64 counts 64.
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
from timedistill.conf import ServeConfig, load_config
from timedistill.store.records import ModelSpec
from timedistill.store.storage import Storage
from timedistill.store.weights import build_forecaster, resolve_spec

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "serving": """\
With its defaults (HAProxy) `timedistill serve` keeps up with the bare server at 16 clients and answers a lone
client within twice its latency; the proxy mode stays far behind. Binary batches are the cheapest form. Teacher
and student answer alike behind either server: the server's cost per request sets the latency, not the model.""",
    "serving-candidates": """\
HAProxy beats the proxy in every cell. A batch that always waits costs a lone client latency; one that never
waits loses throughput at 16 clients; waiting only when others wait keeps most of both. The bare server's own
rate moves between runs, so the ratios decide, not the rates.""",
}

ROOT = Path(__file__).resolve().parent / ".artifacts" / "serving"
MODEL = "bench-96"
TEACHER = "bench-teacher-96"  # served beside the student: what distillation buys behind the server
KINDS = ["json single", "npy single", "json batch", "npy batch"]
BATCH = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_registry(root: Path = ROOT) -> None:
    """A registry with the benchmark's student (MODEL) and, as a model of its own, a teacher of
    the same shape (TEACHER: iTransformer with ETTh1's preset), both with random weights: the cost
    is the same; the metrics are placeholders, nothing was evaluated."""
    from timedistill.store.storage import Storage

    shutil.rmtree(root, ignore_errors=True)
    storage = Storage(str(root))
    torch.manual_seed(0)
    register_random(storage, MODEL, ModelSpec(name="mlp", lookback=720, horizon=96, n_vars=7))
    register_random(storage, TEACHER, resolve_spec("teacher", "itransformer", lookback=720, horizon=96,
                                                        n_vars=7, preset="etth1", params={}))


def register_random(storage: Storage, name: str, spec: ModelSpec) -> None:
    from timedistill.store.records import ModelScore, RegisteredModel, ResultRow
    from timedistill.store.scaler import NamedScaler
    from timedistill.store.weights import state_bytes

    model = build_forecaster(spec)
    variables = [f"x{i}" for i in range(spec.n_vars)]
    config = RegisteredModel(
        model=name, version="v1", student=spec.name, hparams=spec.hparams, lookback=spec.lookback,
        horizon=spec.horizon, variables=variables, target=variables[-1], step="1h", dataset="bench",
        data_fingerprint="-", run_id="-", teacher=None, created=date.today().isoformat(), timedistill_config={})
    score = ModelScore(name=spec.name, test_mse=0.0, test_mae=0.0, params=model.num_params(), latency_ms=None,
                       val_mse=0.0, epochs=0)
    metrics = ResultRow(dataset="bench", horizon=spec.horizon, teacher=score, student=score,
                        student_vs_teacher_pct=0.0, param_ratio=1.0, speedup=None, device="cpu")
    folder = f"registry/{name}/v1"
    storage.write_bytes(f"{folder}/student.pt", state_bytes(model.state_dict()))
    storage.write_json(f"{folder}/config.json", config.to_json())
    storage.write_json(f"{folder}/scaler.json",
                       NamedScaler(variables=variables, mean=(5.0,) * spec.n_vars, std=(2.0,) * spec.n_vars).to_json())
    storage.write_json(f"{folder}/metrics.json", metrics.to_json())
    storage.write_bytes(f"{folder}/_SUCCESS", b"")
    storage.write_bytes(f"registry/{name}/LATEST", b"v1\n")


def requests_for(kind: str, history: np.ndarray, model: str = MODEL) -> tuple[str, dict, int]:
    """(path, httpx kwargs, forecasts per request) of one request of a kind. Bodies are encoded once,
    so that the load generator spends its CPU on HTTP, not on re-encoding the same payload."""
    if kind.startswith("json"):
        single = kind == "json single"
        body = {"model": model, "history": history.tolist()} if single else {
            "model": model, "histories": np.repeat(history[None], BATCH, 0).tolist()}
        kwargs = {"content": orjson.dumps(body), "headers": {"content-type": "application/json"}}
        return ("/v1/forecast" if single else "/v1/forecast/batch"), kwargs, 1 if single else BATCH
    buffer = io.BytesIO()
    array = history[None].repeat(BATCH, 0) if kind == "npy batch" else history
    np.save(buffer, array.astype(np.float32))
    headers = {"content-type": "application/x-npy"}
    return (
        "/v1/forecast/npy",
        {"params": {"model": model}, "content": buffer.getvalue(), "headers": headers},
        BATCH if kind == "npy batch" else 1,
    )


async def load(url: str, kind: str, clients: int, seconds: float, history: np.ndarray,
               model: str = MODEL) -> dict[str, float]:
    path, kwargs, per_request = requests_for(kind, history, model)
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
    "bin/haproxy": "HAProxy",
    "HAProxyManager": "Ray Serve HAProxy manager",
    "ProxyActor": "Ray Serve HTTP proxy",
    "ForecastAPI": "Ray Serve ingress",
    "ModelPool": "Ray Serve model pool",
    "ServeController": "Ray Serve controller",
    "bench.serve_bare": "bare server",
}
PROFILED = ("json single", 16)  # the cell of the parity target
INGRESSES = {"proxy": "Ray Serve (proxy)", "haproxy": "Ray Serve (HAProxy)"}


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


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it answered")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up")


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TIMEDISTILL_STORAGE": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> int | None:
    """SIGTERM, as a service manager stops `timedistill serve`; a process group that outlives
    it (2 minutes: HAProxy mode drains its ingress replicas for 30 s) is killed. Returns the exit
    status, or None when it had to be killed."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


def measure(name: str, url: str, kind: str, clients: int, seconds: float, history: np.ndarray,
            model: str = MODEL) -> dict:
    before = cpu_by_role() if (kind, clients) == PROFILED and model == MODEL else {}
    stats = asyncio.run(load(url, kind, clients, seconds, history, model))
    result = {"server": name, "kind": kind, "clients": clients, "model": model, **stats}
    if before:
        after = cpu_by_role()
        result["cpu_ms_per_request"] = {
            role: 1000 * (after[role] - before.get(role, 0.0)) / max(stats["requests"], 1)
            for role in after if (role == "bare server") == (name == "bare FastAPI")}
    print(json.dumps(result), flush=True)
    return result


def in_process(model: str, history: np.ndarray, calls: int = 200) -> dict[str, float]:
    """The model alone, in this process, one history a call, with torch's default threads: the
    latency distillation is about, before any server."""
    from timedistill.store.forecaster import ForecastModel

    forecaster = ForecastModel.from_registry(Storage(str(ROOT)), model)
    histories = history[None]
    for _ in range(10):
        forecaster.forecast(histories)
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        forecaster.forecast(histories)
        times.append(time.perf_counter() - began)
    return {"p50": 1000 * statistics.median(times), "p99": 1000 * float(np.percentile(times, 99)),
            "forecasts_s": calls / sum(times), "params": forecaster.model.num_params(),
            "threads": torch.get_num_threads()}


CANDIDATES = Path(__file__).resolve().parent / "results" / "serving-candidates"


def pairs_of(rows: list[dict]) -> dict[tuple[str, int], list[tuple[dict, dict]]]:
    """(server, clients) -> its (Ray Serve, bare) pairs, each measured one after the other."""
    found: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
    served = None
    for row in rows:
        if row["server"] != "bare FastAPI":
            served = row if row.get("model", MODEL) == MODEL else None
        elif served is not None:
            found.setdefault((served["server"], served["clients"]), []).append((served, row))
            served = None
    return found


def candidates_table() -> str:
    """The serving defaults compared: one run of this benchmark per candidate (single JSON
    histories, 1 and 16 clients), kept in bench/results/serving-candidates/<name>.jsonl: a header
    line (the command, what the batching does), then the benchmark's own lines."""
    table, dates = [], set()
    for path in sorted(CANDIDATES.glob("*.jsonl")):
        header, *rows = [json.loads(line) for line in path.read_text().splitlines()]
        dates.add(header["date"])
        for (server, clients), pairs in sorted(pairs_of(rows).items()):
            serve_ms = statistics.median(s["p50"] for s, _ in pairs)
            bare_ms = statistics.median(b["p50"] for _, b in pairs)
            serve_fs = statistics.median(s["forecasts_s"] for s, _ in pairs)
            bare_fs = statistics.median(b["forecasts_s"] for _, b in pairs)
            ingress = server.removeprefix("Ray Serve (").removesuffix(")")
            table.append([header["candidate"], ingress, header["batching"], clients,
                          f"{serve_ms:.1f} / {bare_ms:.1f}", f"{serve_ms / bare_ms:.2f}x",
                          f"{serve_fs:,.0f} / {bare_fs:,.0f}", f"{serve_fs / bare_fs:.2f}x", len(pairs)])
    commands = sorted({json.loads(path.read_text().splitlines()[0])["command"] for path in CANDIDATES.glob("*.jsonl")})
    return "\n".join([
        "## Serving defaults: the candidates side by side",
        "",
        f"Each candidate is one run of `bench.bench_serving` ({', '.join(sorted(dates))}, 2 cores), Ray Serve and the "
        "bare server "
        "alternating in every cell; medians over the rounds. Commands: " + "; ".join(f"`{c}`" for c in commands)
        + ". Made by `python -m bench.bench_serving --candidates-table` from bench/results/serving-candidates/.",
        "",
        markdown_table(["candidate", "ingress", "batching", "clients", "p50 ms Serve / bare", "latency ratio",
                        "forecasts/s Serve / bare", "throughput ratio", "rounds"], table),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", nargs="*", type=int, default=[1, 16, 64])
    parser.add_argument("--kinds", nargs="*", default=KINDS, choices=KINDS)
    parser.add_argument("--ingress", nargs="*", default=list(INGRESSES), choices=list(INGRESSES))
    parser.add_argument("--rounds", type=int, default=5, help="alternating Ray Serve / bare pairs in the cell "
                        "of the parity target (single JSON histories, 16 clients); the table gives their medians")
    parser.add_argument("--set", action="append", default=[], help="a Ray Serve config override, e.g. "
                        "serve.min_replicas=2")
    parser.add_argument("--candidates-table", action="store_true",
                        help="write the serving-defaults table from bench/results/serving-candidates and exit")
    args = parser.parse_args()
    if args.candidates_table:
        write_section("serving-candidates", candidates_table(), READING["serving-candidates"])
        return
    make_registry()
    history = np.random.default_rng(0).normal(5, 2, (720, 7))
    settings = load_config(None, args.set).serve
    logs = ROOT / "logs"
    logs.mkdir()

    alone = {model: in_process(model, history) for model in (MODEL, TEACHER)}  # before any server starts
    bare_port = free_port()
    # the bare server logs each request when Ray Serve does (uvicorn's default), so that neither
    # side pays for a log line the other skips
    bare = start([sys.executable, "-m", "uvicorn", "bench.serve_bare:app", "--host", "127.0.0.1",
                  "--port", str(bare_port), "--log-level", "info" if settings.access_log else "warning"],
                 logs / "bare.log")
    bare_url = f"http://127.0.0.1:{bare_port}"
    results: list[dict] = []
    stops: dict[str, float] = {}
    try:
        wait_healthy(bare_url, bare)
        for ingress in args.ingress:
            port = free_port()
            serve_args = [str(Path(sys.executable).parent / "timedistill"), "serve", "--set", f"storage.root={ROOT}",
                          "--set", f"serve.port={port}", "--set", f"serve.ingress={ingress}",
                          *[arg for override in args.set for arg in ("--set", override)]]
            server = start(serve_args, logs / f"serve-{ingress}.log")
            try:
                url = f"http://127.0.0.1:{port}"
                wait_healthy(url, server)
                for kind in args.kinds:
                    for clients in args.clients:  # side by side: Ray Serve, then the bare server
                        for _ in range(args.rounds if (kind, clients) == PROFILED else 1):
                            results.append(measure(INGRESSES[ingress], url, kind, clients, args.seconds, history))
                            results.append({**measure("bare FastAPI", bare_url, kind, clients, args.seconds,
                                                      history), "versus": INGRESSES[ingress]})
                for clients in (1, 16):  # the teacher behind the same server, in the JSON cells of the targets
                    results.append(measure(INGRESSES[ingress], url, "json single", clients, args.seconds, history,
                                           TEACHER))
            finally:
                began = time.perf_counter()
                stop(server)
                stops[INGRESSES[ingress]] = time.perf_counter() - began
    finally:
        stop(bare)

    if set(args.kinds) != set(KINDS) or 16 not in args.clients or set(args.ingress) != set(INGRESSES):
        return  # a partial run: printed above, BENCHMARKS.md left alone
    text = report(results, args, settings, alone, stops)
    print(text)
    write_section("serving", text, READING["serving"])


def report(results: list[dict], args: argparse.Namespace, settings: ServeConfig, alone: dict[str, dict],
           stops: dict[str, float]) -> str:
    def median_of(runs: list[dict]) -> dict:
        """One cell from its rounds: the median of every measure."""
        cell = {**runs[0], "failures": sum(r["failures"] for r in runs)}
        for key in ("p50", "p99", "forecasts_s", "generator_cpu"):
            cell[key] = statistics.median(r[key] for r in runs)
        if "cpu_ms_per_request" in cell:
            cell["cpu_ms_per_request"] = {role: statistics.median(r["cpu_ms_per_request"].get(role, 0.0) for r in runs)
                                          for role in runs[0]["cpu_ms_per_request"]}
        return cell

    def rounds(server: str, kind: str, clients: int) -> list[tuple[dict, dict]]:
        """(Ray Serve, bare) pairs of a cell, each pair measured one after the other."""
        served = [r for r in results if (r["server"], r["kind"], r["clients"], r["model"]) == (server, kind, clients,
                                                                                               MODEL)]
        bare = [r for r in results if r.get("versus") == server and (r["kind"], r["clients"]) == (kind, clients)]
        return list(zip(served, bare, strict=True))

    def lookup(server: str, kind: str, clients: int) -> tuple[dict, dict]:
        pairs = rounds(server, kind, clients)
        return median_of([s for s, _ in pairs]), median_of([b for _, b in pairs])

    lines = [
        "## Serving (loopback; ETTh1-shaped student, lookback 720, horizon 96, 7 variables)",
        "",
        f"Command: `python -m bench.bench_serving --seconds {args.seconds:g}"
        f"{''.join(f' --set {o}' for o in args.set)}` ({date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores; servers and load generator share them). Ray Serve is `timedistill serve` "
        f"on a local Ray, started once per `serve.ingress`: ingress + model pool, {settings.num_cpus:g} CPU "
        f"per replica, {settings.min_replicas or 'by default 2'} to {settings.max_replicas} replicas each, "
        f"single histories gathered on the ingress (@serve.batch, up to {settings.max_batch_size}, "
        f"{1000 * settings.batch_wait_timeout_s:g} ms) into one pool call per model. `proxy` is Ray Serve's "
        "default Python HTTP proxy; `haproxy` is Ray Serve's high-throughput mode "
        "(`RAY_SERVE_ENABLE_HA_PROXY=1`, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: HAProxy in front of the ingress "
        "replicas, gRPC between replicas). Bare: one uvicorn process, the model in the handler, measured right "
        f"after Ray Serve in every row; it writes an access log line per request only when Ray Serve does "
        f"(`serve.access_log`, {'on' if settings.access_log else 'off'} here). 'generator CPU' is the load "
        "generator's own CPU use (100% = one core) "
        "against Ray Serve / against bare; request bodies are encoded once, before the clock starts.",
    ]
    for ingress, name in INGRESSES.items():
        rows = []
        for kind in args.kinds:
            for clients in args.clients:
                served, bare = lookup(name, kind, clients)
                rows.append([kind, clients, f"{served['p50']:.1f}", f"{served['p99']:.1f}",
                             f"{served['forecasts_s']:,.0f}", f"{bare['p50']:.1f}", f"{bare['p99']:.1f}",
                             f"{bare['forecasts_s']:,.0f}", f"{served['forecasts_s'] / bare['forecasts_s']:.2f}x",
                             served["failures"] + bare["failures"],
                             f"{100 * served['generator_cpu']:.0f}% / {100 * bare['generator_cpu']:.0f}%"])
        lines += ["", f"### {name}: `serve.ingress={ingress}`", "", markdown_table(
            ["request", "clients", "Serve p50 ms", "Serve p99 ms", "Serve forecasts / s", "bare p50 ms",
             "bare p99 ms", "bare forecasts / s", "Serve / bare", "failed", "generator CPU"], rows)]

    lines += ["", "Server CPU per request, single JSON histories at 16 clients (CPU time of each process from /proc "
              "over the cell, divided by the requests answered):", ""]
    cpu_rows = []
    for name in INGRESSES.values():
        served, bare = lookup(name, *PROFILED)
        cpu_rows += [[name, role, f"{ms:.1f}"] for role, ms in served["cpu_ms_per_request"].items() if ms >= 0.05]
        cpu_rows += [[f"bare FastAPI (next to {name})", role, f"{ms:.1f}"]
                     for role, ms in bare["cpu_ms_per_request"].items()]
    lines.append(markdown_table(["server", "process", "CPU ms / request"], cpu_rows))
    lines.append("")
    for name in INGRESSES.values():
        served, bare = lookup(name, *PROFILED)
        batch, _ = lookup(name, "npy batch", 16)
        ratio = served["forecasts_s"] / bare["forecasts_s"]
        each = ", ".join(f"{s['forecasts_s'] / b['forecasts_s']:.2f}" for s, b in rounds(name, *PROFILED))
        lines.append(f"- {name} vs bare at 16 clients, single JSON histories: **{ratio:.2f}x** "
                     f"the bare server's throughput (medians of {len(rounds(name, *PROFILED))} alternating rounds; "
                     f"round by round: {each}); binary batches (.npy, {BATCH} histories) vs single JSON "
                     f"requests: **{batch['forecasts_s'] / served['forecasts_s']:.1f}x** the forecasts per second.")
    lines += ["", "### What the user gets: the teacher and the student behind the same server", "",
              f"Single JSON histories; the teacher ({TEACHER}: iTransformer, ETTh1's preset) is registered beside "
              f"the student and served by the same pool. In process: the model alone in this process, one history a "
              f"call, {alone[MODEL]['threads']} torch threads, median of 200 calls after 10 warm-up calls. "
              "Stop: seconds from SIGTERM to the exit of `timedistill serve`.", ""]
    rows = []
    for label, model in (("student", MODEL), ("teacher", TEACHER)):
        figures = alone[model]
        rows.append([label, f"{figures['params']:,}", "in process", "1", f"{figures['p50']:.1f}",
                     f"{figures['p99']:.1f}", f"{figures['forecasts_s']:,.0f}", ""])
        for name in INGRESSES.values():
            for clients in (1, 16):
                cell = [r for r in results if (r["server"], r["kind"], r["clients"], r["model"]) == (
                    name, "json single", clients, model)]
                served = statistics.median(r["p50"] for r in cell), statistics.median(r["p99"] for r in cell), \
                    statistics.median(r["forecasts_s"] for r in cell)
                rows.append([label, "", name, str(clients), f"{served[0]:.1f}", f"{served[1]:.1f}", f"{served[2]:,.0f}",
                             f"{stops[name]:.1f}"])
    lines.append(markdown_table(["model", "params", "where", "clients", "p50 ms", "p99 ms", "forecasts / s",
                                 "stop s"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
