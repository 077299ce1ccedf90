"""The ``pod`` command: ``pod serve``, ``pod create NAME``, ``pod list``, ``pod delete NAME``,
``pod migrate``, ``pod backup``, ...

Every command takes the same configuration options, so ``pod create`` and ``pod list`` work on the
data directory of a running server (SQLite in WAL mode lets them share the file) or of none.
Errors in options or configuration are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

from acl.apikeys import ApiKeys
from ldp.accessor import DatabaseError, Migration, StorageAccessor
from ldp.errors import NotFound, PodError
from ldp.sqlite_backup import BackupError, backup
from ldp.store import ResourceStore
from pod.backend import Backend, is_postgres, open_backend
from pod.config import CONFIG_FIELDS, LOG_FORMATS, LOG_LEVELS, Config, ConfigError, load_config
from pod.events import parse_time
from pod.grants import grant, subscribe
from pod.pods import check_pod_name, create_pod, pod_info

if TYPE_CHECKING:
    from pod.workers import Child


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"pod: error: {message}\n")


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("configuration (also from a TOML file and POD_* environment variables)")
    g.add_argument("--config", metavar="FILE", help="TOML configuration file (or POD_CONFIG)")
    g.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", help="port to listen on (default 8080)")
    g.add_argument(
        "--data-dir", dest="data_dir", metavar="DIR", help="where the database lives (default ./var)"
    )
    g.add_argument(
        "--base-url", dest="base_url", metavar="URL", help="public base URL (default http://HOST:PORT/)"
    )
    g.add_argument(
        "--url-mode", dest="url_mode", choices=["path", "subdomain"], help="pod URLs: /NAME/ or NAME.host"
    )
    g.add_argument("--log-level", dest="log_level", choices=LOG_LEVELS, help="log level (default info)")
    g.add_argument("--max-body-size", dest="max_body_size", metavar="BYTES", help="largest request body")
    g.add_argument(
        "--pod-quota", dest="pod_quota", metavar="BYTES", help="most bytes one pod may store (0: no limit)"
    )
    g.add_argument("--oidc-issuer", dest="oidc_issuer", metavar="URL", help="solid:oidcIssuer for new WebIDs")
    g.add_argument(
        "--demo-pod", dest="demo_pod", metavar="NAME", help="pod created on first start ('' for none)"
    )
    g.add_argument(
        "--unsafe-webid-header",
        dest="unsafe_webid_header",
        action="store_const",
        const=True,
        help="trust 'Authorization: WebID <uri>' without proof (conformance tests only, never in production)",
    )
    g.add_argument(
        "--allow-loopback",
        dest="allow_loopback",
        action="store_const",
        const=True,
        help="let outbound requests reach loopback addresses (tests and local multi-server demos)",
    )
    g.add_argument("--log-format", dest="log_format", choices=LOG_FORMATS, help="text (default) or json")
    g.add_argument(
        "--access-log",
        dest="access_log",
        action="store_const",
        const=True,
        help="log every request: method, path, status, duration (always on at --log-level debug)",
    )
    g.add_argument("--workers", metavar="N", help="server processes sharing the port (default 1)")
    g.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout",
        metavar="SECONDS",
        help="how long in-flight requests may finish after SIGTERM (default 30)",
    )
    g.add_argument(
        "--database",
        metavar="URL",
        help="postgresql://user@host/db to run on PostgreSQL (default: the SQLite file in the data dir)",
    )
    g.add_argument(
        "--database-pool",
        dest="database_pool",
        metavar="N",
        help="connections each server process keeps to PostgreSQL (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pod", description="A Solid pod server.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _common(sub.add_parser("serve", help="run the server"))
    create = sub.add_parser("create", help="create a pod and print its URL and WebID")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help='print {"name", "url", "webid"}')
    _common(create)
    delete = sub.add_parser("delete", help="delete a pod and all of its data, for good")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="confirm: without it nothing is deleted")
    delete.add_argument("--json", action="store_true", help="print what was removed as JSON")
    _common(delete)
    listing = sub.add_parser("list", help="list the pods")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    _common(listing)
    key = sub.add_parser("key", help="manage the API keys apps use to act in a pod")
    key_sub = key.add_subparsers(dest="key_command", required=True, parser_class=_Parser)
    key_create = key_sub.add_parser("create", help="mint a key for an app; the key is printed once")
    key_create.add_argument("pod")
    key_create.add_argument("--agent", required=True, metavar="WEBID", help="the app's WebID")
    key_create.add_argument("--label", default="", help="a note to recognise the key by")
    key_create.add_argument("--json", action="store_true")
    key_list = key_sub.add_parser("list", help="list a pod's keys (not their secrets)")
    key_list.add_argument("pod")
    key_list.add_argument("--json", action="store_true")
    key_revoke = key_sub.add_parser("revoke", help="revoke a key by its id")
    key_revoke.add_argument("pod")
    key_revoke.add_argument("id")
    for p in (key_create, key_list, key_revoke):
        _common(p)
    grant_p = sub.add_parser("grant", help="let an agent publish to or subscribe to a topic of a pod")
    grant_p.add_argument("pod")
    grant_p.add_argument("--agent", required=True, metavar="WEBID")
    what = grant_p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--publish", metavar="TOPIC", help="grant acl:Append on the topic (domain or domain/topic)"
    )
    what.add_argument("--subscribe", metavar="TOPIC", help="grant acl:Read on the topic")
    grant_p.add_argument("--remove", action="store_true", help="take the grant away")
    _common(grant_p)
    sub_p = sub.add_parser("subscribe", help="deliver a pod's events on a topic to an agent")
    sub_p.add_argument("pod")
    sub_p.add_argument("--agent", required=True, metavar="WEBID")
    sub_p.add_argument("--topic", required=True)
    sub_p.add_argument("--webhook", metavar="URL", help="POST events here instead of the agent's inbox")
    sub_p.add_argument("--secret", default="", help="HMAC-SHA256 secret for the webhook's X-Signature")
    sub_p.add_argument("--inbox", metavar="URL", help="deliver to this inbox instead of the discovered one")
    sub_p.add_argument("--remove", action="store_true", help="remove the subscription")
    _common(sub_p)
    replay = sub.add_parser("replay", help="queue a pod's failed (or past) deliveries again")
    replay.add_argument("pod")
    replay.add_argument("--from", dest="since", metavar="TIME", help="ISO 8601 or epoch ms (default: all)")
    replay.add_argument("--to", dest="until", metavar="TIME", help="ISO 8601 or epoch ms (default: now)")
    replay.add_argument("--states", default="failed", help="failed, delivered or both (comma-separated)")
    replay.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="show progress this long")
    _common(replay)
    _common(sub.add_parser("migrate", help="create or update the database schema; print its version"))
    backup_p = sub.add_parser(
        "backup", help="copy the SQLite database to FILE as one consistent snapshot, while it runs"
    )
    backup_p.add_argument("file", help="where the copy goes (must not exist)")
    backup_p.add_argument("--json", action="store_true", help="print what was copied as JSON")
    _common(backup_p)
    return parser


def _config(args: argparse.Namespace) -> Config:
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS}
    return load_config(cli, config_file=args.config)


async def _require_pod(accessor: StorageAccessor, pod: str) -> None:
    if not await accessor.pod_exists(pod):
        raise NotFound(f"No pod named {pod}")


async def _key_command(backend: Backend, args: argparse.Namespace) -> int:
    await _require_pod(backend.accessor, args.pod)
    keys = ApiKeys(backend.keys)
    if args.key_command == "create":
        key, secret = await keys.create(args.pod, args.agent, args.label)
        if args.json:
            print(json.dumps({**key.as_json(), "key": secret}))
        else:
            print(f"API key for {key.agent} in pod {key.pod} (id {key.id}); it is shown only once:\n{secret}")
    elif args.key_command == "list":
        listed = await keys.list(args.pod)
        if args.json:
            print(json.dumps([k.as_json() for k in listed]))
        for k in [] if args.json else listed:
            print(f"{k.id}\t{k.agent}\t{'revoked' if k.revoked else 'active'}\t{k.label}")
    else:
        await keys.revoke(args.pod, args.id)
        print(f"Revoked key {args.id}")
    return 0


async def _event_command(backend: Backend, config: Config, args: argparse.Namespace) -> int:
    await _require_pod(backend.accessor, args.pod)
    store = ResourceStore(backend.accessor, config.locator())
    if args.command == "grant":
        kind, pattern = ("publish", args.publish) if args.publish else ("subscribe", args.subscribe)
        url = await grant(store, args.pod, args.agent, pattern, kind, remove=args.remove)
        verb = "Removed" if args.remove else "Granted"
        print(f"{verb} {kind} on {pattern} for {args.agent} ({url})")
        return 0
    if args.command == "subscribe":
        entries = await subscribe(
            store,
            args.pod,
            args.agent,
            args.topic,
            webhook=args.webhook,
            secret=args.secret,
            inbox=args.inbox,
            remove=args.remove,
        )
        print(f"{args.pod} now has {len(entries)} subscription(s)")
        return 0
    queue = backend.queue
    since = parse_time(args.since, 0.0)
    until = parse_time(args.until, time.time() + 1)
    states = [s.strip() for s in args.states.split(",") if s.strip()]
    if not states or not set(states) <= {"failed", "delivered"}:
        raise ConfigError("--states takes failed and/or delivered")
    count = await queue.replay(args.pod, since, until, states)
    print(f"Queued {count} deliveries of pod {args.pod} again", flush=True)
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        pending = await queue.pending_count(args.pod)
        print(f"  {count - pending}/{count} done, {pending} pending", flush=True)
        if pending == 0:
            break
        await asyncio.sleep(1.0)
    return 0


@runtime_checkable
class _Migrated(Protocol):
    applied: list[Migration]

    async def schema_version(self) -> int: ...


async def _migrate(backend: Backend) -> int:
    """Opening the backend applied any pending schema steps (every process does so on start);
    this command does it ahead of time, e.g. before new server processes roll out."""
    accessor = backend.accessor
    assert isinstance(accessor, _Migrated)
    for step in accessor.applied:
        print(f"Applied migration {step.version}: {step.name}")
    print(f"Database schema ({backend.name}) is at version {await accessor.schema_version()}")
    return 0


async def _delete_pod(accessor: StorageAccessor, args: argparse.Namespace) -> int:
    """Resources, keys, its event history and pending deliveries go; its name is retired, since
    other pods may still grant its WebID access (the server cannot reach into their ACLs)."""
    await _require_pod(accessor, args.name)
    if not args.yes:
        raise ConfigError(
            f"pod delete removes pod {args.name} with all of its data for good; run it again with --yes"
        )
    removed = await accessor.delete_pod(args.name)
    if args.json:
        print(json.dumps({"name": args.name, **asdict(removed)}))
    else:
        print(
            f"Deleted pod {args.name}: {removed.resources} resources, {removed.api_keys} API keys, "
            f"{removed.deliveries} deliveries. The name will not be given out again."
        )
    return 0


async def _with_backend(config: Config, args: argparse.Namespace) -> int:
    backend = await open_backend(config)
    accessor = backend.accessor
    try:
        locator = config.locator()
        if args.command == "migrate":
            return await _migrate(backend)
        if args.command == "key":
            return await _key_command(backend, args)
        if args.command in ("grant", "subscribe", "replay"):
            return await _event_command(backend, config, args)
        if args.command == "delete":
            return await _delete_pod(accessor, args)
        if args.command == "create":
            info = await create_pod(accessor, locator, args.name, config.oidc_issuer)
            if args.json:
                print(json.dumps(info.as_json()))
            else:
                print(f"Created pod {info.name}\n  URL:   {info.url}\n  WebID: {info.webid}")
            return 0
        infos = [pod_info(locator, name) for name in await accessor.pods()]
        if args.json:
            print(json.dumps([i.as_json() for i in infos]))
        else:
            for info in infos:
                print(f"{info.name}\t{info.url}\t{info.webid}")
        return 0
    finally:
        await backend.close()


def serve(config: Config, child: Child | None = None) -> int:
    """Serve until SIGTERM or SIGINT. With ``workers`` above 1 this process becomes the parent of
    that many (``pod.workers``), each of which runs this function with its ``child``."""
    from dataclasses import replace

    from aiohttp import web

    from pod.app import create_app
    from pod.observability import configure_logging
    from pod.state import STORE
    from pod.workers import supervise

    configure_logging(config)
    if config.workers > 1 and child is None:
        return supervise(config, lambda c: serve(replace(config, port=c.port), c))
    locator = config.locator()
    lines: list[str] = []

    async def collect(app: web.Application) -> None:
        lines.append(
            f"Solid pod server listening on http://{config.host}:{config.port}/"
            f" (base URL {config.effective_base_url})"
        )
        for name in await app[STORE].accessor.pods():
            lines.append(f"  pod {name}: {locator.pod_root(name)}  WebID {locator.webid(name)}")

    def announce(_: str) -> None:
        # run_app calls this once the socket is bound, so the URLs printed are ready to use.
        if child is None:
            print("\n".join(lines), flush=True)
        else:
            child.ready("\n".join(lines))  # the parent prints once, when every worker serves

    app = create_app(config)
    app.on_startup.append(collect)
    if child is not None:
        child.prepare(app)
    # Access records come from pod.observability (--access-log), not from aiohttp's access logger.
    web.run_app(
        app,
        loop=_event_loop(),
        host=config.host,
        port=config.port,
        access_log=None,
        print=announce,
        shutdown_timeout=config.shutdown_timeout,
        reuse_port=True if child is not None else None,
    )
    return 0


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (every platform but Windows): the same server answers about a
    third more small requests per second on it, the loop's own work being most of a small GET."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _backup(config: Config, args: argparse.Namespace) -> int:
    if is_postgres(config.database):
        raise ConfigError("pod backup copies the SQLite database; back PostgreSQL up with pg_dump")
    try:
        report = backup(config.database_path, Path(args.file).resolve())
    except BackupError as exc:
        print(f"pod: error: backup failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**asdict(report), "path": str(report.path)}))
    else:
        print(
            f"Backed up {report.pods} pod(s), {report.resources} resources "
            f"({report.size / 2**20:.1f} MiB) to {report.path} in {report.seconds:.1f} s"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        if args.command == "create":
            try:
                check_pod_name(args.name)
            except PodError as exc:
                raise ConfigError(exc.message) from None
        if args.command == "serve":
            return serve(config)
        if args.command == "backup":
            return _backup(config, args)
        return asyncio.run(_with_backend(config, args))
    except ConfigError as exc:
        print(f"pod: error: {exc}", file=sys.stderr)
        return 2
    except PodError as exc:
        print(f"pod: error: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, DatabaseError) as exc:
        print(f"pod: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
