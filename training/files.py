"""Atomic writes, the one owner of them: a reader never sees half a file or half a folder,
and a failed write (a kill, a full disk) leaves what was there intact.

    atomic_save(path, write)       a file, written by `write(temporary_path)` (Keras, matplotlib)
    atomic_write(path, data)       a file of bytes
    atomic_folder(final, prefix)   a folder (a SavedModel version), filled in a work folder
"""

import contextlib
import errno
import gc
import os
import shutil
import tempfile
import traceback

# How a full disk (or quota, or file size limit) reaches a writer: as an OSError, or as a
# library's error (TensorFlow's, h5py's) carrying only the operating system's message.
OUT_OF_SPACE = {code: os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)}


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
        fsync_tree(folder, files=False)
    except BaseException as error:
        if os.path.exists(temporary):
            os.truncate(temporary, 0)  # frees the space, so that closing what the writer left open succeeds
        _release_open_files(error)
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, Exception) and _is_write_failure(error):
            cause = "no space left on device (disk full)" if out_of_space(error) else str(error)
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


@contextlib.contextmanager
def atomic_folder(final, prefix):
    """A folder that appears at `final` whole, or not at all.

    Yields `(staging, scratch)`: the block writes `staging` (a path not yet created), which
    becomes `final`, and may keep files it does not publish in `scratch`. Both lie in one work
    folder `prefix...` beside `final` (same file system, so the rename is atomic), removed
    afterwards, on success and on failure; a killed process leaves it behind for the owner of
    the parent folder to remove (the exporter does, by `prefix`). Every file is flushed to disk
    before the rename, and the parent folder after it.
    """
    parent = os.path.dirname(os.path.abspath(final))
    work = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        staging, scratch = os.path.join(work, "staging"), os.path.join(work, "scratch")
        os.mkdir(scratch)
        yield staging, scratch
        fsync_tree(staging)
        os.rename(staging, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fsync_tree(parent, files=False)


def fsync_tree(root, files=True):
    """Flushes every file and folder under `root` (only `root` itself if not `files`) to
    disk, so a crash after a rename cannot leave empty files or undo the rename."""
    for folder, _, names in os.walk(root) if files else [(root, [], [])]:
        for path in [os.path.join(folder, n) for n in names] + [folder]:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def out_of_space(error):
    """ENOSPC, EDQUOT or EFBIG if `error` (or an error it was raised from) says the disk,
    quota or file size limit is full; else None."""
    while error is not None:
        if getattr(error, "errno", None) in OUT_OF_SPACE:
            return error.errno
        code = next((code for code, message in OUT_OF_SPACE.items() if message in str(error)), None)
        if code is not None:
            return code
        error = error.__cause__ or error.__context__
    return None


def _is_write_failure(error):
    """OSError or anything a library raised because of one (h5py, zipfile wrap them)."""
    return isinstance(error, OSError) or out_of_space(error) is not None
