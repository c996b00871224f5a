"""The `forge` command. `run` is its entry point: Ctrl-C while the commands' modules are still
importing (torch, litellm, SQLAlchemy: a second or more) ends it with one line, as Ctrl-C
anywhere else does."""

import signal
import sys
import threading


def redeliver_swallowed_interrupts(unraisable) -> None:
    """`sys.unraisablehook`: Python cannot raise an exception out of a weakref callback or a
    `__del__`, so a Ctrl-C that lands in one (SQLAlchemy's import registers such callbacks) would
    be printed as "Exception ignored" and lost. The signal is sent to the main thread again,
    50 ms later: sent at once, its handler would run inside this hook and be lost the same way."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        main = threading.main_thread().ident
        again = threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def run() -> None:
    sys.unraisablehook = redeliver_swallowed_interrupts
    try:
        from forge.cli.main import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
