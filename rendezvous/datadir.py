"""The data folder: a private directory holding the database, the rendezvous's key, its TLS
files, the settings serve was given and the admin API's token (its hash in the database, the
token itself in a 0600 file beside it).

Of serve's settings, the mesh-wide ones live in the database's meta and this instance's own in
its folder (instancefile.py): instances sharing a PostgreSQL database keep theirs apart."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common import tokens
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import encode_key, parse_key

from . import instancefile
from . import settings as config
from .instancefile import InstanceFile
from .noise import public_bytes
from .storage import Transaction
from .timers import INSTANCE_LIVE_S
from .tls import TlsFiles, ensure_self_signed, read_pin

DATABASE_NAME = "rendezvous.sqlite3"
ADMIN_TOKEN_NAME = "admin-token"  # noqa: S105 (a file name, not a secret)


@dataclass(slots=True)
class Identity:
    """What a data folder says the rendezvous is: its settings, key and TLS."""

    given: config.Overrides
    settings: config.Settings
    private_key: X25519PrivateKey
    public_key: bytes
    stored_zone_serial: int
    instance_id: str  # this instance's row in the database's list of instances
    tls_files: TlsFiles | None = None  # None: plain HTTP behind the operator's proxy
    tls_pin: str | None = None


def make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInput(
            f"cannot use data folder {path}: {error.strerror}; pass --data-dir"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write to data folder {path}; pass --data-dir or fix its owner")


def check_served(data_dir: Path) -> None:
    """The admin commands need the settings of a serve; InvalidInput when it never ran."""
    if not (data_dir / DATABASE_NAME).exists():
        raise InvalidInput(never_served(data_dir))


def never_served(data_dir: Path) -> str:
    return (
        f"{data_dir} has never served: start `rendezvous serve` first (it makes the "
        "rendezvous's identity and keeps its settings), or pass the --data-dir it uses"
    )


async def prepare(
    db: Transaction,
    data_dir: Path,
    given: config.Overrides | None,
    *,
    store: bool,
    served: bool,
    shared: bool = False,
) -> tuple[Identity, int]:
    """The folder's identity, made on first use, and the id of the network it serves.
    `shared`: the database is PostgreSQL, which other instances may serve from too."""
    meta = await db.read_meta()
    if served and "settings" not in meta:
        raise InvalidInput(never_served(data_dir))
    await db.upgrade_schema(meta)
    kept = instancefile.read(data_dir)
    if served and shared and kept is None:
        raise InvalidInput(never_served_here(data_dir))
    stored = config.from_mapping(_stored_settings(meta, kept, shared=shared))
    merged = config.merge(given, stored) if given else stored
    private_key = await _load_or_make_key(db, meta)
    identity = Identity(
        merged,
        config.resolve(merged),
        private_key,
        public_bytes(private_key),
        int(meta.get("zone_serial", "0")),
        kept.instance_id if kept else instancefile.new_instance_id(),
    )
    if shared and given:  # before anything is written: a refused serve changes nothing
        await check_shared_settings(db, identity)
    network_id = await store_settings(db, data_dir, identity, write=store)
    await _ensure_admin_token(db, meta, data_dir, shared=shared)
    return identity, network_id


def never_served_here(data_dir: Path) -> str:
    return (
        f"{data_dir} has never served from this database: run the admin commands with the "
        "--data-dir of an instance that serves (its --public-api-url goes in tokens)"
    )


def _stored_settings(
    meta: dict[str, str], kept: InstanceFile | None, *, shared: bool
) -> dict[str, str]:
    """The mesh's settings from the database, this instance's from its folder. A SQLite folder
    from before they were apart keeps its own in the database's meta: taken from there (and
    moved to the folder at the next write). A shared database's are another instance's."""
    in_database = json.loads(meta.get("settings", "{}"))
    mesh = config.only(in_database, config.MESH_WIDE)
    if kept is not None:
        return mesh | kept.settings
    return mesh if shared else mesh | config.only(in_database, config.PER_INSTANCE)


def prepare_tls(identity: Identity, data_dir: Path) -> None:
    settings = identity.settings
    if settings.behind_tls_proxy:
        return
    if settings.tls_cert and settings.tls_key:
        identity.tls_files = TlsFiles(Path(settings.tls_cert), Path(settings.tls_key))
    else:
        identity.tls_files = ensure_self_signed(data_dir, settings.public_endpoint[0])
    identity.tls_pin = read_pin(identity.tls_files)


async def store_settings(
    db: Transaction, data_dir: Path, identity: Identity, *, write: bool
) -> int:
    """Keep the settings for the other commands (with `write`), and the network; its id."""
    known = await db.default_network()
    if not write and known:
        return known[0]
    if write:
        _keep_settings(data_dir, identity)
        mesh = config.only(config.to_mapping(identity.given), config.MESH_WIDE)
        await db.set_meta("settings", json.dumps(mesh, sort_keys=True))
    settings = identity.settings
    network = str(settings.network)
    if not known:
        return await db.add_network(network, settings.zone)
    network_id, stored_cidr = known
    if stored_cidr != network:
        count = await db.peer_count(network_id)
        if count:
            raise InvalidInput(
                f"the data folder's network is {stored_cidr} with {count} peers; "
                f"remove them first or use a new --data-dir to move to {network}"
            )
    await db.update_network(network_id, network, settings.zone)
    return network_id


def _keep_settings(data_dir: Path, identity: Identity) -> None:
    own = config.only(config.to_mapping(identity.given), config.PER_INSTANCE)
    instancefile.write(data_dir, InstanceFile(identity.instance_id, own))


def is_admin(meta: dict[str, str], secret: str) -> bool:
    expected = meta.get("admin_hash", "")
    return secrets.compare_digest(tokens.hash_secret(secret.encode()).hex(), expected)


async def _load_or_make_key(db: Transaction, meta: dict[str, str]) -> X25519PrivateKey:
    if "private_key" in meta:
        raw = parse_key(meta["private_key"], "stored private key")
        return X25519PrivateKey.from_private_bytes(raw)
    key = X25519PrivateKey.generate()
    await db.set_meta("private_key", encode_key(key.private_bytes_raw()))
    return key


async def _ensure_admin_token(
    db: Transaction, meta: dict[str, str], data_dir: Path, *, shared: bool
) -> None:
    """The admin API's bearer token: its hash in the database, the token in a 0600 file.
    A shared database's hash is the first instance's: another instance with a new data
    folder adopts it (the operator's token keeps working on all) instead of replacing it.
    A SQLite folder that lost its file gets a new token: nobody else can hold the old one."""
    path = data_dir / ADMIN_TOKEN_NAME
    if "admin_hash" in meta and (shared or path.exists()):
        return
    secret = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    await db.set_meta("admin_hash", tokens.hash_secret(secret.encode()).hex())


async def check_shared_settings(db: Transaction, identity: Identity) -> None:
    """Instances sharing a database serve one mesh: one zone, network, TTL, transfer list and
    relay rate. One started with other values would rewrite them for all while the others
    go on serving the old ones (a zone two instances answer differently): refused while
    another instance serves. With none serving, the new values are the mesh's change. The
    values compared are the ones served, defaults filled in and spellings parsed: a zone the
    first took by default is the mesh's as much as one it was given."""
    meta = await db.read_meta()
    if "settings" not in meta:
        return  # the first instance on this database
    stored = config.only(json.loads(meta["settings"]), config.MESH_WIDE)
    theirs = config.resolve(config.merge(config.from_mapping(stored), _own_only(identity)))
    differ = [
        f"{name} {_shown(getattr(theirs, field))} (not {_shown(getattr(identity.settings, field))})"
        for name, field in config.SERVED_AS.items()
        if _canonical(getattr(theirs, field)) != _canonical(getattr(identity.settings, field))
    ]
    if not differ or not await db.other_live_instances(identity.instance_id, INSTANCE_LIVE_S):
        return
    raise InvalidInput(
        f"the instances serving this database use {', '.join(differ)}: start this one with "
        "the same values, or stop the others first to change them for the whole mesh"
    )


def _own_only(identity: Identity) -> config.Overrides:
    """This instance's own settings alone: the mesh's are left to the stored ones."""
    own = config.only(config.to_mapping(identity.given), config.PER_INSTANCE)
    return config.from_mapping(own)


def _canonical(value: object) -> object:
    """A setting as the mesh serves it: names in any case are one, a list in any order one."""
    if isinstance(value, tuple):
        return frozenset(value)
    return value.lower() if isinstance(value, str) else value


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


async def check_shared_tls(db: Transaction, identity: Identity) -> None:
    """Instances sharing a database serve one TLS certificate: every token pins it, and an
    agent fails over to any instance. The first keeps the pin; another whose certificate
    differs refuses to start (its tokens and its API would be refused by the agents)."""
    if identity.tls_pin is None:
        return  # behind the operator's proxy, whose certificate is the operator's business
    stored = (await db.read_meta()).get("tls_pin")
    if stored is None:
        await db.set_meta("tls_pin", identity.tls_pin)
    elif stored != identity.tls_pin:
        raise InvalidInput(
            "this instance's TLS certificate is not the one the other instances on this "
            "database serve and their tokens pin: copy tls.crt and tls.key from the first "
            "instance's data folder into this one's (or pass the same --tls-cert/--tls-key)"
        )
