"""stdout that its reader left: `loadtop … | head`, a hung-up terminal.

Shared by the front ends and the commands above them."""

from __future__ import annotations

import contextlib
import errno
import os
import sys


def stdout_gone(e: BaseException) -> bool:
    """A write failed because the reader of stdout left (a closed pipe, a
    hung-up terminal)."""
    return isinstance(e, BrokenPipeError) or (
        isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.EIO, errno.ENXIO)
    )


def silence_stdout(stderr: bool = False) -> None:
    """Send the rest of stdout (and stderr too when asked), and the
    interpreter's final flush, to /dev/null instead of a BrokenPipeError (or
    exit status 120) at exit."""
    for stream in (sys.stdout, sys.stderr) if stderr else (sys.stdout,):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def block_sigpipe() -> None:
    """For the calling thread (and the threads and processes it starts): a
    write to a socket or pipe whose reader left (a browser or scraper that went
    away) is EPIPE, handled there, not a SIGPIPE. The headless run stops on
    SIGPIPE (its stdout's reader left), which must stay about its stdout."""
    import signal

    with contextlib.suppress(AttributeError, OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
