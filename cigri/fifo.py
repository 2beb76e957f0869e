"""Wake-ups between processes of one machine through named pipes: the sleeper holds the
FIFO open (read-write, so it never sees end-of-file) and selects on it; a waker writes one
byte. Used by the SQLite notifications and by the local executor and its runner."""

from __future__ import annotations

import contextlib
import errno
import os


def listen(path: str | os.PathLike[str]) -> int:
    """The non-blocking reading end of the FIFO at `path` (created if missing)."""
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def poke(path: str | os.PathLike[str]) -> bool:
    """Wake whoever listens on `path`; False when nobody does (no FIFO, or no reader)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, b"!")
    except BlockingIOError:
        pass  # full: the listener has wake-ups pending already
    finally:
        os.close(fd)
    return True


def drain(fd: int) -> bool:
    """Consume the pending wake-ups of a non-blocking fd; True if there was one."""
    got = False
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more
        while os.read(fd, 4096):
            got = True
    return got
