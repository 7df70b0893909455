"""A shard's bytes as one reader (a process) reads them: a local file, a `pipe:` command's output, or a URL fsspec
opens (s3://, gs://, https://).

A command or a remote URL that sends no byte for `timeout` seconds (the `data_timeout` setting) is one DataError
naming it (`Stalled`), not a hang. A stream belongs to the process that opened it: a forked loader worker that
inherits one shares its file position and its command with the parent, so there it is never read, only let go
(`Stream.close` in another process closes that process's copies of the descriptors and leaves the command, which
is the parent's, running)."""
import contextlib
import os
import queue
import select
import signal
import subprocess
import tempfile
import threading
from typing import Optional

import fsspec

from ..errors import DataError

DEFAULT_TIMEOUT = 60.0  # seconds a piped or remote source may go without a byte


def local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


class Stalled(DataError):
    """A piped or remote source that sent nothing for the timeout: the run stops (a retry would stall again).
    One message argument, as every UserError: torch rebuilds a worker's exception from its text."""


def stalled(url: str, timeout: float) -> Stalled:
    return Stalled(f"{url}: no data for {timeout:g} s (data_timeout={timeout:g}); the command or server stalled "
                   "(raise data_timeout if it is only slow)")


class _Pipe:
    """A command's stdout, read as it comes (short reads, as tarfile's stream mode expects), `timeout` s at most
    for each byte that is due."""

    def __init__(self, f, url: str, timeout: float):
        self.f, self.url, self.timeout = f, url, timeout
        self._poll = select.poll()  # not select.select: a worker may hold descriptors past FD_SETSIZE
        self._poll.register(f.fileno(), select.POLLIN)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while True:
                part = self.read(1 << 16)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        if not self._poll.poll(self.timeout * 1000):
            raise stalled(self.url, self.timeout)
        return os.read(self.f.fileno(), n)  # POLLHUP at the end: b""

    def close(self) -> None:
        self.f.close()


class RemoteFile:
    """An fsspec file whose every call (the open included) waits at most `timeout` s: a daemon thread makes the
    calls, and one that stalls is left behind with it (a daemon thread never keeps the process from exiting)."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout, self.stalled = url, timeout, False
        self._calls: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._serve, args=(self._calls,), daemon=True, name="shard-reader").start()
        self.f = self._call(lambda: fsspec.open(url, "rb").open())

    @staticmethod
    def _serve(calls: "queue.Queue") -> None:  # holds the queue only: a file no longer used ends its thread
        while True:
            fn, answer = calls.get()
            if fn is None:
                return
            try:
                answer.put((True, fn()))
            except BaseException as e:  # noqa: BLE001  handed to the caller as it is
                answer.put((False, e))
            del fn, answer  # the call's closure holds its file: not kept alive from here while waiting

    def _call(self, fn):
        if self.stalled:
            raise stalled(self.url, self.timeout)
        answer: "queue.Queue" = queue.Queue(1)
        self._calls.put((fn, answer))
        try:
            ok, value = answer.get(timeout=self.timeout)
        except queue.Empty:
            self.stalled = True
            raise stalled(self.url, self.timeout) from None
        if not ok:
            raise value
        return value

    def read(self, n: int = -1) -> bytes:
        return self._call(lambda: self.f.read(n))

    def readinto(self, b) -> int:  # through read: a call left behind never writes into a buffer freed since
        data = self.read(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)

    def seek(self, *args) -> int:
        return self._call(lambda: self.f.seek(*args))

    def tell(self) -> int:
        return self.f.tell()

    def __getattr__(self, name):  # size, closed, seekable, ...: no I/O
        if "f" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["f"], name)

    def close(self) -> None:
        if not self.stalled and "f" in self.__dict__:
            try:
                self._call(self.f.close)
            except Stalled:
                pass
        self._calls.put((None, None))

    def __del__(self):  # one opened for its metadata only (a parquet footer) and let go
        self._calls.put((None, None))


class Stream:
    """A shard's bytes: a local file (seekable), a `pipe:` command's output, or an fsspec URL."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        self.url, self.proc, self.pid = url, None, os.getpid()
        if url.startswith("pipe:"):  # stderr to a file: a chatty command (curl's progress) must not block on it
            self.err = tempfile.TemporaryFile()
            # its own process group: ended here with whatever it started (a shell's `curl ... | tar ...`)
            self.proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=self.err,
                                         start_new_session=True)
            self.f = _Pipe(self.proc.stdout, url, timeout)
        elif local(url):
            self.f = open(url, "rb")
        else:
            try:
                self.f = RemoteFile(url, timeout)
            except ImportError as e:  # the protocol's fsspec backend (s3fs, gcsfs, aiohttp) is not installed
                raise OSError(f"no reader for {url.split('://')[0]}:// URLs here ({e})") from None

    @property
    def seekable(self) -> bool:
        return self.proc is None and local(self.url)

    def close(self) -> Optional[str]:
        """Close; for a command, why it failed (its stderr's last line) or None. In a process other than the one
        that opened it (a forked loader worker), only this process's copies of its descriptors are closed."""
        if os.getpid() != self.pid:
            if isinstance(self.f, RemoteFile):  # its thread stayed in the parent: nothing here to call it
                return None
            self.f.close()
            if self.proc is not None:
                self.err.close()
                self.proc.returncode = 0  # this copy of the Popen: never waited for, or killed, from here
            return None
        self.f.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        self.err.seek(0)
        err = self.err.read().decode(errors="replace").strip()
        self.err.close()
        if code <= 0:  # done, or killed here (a shard left before its end)
            return None
        return f"`{self.url[5:]}` exited with status {code}" + (f": {err.splitlines()[-1]}" if err else "")
