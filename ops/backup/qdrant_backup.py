"""Back up and restore the retrieval store (the QDRANT_* settings).

    python ops/backup/qdrant_backup.py backup  [--dest DIR] [--collection NAME]...
    python ops/backup/qdrant_backup.py restore ARCHIVE_OR_SNAPSHOT... [--collection NAME]

Embedded mode (no QDRANT_HOST / QDRANT_URL): the backup is a .tar.gz of
QDRANT_PATH. qdrant-client locks that path to the process that opened it,
the gateway, and a copy taken under a writer would not be a point in time,
so both commands take the same lock first and refuse (exit 2, one line)
while a gateway holds it: stop the gateway, back up, start it again. The
restore moves the current folder aside (PATH.before-restore-<time>) and
unpacks the archive in its place.

Server mode: one snapshot per collection, made by Qdrant while it keeps
serving (POST /collections/<name>/snapshots), downloaded to --dest as
<collection>.<snapshot name>; restore uploads it with priority=snapshot,
replacing that collection. A collection's owner and sharing live in its
metadata, so they come back with it.

Settings (environment): the QDRANT_* variables; BACKUP_DIR default --dest
(default /var/backups/streamworker/qdrant); KEEP, the newest archives kept
(default 28).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streamworker.protocol.settings import SettingsError, from_env  # noqa: E402
from streamworker.qdrant import QdrantSettings, address, connect  # noqa: E402


class Refused(Exception):
    pass


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """The lock qdrant-client takes on an embedded path (flock on .lock):
    held for the copy, so no gateway opens the store meanwhile."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(
                f"{path} is open in a running gateway; stop it first "
                "(or use a Qdrant server for online snapshots)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(dest: Path, pattern: str, keep: int) -> None:
    for old in sorted(dest.glob(pattern))[:-keep] if keep > 0 else []:
        old.unlink()


def backup_embedded(settings: QdrantSettings, dest: Path, keep: int) -> list[Path]:
    if not settings.qdrant_path:
        raise Refused("QDRANT_PATH is not set: an in-memory store has nothing to back up")
    src = Path(settings.qdrant_path)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"qdrant-{time.strftime('%Y%m%dT%H%M%S')}.tar.gz"
    with store_lock(src):
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(src, arcname="qdrant", filter=lambda t: None if t.name.endswith(".lock") else t)
        partial.rename(out)  # never a half-written archive under the final name
    _prune(dest, "qdrant-*.tar.gz", keep)
    return [out]


def restore_embedded(settings: QdrantSettings, archive: Path) -> Path:
    if not settings.qdrant_path:
        raise Refused("QDRANT_PATH is not set")
    target = Path(settings.qdrant_path)
    with store_lock(target):
        staging = target.with_name(target.name + ".restoring")
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        aside = target.with_name(f"{target.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
        for entry in target.iterdir():  # the lock file stays: we hold it
            if entry.name != ".lock":
                aside.mkdir(exist_ok=True)
                entry.rename(aside / entry.name)
        for entry in (staging / "qdrant").iterdir():
            entry.rename(target / entry.name)
        shutil.rmtree(staging)
    return aside


def _http(settings: QdrantSettings):  # type: ignore[no-untyped-def]
    import httpx

    headers = {"api-key": settings.qdrant_api_key} if settings.qdrant_api_key else {}
    return httpx.Client(
        base_url=address(settings), headers=headers, timeout=settings.qdrant_timeout
    )


async def _snapshot_names(
    settings: QdrantSettings, collections: list[str]
) -> list[tuple[str, str]]:
    client = connect(settings)
    try:
        names = collections or [c.name for c in (await client.get_collections()).collections]
        made = []
        for name in names:
            snap = await client.create_snapshot(name, wait=True)
            if snap is None:
                raise Refused(f"Qdrant made no snapshot of {name}")
            made.append((name, snap.name))
        return made
    finally:
        await client.close()


def backup_server(settings: QdrantSettings, dest: Path, collections: list[str]) -> list[Path]:
    import anyio

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with _http(settings) as http:
        for name, snap in anyio.run(_snapshot_names, settings, collections):
            path = dest / f"{name}.{snap}"
            with http.stream("GET", f"/collections/{name}/snapshots/{snap}") as resp:
                resp.raise_for_status()
                with open(path, "wb") as fh:
                    for block in resp.iter_bytes():
                        fh.write(block)
            http.delete(f"/collections/{name}/snapshots/{snap}")  # the copy is ours now
            out.append(path)
    return out


def restore_server(settings: QdrantSettings, snapshot: Path, collection: str | None) -> str:
    name = collection or snapshot.name.split(".", 1)[0]
    with _http(settings) as http, open(snapshot, "rb") as fh:
        resp = http.post(
            f"/collections/{name}/snapshots/upload",
            params={"priority": "snapshot", "wait": "true"},
            files={"snapshot": (snapshot.name, fh)},
        )
        resp.raise_for_status()
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument(
        "--dest", default=os.environ.get("BACKUP_DIR") or "/var/backups/streamworker/qdrant"
    )
    b.add_argument("--collection", action="append", default=[], help="server mode: only these")
    r = sub.add_parser("restore")
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--collection", help="server mode: restore into this collection")
    args = parser.parse_args(argv)
    try:
        settings = from_env(QdrantSettings)
        keep = int(os.environ.get("KEEP") or 28)
        if args.command == "backup":
            if settings.embedded:
                made = backup_embedded(settings, Path(args.dest), keep)
            else:
                made = backup_server(settings, Path(args.dest), args.collection)
            for path in made:
                print(f"qdrant backup: {path}")
            return 0
        for path in args.files:
            if settings.embedded:
                aside = restore_embedded(settings, path)
                print(
                    f"qdrant restore: {path} -> {settings.qdrant_path} (previous data in {aside})"
                )
            else:
                name = restore_server(settings, path, args.collection)
                print(f"qdrant restore: {path} -> collection {name}")
        return 0
    except (Refused, SettingsError) as exc:
        print(f"qdrant backup: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
