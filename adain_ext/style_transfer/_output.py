"""Writing output files so that nobody else can redirect them and nothing is left half-written.

Every file the commands publish (images, videos, checkpoints, decoder snapshots, ONNX files) goes
through `atomic_output(path)`:

- the temp file gets a random name in the destination folder (`.NAME.TOKEN.tmp.EXT`, shortened
  so that it never passes the file system's name limit) and is created with
  O_CREAT | O_EXCL | O_NOFOLLOW: a symlink or any file planted under that name makes the creation
  fail instead of writing through it; the data goes to that file descriptor only;
- before the temp file is created, a marker `.adain-ext-TOKEN.pending` (created the same way)
  records the process and the temp file's name. The marker is what proves that a leftover is
  ours: `remove_stale_temps` deletes only temp files named in a marker that this user owns,
  whose process has ended (a run killed with SIGKILL, a power cut). Hidden files that merely look
  like temp files are never touched;
- the rename that publishes the file replaces the destination's directory entry, never what a
  symlink there points to; without `overwrite` it is a hard link that fails if the destination
  exists (so an unrelated file that appears meanwhile is kept);
- a full disk (or quota, or file size limit) ends in one OutputError naming the file, with the
  temp file removed and the destination as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import sys
from pathlib import Path

MARKER_PREFIX = ".adain-ext-"
MARKER_SUFFIX = ".pending"
_TOKEN_BYTES = 8  # 16 hex digits
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class OutputError(Exception):
    """An output that could not be written (full disk, a name too long, a file that appeared or
    was replaced meanwhile). Its message is one line that names the file."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code


class OutputExists(FileExistsError):
    """The destination exists and `overwrite` was not given."""


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def name_too_long(path: Path) -> int:
    """The name's limit in bytes if `path`'s file name is longer than its folder allows, else 0."""
    folder = path.parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    limit = _name_max(folder)
    return limit if len(os.fsencode(path.name)) > limit else 0


def _shorten(text: str, max_bytes: int) -> str:
    while len(os.fsencode(text)) > max_bytes:
        text = text[:-1]
    return text


def temp_name(path: Path, token: str) -> str:
    """`.NAME.TOKEN.tmp.EXT`, NAME cut so that the whole fits the folder's name limit."""
    suffix = _shorten(path.suffix, 32)
    tail = f".{token}.tmp{suffix}"
    room = _name_max(path.parent) - 1 - len(os.fsencode(tail))
    return "." + _shorten(path.name, room) + tail


def _marker_name(token: str) -> str:
    return f"{MARKER_PREFIX}{token}{MARKER_SUFFIX}"


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so that a reused PID does not
    pass for the process that wrote a marker; "" where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    except OSError:
        return False
    return not start or _process_start(pid) in ("", start)


def _create(path: Path, data: bytes = b"", mode: int = 0o666) -> int:
    fd = os.open(path, _FLAGS, mode)
    if data:
        os.write(fd, data)
    return fd


def _write_error(error: OSError, path: Path) -> OutputError:
    what = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device"
    elif error.errno == errno.EFBIG:
        what = "the file size limit was reached"
    return OutputError(error.errno or errno.EIO,
                       f"cannot write {path}: {what}; nothing was written there")


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` (from a library writing into our file) means the device refused the data:
    an OSError with a full-disk errno, or a library's wrapper of one (torch's "file write failed",
    FFmpeg's errors carrying the errno)."""
    code = getattr(error, "errno", None)
    if code in _NO_SPACE:
        return True
    text = str(error)
    return any(s in text for s in ("No space left", "File too large", "file write failed",
                                   "Disk quota exceeded"))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True):
    """Yields an open binary file (a fresh temp file next to `path`); when the block ends without
    an error, the data is flushed to disk and the file renamed to `path` (with `overwrite`
    False: linked, OutputExists if `path` exists). On any error or signal the temp file and its
    marker are removed and `path` is untouched."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if name_too_long(path):
        raise OutputError(errno.ENAMETOOLONG, f"cannot write {path}: the file name is "
                          f"{len(os.fsencode(path.name))} bytes, more than the {_name_max(folder)} "
                          "this file system allows")
    token = secrets.token_hex(_TOKEN_BYTES)
    tmp = folder / temp_name(path, token)
    marker = folder / _marker_name(token)
    record = json.dumps({"pid": os.getpid(), "start": _process_start(os.getpid()),
                         "temp": tmp.name}).encode()
    created = False
    try:
        os.close(_create(marker, record, 0o600))
    except OSError as error:
        raise _write_error(error, path) from None
    try:
        try:
            fd = _create(tmp)
        except OSError as error:
            raise _write_error(error, path) from None
        created = True
        identity = os.fstat(fd)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            now = os.lstat(tmp)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (identity.st_dev, identity.st_ino):
            created = False  # not ours any more: leave it
            raise OutputError(errno.EEXIST, f"cannot write {path}: its temp file {tmp.name} was "
                              "removed or replaced by someone else meanwhile; nothing was written")
        if overwrite:
            os.replace(tmp, path)
            created = False
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                raise OutputExists(errno.EEXIST, f"{path} exists", str(path)) from None
            except OSError:  # a file system without hard links
                if os.path.lexists(path):
                    raise OutputExists(errno.EEXIST, f"{path} exists", str(path)) from None
                os.replace(tmp, path)
                created = False
    except (OutputError, OutputExists):
        raise
    except BaseException as error:
        if is_write_failure(error):
            if not (isinstance(error, OSError) and error.errno):
                error = OSError(errno.EIO, f"the device refused the data ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
            raise _write_error(error, path) from None
        raise
    finally:
        if created:
            _remove_own(tmp)
        _remove_own(marker)


def _remove_own(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _read_marker(marker: Path) -> dict | None:
    """The marker's record if the marker is a small regular file of this user, else None."""
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096 or \
                (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            return None
        record = json.loads(os.read(fd, 4096).decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    token = marker.name[len(MARKER_PREFIX):-len(MARKER_SUFFIX)]
    temp = record.get("temp") if isinstance(record, dict) else None
    if not (isinstance(temp, str) and isinstance(record.get("pid"), int) and "/" not in temp
            and temp.startswith(".") and f".{token}.tmp" in temp and len(token) == 2 * _TOKEN_BYTES):
        return None
    return record


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temp files that runs killed before they could clean up left in `folder`, and
    their markers; returns the temp files removed. Only files proven ours are touched: named in a
    marker owned by this user, a regular file of this user, their process gone."""
    folder = Path(folder)
    removed = []
    try:
        markers = [p for p in folder.iterdir()
                   if p.name.startswith(MARKER_PREFIX) and p.name.endswith(MARKER_SUFFIX)]
    except OSError:
        return removed
    for marker in markers:
        record = _read_marker(marker)
        if record is None or _alive(record["pid"], str(record.get("start", ""))):
            continue
        tmp = folder / record["temp"]
        try:
            info = os.lstat(tmp)
        except FileNotFoundError:
            info = None
        except OSError:
            continue
        if info is not None:
            if not stat.S_ISREG(info.st_mode) or \
                    (hasattr(os, "getuid") and info.st_uid != os.getuid()):
                continue
            _remove_own(tmp)
            removed.append(tmp)
        _remove_own(marker)
    return removed


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)
