"""Writing a file whole or not at all, readable by whom `mode` says, never through a link.

Both sides keep secrets in files (the rendezvous its TLS key, the agent its WireGuard key and
credential): a crash leaves the old file, and the temporary file has a name of its own opened
with O_EXCL|O_NOFOLLOW, so a link planted in the folder is never followed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    descriptor = os.open(temporary, flags, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
