"""Server configuration: defaults < TOML file < ``POD_*`` environment variables < command-line flags.

Every option has one name used in all three places: ``--max-body-size`` on the command line,
``max_body_size`` in the TOML file, ``POD_MAX_BODY_SIZE`` in the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldp.identifiers import PodLocator


class ConfigError(Exception):
    """A bad option value; the CLI prints it as one line and exits with status 2."""


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("var")
    base_url: str = ""  # derived from host and port when empty
    url_mode: str = "path"  # "path" or "subdomain"
    log_level: str = "info"
    max_body_size: int = 50 * 1024 * 1024
    pod_quota: int = 0  # bytes of resource bodies one pod may hold (ldp.quota); 0: no limit
    oidc_issuer: str = ""
    demo_pod: str = "demo"  # created on first start when no pod exists; "" disables
    unsafe_webid_header: bool = False  # accept "Authorization: WebID <uri>" (conformance tests only)
    allow_loopback: bool = False  # let the outbound client reach loopback (tests, local demos)
    delivery_max_age: int = 3 * 24 * 3600  # seconds after which an undelivered event is failed
    # Longest wait between two attempts of one delivery (the exponential backoff's cap), and how long
    # a worker holds a claimed delivery: after a crash it is due again once the lease runs out. Keep
    # the lease above the delivery timeouts; tests lower both to exercise retries and crashes quickly.
    delivery_max_backoff: int = 600
    delivery_lease: int = 60
    log_format: str = "text"  # "text" or "json" (one object per line)
    access_log: bool = False  # one record per request on logger pod.access (always on at debug level)
    workers: int = 1  # server processes sharing the port (pod serve)
    shutdown_timeout: int = 30  # seconds in-flight requests get to finish after SIGTERM
    # "" keeps the embedded SQLite file under data_dir; "postgresql://user@host/db" runs on PostgreSQL,
    # where several server processes (on one machine or many) can share one database.
    database: str = ""
    # Connections each server process keeps to PostgreSQL (N workers on M machines: N * M of them,
    # plus one listener each, within the server's max_connections).
    database_pool: int = 10
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "pod.sqlite3"

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def locator(self) -> PodLocator:
        return PodLocator(self.effective_base_url, "subdomain" if self.url_mode == "subdomain" else "path")


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}
CONFIG_FIELDS = frozenset(_FIELDS)
_EMPTY_MEANS_SOMETHING = frozenset({"demo_pod", "oidc_issuer", "base_url", "database"})


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if kind == "Path":
            return Path(str(value))
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value for {name}: {value!r}") from None


def _validate(cfg: Config) -> Config:
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"invalid port: {cfg.port}")
    if cfg.url_mode not in ("path", "subdomain"):
        raise ConfigError(f"invalid url_mode: {cfg.url_mode!r} (expected 'path' or 'subdomain')")
    if cfg.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"invalid log_level: {cfg.log_level!r} (expected one of {', '.join(LOG_LEVELS)})")
    if cfg.max_body_size <= 0:
        raise ConfigError(f"invalid max_body_size: {cfg.max_body_size}")
    if cfg.pod_quota < 0:
        raise ConfigError(f"invalid pod_quota: {cfg.pod_quota} (bytes, or 0 for no limit)")
    for name in ("delivery_max_backoff", "delivery_lease"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"invalid {name}: {getattr(cfg, name)} (at least 1 second)")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"invalid log_format: {cfg.log_format!r} (expected 'text' or 'json')")
    if not 1 <= cfg.workers <= 256:
        raise ConfigError(f"invalid workers: {cfg.workers} (1 to 256)")
    if cfg.shutdown_timeout < 0:
        raise ConfigError(f"invalid shutdown_timeout: {cfg.shutdown_timeout}")
    if not 1 <= cfg.database_pool <= 1000:
        raise ConfigError(f"invalid database_pool: {cfg.database_pool} (1 to 1000)")
    if cfg.database and not cfg.database.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"invalid database: {cfg.database!r} (expected postgresql://... or empty for SQLite)"
        )
    if cfg.base_url:
        parts = urlsplit(cfg.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"invalid base_url: {cfg.base_url!r} (expected an absolute http(s) URL)")
    if cfg.oidc_issuer and urlsplit(cfg.oidc_issuer).scheme not in ("http", "https"):
        raise ConfigError(f"invalid oidc_issuer: {cfg.oidc_issuer!r}")
    return cfg


def load_config(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge the sources in precedence order; raise ConfigError on any bad value or unknown key."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get("POD_CONFIG")
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        table = doc.get("pod", doc)
        for key, value in table.items():
            key = key.replace("-", "_")
            if key not in _FIELDS:
                raise ConfigError(f"unknown option in {path}: {key}")
            values[key] = _coerce(key, value)
    for name in _FIELDS:
        env_value = environ.get("POD_" + name.upper())
        # An empty variable is unset, except for options where empty is a value of its own
        # (POD_DEMO_POD= turns the demo pod off).
        if env_value is not None and (env_value != "" or name in _EMPTY_MEANS_SOMETHING):
            values[name] = _coerce(name, env_value)
    for name, value in (cli or {}).items():
        if value is not None and name in _FIELDS:
            values[name] = _coerce(name, value)
    return _validate(Config(**values))
