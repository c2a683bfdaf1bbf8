"""How a run ends on a signal: Ctrl-C (SIGINT), SIGTERM and SIGHUP unwind the main thread like
Ctrl-C, so that every cleanup runs, however the main thread is waiting at the time.

Python runs signal handlers in the main thread only, between two steps of its own code; a main
thread asleep in a system call (a thread's join, a queue's get, a select, a waitpid) runs them when
the call returns early, interrupted. It is not interrupted when the kernel hands the signal to
another thread, nor when the signal lands in the instant between Python's last look and the
sleep: it sleeps on to the call's timeout, minutes away, or forever. So a watcher thread learns
of each signal from Python's wakeup file descriptor and, until the main thread has run the
handler, knocks on it with a signal of its own, whose empty handler interrupts the call."""
import contextlib
import os
import signal
import threading
import time

from .errors import Interrupted

ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KNOCK = signal.SIGURG         # ignored unless handled: one that strays here is harmless
KNOCK_INTERVAL_SECONDS = 0.05


class _Tally:
    """Ending signals seen by the watcher, and handled by the main thread."""
    def __init__(self):
        self.seen = 0
        self.handled = 0


@contextlib.contextmanager
def ending_signals_unwind(program):
    """Inside, an ending signal raises KeyboardInterrupt (Ctrl-C) or Interrupted (the others,
    whose message names the signal) in the main thread."""
    tally = _Tally()

    def raise_in_main_thread(signum, frame):
        tally.handled += 1
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(f"{program}: stopped by {signal.Signals(signum).name}.")

    previous = {s: signal.signal(s, raise_in_main_thread) for s in ENDING_SIGNALS}
    previous[KNOCK] = signal.signal(KNOCK, lambda signum, frame: None)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_fd, False)   # Python's wakeup fd must never block a signal handler
    previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_knock_until_handled, args=(read_fd, threading.get_ident(), tally),
                               name="signal watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_wakeup_fd)
        os.close(write_fd)   # the watcher reads the end of the pipe, and ends
        watcher.join()
        os.close(read_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _knock_until_handled(read_fd, main_thread, tally):
    ending = {int(s) for s in ENDING_SIGNALS}
    while numbers := os.read(read_fd, 64):   # the number of each signal handled in Python
        tally.seen += sum(1 for number in numbers if number in ending)
        while tally.handled < tally.seen:
            signal.pthread_kill(main_thread, KNOCK)
            time.sleep(KNOCK_INTERVAL_SECONDS)
