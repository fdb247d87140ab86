"""What answers HTTP in front of the ingress replicas. Ray Serve reads this from its processes'
environment when they start, so it is set before Ray starts (and before `ray.serve` is imported:
this module must not import it)."""

from __future__ import annotations

from timedistill.conf import ServeConfig


def ray_environment(settings: ServeConfig) -> dict[str, str]:
    """The environment Ray's processes need, from before Ray starts, for `serve.ingress`.

    "haproxy" is what Ray's documentation calls high-throughput mode: HAProxy, a C load balancer,
    replaces Serve's Python HTTP proxy and sends each request straight to an ingress replica,
    and replicas call each other over gRPC (BENCHMARKS.md, "Serving", compares both modes with a
    bare uvicorn server). Its costs: HAProxy also opens a stats page (port 8404) and a Prometheus
    endpoint (port 9101) on every interface, at fixed ports (RAY_SERVE_HAPROXY_STATS_PORT and
    RAY_SERVE_HAPROXY_METRICS_PORT move them); it speaks plain HTTP only."""
    if settings.ingress == "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                # Ray keeps a stopping ingress replica draining for 30 s, time for a cluster's load
                # balancers to notice; on one machine HAProxy notices at once
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
    return {}
