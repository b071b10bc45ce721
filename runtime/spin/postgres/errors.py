"""The error of Spin's PostgreSQL interfaces, in the shape of ``spin:postgres/postgres@4.0.0``'s ``error``.

v4's ``error`` is ``connection-failed(string) | bad-parameter(string) | query-failed(query-error) |
value-conversion-failed(string) | other(string)``, where ``query-error`` is ``text(string)`` or ``db-error``
(the server's ErrorResponse, structured). v3 and ``fermyon:spin/rdbms-types@2.0.0`` have the same cases with a
string for ``query-failed``: the db-error's ``as-text``, as Spin converts it (spin-world conversions.rs
``pg_error_text``). The bindings do that conversion; everything below them raises PgError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PgErrorKind = Literal["connection-failed", "bad-parameter", "query-failed", "value-conversion-failed", "other"]

#: The ErrorResponse fields tokio-postgres exposes besides severity/code/message/detail, in the order Spin puts
#: them in db-error's ``extras`` (factor-outbound-pg client.rs ``pg_extras``), by protocol field code.
EXTRA_FIELDS = (("column", "c"), ("constraint", "n"), ("routine", "R"), ("hint", "H"), ("table", "t"),
                ("datatype", "d"), ("schema", "s"), ("file", "F"), ("line", "L"), ("where_", "W"))


@dataclass(frozen=True)
class DbError:
    """A server ErrorResponse, as v4's ``db-error`` record carries it."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    extras: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> DbError:
        """From the ErrorResponse's fields keyed by protocol code (S severity, C code, M message, ...)."""
        extras = tuple((name, fields[code]) for name, code in EXTRA_FIELDS if code in fields)
        return cls(severity=fields.get("S", fields.get("V", "ERROR")), code=fields.get("C", ""),
                   message=fields.get("M", ""), detail=fields.get("D"), extras=extras)

    @property
    def as_text(self) -> str:
        """The stringised error (Spin gives tokio-postgres's Debug form; this is a readable equivalent)."""
        text = f"db error: {self.severity}: {self.message} (SQLSTATE {self.code})"
        if self.detail:
            text += f"\nDETAIL: {self.detail}"
        hint = dict(self.extras).get("hint")
        if hint:
            text += f"\nHINT: {hint}"
        return text


class PgError(Exception):
    """A PostgreSQL call failed. ``payload`` is the case's string, or for query-failed a str (v4 ``text``) or a
    DbError (v4 ``db-error``)."""

    def __init__(self, kind: PgErrorKind, payload: str | DbError) -> None:
        super().__init__(payload.as_text if isinstance(payload, DbError) else payload)
        self.kind: PgErrorKind = kind
        self.payload = payload

    @property
    def text(self) -> str:
        """The payload as one string (v2/v3's form of every case)."""
        return self.payload.as_text if isinstance(self.payload, DbError) else self.payload
