"""The `forge` command. `run` is its entry point: Ctrl-C while the commands' modules are still
importing (torch, litellm, SQLAlchemy: a second or more) ends it with one line, as Ctrl-C
anywhere else does."""

import sys


def run() -> None:
    try:
        from forge.cli.main import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
