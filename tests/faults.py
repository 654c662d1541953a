"""Fault injection for the reliability tests: a Python subprocess killed with SIGKILL at a chosen
point, and a command whose folder is a small disk that fills up.

    run = run_python(["-m", "kerasformer.export.exporter", run_dir, "--base-dir", base],
                     kill_at=KillPoint("os:rename", condition="os.path.basename(args[1]).isdigit()"))
    run.check_killed()   # SIGKILLed, at that point and not somewhere else

The kill is real -- no `finally`, no `atexit`, no buffered write reaches the disk -- and happens
at a known point without hooks in product code: the subprocess runs a small wrapper that replaces
one function (`module:attribute`) by one that kills the process before or after calling it, then
runs the program. `kill_after` (a timer, possibly random) and `kill_when` (a condition the test
polls) kill from outside instead, at a point that is not known in advance.

    disk = small_disk([*python_command("-m", "kerasformer.export.exporter", ...)], folder, free_bytes=10**6)

runs the command with `folder` on a filesystem of its current contents plus `free_bytes`; when
that is used up, writes fail with ENOSPC as on a full disk.
"""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable  # the repository's .venv interpreter that runs the tests
# Printed by the wrapper to stderr just before it kills its process.
KILL_MARKER = "faults: SIGKILL"


def python_env(**overrides):
    """The environment of a test subprocess: this one's (KERAS_BACKEND included), the repository
    on PYTHONPATH, unbuffered output, TensorFlow's C++ logging quiet; then `overrides`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY_ROOT, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(overrides)
    return env


def python_command(*args):
    """[python, *args]: `python_command("-m", "kerasformer.export.exporter", run_dir)`."""
    return [PYTHON, *map(str, args)]


@dataclasses.dataclass(frozen=True)
class KillPoint:
    """Where the subprocess kills itself with SIGKILL: at a call of `target`.

    Args:
        target: "module:attribute", e.g. "os:rename" or
            "tensorflow.python.ops.gen_io_ops:merge_v2_checkpoints". The attribute is replaced on
            that module object, so callers that look it up at call time (`os.rename(...)`,
            `gen_io_ops.merge_v2_checkpoints(...)`) see the replacement; a name bound earlier by
            `from module import name`, or a module run as `-m module` (it runs as `__main__`,
            a second copy), keeps the original.
        after: kill once the call has returned (default: before it runs).
        call: kill at the call-th call that matches `condition` (1: the first).
        condition: a Python expression over `args` and `kwargs` (the call's arguments; `os` is
            available): only calls for which it is true count.
    """

    target: str
    after: bool = False
    call: int = 1
    condition: str = "True"


# Runs in the subprocess: patches the KillPoint's target, then runs the program as `python` would.
_KILL_WRAPPER = r"""
import importlib, json, os, runpy, signal, sys

point = json.loads(sys.argv[1])
module_name, _, attribute = point["target"].partition(":")
owner = importlib.import_module(module_name)
*parents, name = attribute.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original = getattr(owner, name)
matching_calls = 0


def kill(moment):
    os.write(2, f"{point['marker']} {moment} call {matching_calls} of {point['target']}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def patched(*args, **kwargs):
    global matching_calls
    if not eval(point["condition"], {"os": os}, {"args": args, "kwargs": kwargs}):
        return original(*args, **kwargs)
    matching_calls += 1
    if matching_calls == point["call"] and not point["after"]:
        kill("before")
    result = original(*args, **kwargs)
    if matching_calls == point["call"] and point["after"]:
        kill("after")
    return result


setattr(owner, name, patched)
program = sys.argv[2:]
if program[0] == "-m":
    sys.argv = program[1:]
    runpy.run_module(program[1], run_name="__main__", alter_sys=True)
elif program[0] == "-c":
    sys.argv = ["-c", *program[2:]]
    exec(compile(program[1], "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = program
    sys.path.insert(0, os.path.dirname(os.path.abspath(program[0])))
    runpy.run_path(program[0], run_name="__main__")
"""


@dataclasses.dataclass
class PythonRun:
    """What `run_python` saw: the exit status (-9 when SIGKILLed), the output, how it was killed."""

    args: list
    returncode: int
    stdout: str
    stderr: str
    kill: str | None  # the KillPoint, timer or condition that was armed; None if none was
    kill_point: KillPoint | None = None

    @property
    def killed(self):
        return self.returncode == -signal.SIGKILL

    @property
    def killed_at_point(self):
        """SIGKILLed by its KillPoint (not by a timer, the OOM killer, ...)."""
        return self.killed and KILL_MARKER in self.stderr

    def check_killed(self):
        """Raises AssertionError, with the end of stderr, unless the kill that was armed happened."""
        if not (self.killed_at_point if self.kill_point else self.killed):
            raise AssertionError(
                f"expected {self.kill} to SIGKILL {self.args}, it exited with {self.returncode}:\n"
                f"{self.stderr[-3000:]}"
            )
        return self


def run_python(args, *, kill_at=None, kill_after=None, kill_when=None, seed=None, env=None, timeout=600):
    """Runs `python ARGS` in the repository root, optionally SIGKILLing it; returns a `PythonRun`.

    Args:
        args: the interpreter's arguments (["-m", "kerasformer.export.exporter", ...], ["script.py", ...]),
            or a str: code, as for `python -c`.
        kill_at: a `KillPoint`: the process kills itself there (precise).
        kill_after: seconds after the start, or (low, high) for a delay drawn uniformly (from
            `random.Random(seed)`; the delay drawn is in `PythonRun.kill`): the test kills it.
        kill_when: a function polled every 20 ms from the start: the test kills it once it
            returns true (e.g. once a file exists).
        env: the environment (default `python_env()`).
        timeout: seconds before the run counts as hung (TimeoutError).

    A kill from outside goes to the whole process group (the program's children too); after the
    run any child still running is killed, so nothing outlives the test.
    """
    args = ["-c", args] if isinstance(args, str) else [str(a) for a in args]
    command = python_command(*args)
    armed = []
    if kill_at is not None:
        point = {**dataclasses.asdict(kill_at), "marker": KILL_MARKER}
        command = python_command("-c", _KILL_WRAPPER, json.dumps(point), *args)
        armed.append(repr(kill_at))
    if isinstance(kill_after, (tuple, list)):
        kill_after = random.Random(seed).uniform(*kill_after)
    if kill_after is not None:
        armed.append(f"a timer ({kill_after:.3f} s)")
    if kill_when is not None:
        armed.append(f"a condition ({getattr(kill_when, '__name__', kill_when)})")
    returncode, stdout, stderr = _run(command, env or python_env(), timeout, kill_after=kill_after,
                                      kill_when=kill_when)
    return PythonRun(args, returncode, stdout, stderr, " or ".join(armed) or None, kill_at)


def _run(command, env, timeout, kill_after=None, kill_when=None, preexec_fn=None):
    """(returncode, stdout, stderr) of `command` in its own process group, killed on request."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=REPOSITORY_ROOT, env=env, stdout=out, stderr=err,
                                   start_new_session=True, preexec_fn=preexec_fn)
        start = time.monotonic()
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - start
                if (kill_after is not None and elapsed >= kill_after) or (kill_when is not None and kill_when()):
                    _kill_group(process.pid)
                    process.wait()
                    break
                if elapsed > timeout:
                    raise TimeoutError(f"{command[:4]}... still running after {timeout} s")
                time.sleep(0.02)
        finally:
            _kill_group(process.pid)  # children left behind by a killed (or hung) program
            process.wait()
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- a small disk ------------------------------------------------------------------------------


@dataclasses.dataclass
class SmallDiskRun:
    """What `small_disk` saw. mechanism: "tmpfs" (a real small filesystem) or "file-size-limit"
    (the fallback); free_bytes_left: free space on the small filesystem at the end (tmpfs only)."""

    returncode: int
    stdout: str
    stderr: str
    mechanism: str
    free_bytes_left: int | None


# Runs as root of a new user and mount namespace: the small disk exists only in here.
_SMALL_DISK = r"""
import json, os, shutil, subprocess, sys

folder, mountpoint, report, free_bytes, command = json.loads(sys.argv[1])


def mount(*args):
    subprocess.run(["mount", *args], check=True)


def free_space(path):
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize, (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def replace_contents(source, destination):
    for entry in os.listdir(destination):
        path = os.path.join(destination, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    shutil.copytree(source, destination, symlinks=True, dirs_exist_ok=True)


mount("-t", "tmpfs", "-o", "size=4g,mode=0755", "kerasformer-small-disk", mountpoint)
shutil.copytree(folder, mountpoint, symlinks=True, dirs_exist_ok=True)
_, used = free_space(mountpoint)
mount("-o", f"remount,size={used + free_bytes}", mountpoint)
mount("--bind", mountpoint, folder)
returncode = subprocess.run(command).returncode
free_left, _ = free_space(folder)
subprocess.run(["umount", folder], check=True)
replace_contents(mountpoint, folder)  # what the command left on the small disk, for the test
with open(report, "w") as file:
    json.dump({"free_bytes_left": free_left}, file)
sys.exit(returncode)
"""

_NAMESPACES_ALLOWED = None


def namespaces_allowed():
    """True if an unprivileged user+mount namespace may mount a tmpfs here (checked once)."""
    global _NAMESPACES_ALLOWED
    if _NAMESPACES_ALLOWED is None:
        with tempfile.TemporaryDirectory() as folder:
            try:
                probe = subprocess.run(
                    ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o", "size=1m",
                     "probe", folder], capture_output=True, timeout=60)
                _NAMESPACES_ALLOWED = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _NAMESPACES_ALLOWED = False
    return _NAMESPACES_ALLOWED


def small_disk(command, folder, free_bytes, *, env=None, timeout=600, mechanism=None):
    """Runs `command` (a list of arguments) with `folder` on a disk that has `free_bytes` free
    beyond what `folder` holds now; returns a `SmallDiskRun`.

    "tmpfs" (used where allowed): in a new user and mount namespace (`unshare --user
    --map-root-user --mount`) a tmpfs is filled with a copy of `folder`, shrunk to that plus
    `free_bytes`, and bind-mounted over `folder`, so the command sees the same paths; writes past
    the space fail with ENOSPC ("No space left on device"). The mount exists only for the
    command's process tree, so afterwards what the command left on it replaces the contents of
    the real `folder`, for the test to inspect. The command runs as the namespace's root (your
    own user outside it).

    "file-size-limit" (the fallback where namespaces are not allowed, or asked for with
    `mechanism`): RLIMIT_FSIZE = `free_bytes`, SIGXFSZ ignored: no single file may grow past
    `free_bytes` (EFBIG, "File too large"), however many are written; `folder` is the real one.
    """
    mechanism = mechanism or ("tmpfs" if namespaces_allowed() else "file-size-limit")
    folder = os.path.abspath(folder)
    env = env or python_env()
    if mechanism == "file-size-limit":

        def limit_file_size():
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill; survives exec
            resource.setrlimit(resource.RLIMIT_FSIZE, (free_bytes, free_bytes))

        returncode, stdout, stderr = _run(list(command), env, timeout, preexec_fn=limit_file_size)
        return SmallDiskRun(returncode, stdout, stderr, mechanism, None)
    if mechanism != "tmpfs":
        raise ValueError(f"mechanism={mechanism!r} is not 'tmpfs' or 'file-size-limit'")
    with tempfile.TemporaryDirectory(prefix="small-disk-") as scratch:
        mountpoint, report = os.path.join(scratch, "disk"), os.path.join(scratch, "report.json")
        os.mkdir(mountpoint)
        setup = json.dumps([folder, mountpoint, report, int(free_bytes), [str(a) for a in command]])
        returncode, stdout, stderr = _run(
            ["unshare", "--user", "--map-root-user", "--mount", PYTHON, "-c", _SMALL_DISK, setup], env, timeout)
        if not os.path.exists(report):
            raise RuntimeError(f"no small disk was set up or read back (exit {returncode}):\n{stderr[-3000:]}")
        with open(report) as file:
            free_left = json.load(file)["free_bytes_left"]
    return SmallDiskRun(returncode, stdout, stderr, mechanism, free_left)
