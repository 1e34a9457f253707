"""API keys and what each may do: the keys file (a key per line with its name, scopes and quotas), and the caller
of a request as the routes see it (its owner id, scopes and quotas; never the key itself)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mulm_jax.errors import MulmError

# What a key may be given; `admin` holds every other one besides loading and unloading models and every key's jobs.
SCOPES = ("generate", "inspect", "data", "train", "admin")
QUOTAS = ("requests_per_minute", "tokens_per_minute", "max_streams", "max_jobs", "max_steps")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit"


@dataclass(frozen=True)
class Quotas:
    """Per key; None: the server's setting of the same name (ServeConfig), 0: no limit."""

    requests_per_minute: Optional[int] = None
    tokens_per_minute: Optional[int] = None
    max_streams: Optional[int] = None  # sequences of answers open at once (prompts x n of each request)
    max_jobs: Optional[int] = None  # data set and training jobs running at once
    max_steps: Optional[int] = None  # training steps of the running training jobs, together

    def over(self, defaults: object) -> "Quotas":
        """These quotas with each unset one taken from `defaults` (an object with the same fields: ServeConfig)."""
        return Quotas(**{q: v if (v := getattr(self, q)) is not None else getattr(defaults, q) for q in QUOTAS})

    def body(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ApiKey:
    secret: str = dataclasses.field(repr=False)
    name: Optional[str] = None
    scopes: frozenset[str] = frozenset(SCOPES)  # a key given no scopes= has all of them
    quotas: Quotas = Quotas()

    @property
    def owner(self) -> str:
        """How jobs, models and logs know the key: its name, or its fingerprint when it has none."""
        return self.name or f"key:{fingerprint(self.secret)}"


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: `owner` (None on a server without keys, where every caller may do everything),
    `client` (what rate limits count by), its scopes and its quotas with the server's settings filled in."""

    owner: Optional[str]
    client: str
    scopes: frozenset[str]
    quotas: Quotas

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    @property
    def sees(self) -> Optional[str]:
        """The owner whose jobs this caller may read and stop; None: every job (admin)."""
        return None if self.admin else self.owner

    def owns(self, owner: Optional[str]) -> bool:
        """Whether a job or model recorded as `owner`'s is this caller's to read, cancel or unload."""
        return self.admin or owner == self.owner


def fingerprint(secret: str) -> str:
    """The first 12 hex digits of the key's SHA-256: how logs and records name a key without a name."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def read_keys_file(path: str | Path) -> tuple[ApiKey, ...]:
    """Parse a keys file: a key per line, then optional `name=NAME`, `scopes=a,b` and quota fields
    (`max_streams=4` ...), separated by spaces; blank lines and lines starting with # are skipped. A mistake is a
    MulmError naming the file, the line and the value."""
    keys: list[ApiKey] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip() and not line.strip().startswith("#"):
            try:
                keys.append(parse_key_line(line))
            except ValueError as e:
                raise MulmError(f"keys file {str(path)!r}, line {number}: {e}") from None
    check_unique(keys, str(path))
    return tuple(keys)


def parse_key_line(line: str) -> ApiKey:
    secret, *fields = line.split()
    if "=" in secret:
        raise ValueError(f"expected the key first, then its fields; the line starts with the field {secret!r}")
    name, scopes, quotas = None, frozenset(SCOPES), {}
    for item in fields:
        field, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"{item!r}: expected FIELD=VALUE, the fields being name, scopes and {', '.join(QUOTAS)}")
        if field == "name":
            if not NAME.match(value):
                raise ValueError(f"name={value!r}: expected {NAME_RULE}")
            name = value
        elif field == "scopes":
            given = [s for s in value.split(",") if s]
            if unknown := [s for s in given if s not in SCOPES]:
                raise ValueError(f"scopes: unknown scope {unknown[0]!r}: expected some of {', '.join(SCOPES)}")
            scopes = frozenset(given)
        elif field in QUOTAS:
            if not value.isdigit():
                raise ValueError(f"{field}={value!r}: expected a whole number >= 0 (0: no limit)")
            quotas[field] = int(value)
        else:
            raise ValueError(f"unknown field {field!r}: expected name, scopes or one of {', '.join(QUOTAS)}")
    return ApiKey(secret, name, scopes, Quotas(**quotas))


def check_unique(keys: list[ApiKey], where: str) -> None:
    secrets, names = set(), set()
    for key in keys:
        if key.secret in secrets:
            raise MulmError(f"{where}: a key is listed twice (fingerprint {fingerprint(key.secret)})")
        if key.name is not None and key.name in names:
            raise MulmError(f"{where}: the name {key.name!r} is given to two keys; jobs are recorded by name")
        secrets.add(key.secret)
        names.add(key.name)
