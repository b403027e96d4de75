"""What belongs to one serving instance, kept in its own data folder: its id in the database's
list of instances, and the settings of its host (where it listens, how agents reach it, its TLS
files). Instances sharing one PostgreSQL database each keep their own here, so one's
--public-endpoint never becomes another's; the mesh-wide settings stay in the database.

Written whole into a temporary file and renamed over the old one: a crash leaves the old file
or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from meshpeer.common.errors import InvalidInput

INSTANCE_FILE_NAME = "instance.json"


def new_instance_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class InstanceFile:
    instance_id: str = field(default_factory=new_instance_id)
    settings: dict[str, str] = field(default_factory=dict)  # settings.to_mapping's, per instance

    def to_json(self) -> dict[str, object]:
        return {"instance_id": self.instance_id, "settings": self.settings}


def read(data_dir: Path) -> InstanceFile | None:
    """The folder's file; None when it has none yet (never served, or served before the
    split); InvalidInput when it is not ours."""
    path = data_dir / INSTANCE_FILE_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror}") from None
    try:
        return _decode(json.loads(text))
    except (ValueError, TypeError, KeyError):
        raise InvalidInput(
            f"{path} is damaged: remove it and serve again with your flags"
        ) from None


def _decode(document: dict[str, object]) -> InstanceFile:
    instance_id, settings = document["instance_id"], document["settings"]
    if not isinstance(instance_id, str) or not isinstance(settings, dict):
        raise TypeError("not an instance file")
    if not all(isinstance(value, str) for value in settings.values()):
        raise TypeError("a setting that is not text")
    return InstanceFile(instance_id, {str(name): value for name, value in settings.items()})


def write(data_dir: Path, kept: InstanceFile) -> None:
    """Replace the folder's file in one rename (0600: it names the TLS key's path)."""
    descriptor, temporary = tempfile.mkstemp(prefix=".instance-", dir=data_dir)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(kept.to_json(), file, sort_keys=True, indent=1)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, data_dir / INSTANCE_FILE_NAME)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(data_dir)


def _sync_folder(data_dir: Path) -> None:
    """The rename itself survives a crash only once the folder is synced."""
    folder = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
