"""Noticing the end of local tasks at once: one thread waits on a pidfd per task (Linux >= 5.3).

A task's process ending makes its pidfd readable; one ``epoll`` over all of them lets a single thread
follow every local task, however many there are, and report each end within microseconds instead of at
the next poll. It can also reap the processes this one started (a child that is not waited for stays
a zombie), for callers that keep no other handle on them. Where ``pidfd_open`` is missing (older
kernels, other systems) :attr:`ExitWatcher.available` is False and the launcher's callers rely on
polling alone.

A pidfd names one process, never a later one that reuses its pid; a process that is not our child is
checked against its recorded start time *after* its pidfd is open, so the fd cannot name an impostor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Final

from orchestrator.launch.local_process import process_start_time
from orchestrator.logs import FAILURE, emoji

__all__ = ["ExitWatcher", "pidfd_supported"]

log = logging.getLogger(__name__)

#: Most ends reported in one call of the callback (epoll returns at most this many at once).
MAX_EVENTS: Final = 1024


def pidfd_supported() -> bool:
    """Whether this system can open a pidfd (``os.pidfd_open`` exists and the kernel has it)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


class ExitWatcher:
    """Calls ``on_exit(keys)`` from its own thread when watched processes end.

    Args:
        on_exit: called with the keys of the processes that ended (several at once under load); it
            must not block for long: every other end waits for it.
    """

    def __init__(self, on_exit: Callable[[list[str]], None]) -> None:
        self.available = pidfd_supported()
        self._on_exit = on_exit
        self._lock = threading.Lock()
        #: pidfd -> (key, pid, whether to reap the process when it ends)
        self._by_fd: dict[int, tuple[str, int, bool]] = {}
        self._by_key: dict[str, int] = {}
        self._epoll: select.epoll | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._closed = False

    def watching(self, key: str) -> bool:
        """Whether the process of ``key`` is being watched."""
        with self._lock:
            return key in self._by_key

    def watch(self, key: str, pid: int, *, start_time: int | None = None, reap: bool = False) -> bool:
        """Report ``key`` when process ``pid`` ends.

        ``start_time``: for a process that is not our child, its start time as recorded; the process
        is watched only if it matches (a child's pid cannot be reused before it is reaped: pass None).
        ``reap``: wait for the child when it ends (for a caller that does not). Returns False when it
        is not watched (no pidfd support, the process is already gone or is another one): the caller
        then learns of its end by polling.
        """
        if not self.available:
            return False
        with self._lock:
            if self._closed:
                return False
            if key in self._by_key:
                return True
            self._start_locked()
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                return False  # gone already (not a child: nothing to reap)
            if start_time is not None and process_start_time(pid) != start_time:
                os.close(fd)
                return False
            assert self._epoll is not None
            self._by_fd[fd] = (key, pid, reap)
            self._by_key[key] = fd
            self._epoll.register(fd, select.EPOLLIN)
        return True

    def close(self) -> None:
        """Stop watching (the processes go on; their ends are no longer reported)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                os.write(self._wake_w, b"x")
        if thread is not None:
            thread.join(5)

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="local-exit-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._epoll is not None
        try:
            while True:
                ready = self._epoll.poll(-1, MAX_EVENTS)
                ended: list[str] = []
                with self._lock:
                    if self._closed:
                        break
                    for fd, _ in ready:
                        entry = self._by_fd.pop(fd, None)
                        if entry is None:
                            continue
                        key, pid, reap = entry
                        del self._by_key[key]
                        self._epoll.unregister(fd)
                        os.close(fd)
                        if reap:
                            _reap(pid)
                        ended.append(key)
                if ended:
                    try:
                        self._on_exit(ended)
                    except Exception:
                        log.exception("reporting the end of local tasks failed", extra=emoji(FAILURE))
        finally:
            with self._lock:
                for fd in self._by_fd:
                    os.close(fd)
                self._by_fd.clear()
                self._by_key.clear()
                self._epoll.close()
                os.close(self._wake_r)
                os.close(self._wake_w)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
