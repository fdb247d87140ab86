"""Nothing a command starts outlives it.

A command starts processes that do not die with it on their own: Ray's local node (its GCS and
raylet die with the command, but its agents and workers do not always follow), Prefect's
temporary server, and in HAProxy mode an HAProxy that Ray Serve starts four levels down. Ray's
workers each lead a process group of their own, so a signal to the command's group does not reach
them either. Almost all of them share the command's environment, which every process inherits:
a tag put there first marks them, however deep, and /proc finds them (Linux). Ray's agents hide
theirs (they write their process title, "ray::DashboardAgent", over it), but as every process
of a Ray node they keep their logs open in the node's session folder: the session of a Ray the
command started is noted (`note_ray_session`), and a Ray process that holds files there is the
command's too.

- A stop (Ctrl-C, SIGTERM, to the command or to its whole group) goes the graceful way first, and
  whatever is left then is ended (`end_started_processes`). The graceful way can hang where the
  signal also reached Ray's GCS and raylet, so the command stops within STOP_WITHIN_S of the first
  signal whatever the graceful way is doing (`stop_on_signals`); a second signal stops it at once.
- SIGKILL leaves the command no chance: a small watchdog process, started first and out of reach
  of a signal to the command's group, waits for the command's death and ends every tagged
  process then, within WATCHDOG_GRACE_S.

This module imports the standard library only: the watchdog runs it as a script in a bare
interpreter (`python -I -S lifetime.py PID TAG FOLDER`), which starts in milliseconds."""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

TAG_VARIABLE = "TIMEDISTILL_COMMAND"
PROC = Path("/proc")
STDERR_FD = 2  # standard error's file descriptor (hush points it at /dev/null)
SESSIONS_FILE = "ray-sessions"  # in the command's folder, for the watchdog: a session folder a line
STOP_WITHIN_S = 8.0  # first signal -> exit, leaving 2 s of the 10 s promised to end what is left
WATCHDOG_GRACE_S = 2.0  # after the command's death: SIGTERM, then SIGKILL for what is still there
ENDING_WITHIN_S = 6.0  # how long one sweep keeps looking (a dying raylet may start one more worker)


@dataclass
class CommandLife:
    """This process as a command: its tag, its private folder under the temporary directory (the
    watchdog removes it when the command ends), the watchdog's pid, and how a stop goes."""

    tag: str
    folder: Path
    watchdog: int | None
    ray_sessions: list[str] = field(default_factory=list)  # of the Rays it started (note_ray_session)
    stopping: threading.Event = field(default_factory=threading.Event)
    exit_status: int = 130
    last_words: str | None = None  # the one line a stop prints where it is cut short, until printed
    terminal: int | None = None  # where standard error went before `hush`


_life: CommandLife | None = None
_owner: int | None = None  # the pid _life belongs to (a forked child is not the command)


def tie_to_this_process() -> CommandLife:
    """Tag this process's environment, so that every process started from now on carries the tag,
    and start the watchdog (once per process)."""
    global _life, _owner
    if _life is not None and _owner == os.getpid():
        return _life
    tag, folder = secrets.token_hex(8), private_folder()
    _life = CommandLife(tag=tag, folder=folder, watchdog=start_watchdog(tag, folder))
    _owner = os.getpid()
    os.environ[TAG_VARIABLE] = tag
    return _life


def current() -> CommandLife | None:
    return _life if _owner == os.getpid() else None


def private_folder() -> Path:
    """A new folder under the temporary directory, for this user only. Its name is short: Ray
    Serve puts HAProxy's sockets two levels down (under a 56-character node id), and HAProxy takes
    socket paths of at most 97 bytes."""
    return Path(tempfile.mkdtemp(prefix="td-"))


def command_folder() -> Path:
    """This command's private folder, removed when the command ends; in a process that is not a
    command, a new private folder that its caller removes."""
    life = current()
    return life.folder if life is not None else private_folder()


def start_watchdog(tag: str, folder: Path) -> int | None:
    """The watchdog: this file run as a script, in a session of its own (a signal to the
    command's process group does not reach it), its standard streams on /dev/null (a caller
    reading the command's output does not wait for it). None where there is no /proc."""
    if not (PROC / "self" / "environ").exists():
        return None
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        environment = {key: value for key, value in os.environ.items() if key != TAG_VARIABLE}
        return os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", __file__, str(os.getpid()), tag,
                                               str(folder)], environment, setsid=True,
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)])
    except OSError:
        return None
    finally:
        os.close(devnull)


def note_ray_session(session_dir: str) -> None:
    """A Ray node this command started keeps its files in `session_dir`: what holds them is the
    command's (`started_by`)."""
    life = current()
    if life is None:
        return
    life.ray_sessions.append(session_dir)
    staged = life.folder / f".{SESSIONS_FILE}"
    staged.write_text("".join(f"{folder}\n" for folder in life.ray_sessions))
    os.replace(staged, life.folder / SESSIONS_FILE)


def started_by(tag: str, sessions: list[str]) -> set[int]:
    """The pids of the live processes whose environment carries `tag` (a zombie has none), and of
    the Ray processes (named "ray::...") that hold a file open in one of the `sessions` folders."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    prefixes = tuple(f"{folder.rstrip('/')}/" for folder in sessions)
    found = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") or (
                    prefixes and (entry / "comm").read_text().startswith("ray::")
                    and any(os.readlink(fd).startswith(prefixes) for fd in (entry / "fd").iterdir())):
                found.add(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def end_processes(tag: str, sessions: list[str], exclude: set[int], grace: float) -> int:
    """End every process of the command (`started_by`) but `exclude`: SIGTERM, and SIGKILL for
    those still there after `grace` seconds (0: SIGKILL at once). Looks again until none is left
    (a raylet that is ending may start one more worker) or ENDING_WITHIN_S has passed. Returns
    how many it ended."""
    began = time.monotonic()
    signalled: dict[int, float] = {}
    while (alive := started_by(tag, sessions) - exclude) and time.monotonic() - began < ENDING_WITHIN_S:
        now = time.monotonic()
        for pid in alive:
            first = signalled.setdefault(pid, now)
            try:
                os.kill(pid, signal.SIGKILL if now - first >= grace else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                continue
        time.sleep(0.05)
    return len(signalled)


def end_started_processes(grace: float = 1.0) -> int:
    """End what this command started and is still running (not itself, not its watchdog)."""
    life = current()
    if life is None or not (PROC / "self" / "environ").exists():
        return 0
    return end_processes(life.tag, life.ray_sessions, {os.getpid(), life.watchdog or -1}, grace)


def remove_folder() -> None:
    life = current()
    if life is not None:
        shutil.rmtree(life.folder, ignore_errors=True)


def is_the_command_line() -> bool:
    """Whether this process is `timedistill` itself (the console script, or `python -m
    timedistill.flows.cli`), rather than a program that calls the app in-process (a test, a
    notebook), whose other children and Ctrl-C are its own business."""
    main = sys.modules.get("__main__")
    return Path(sys.argv[0]).name == "timedistill" or getattr(getattr(main, "__spec__", None), "name", "") \
        == "timedistill.flows.cli"


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM this command's stop (main thread only; again after ray.init, which
    installs a SIGTERM handler that exits on the spot). The first signal raises KeyboardInterrupt,
    which every command turns into its one line and a stop, and gives the command STOP_WITHIN_S
    to exit; past that, or at a second signal, `stop_now`. In a process that is not a command (no
    `tie_to_this_process`), SIGTERM is only made what Ctrl-C is: KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return
    life = current()
    if life is None:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        return

    def handler(signum: int, frame: object) -> None:
        if life.stopping.is_set():
            stop_now()
        life.stopping.set()
        threading.Thread(target=stop_late, name="timedistill-stop-deadline", daemon=True).start()
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def on_stop(status: int, line: str | None) -> None:
    """How this command's stop ends if it has to be cut short (`stop_now`): its exit status, and
    the one line it prints."""
    life = current()
    if life is not None:
        life.exit_status = status
    last_words(line)


def last_words(line: str | None) -> None:
    """The one line a stop cut short prints (`stop_now`), from now on; None once printed."""
    life = current()
    if life is not None:
        life.last_words = line


def stopping() -> bool:
    """Whether a stop signal has come: what is left to do must fit in STOP_WITHIN_S."""
    life = current()
    return life is not None and life.stopping.is_set()


def hush() -> None:
    """Send what this process writes to standard error from now on to /dev/null, `say` excepted:
    during a stop Ray's C++ core worker logs a line for each process it loses ("Failed to push
    error to driver"), and Ray Serve's and Prefect's loggers say what they are doing; the stop's
    one line is all a user needs (`--debug` shows the rest)."""
    life = current()
    if life is None or life.terminal is not None:
        return
    for stream in (sys.stderr, sys.__stderr__):
        with suppress(Exception):
            if stream is not None:
                stream.flush()
    life.terminal = os.dup(STDERR_FD)
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, STDERR_FD)
    os.close(nowhere)


def say(line: str) -> None:
    """Print the stop's one line on standard error, hushed or not (once: a stop cut short by
    `stop_now` prints nothing more)."""
    life = current()
    terminal = life.terminal if life is not None and life.terminal is not None else STDERR_FD
    os.write(terminal, f"{line}\n".encode())
    last_words(None)


def stop_late() -> None:
    time.sleep(STOP_WITHIN_S)
    stop_now()


def stop_now() -> None:
    """End what this command started and exit, without the interpreter's teardown (which waits
    on the very processes and threads that did not stop in time)."""
    life = current()
    status = 130 if life is None else life.exit_status
    if life is not None and life.last_words:
        say(life.last_words)
    end_started_processes(grace=0)
    remove_folder()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(status)


def wait_for_death(pid: int) -> None:
    """Return once `pid` has exited: a pidfd where the kernel has them (Linux 5.3), else polling
    whether this process has been handed to another parent."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while os.getppid() == pid:
            time.sleep(0.5)
        return
    select.select([descriptor], [], [])


def watch(command: int, tag: str, folder: Path) -> None:
    """The watchdog's life: ignore the signals meant for the command, wait for its death, end what
    it left, remove its folder."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    wait_for_death(command)
    try:
        sessions = (folder / SESSIONS_FILE).read_text().split()
    except OSError:
        sessions = []
    end_processes(tag, sessions, {os.getpid()}, WATCHDOG_GRACE_S)
    shutil.rmtree(folder, ignore_errors=True)


def exit_now(status: int = 0) -> None:
    """End what the command started and is still running, and exit without the interpreter's
    teardown: once Serve has drained and Ray has stopped (or did not in time), the destructors of
    Ray's core worker and its gRPC threads took about 3 s of each stop, longer than the drain
    itself, and wait forever on a Ray whose GCS is gone. Only for the command line's own process."""
    import logging

    end_started_processes()
    remove_folder()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
