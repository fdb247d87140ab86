"""`timedistill serve` as a process: the environment its Ray needs for the chosen ingress, Ray
Serve started and answering through that ingress before the server is announced, and a stop
that drains requests in flight and leaves nothing behind (tasks/lifetime.py)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import TYPE_CHECKING

from timedistill.conf import Config
from timedistill.flows.render import err, out
from timedistill.tasks import lifetime
from timedistill.tasks.errors import StepError

if TYPE_CHECKING:
    from timedistill.serving.ingress import LocalIngress
    from timedistill.store.storage import Storage

SERVE_STOP_WAIT_S = 5.0  # requests in flight finish, then the replicas stop (about 2 s)
SHUTTING_DOWN = "shutting down Ray Serve"
INGRESS_ANSWERS_WITHIN_S = 60.0


def serve_until_stopped(cfg: Config, storage: Storage, ray_address: str | None, debug: bool) -> None:
    """Serve the registry under `storage` until Ctrl-C or SIGTERM, then exit."""
    from timedistill.store.registry import list_models
    from timedistill.tasks.runtime import ray_session

    ingress = use_ray_environment(cfg, ray_address)
    lifetime.on_stop(0, SHUTTING_DOWN)  # a stop is the end of serving, not an error
    try:
        with ray_session(cfg, ray_address, quiet=not debug):
            try:
                start_serving(cfg)
                names = list_models(storage)
                err.print(f"serving {len(names)} model(s) from {storage.uri('registry')}: {', '.join(names) or '-'}")
                extra = f"; {ingress.describe()}" if ingress else ""
                out.print(f"listening on http://{cfg.serve.host}:{cfg.serve.port} (docs: /docs){extra}; Ctrl-C stops",
                          highlight=False, soft_wrap=True)
                threading.Event().wait()  # until Ctrl-C or SIGTERM: KeyboardInterrupt
            except KeyboardInterrupt:
                lifetime.say(SHUTTING_DOWN)
                if not debug:
                    lifetime.hush()
            finally:
                shut_down_serve()
    finally:
        if ingress is not None:
            shutil.rmtree(ingress.folder, ignore_errors=True)
    lifetime.exit_now()


def start_serving(cfg: Config) -> None:
    """Start Ray Serve's ingress and the application; an ingress that cannot start (a port in
    use) is a one-line StepError, not Ray's traceback of the actor that failed."""
    import ray
    from ray import serve

    from timedistill.serving.app import APP_NAME, build_app, http_options
    from timedistill.serving.ingress import resolved, start_failure

    try:
        serve.start(http_options=http_options(cfg.serve))
    except ray.exceptions.RayError as exc:
        what = {"haproxy": "HAProxy", "proxy": "Ray Serve's proxy"}[resolved(cfg.serve)]
        raise StepError(f"the HTTP ingress ({what}) did not start: {start_failure(exc)}; serve.port "
                        f"{cfg.serve.port}, serve.haproxy_stats_port and serve.haproxy_metrics_port choose "
                        "its ports") from None
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    wait_until_answering(cfg)


def wait_until_answering(cfg: Config) -> None:
    """Return once /healthz answers 200 through the ingress at serve.host:serve.port, as a client
    reaches it (HAProxy takes a moment to learn the replicas Serve reports ready); a server that
    does not is a StepError, never a "listening on" line."""
    import httpx

    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::", "") else cfg.serve.host
    url = f"http://{host if ':' not in host else f'[{host}]'}:{cfg.serve.port}/healthz"
    deadline, answer = time.monotonic() + INGRESS_ANSWERS_WITHIN_S, "no answer"
    while time.monotonic() < deadline:
        try:
            status = httpx.get(url, timeout=5, trust_env=False).status_code  # straight, never through a proxy
        except httpx.HTTPError as exc:
            answer = type(exc).__name__
        else:
            if status == 200:
                return
            answer = f"HTTP {status}"
        time.sleep(0.5)
    raise StepError(f"the server started but {url} does not answer ({answer} after {INGRESS_ANSWERS_WITHIN_S:.0f} s)")


def shut_down_serve() -> None:
    """serve.shutdown(), given SERVE_STOP_WAIT_S: after a signal to the whole process group, Ray's
    GCS and raylet are gone and Serve's controller never answers (what is left is ended with the
    command, tasks/lifetime.py)."""
    from ray import serve

    closing = threading.Thread(target=serve.shutdown, name="timedistill-serve-shutdown", daemon=True)
    closing.start()
    closing.join(SERVE_STOP_WAIT_S)


def use_ray_environment(cfg: Config, address: str | None) -> LocalIngress | None:
    """Give a Ray that this command starts the environment `serve.ingress` needs (read by Ray
    Serve at import, so before the first `ray.serve` import). A running cluster keeps its own.
    Returns the local HAProxy's ports and folder, in HAProxy mode."""
    import ray

    from timedistill.serving.ingress import local_ray_environment, ray_environment
    from timedistill.tasks.runtime import ray_address

    wanted = ray_environment(cfg.serve)
    if not wanted:
        return None
    if ray.is_initialized() or ray_address(cfg, address):
        if cfg.serve.ingress == "auto":  # the cluster's own mode, whatever it is
            return None
        settings = " ".join(f"{key}={value}" for key, value in wanted.items())
        err.print(f"serve.ingress={cfg.serve.ingress} applies to a Ray this command starts; on a cluster, start "
                  f"Ray with {settings} in its environment (see infra/kuberay/rayservice.yaml)")
        return None
    environment, ingress = local_ray_environment(cfg.serve, lifetime.command_folder())
    os.environ.update(environment)
    return ingress
