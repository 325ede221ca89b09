"""Tokens: which sessions a client may use and what it may do there (GATEWAY 1.2).

A token grants a set of session keys (or every session, ``"*"``) and scopes: ``read`` (watch),
``write`` (start and abort runs) and ``admin`` (metrics). Lookup compares the presented token's
digest with every known one in constant time, so how long a lookup takes says nothing about
how much of a guess was right. Failed handshakes are counted per peer address in a
bounded table, and a peer over its budget is refused before its token is even looked at.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "ADMIN",
    "ALL_SESSIONS",
    "READ",
    "SCOPES",
    "WRITE",
    "AuthFailures",
    "Grant",
    "Tokens",
    "load_tokens",
]

READ = "read"
WRITE = "write"
ADMIN = "admin"
SCOPES = frozenset({READ, WRITE, ADMIN})
#: The session set of a token that may use every session.
ALL_SESSIONS = "*"


@attrs.frozen
class Grant:
    """What one token allows."""

    #: The session keys it may use; empty when :attr:`all_sessions`.
    sessions: frozenset[str]
    scopes: frozenset[str]
    all_sessions: bool = False

    def allows(self, session_key: str, scope: str = READ) -> bool:
        """Whether this token may use ``scope`` on ``session_key``."""
        return scope in self.scopes and (self.all_sessions or session_key in self.sessions)

    def to_wire(self) -> dict[str, Any]:
        sessions = [ALL_SESSIONS] if self.all_sessions else sorted(self.sessions)
        return {"sessions": sessions, "scopes": sorted(self.scopes)}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@attrs.frozen
class Tokens:
    """The tokens a gateway accepts. Build one with :meth:`from_json`, :func:`load_tokens` or
    :meth:`admin`."""

    _grants: Mapping[bytes, Grant] = attrs.field(repr=lambda grants: f"<{len(grants)} tokens>")

    @classmethod
    def from_json(cls, obj: object) -> Tokens:
        """Tokens from ``{"tokens": [{"token", "sessions", "scopes"}, ...]}``.

        Raises :exc:`ValueError` naming the first bad entry.
        """
        if not isinstance(obj, Mapping) or not isinstance(obj.get("tokens"), list):
            raise ValueError('a tokens file is {"tokens": [{"token", "sessions", "scopes"}]}')
        grants: dict[bytes, Grant] = {}
        for index, entry in enumerate(obj["tokens"]):
            token, grant = _entry(entry, f"tokens[{index}]")
            digest = _digest(token)
            if digest in grants:
                raise ValueError(f"tokens[{index}]: the same token is listed twice")
            grants[digest] = grant
        return cls(grants)

    @classmethod
    def admin(cls, token: str | None = None) -> tuple[Tokens, str]:
        """One token for every session with every scope (a fresh random one if not given)."""
        token = token or secrets.token_urlsafe(24)
        return cls({_digest(token): Grant(frozenset(), SCOPES, all_sessions=True)}), token

    def grant(self, token: object) -> Grant | None:
        """What ``token`` allows, or ``None`` for an unknown token (or a non-string).

        Every known token is compared, each with :func:`hmac.compare_digest`, so the time taken
        depends on neither which token matched nor how much of a guess was right.
        """
        if not isinstance(token, str) or not token:
            return None
        digest = _digest(token)
        found = None
        for known, grant in self._grants.items():
            if hmac.compare_digest(known, digest):
                found = grant
        return found

    def __len__(self) -> int:
        return len(self._grants)


def _entry(entry: object, where: str) -> tuple[str, Grant]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: each token is an object")
    token = entry.get("token")
    if not isinstance(token, str) or len(token) < 8:
        raise ValueError(f"{where}: 'token' must be a string of at least 8 characters")
    sessions = _strings(entry.get("sessions"), f"{where}.sessions")
    scopes = _strings(entry.get("scopes", [READ]), f"{where}.scopes")
    unknown = scopes - SCOPES
    if unknown:
        raise ValueError(f"{where}.scopes: unknown scopes {sorted(unknown)}; use {sorted(SCOPES)}")
    if ALL_SESSIONS in sessions:
        return token, Grant(frozenset(), frozenset(scopes), all_sessions=True)
    return token, Grant(frozenset(sessions), frozenset(scopes))


def _strings(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where} must be a list of non-blank strings")
    return frozenset(value)


def load_tokens(path: str | os.PathLike[str]) -> Tokens:
    """Read a tokens file (JSON, see :meth:`Tokens.from_json`)."""
    with open(path, encoding="utf-8") as file:
        try:
            obj = json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: not JSON: {exc}") from exc
    try:
        return Tokens.from_json(obj)
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)}: {exc}") from exc


@attrs.define
class AuthFailures:
    """Failed handshakes per peer address in the current minute, for at most ``max_peers``
    peers (the least recently failing is forgotten first)."""

    per_minute: int
    max_peers: int
    _failures: collections.OrderedDict[str, tuple[int, int]] = attrs.field(
        factory=collections.OrderedDict
    )

    def blocked(self, peer: str, now: float) -> bool:
        """Whether ``peer`` has used up this minute's failures."""
        entry = self._failures.get(peer)
        return entry is not None and entry[0] == int(now // 60) and entry[1] >= self.per_minute

    def record(self, peer: str, now: float) -> None:
        minute = int(now // 60)
        window, count = self._failures.pop(peer, (minute, 0))
        self._failures[peer] = (minute, count + 1 if window == minute else 1)
        while len(self._failures) > self.max_peers:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
