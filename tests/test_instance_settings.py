"""Serve's settings, split: the mesh-wide ones in the database, each instance's own in its data
folder. Two instances on one PostgreSQL database keep their own endpoints across restarts and
in the admin commands; a SQLite folder from before the split keeps all of its settings."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.instancefile import INSTANCE_FILE_NAME
from meshpeer.rendezvous.registry import DATABASE_NAME, Registry
from tests.pgcluster import Cluster
from tests.postgres import RegistryOpener
from tests.test_instances import _copy_tls
from tests.test_registry import run
from tests.test_rendezvous_cli import rendezvous

FIRST = config.Overrides(
    network="10.9.0.0/24", public_endpoint="192.0.2.10:51820", relay_rate="50", dns_ttl="5"
)
SECOND = config.Overrides(public_endpoint="198.51.100.20:4500", api_listen="0.0.0.0:8443")


async def _serve_once(data_dir: Path, given: config.Overrides | None, url: str | None) -> None:
    """What a serve that started leaves behind."""
    registry = await Registry.open(data_dir, given, store=False, database=url)
    await registry.keep_settings()
    await registry.close()


async def _settings_after_restart(data_dir: Path, url: str | None) -> config.Settings:
    registry = await Registry.open(data_dir, config.Overrides(), store=False, database=url)
    await registry.keep_settings()
    await registry.close()
    return registry.settings


def test_two_instances_on_one_database_keep_their_own_endpoints(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"

    async def scenario() -> tuple[config.Settings, config.Settings]:
        url = await postgres_cluster.new_database()
        await _serve_once(first_dir, FIRST, url)
        _copy_tls(first_dir, second_dir)
        await _serve_once(second_dir, SECOND, url)
        for _ in range(2):  # each restart keeps what the other's did not overwrite
            first = await _settings_after_restart(first_dir, url)
            second = await _settings_after_restart(second_dir, url)
        return first, second

    first, second = run(scenario)
    assert first.public_endpoint == ("192.0.2.10", 51820)
    assert first.public_api_url == "https://192.0.2.10:51821"
    assert second.public_endpoint == ("198.51.100.20", 4500)
    assert second.public_api_url == "https://198.51.100.20:8443"
    for settings in (first, second):  # the mesh's, whichever instance was given them
        assert (str(settings.network), settings.relay_mbit_s, settings.dns_ttl) == (
            "10.9.0.0/24",
            50,
            5,
        )


def test_admin_commands_in_each_folder_see_that_instances_settings(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"

    async def serve_both() -> str:
        url = await postgres_cluster.new_database()
        await _serve_once(first_dir, FIRST, url)
        _copy_tls(first_dir, second_dir)
        await _serve_once(second_dir, SECOND, url)
        return url

    env = {"RENDEZVOUS_DATABASE": run(serve_both)}
    for data_dir, endpoint in ((first_dir, "192.0.2.10:51820"), (second_dir, "198.51.100.20:4500")):
        shown = rendezvous("info", "--json", "--data-dir", str(data_dir), env=env)
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert (info["endpoint"], info["network"]) == (endpoint, "10.9.0.0/24")
    elsewhere = rendezvous("info", "--data-dir", str(tmp_path / "third"), env=env)
    assert elsewhere.returncode == 2 and "never served from this database" in elsewhere.stderr


def test_the_database_keeps_only_the_mesh_wide_settings(
    tmp_path: Path, open_registry: RegistryOpener
) -> None:
    async def scenario() -> config.Settings:
        registry = await open_registry(tmp_path, FIRST, store=False)
        await registry.keep_settings()
        await registry.close()
        return (await _restarted(open_registry, tmp_path)).settings

    settings = run(scenario)
    assert settings.public_endpoint == ("192.0.2.10", 51820) and settings.relay_mbit_s == 50
    kept = json.loads((tmp_path / INSTANCE_FILE_NAME).read_text())
    assert kept["settings"] == {"public_endpoint": "192.0.2.10:51820"}
    assert (tmp_path / INSTANCE_FILE_NAME).stat().st_mode & 0o077 == 0


async def _restarted(open_registry: RegistryOpener, data_dir: Path) -> Registry:
    registry = await open_registry(data_dir, store=False)
    await registry.close()
    return registry


def test_a_sqlite_folder_from_before_the_split_keeps_its_settings(tmp_path: Path) -> None:
    """Its meta held every setting: the instance's move to the folder at the first write."""
    everything = json.dumps(config.to_mapping(FIRST))
    run(lambda: _serve_once(tmp_path, FIRST, None))
    (tmp_path / INSTANCE_FILE_NAME).unlink()
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (everything,))

    info = json.loads(rendezvous("info", "--json", "--data-dir", str(tmp_path)).stdout)
    assert info["endpoint"] == "192.0.2.10:51820"
    settings = run(lambda: _settings_after_restart(tmp_path, None))
    assert settings.public_endpoint == ("192.0.2.10", 51820) and settings.relay_mbit_s == 50
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db:
        [(stored,)] = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchall()
    assert "public_endpoint" not in json.loads(stored)
    assert json.loads((tmp_path / INSTANCE_FILE_NAME).read_text())["settings"] == {
        "public_endpoint": "192.0.2.10:51820"
    }
