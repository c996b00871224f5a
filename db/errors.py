"""The database's one error, in a module of its own: the CLI catches it around every command,
and importing it must not import SQLAlchemy (0.36 s of every `forge` command on the CPU machine,
`forge eval` included, before this module existed)."""

from __future__ import annotations


class DatabaseError(RuntimeError):
    """The database cannot be opened or used as asked. The message is one line that names the
    file or server and the fix; nothing was changed. `code` is the CLI's exit status."""

    code = 2
