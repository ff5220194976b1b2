"""Quiet third-party noise by default; keep it all with ``-v``.

What is dropped (and only that): Ray's token-authentication notice, and the INFO/WARNING lines
that mediapipe's C++ side (TFLite, absl, glog) prints when a graph starts or runs, which Ray
forwards from the workers with a coloured ``(GroupWorker pid=N)`` prefix. Errors, Python
warnings (e.g. "a worker died") and everything else pass through unchanged. With ``-v`` too,
ANSI escape codes are stripped when the stream is not a terminal, and lines Ray forwards to
stdout are moved to stderr: stdout carries results only.

The filter wraps ``sys.stdout``/``sys.stderr`` (Ray prints forwarded worker lines through them)
for the duration of a command. With ``--executor local`` the models run in this process and
their C++ code writes straight to file descriptor 2: ``native_stderr_filtered`` then points fd 2
at a pipe whose reader thread drops the same noise (only from the real entry point, never inside
a test runner's process).
"""
from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, TextIO

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
RAY_PREFIX = re.compile(r"^\((?:(?:[\w.:-]+ )?pid=[^)]*|raylet[^)]*|autoscaler[^)]*)\)\s?")
"""What Ray puts before a line it forwards from a worker, the raylet or the autoscaler."""
NOISE = (
    re.compile(r"^INFO: Created TensorFlow Lite .*delegate"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    # absl/glog INFO and WARNING lines (I1201 / W0000 ...] msg); E and F lines stay.
    re.compile(r"^[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] "),
)
QUIET_LOGGERS = {
    # Token auth of an embedded local Ray is on by default; the notice says only that.
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}
END = b"\0faceweave-stderr-end"  # written by us after fd 2 is restored: the reader stops there
NATIVE_FILTER_ALLOWED = False
"""Set by ``pipeline.cli.main`` (a real process); CliRunner and friends leave fds alone."""
QUIET_ENV = {
    "GLOG_minloglevel": "2",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def is_noise(line: str) -> bool:
    """True for a third-party INFO/WARNING line that says nothing about this run."""
    text = RAY_PREFIX.sub("", ANSI.sub("", line).lstrip())
    return any(p.search(text) for p in NOISE)


class LineFilter(io.TextIOBase):
    """A text stream that drops noise lines and, off a terminal, ANSI codes; the rest goes to ``target``."""

    def __init__(self, target: TextIO, strip_ansi: bool | None = None, divert: TextIO | None = None,
                 drop_noise: bool = True):
        self.target = target
        self.drop_noise = drop_noise
        self.strip_ansi = (not _isatty(target)) if strip_ansi is None else strip_ansi
        self.divert = divert
        """Where lines Ray forwarded from its processes go instead (stdout keeps only results)."""
        self._partial = ""

    def write(self, s: str) -> int:
        text = self._partial + s
        lines = text.split("\n")
        self._partial = lines.pop()
        kept, diverted = [], []
        for ln in lines:
            if self.drop_noise and is_noise(ln):
                continue
            forwarded = self.divert is not None and RAY_PREFIX.match(ANSI.sub("", ln).lstrip())
            (diverted if forwarded else kept).append(ln)
        if kept:
            out = "\n".join(kept) + "\n"
            self.target.write(ANSI.sub("", out) if self.strip_ansi else out)
        if diverted:
            self.divert.write("\n".join(diverted) + "\n")
        return len(s)

    def flush(self) -> None:
        try:
            if self._partial and not (self.drop_noise and is_noise(self._partial)):
                self.target.write(ANSI.sub("", self._partial) if self.strip_ansi else self._partial)
            self._partial = ""
            self.target.flush()
        except (OSError, ValueError):  # the target was closed under us (interpreter exit)
            pass

    def close(self) -> None:
        self.flush()  # never closes the target: it is someone else's stream

    def isatty(self) -> bool:
        return _isatty(self.target)

    def fileno(self) -> int:
        return self.target.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")

    def __getattr__(self, name: str):
        return getattr(self.target, name)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def colour_env(stderr_is_tty: bool) -> dict[str, str]:
    """Environment for child processes: Ray's coloured prefixes only on a terminal."""
    return {} if stderr_is_tty else {"RAY_COLOR_PREFIX": "0"}


@contextmanager
def quiet_third_party(verbose: bool = False) -> Iterator[None]:
    """Within the block, third-party noise is dropped; ``verbose`` keeps every line.

    Either way, off a terminal ANSI codes are stripped and Ray's forwarded lines leave stdout.
    """
    env = {**({} if verbose else QUIET_ENV), **colour_env(_isatty(sys.stderr))}
    saved_env = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)  # a value the user set wins
    quiet_loggers = {} if verbose else QUIET_LOGGERS
    saved_levels = {name: logging.getLogger(name).level for name in quiet_loggers}
    for name, level in quiet_loggers.items():
        logging.getLogger(name).setLevel(level)
    old_out, old_err = sys.stdout, sys.stderr
    sys.stderr = LineFilter(old_err, drop_noise=not verbose)
    sys.stdout = LineFilter(old_out, divert=sys.stderr, drop_noise=not verbose)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = old_out, old_err
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Drop noise that native code writes to fd 2 in this process; Python's own stderr bypasses the pipe."""
    if not NATIVE_FILTER_ALLOWED:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    read_end, write_end = os.pipe()
    sentinel = os.dup(write_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    old_err = sys.stderr
    direct = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    sys.stderr = LineFilter(direct, strip_ansi=not os.isatty(saved))

    def pump() -> None:
        partial = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                done = any(ln.endswith(END) for ln in lines)
                lines = [ln[:-len(END)] if ln.endswith(END) else ln for ln in lines]
                kept = [ln for ln in lines if not is_noise(ln.decode("utf-8", "replace"))]
                if done and kept and not kept[-1]:
                    kept.pop()  # the end mark's own line
                if kept:
                    os.write(saved, b"\n".join(kept) + b"\n")
                if done:
                    return
            if partial and not is_noise(partial.decode("utf-8", "replace")):
                os.write(saved, partial)

    reader = threading.Thread(target=pump, name="faceweave-stderr-filter", daemon=True)
    reader.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stderr = old_err
        os.dup2(saved, 2)
        os.write(sentinel, END + b"\n")
        os.close(sentinel)
        reader.join(timeout=2.0)
        direct.close()
        os.close(saved)
