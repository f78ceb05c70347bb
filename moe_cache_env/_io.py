"""Atomic file writing: a crash, a kill or a full disk never leaves a half-written file behind.

Every output of the package goes through :func:`atomic_write`: the data is written to a temporary file in the
target's folder, flushed to disk, then renamed over the target. A failure (no room, no permission, a
destination that is a folder, ...) raises :class:`OutputError`, whose message is one line naming the path and
what to do; the temporary file is removed, also when the process is ended by SIGTERM during the write.
:func:`check_output_not_input` refuses an output path that is one of the command's inputs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, IO


class OutputError(ValueError, OSError):
    """An output that cannot be written where asked; the message names the path and the reason.

    A ``ValueError`` (the command line reports it as one line, exit status 2) and an ``OSError`` (code that
    catches I/O failures keeps catching it).
    """


#: errno values of an output that cannot be written, with the advice given for each
_WRITE_ERRORS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free some room or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some room or write elsewhere",
    errno.EFBIG: "the file is too large for this file system",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; write to a folder you may write to",
    errno.EPERM: "operation not permitted; write to a folder you may write to",
    errno.EISDIR: "it is a directory; give a file name",
    errno.ENOTDIR: "a component of the path is a regular file, not a directory",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ELOOP: "too many symbolic links in the path",
    errno.EIO: "an input/output error of the device",
}

#: temporary files being written now; removed by the SIGTERM handler before the process ends
_PENDING: set[str] = set()
_PENDING_LOCK = threading.Lock()


def _output_error(target: Path, exc: OSError) -> OutputError:
    reason = _WRITE_ERRORS.get(exc.errno or -1, exc.strerror or str(exc))
    return OutputError(f"cannot write {target}: {reason}")


def _not_a_directory(target: Path) -> OutputError:
    """The error for a path that goes through a regular file, naming that file."""
    for ancestor in reversed(target.parents):
        if ancestor.is_file():
            return OutputError(f"cannot write {target}: {ancestor} is a regular file, not a directory")
    return OutputError(f"cannot write {target}: {_WRITE_ERRORS[errno.ENOTDIR]}")


def check_output_path(path: str | os.PathLike) -> Path:
    """Check, without writing, that ``path`` can become a file; return it. Raises :class:`OutputError`.

    Refused: an existing directory, a path under a regular file, an existing file without write permission
    (a read-only destination is not replaced behind its owner's back), and a non-regular file (FIFO, device).
    """
    target = Path(path)
    if not str(path):
        raise OutputError("the output path is empty; give a file name")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise _not_a_directory(target) from None
    except OSError as exc:
        raise _output_error(target, exc) from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"cannot write {target}: it is a directory; give a file name")
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"cannot write {target}: it exists and is not a regular file (a FIFO, socket or device)")
        # The mode bits as well as access(): root may write anywhere, yet a file its owner made read-only is
        # meant to stay as it is.
        if not info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(target, os.W_OK):
            raise OutputError(
                f"cannot write {target}: the existing file is read-only; make it writable or remove it first"
            )
    # The nearest existing ancestor must be a directory (not a file) for the folders to be created.
    ancestor = target.parent
    while True:
        try:
            info = os.stat(ancestor)
            break
        except FileNotFoundError:
            if ancestor.parent == ancestor:
                break
            ancestor = ancestor.parent
        except NotADirectoryError:
            raise _not_a_directory(target) from None
        except OSError as exc:
            raise _output_error(target, exc) from None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {target}: {ancestor} is a regular file, not a directory")
    return target


def check_output_not_input(output: str | os.PathLike | None, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output path that names the same file as one of the inputs (which it would overwrite).

    ``None`` entries are skipped, as are inputs that do not exist as files (a bundled trace's name). The
    comparison resolves symbolic links and ``..`` and, where both exist, compares the files' identity
    (``os.path.samefile``), so hard links count too.
    """
    if output is None or not str(output):
        return
    out = Path(output)
    out_resolved = out.expanduser().resolve()
    for item in inputs:
        if item is None or not str(item):
            continue
        source = Path(item).expanduser()
        if not source.exists():  # a bundled trace's name, a preset: not a file here
            continue
        same = source.resolve() == out_resolved
        if not same:
            try:
                same = os.path.samefile(source, out)
            except OSError:
                same = False
        if same:
            raise OutputError(
                f"output {out} is the input {item}: writing it would destroy the input; give another output path"
            )


def _install_sigterm_cleanup() -> Callable[[], None]:
    """While a write runs in the main thread, make SIGTERM remove the pending temporary files first.

    Returns the function that restores the previous handler. Outside the main thread (where Python cannot
    set handlers) it does nothing: the temporary file is then removed by the write's own error path, or
    left for a crash, as any process killed by a signal that cannot be handled would.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return lambda: None
    if previous is _on_sigterm:  # a nested write: the outer one restores
        return lambda: None

    def restore() -> None:
        try:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass

    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return lambda: None
    _PREVIOUS_HANDLER[0] = previous
    return restore


_PREVIOUS_HANDLER: list[Any] = [signal.SIG_DFL]


def _on_sigterm(signum: int, frame: Any) -> None:
    with _PENDING_LOCK:
        pending = list(_PENDING)
        _PENDING.clear()
    for name in pending:
        try:
            os.unlink(name)
        except OSError:
            pass
    previous = _PREVIOUS_HANDLER[0]
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # Default action: end the process by the same signal, so the exit status says SIGTERM as it would have.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temporary file of the same folder, then rename.

    The rename is atomic on POSIX and Windows, so readers see either the old file or the new one. Raises
    :class:`OutputError` (one line: the path and the reason) when the destination cannot be written; an
    error raised by ``write`` itself propagates unchanged. The temporary file never survives the call, nor a
    SIGTERM received during it.
    """
    target = check_output_path(path)
    restore = _install_sigterm_cleanup()
    tmp_name: str | None = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise _output_error(target, exc) from None
        with _PENDING_LOCK:
            _PENDING.add(tmp_name)
        try:
            # mkstemp creates the file private (0600); give it the mode a plain open() would have
            os.chmod(tmp_name, 0o666 & ~_current_umask())
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
            with _PENDING_LOCK:
                _PENDING.discard(tmp_name)
        except BaseException as exc:
            with _PENDING_LOCK:
                _PENDING.discard(tmp_name)
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, OutputError) and exc.errno in _WRITE_ERRORS:
                raise _output_error(target, exc) from None
            raise
    finally:
        restore()
    return target


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON with sorted keys (byte-identical for equal data)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
