"""What a run leaves when memory_tracer is killed outright (SIGKILL, say, from a harness's timeout)
and has no chance to clean up. No process: the kernel signals each process a run starts when the
thread that started it dies (without this, a full-system QEMU, in a session of its own, or a
workload whose tool died with us would run on, or wait forever for room in the trace). Its private
directories only until the next run, which removes them: a run marks each of its own as alive with a
lock that the kernel drops when the run dies. Its ring's directory in /dev/shm carries a mark of
its own, so that a later run finds it even from another TMPDIR (a test harness, say, gives each run
its own)."""
import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import time

PRIVATE_PREFIX = "memory_tracer-"
ALIVE = ".alive"       # in each of a run's private directories: locked (flock) while the run lives
SHARED_MEMORY = "/dev/shm"
RING_SUFFIX = "-ring"
# A mark younger than this is left alone: its run may be between making it and locking it.
UNLOCKED_GRACE_SECONDS = 60


def ending_with_us(command, signal_name="KILL"):
    """command, run so that the kernel sends it the signal when the thread that starts it (the
    caller's) dies: through util-linux's setpriv, which asks for that and execs it. KILL unless
    the process has a clean exit of its own to take: QEMU's, on SIGTERM, waits for its vCPUs, which
    a plugin waiting for room in a ring whose reader died with us never gives back. (Not with a
    preexec_fn: Python code between fork and exec makes the interpreter run its fork hooks in the
    parent too, and a Ctrl-C or SIGTERM that lands in one is lost.)"""
    return ["setpriv", f"--pdeathsig={signal_name}", "--", *map(str, command)]


@contextlib.contextmanager
def private_directory():
    """A new directory (mode 0700) in TMPDIR for one run, and its ring's (ring_directory), each
    marked alive, both removed at the end; the first's path. First, those that runs killed outright
    left are removed."""
    remove_what_killed_runs_left()
    path = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
    ring = ring_directory(path)
    try:
        os.mkdir(ring, 0o700)
        with _marked_alive(path), _marked_alive(ring):
            yield path
    finally:
        shutil.rmtree(ring, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _marked_alive(directory):
    """The directory's mark, locked while the run lives."""
    alive = os.open(os.path.join(directory, ALIVE), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(alive, fcntl.LOCK_EX)
        yield
    finally:
        os.close(alive)


def ring_directory(private_dir):
    """A run's shared-memory ring's directory, named after its private directory (so that every
    window of a run finds it where the plugin was told it is, and a later run what a killed one
    left): in /dev/shm (memory, never written back to a disk), else beside it."""
    shm = os.path.isdir(SHARED_MEMORY) and os.access(SHARED_MEMORY, os.W_OK)
    return os.path.join(SHARED_MEMORY if shm else os.path.dirname(private_dir),
                        os.path.basename(private_dir) + RING_SUFFIX)


def remove_what_killed_runs_left():
    """The private directories in TMPDIR, and the rings' directories in /dev/shm, whose run died
    without removing them."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), PRIVATE_PREFIX + "*")):
        if _left_by_a_dead_run(path):
            shutil.rmtree(ring_directory(path), ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
    for ring in glob.glob(os.path.join(SHARED_MEMORY, PRIVATE_PREFIX + "*" + RING_SUFFIX)):
        if _left_by_a_dead_run(ring):
            shutil.rmtree(ring, ignore_errors=True)


def _left_by_a_dead_run(path):
    try:   # fails on another user's directory (0700), and on any directory without the mark
        mark = os.open(os.path.join(path, ALIVE), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if time.time() - os.fstat(mark).st_mtime < UNLOCKED_GRACE_SECONDS:
            return False
        fcntl.flock(mark, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:   # locked: its run lives
        return False
    finally:
        os.close(mark)
