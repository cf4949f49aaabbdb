"""Starting a task's process (``orchestrator.launch.spawn``): glibc's ``posix_spawn`` through ctypes,
with the GIL let go, and ``os.posix_spawn`` where that cannot be loaded; both start the process alike."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from orchestrator.launch import spawn as spawn_module
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.spawn import Spawn, spawner
from orchestrator.messages import BuildJob

from .test_local import ended, local_config, request_for

GLIBC = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None


def _implementations() -> list[Any]:
    return [
        pytest.param(spawn_module._os_spawn, id="os.posix_spawn"),
        pytest.param(
            "glibc",
            id="glibc-ctypes",
            marks=pytest.mark.skipif(not GLIBC, reason="not glibc"),
        ),
    ]


@pytest.fixture(params=_implementations())
def start(request: pytest.FixtureRequest) -> Spawn:
    return spawn_module._GlibcSpawn() if request.param == "glibc" else request.param


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    (tmp_path / "in").write_text("from stdin\n")
    stdin = os.open(tmp_path / "in", os.O_RDONLY | os.O_CLOEXEC)
    output = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        yield stdin, output, tmp_path / "out"
    finally:
        os.close(stdin)
        os.close(output)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_process_gets_its_argv_env_and_the_three_descriptors(
    start: Spawn, fds: tuple[int, int, Path]
) -> None:
    stdin, output, out = fds
    script = 'printf "%s|%s|%s|%s\\n" "$0" "$1" "$ONLY" "$(cat)"; echo to-stderr >&2; env | grep -c ='
    pid = start(
        "/bin/sh", ["/bin/sh", "-c", script, "zero", "one two"], {"ONLY": "x y"}, stdin, output, output
    )
    assert _wait(pid) == 0
    lines = out.read_text().splitlines()
    # argv as given, one argument with a space kept whole; stdin read from the file; stderr to output
    assert lines[0] == "zero|one two|x y|from stdin"
    assert lines[1] == "to-stderr"
    # the environment is exactly what was given (sh adds PWD, and may add SHLVL and _)
    assert int(lines[2]) <= 4


def test_the_process_leads_a_session_of_its_own(start: Spawn, fds: tuple[int, int, Path]) -> None:
    stdin, output, _ = fds
    pid = start("/bin/sleep", ["sleep", "5"], {}, stdin, output, output)
    try:
        assert os.getsid(pid) == pid != os.getsid(0)
        assert os.getpgid(pid) == pid
    finally:
        os.kill(pid, signal.SIGKILL)
        _wait(pid)


def test_signals_ignored_or_blocked_here_are_not_in_the_process(
    start: Spawn, fds: tuple[int, int, Path]
) -> None:
    stdin, output, out = fds
    # Python ignores SIGPIPE (and this test SIGXFSZ); the spawning thread blocks SIGUSR1 meanwhile.
    previous_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        pid = start(
            "/bin/grep", ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], {}, stdin, output, output
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGXFSZ, previous_xfsz)
    assert _wait(pid) == 0
    masks = dict(line.split(":\t") for line in out.read_text().splitlines())
    ignored = int(masks["SigIgn"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), masks
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), masks
    assert int(masks["SigBlk"], 16) == 0, masks


def test_a_program_that_is_not_there_raises_oserror_naming_it(
    start: Spawn, fds: tuple[int, int, Path]
) -> None:
    stdin, output, _ = fds
    with pytest.raises(OSError) as raised:
        start("/nonexistent/shell", ["shell"], {}, stdin, output, output)
    assert raised.value.errno == errno.ENOENT
    assert raised.value.filename == "/nonexistent/shell"


@pytest.mark.parametrize(
    ("path", "argv", "env"),
    [
        ("/bin/sh\0-evil", ["sh"], {}),
        ("/bin/sh", ["sh", "-c", "true\0rm -rf /"], {}),
        ("/bin/sh", ["sh"], {"REPO": "https://example.com/a.git\0; rm -rf /"}),
        ("/bin/sh", ["sh"], {"A=B": "c"}),
        ("/bin/sh", ["sh"], {"": "c"}),
    ],
    ids=["nul-in-path", "nul-in-argv", "nul-in-env-value", "equals-in-env-name", "empty-env-name"],
)
def test_a_string_c_would_cut_or_misread_is_refused_not_passed_on(
    start: Spawn, fds: tuple[int, int, Path], path: str, argv: list[str], env: dict[str, str]
) -> None:
    stdin, output, out = fds
    with pytest.raises(ValueError):
        start(path, argv, env, stdin, output, output)
    assert out.read_text() == ""


def test_a_descriptor_that_is_not_open_raises_oserror(start: Spawn, fds: tuple[int, int, Path]) -> None:
    _, output, _ = fds
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(OSError) as raised:
        start("/bin/true", ["true"], {}, closed, output, output)
    assert raised.value.errno == errno.EBADF


@pytest.mark.skipif(not GLIBC, reason="not glibc")
def test_on_glibc_the_spawn_lets_go_of_the_gil_and_its_setup_calls_do_not() -> None:
    glibc = spawner()
    assert isinstance(glibc, spawn_module._GlibcSpawn)
    # ctypes marks a function that keeps the GIL (a PyDLL's) with FUNCFLAG_PYTHONAPI.
    keeps_gil = ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    assert not glibc._posix_spawn._flags_ & keeps_gil
    for quick in (glibc._fa_init, glibc._fa_dup2, glibc._fa_destroy):
        assert quick._flags_ & keeps_gil


@pytest.mark.parametrize(
    ("glibc", "runs"), [(True, True), (False, False)], ids=["glibc-ctypes", "os.posix_spawn"]
)
def test_other_threads_run_while_a_spawn_waits_for_the_childs_exec(
    fds: tuple[int, int, Path], glibc: bool, runs: bool
) -> None:
    if glibc and not GLIBC:
        pytest.skip("not glibc")
    start: Spawn = spawn_module._GlibcSpawn() if glibc else spawn_module._os_spawn
    stdin, output, _ = fds
    ran = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ran
        while not stop.is_set():
            ran += 1
            time.sleep(0)  # lets go of the GIL, so that this test's thread gets it back at once

    other = threading.Thread(target=count)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(10.0)  # no forced switch: only a call that lets go of the GIL lets it run
    try:
        other.start()
        time.sleep(0.01)
        before = ran
        pids = [start("/bin/true", ["true"], {}, stdin, output, output) for _ in range(20)]
        during = ran - before
    finally:
        stop.set()
        other.join()
        sys.setswitchinterval(previous)
    for pid in pids:
        assert _wait(pid) == 0
    # Twenty spawns, each waiting a fraction of a millisecond for its child's exec: the other thread
    # ran in that time with glibc's through ctypes, and never with os.posix_spawn.
    assert (during > 0) is runs, during


def test_without_glibcs_posix_spawn_it_is_os_posix_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(*args: object, **kwargs: object) -> None:
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(spawn_module, "_chosen", [])
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    try:
        assert spawner() is spawn_module._os_spawn
        assert spawner() is spawn_module._os_spawn  # chosen once
    finally:
        monkeypatch.undo()
    assert isinstance(spawner(), spawn_module._GlibcSpawn) or not GLIBC


def test_a_local_launch_starts_its_task_with_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    real = spawn_module.spawn

    def recording(path: str, *args: Any) -> int:
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr("orchestrator.launch.local.spawn", recording)
    launcher = LocalLauncher(local_config(tmp_path / "state", command="true"))
    handle = launcher.launch(request_for(BuildJob(deployment_id="dep-1", repository="r")))
    state = wait_until(lambda: ended(launcher, handle), 30.0, "the task to end")
    assert (state.phase, state.exit_code) == ("stopped", 0)
    assert calls == ["/bin/sh"]
