"""The processes a run starts end with memory_tracer, even when it is killed outright (SIGKILL,
say, from a harness's timeout) and has no chance to stop them itself: the kernel signals each of
them when the thread that started it dies. Without this, a full-system QEMU (in a session of its
own) or a workload whose tool died with us would run on, or wait forever for room in the trace."""
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
# Looked up now, in the parent: the child of a threaded process should load nothing before exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def ending_with_us(signum=signal.SIGKILL):
    """A preexec_fn for subprocess.Popen and pexpect.spawn: the child gets signum when the thread
    that starts it (the caller's) dies. SIGKILL unless the child has a clean exit of its own to take:
    QEMU's, on SIGTERM, waits for its vCPUs, which a plugin waiting for room in a ring whose reader
    died with us never gives back."""
    parent = os.getpid()

    def arrange():
        _prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:   # we died before the prctl: the signal would never come
            os.kill(os.getpid(), signum)
    return arrange
