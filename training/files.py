"""Atomic file writes: a reader never sees half a file, and a failed write
(a kill, a full disk) leaves the previous file intact."""

import errno
import gc
import os
import tempfile
import traceback


class WriteError(OSError):
    """A file could not be written; the message names it, the cause, and that the previous file is intact."""


def atomic_save(path, write, what=None):
    """Calls `write(temporary_path)`, fsyncs the file, and renames it to `path`.

    The temporary file lies in the same folder (same file system, so the rename is
    atomic) and keeps `path`'s suffix (Keras chooses formats by suffix). On any
    failure it is removed and `path` is left as it was; an OSError (disk full,
    permissions) becomes a `WriteError` naming `path` and `what` was written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    suffix = name[name.index("."):] if "." in name.lstrip(".") else ""
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600
        os.replace(temporary, path)
        _fsync_folder(folder)
    except BaseException as error:
        if os.path.exists(temporary):
            os.truncate(temporary, 0)  # frees the space, so that closing what the writer left open succeeds
        _release_open_files(error)
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, Exception) and _is_write_failure(error):
            cause = "no space left on device (disk full)" if _is_disk_full(error) else str(error)
            raise WriteError(f"{path}: could not write {what or 'the file'}: {cause}; "
                             f"the previous file is intact") from error
        raise


def atomic_write(path, data: bytes, what=None):
    """Writes `data` to `path` atomically (see `atomic_save`)."""

    def write(temporary):
        with open(temporary, "wb") as file:
            file.write(data)

    atomic_save(path, write, what)


def _release_open_files(error):
    """Closes the files a failed writer left open in its frames (h5py flushes an
    open file when it is closed, and crashes the interpreter at exit if it cannot)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    gc.collect()


def _fsync_folder(folder):
    """Makes the rename itself durable (a power cut after it cannot undo it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(error):
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or \
                "No space left" in str(error) or "File too large" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _is_write_failure(error):
    """OSError or anything a library raised because of one (h5py, zipfile wrap them)."""
    return isinstance(error, OSError) or _is_disk_full(error)
