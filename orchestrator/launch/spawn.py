"""Starting a local task's process without holding the GIL: glibc's ``posix_spawn`` through ctypes.

``os.posix_spawn`` holds the GIL for the whole call, and the call lasts until the child has exec'd
(glibc's ``posix_spawn`` is a ``vfork``: the parent waits for the exec). On the benchmark VM that is
0.3 ms per task in which no other thread of the orchestrator runs: its consumer, publisher and
completions all wait. A function of a ``ctypes.CDLL`` lets go of the GIL while it runs, so the same
glibc call made through ctypes leaves those threads running.

The cheap calls that set up the file actions are made through ``ctypes.PyDLL``, which keeps the GIL
(letting it go for a call of a microsecond would only hand it to another thread and queue this one
behind it). The attributes (a new session; SIGPIPE and SIGXFSZ back to their default; no signal
blocked) are the same for every task and are set up once.

Where libc's ``posix_spawn`` cannot be loaded (not glibc), :func:`spawn` is ``os.posix_spawn`` with
the same file actions and attributes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

__all__ = ["Spawn", "spawn", "spawner"]

#: glibc's library name and the attribute flags of <spawn.h> (Linux).
LIBC: Final = "libc.so.6"
POSIX_SPAWN_SETSIGDEF: Final = 0x04
POSIX_SPAWN_SETSIGMASK: Final = 0x08
POSIX_SPAWN_SETSID: Final = 0x80
#: Larger than glibc's posix_spawnattr_t (336 bytes on x86-64), posix_spawn_file_actions_t (80) and
#: sigset_t (128): the buffers only need to be at least as large.
_OPAQUE_BYTES: Final = 1024
#: Signals the orchestrator ignores or handles that a task must get back at their default.
DEFAULT_SIGNALS: Final = (signal.SIGPIPE, signal.SIGXFSZ)


class Spawn(Protocol):
    """Start ``path`` with ``argv`` and ``env`` in a new session, stdin/stdout/stderr from the three
    descriptors; return its pid. Raises :class:`OSError` when it cannot be started, ValueError for a
    string with a NUL in it or an environment name that is empty or holds ``=``."""

    def __call__(
        self, path: str, argv: Sequence[str], env: Mapping[str, str], stdin: int, stdout: int, stderr: int
    ) -> int: ...


def _os_spawn(
    path: str, argv: Sequence[str], env: Mapping[str, str], stdin: int, stdout: int, stderr: int
) -> int:
    return os.posix_spawn(
        path,
        list(argv),
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ],
        setsid=True,
        setsigdef=DEFAULT_SIGNALS,
        setsigmask=(),
    )


class _GlibcSpawn:
    """glibc's ``posix_spawn`` through ctypes, the GIL let go during the call (see the module)."""

    def __init__(self) -> None:
        # Two handles on one library: calls through ``_call`` release the GIL, through ``_quick`` not.
        self._call = ctypes.CDLL(LIBC)  # (posix_spawn returns its error: errno is not read)
        self._quick = ctypes.PyDLL(LIBC)
        self._posix_spawn = self._call.posix_spawn
        self._posix_spawn.restype = ctypes.c_int
        self._posix_spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        self._fa_init = self._quick.posix_spawn_file_actions_init
        self._fa_dup2 = self._quick.posix_spawn_file_actions_adddup2
        self._fa_destroy = self._quick.posix_spawn_file_actions_destroy
        for function in (self._fa_init, self._fa_dup2, self._fa_destroy):
            function.restype = ctypes.c_int
        self._fa_init.argtypes = [ctypes.c_void_p]
        self._fa_destroy.argtypes = [ctypes.c_void_p]
        self._fa_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        # The same attributes for every task: built once, only read by posix_spawn (const).
        self._attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
        default, mask = ctypes.create_string_buffer(_OPAQUE_BYTES), ctypes.create_string_buffer(_OPAQUE_BYTES)
        quick = self._quick
        _check(quick.sigemptyset(default), "sigemptyset")
        for signum in DEFAULT_SIGNALS:
            _check(quick.sigaddset(default, int(signum)), "sigaddset")
        _check(quick.sigemptyset(mask), "sigemptyset")
        _check(quick.posix_spawnattr_init(self._attr), "posix_spawnattr_init")
        flags = POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        _check(quick.posix_spawnattr_setflags(self._attr, ctypes.c_short(flags)), "posix_spawnattr_setflags")
        _check(quick.posix_spawnattr_setsigdefault(self._attr, default), "posix_spawnattr_setsigdefault")
        _check(quick.posix_spawnattr_setsigmask(self._attr, mask), "posix_spawnattr_setsigmask")

    def __call__(
        self, path: str, argv: Sequence[str], env: Mapping[str, str], stdin: int, stdout: int, stderr: int
    ) -> int:
        c_argv = _strings([_c_string(arg) for arg in argv])
        entries = []
        for key, value in env.items():
            name = _c_string(key)
            if not name or b"=" in name:
                raise ValueError(f"illegal environment variable name {key!r}")
            entries.append(name + b"=" + _c_string(value))
        c_env = _strings(entries)
        actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
        _check(self._fa_init(actions), "posix_spawn_file_actions_init")
        try:
            for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
                _check(self._fa_dup2(actions, fd, target), "posix_spawn_file_actions_adddup2")
            pid = ctypes.c_int()
            c_path = _c_string(path)
            error = self._posix_spawn(ctypes.byref(pid), c_path, actions, self._attr, c_argv, c_env)
        finally:
            self._fa_destroy(actions)
        if error:
            raise OSError(error, os.strerror(error), path)
        return pid.value


def _c_string(text: str) -> bytes:
    """``text`` for C; ValueError for an embedded NUL (C would cut the string there), as
    ``os.posix_spawn`` does."""
    encoded = os.fsencode(text)
    if b"\0" in encoded:
        raise ValueError(f"embedded null byte in {text!r}")
    return encoded


def _strings(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated ``char *[]``."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(result, f"{what} failed: {os.strerror(result)}")


_lock = threading.Lock()
#: The spawn function once chosen (empty until the first launch).
_chosen: list[Spawn] = []


def _load() -> Spawn:
    try:
        return _GlibcSpawn()
    except (OSError, AttributeError):
        return _os_spawn


def spawner() -> Spawn:
    """The spawn function of this system: glibc's through ctypes where it loads, else ``os.posix_spawn``."""
    if not _chosen:
        with _lock:  # chosen once (the first launches may come from several threads at once)
            if not _chosen:
                _chosen.append(_load())
    return _chosen[0]


def spawn(
    path: str, argv: Sequence[str], env: Mapping[str, str], stdin: int, stdout: int, stderr: int
) -> int:
    """See :class:`Spawn`."""
    return spawner()(path, argv, env, stdin, stdout, stderr)
