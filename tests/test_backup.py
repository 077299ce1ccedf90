"""``pod backup``: a consistent copy of the SQLite database, taken while a real server writes."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from tests.procs import Procs, request

TURTLE = {"Content-Type": "text/turtle"}


@pytest.mark.backends("sqlite")
def test_backup_while_writing_restores_every_acknowledged_write(procs: Procs, tmp_path: Path) -> None:
    server = procs.server("live", demo_pod="alice", unsafe_webid_header=True)
    owner = {"Authorization": f"WebID {server.webid('alice')}"}
    for i in range(20):
        put = request(
            "PUT",
            server.url("alice", f"before/{i}.ttl"),
            headers={**owner, **TURTLE},
            body=f"<#n> <#i> {i} .".encode(),
        )
        assert put.status == 201
    # At rest, the newest writes are still in the -wal file: a copy of the database file alone
    # would miss them.
    quiet = tmp_path / "quiet.sqlite3"
    assert server.cli("backup", str(quiet)).returncode == 0
    with contextlib.closing(sqlite3.connect(quiet)) as copy:
        (count,) = copy.execute("SELECT count(*) FROM resources WHERE path LIKE '/before/_%'").fetchone()
    assert count == 20
    # Writes go on during the backup: it must neither wait for them nor tear.
    stop = threading.Event()
    during: list[int] = []

    def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            url = server.url("alice", f"during/{i}.ttl")
            if request("PUT", url, headers={**owner, **TURTLE}, body=b"<#a> <#b> <#c> .").status == 201:
                during.append(i)
            i += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        dest = tmp_path / "backups" / "pod.sqlite3"
        dest.parent.mkdir()
        done = server.cli("backup", str(dest))
    finally:
        stop.set()
        writer.join()
    assert done.returncode == 0, done.stderr
    assert "Backed up 1 pod(s)" in done.stdout and str(dest) in done.stdout
    assert during, "the writer made no progress while the backup ran"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600  # it holds the pods' private keys
    assert [p.name for p in dest.parent.iterdir()] == ["pod.sqlite3"]  # no partial file left

    # A second backup never overwrites the first.
    again = server.cli("backup", str(dest), "--json")
    assert again.returncode == 1 and "exists" in again.stderr

    # Restore, as the README says: stop the server, put the copy in place of the database (and
    # its -wal / -shm files), start it. It serves every write made before the backup began.
    assert server.stop() == 0
    for leftover in server.data_dir.glob("pod.sqlite3*"):
        leftover.unlink()
    shutil.copy(dest, server.data_dir / "pod.sqlite3")
    restored = server.start()
    for i in range(20):
        got = request("GET", restored.url("alice", f"before/{i}.ttl"), headers=owner)
        assert got.status == 200, (i, got.status)
        assert f"{i}".encode() in got.body
    # ... and of the writes made during it, a prefix in order: one moment's state, not a torn one.
    present = [
        i
        for i in during
        if request("HEAD", restored.url("alice", f"during/{i}.ttl"), headers=owner).status == 200
    ]
    assert present == during[: len(present)]
    assert request("GET", restored.url("alice", "profile/card")).status == 200


@pytest.mark.backends("sqlite")
def test_backup_errors(procs: Procs, tmp_path: Path) -> None:
    server = procs.server("s", demo_pod="alice", start=False)
    missing = server.cli("backup", str(tmp_path / "copy.sqlite3"))
    assert missing.returncode == 1 and "there is no database" in missing.stderr
    server.start()
    nowhere = server.cli("backup", str(tmp_path / "no" / "such" / "dir" / "copy.sqlite3"))
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr


@pytest.mark.backends("postgresql")
def test_backup_points_postgresql_to_pg_dump(procs: Procs, tmp_path: Path) -> None:
    server = procs.server("pg", demo_pod="alice", start=False)
    done = server.cli("backup", str(tmp_path / "copy"))
    assert done.returncode == 2 and "pg_dump" in done.stderr
    assert not (tmp_path / "copy").exists()
