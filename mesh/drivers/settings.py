"""`mesh up --config FILE`: read a TOML file, check every key, and build an `AgentConfig`.

Rules: flags given on the command line win over the file, which wins over the defaults. Every
problem is one line that names the file and the key (`edge.toml: health.interval_s must be a
positive number`): unknown keys, wrong types and bad addresses are refused, never ignored.
The documented examples live in configs/*.toml.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from mesh.config import DEFAULT_PORT, MEDIUM_KINDS, AgentConfig, HealthConfig, IngestRule, Probe, TopologyConfig
from mesh.errors import UsageError

PROBE_KINDS = ("http", "tcp", "path", "command")
PROBES_MAX = 64  # user probes per config
PEERS_MAX = 256  # static peers per config
PINS_MAX = 64  # pinned releases per config
HTTP_HOSTS_MAX = 32  # extra names the HTTP side answers to (DNS rebinding allow-list)
NAME_CHARS_MAX = 64  # a probe's name
INGEST_RULES_MAX = 16  # [[ingest]] tables per config
INGEST_GLOBS_MAX = 64  # include / exclude patterns per [[ingest]] table
INGEST_SETTLE_S_MAX = 3600.0  # a longer settle time is a typo
PATTERN_CHARS_MAX = 256  # a subject_pattern
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}  # as `mesh add --retention`
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40, "pib": 2**50, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


@dataclass(frozen=True)
class Flags:
    """What `mesh up` got on its command line (None / empty: not given)."""

    listen: str | None = None  # --listen HOST:PORT
    http: str | None = None  # --http HOST:PORT
    peers: tuple[str, ...] = ()  # --peer HOST:PORT, repeatable
    no_mdns: bool = False  # --no-mdns
    mdns_interfaces: tuple[str, ...] = ()  # --mdns-interface ADDR, repeatable
    enroll: str | None = None  # --enroll KEY_OR_FILE
    https: str | None = None  # --https HOST:PORT


class _Where:
    """Names the file in every error."""

    def __init__(self, source: Path | None) -> None:
        self.label = source.name if source is not None else "config"

    def fail(self, key: str, problem: str) -> UsageError:
        return UsageError(f"{self.label}: {key} {problem}")


# --- values ---------------------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); ValueError with the reason otherwise."""
    if not isinstance(text, str):
        raise ValueError("must be a string HOST:PORT")
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 192.0.2.10:{DEFAULT_PORT})")
    if not _is_host(host):
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name")
    return host, int(port)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


def parse_size_bytes(value: object) -> int:
    """An integer of bytes, or a string like '512MiB', '2GB', '1.5 GiB' -> bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 512MiB or 2GB")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("must be a size such as 512MiB or 2GB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _positive(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("must be a positive number")
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _url(value: object) -> str:
    text = _text(value)
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text


def _string_list(value: object, limit: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    if len(value) > limit:
        raise ValueError(f"has more than {limit} entries")
    return value


def parse_budget(value: object) -> tuple[int | None, float | None]:
    """A store budget: a size ('20GB', bytes) -> (bytes, None), or a share of the disk ('50%') ->
    (None, fraction)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise ValueError("must be a size such as 20GB or a share of the disk such as 50%") from None
        if not 0 < percent <= 100:
            raise ValueError("a share of the disk is more than 0% and at most 100%")
        return None, percent / 100
    try:
        return parse_size_bytes(value), None
    except ValueError:
        raise ValueError("must be a size such as 20GB or a share of the disk such as 50%") from None


def _budget_fields(value: object) -> dict[str, Any]:
    size, fraction = parse_budget(value)
    return {"store_budget_bytes": size} if size is not None else {"store_budget_fraction": fraction}


def _host_names(value: object) -> tuple[str, ...]:
    names = _string_list(value, HTTP_HOSTS_MAX)
    for name in names:
        if not _HOSTNAME.match(name):
            raise ValueError(f"{name!r} is not a host name (such as door.event.example)")
    return tuple(name.lower().rstrip(".") for name in names)


def _tags(value: object) -> tuple[str, ...]:
    from mesh.state.records import normalize_tag

    return tuple(sorted({normalize_tag(tag) for tag in _string_list(value, PINS_MAX)}))


def _addresses(value: object) -> tuple[tuple[str, int], ...]:
    return tuple(parse_address(text) for text in _string_list(value, PEERS_MAX))


def _interfaces(value: object) -> tuple[str, ...]:
    found = _string_list(value, PEERS_MAX)
    for text in found:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an interface IP address") from None
    return tuple(found)


# --- tables ---------------------------------------------------------------------------------------

# key -> (AgentConfig field, parser)
_TOP: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "listen": ("listen", parse_address),
    "http": ("http", parse_address),
    "https": ("https", parse_address),
    "peers": ("peers", _addresses),
    "mdns": ("mdns", _boolean),
    "mdns_interfaces": ("mdns_interfaces", _interfaces),
    "gc_interval_s": ("gc_interval_s", _positive),
    "status_interval_s": ("status_interval_s", _positive),
    "pin": ("pin_releases", lambda v: tuple(_string_list(v, PINS_MAX))),
    "pin_tags": ("pin_tags", _tags),
    "pin_canonical": ("pin_canonical", _boolean),
    "store_budget": ("", _budget_fields),  # sets store_budget_bytes or store_budget_fraction
    "http_hosts": ("http_hosts", _host_names),
}
_HEALTH: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "interval_s": ("interval_s", _positive),
    "disk_free_min": ("disk_free_bytes_min", parse_size_bytes),
    "sample_chunks": ("sample_chunks", _count),
    "peers_min": ("peers_min", _count),
    "clock_skew_s_max": ("clock_skew_s_max", _positive),
    "connect_timeout_s": ("connect_timeout_s", _positive),
}
_OUTBOX: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "url": ("outbox_url", _url),
    "backoff_s_min": ("outbox_backoff_s_min", _positive),
    "backoff_s_max": ("outbox_backoff_s_max", _positive),
}
def _medium(value: object) -> str:
    text = _text(value)
    if text not in MEDIUM_KINDS:
        raise ValueError(f"must be one of {', '.join(MEDIUM_KINDS)}")
    return text


_TOPOLOGY: dict[str, tuple[str, Callable[[Any], Any]]] = {"medium": ("medium", _medium)}
_TABLES = {"health": _HEALTH, "outbox": _OUTBOX, "topology": _TOPOLOGY}
_PROBE_KEYS = frozenset({"name", "timeout_s", *PROBE_KINDS})


def _check_keys(doc: dict, known: set[str], prefix: str, where: _Where) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise where.fail(f"{prefix}{unknown[0]}", f"is not a known key (known: {', '.join(sorted(known))})")


def _apply(doc: dict, table: dict, prefix: str, where: _Where) -> dict[str, Any]:
    values = {}
    for key, raw in doc.items():
        field_name, parser = table[key]
        try:
            parsed = parser(raw)
        except ValueError as exc:
            raise where.fail(f"{prefix}{key}", str(exc)) from None
        if field_name:
            values[field_name] = parsed
        else:  # one key that sets several fields
            values.update(parsed)
    return values


def _table(doc: dict, key: str, where: _Where) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise where.fail(key, "must be a table ([" + key + "])")
    return value


def _probe(raw: object, index: int, where: _Where) -> Probe:
    key = f"health.probe[{index}]"
    if not isinstance(raw, dict):
        raise where.fail(key, "must be a table ([[health.probe]])")
    _check_keys(raw, set(_PROBE_KEYS), key + ".", where)
    kinds = [k for k in PROBE_KINDS if k in raw]
    if len(kinds) != 1:
        raise where.fail(key, f"needs exactly one of {', '.join(PROBE_KINDS)}")
    kind = kinds[0]
    try:
        name = _text(raw.get("name", f"{kind}-{index + 1}"))[:NAME_CHARS_MAX]
        target = _probe_target(kind, raw[kind])
        timeout_s = _positive(raw.get("timeout_s", 5.0))
    except ValueError as exc:
        raise where.fail(key, str(exc)) from None
    return Probe(name, kind, target, timeout_s)


def _probe_target(kind: str, value: object) -> str:
    if kind == "command" and isinstance(value, list):
        return shlex.join(_string_list(value, 256))
    target = _text(value)
    if kind == "http":
        _url(target)
    elif kind == "tcp":
        parse_address(target)
    elif kind == "command":
        if not shlex.split(target):
            raise ValueError("command is empty")
    return target


def _health(doc: dict, where: _Where) -> HealthConfig:
    table = _table(doc, "health", where)
    _check_keys(table, set(_HEALTH) | {"probe"}, "health.", where)
    values = _apply({k: v for k, v in table.items() if k != "probe"}, _HEALTH, "health.", where)
    probes = table.get("probe", [])
    if not isinstance(probes, list) or len(probes) > PROBES_MAX:
        raise where.fail("health.probe", f"must be at most {PROBES_MAX} [[health.probe]] tables")
    values["probes"] = tuple(_probe(raw, i, where) for i, raw in enumerate(probes))
    return HealthConfig(**values)


# --- [[ingest]] -----------------------------------------------------------------------------------

_INGEST_KEYS = frozenset({"path", "tags", "subject", "subject_pattern", "retention", "settle_s", "include", "exclude"})


def parse_duration_s(value: object) -> float:
    """'90s', '30m', '24h', '7d', '2w' or a number of seconds -> seconds (as `--retention`)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 90s, 30m, 24h or 7d")
    if isinstance(value, (int, float)):
        return _positive(value)
    raw = value.strip().lower() if isinstance(value, str) else ""
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS_S else "s"
    try:
        number = float(raw[:-1] if raw[-1:] in _DURATION_UNITS_S else raw)
    except ValueError:
        raise ValueError("must be a duration such as 90s, 30m, 24h or 7d") from None
    if not 0 < number < float("inf"):
        raise ValueError("must be a positive duration such as 90s, 30m, 24h or 7d")
    return number * _DURATION_UNITS_S[unit]


def _subject(value: object) -> str:
    from mesh.state.consent import parse_subject_code

    try:
        return parse_subject_code(_text(value))
    except ValueError as exc:
        raise ValueError(f"is not a subject code ({exc})") from None


def parse_subject_pattern(value: object) -> str:
    """A regular expression with a group named `subject`; ValueError naming the problem."""
    text = _text(value)
    if len(text) > PATTERN_CHARS_MAX:
        raise ValueError(f"is longer than {PATTERN_CHARS_MAX} characters")
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    if "subject" not in pattern.groupindex:
        raise ValueError("needs a group named subject, like (?P<subject>[0-9A-Z]{4}-[0-9A-Z]{4})")
    return text


def _settle_s(value: object) -> float:
    seconds = _positive(value)
    if seconds > INGEST_SETTLE_S_MAX:
        raise ValueError(f"must be at most {INGEST_SETTLE_S_MAX:g} seconds")
    return seconds


def _folder(value: object, base: Path) -> Path:
    """The folder, absolute (a relative path counts from the config file's directory)."""
    text = _text(value)
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    path = Path(text).expanduser()
    return Path(os.path.normpath(base / path))


# key -> (IngestRule field, parser)
_INGEST: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "tags": ("tags", _tags),
    "subject": ("subject", _subject),
    "subject_pattern": ("subject_pattern", parse_subject_pattern),
    "retention": ("retention_s", parse_duration_s),
    "settle_s": ("settle_s", _settle_s),
    "include": ("include", lambda v: tuple(_string_list(v, INGEST_GLOBS_MAX))),
    "exclude": ("exclude", lambda v: tuple(_string_list(v, INGEST_GLOBS_MAX))),
}


def _ingest_rule(raw: object, index: int, base: Path, where: _Where) -> IngestRule:
    key = f"ingest[{index}]"
    if not isinstance(raw, dict):
        raise where.fail(key, "must be a table ([[ingest]])")
    _check_keys(raw, set(_INGEST_KEYS), key + ".", where)
    if "path" not in raw:
        raise where.fail(key + ".path", "is missing (the folder to watch)")
    if "subject" in raw and "subject_pattern" in raw:
        raise where.fail(key, "takes subject or subject_pattern, not both")
    try:
        path = _folder(raw["path"], base)
    except ValueError as exc:
        raise where.fail(key + ".path", str(exc)) from None
    values = _apply({k: v for k, v in raw.items() if k != "path"}, _INGEST, key + ".", where)
    return IngestRule(path=path, **values)


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _ingest(doc: dict, source: Path | None, where: _Where) -> tuple[IngestRule, ...]:
    tables = doc.get("ingest", [])
    if not isinstance(tables, list) or len(tables) > INGEST_RULES_MAX:
        raise where.fail("ingest", f"must be [[ingest]] tables, at most {INGEST_RULES_MAX}")
    base = Path(source).parent if source is not None else Path.cwd()
    rules = tuple(_ingest_rule(raw, i, Path(os.path.abspath(base)), where) for i, raw in enumerate(tables))
    for later, rule in enumerate(rules):
        for earlier in range(later):
            if _overlap(rule.path, rules[earlier].path):
                raise where.fail(f"ingest[{later}].path", f"overlaps ingest[{earlier}].path ({rules[earlier].path})")
    return rules


def config_from_dict(doc: dict, source: Path | None = None) -> AgentConfig:
    """An `AgentConfig` from a parsed TOML document; UsageError (one line) on any problem."""
    where = _Where(source)
    _check_keys(doc, set(_TOP) | set(_TABLES) | {"ingest", "enroll"}, "", where)
    values = _apply({k: v for k, v in doc.items() if k not in _TABLES and k not in ("ingest", "enroll")}, _TOP, "",
                    where)
    outbox = _table(doc, "outbox", where)
    _check_keys(outbox, set(_OUTBOX), "outbox.", where)
    values.update(_apply(outbox, _OUTBOX, "outbox.", where))
    values["health"] = _health(doc, where)
    topology = _table(doc, "topology", where)
    _check_keys(topology, set(_TOPOLOGY), "topology.", where)
    values["topology"] = TopologyConfig(**_apply(topology, _TOPOLOGY, "topology.", where))
    values["ingest"] = _ingest(doc, source, where)
    if "enroll" in doc:
        values["enroll"] = _enroll(doc["enroll"], source, where)
    config = AgentConfig(**values)
    if config.outbox_backoff_s_min > config.outbox_backoff_s_max:
        raise where.fail("outbox.backoff_s_min", "must not exceed outbox.backoff_s_max")
    return config


def _enroll(value: object, source: Path | None, where: _Where) -> str:
    """A fleet key (text starting "am1") or the path of a file holding one, relative to the
    config file's directory."""
    if not isinstance(value, str) or not value.strip():
        raise where.fail("enroll", 'must be a fleet key ("am1...") or the path of a file holding one')
    text = value.strip()
    if text.startswith("am1") or source is None:
        return text
    return str((Path(source).parent / Path(text).expanduser()).resolve())


def read_toml(path: Path) -> dict:
    """The parsed file; UsageError if it is missing or not TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{Path(path).name}: not valid TOML: {exc}") from None


def load_config(path: Path | None) -> AgentConfig:
    """The config of a file (defaults when `path` is None)."""
    if path is None:
        return AgentConfig()
    return config_from_dict(read_toml(path), Path(path))


def _flag_address(text: str, flag: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def apply_flags(config: AgentConfig, flags: Flags) -> AgentConfig:
    """Command-line flags override what the file said."""
    changes: dict[str, Any] = {}
    if flags.listen:
        changes["listen"] = _flag_address(flags.listen, "--listen")
    if flags.http:
        changes["http"] = _flag_address(flags.http, "--http")
    if flags.https:
        changes["https"] = _flag_address(flags.https, "--https")
    if flags.peers:
        changes["peers"] = tuple(_flag_address(p, "--peer") for p in flags.peers)
    if flags.no_mdns:
        changes["mdns"] = False
    if flags.mdns_interfaces:
        changes["mdns_interfaces"] = tuple(flags.mdns_interfaces)
    if flags.enroll:
        changes["enroll"] = flags.enroll
    return replace(config, **changes)


def build_config(flags: Flags, config_file: Path | None) -> AgentConfig:
    """Flags override the config file, which overrides the defaults."""
    return apply_flags(load_config(config_file), flags)
