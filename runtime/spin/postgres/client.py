"""One guest connection to a PostgreSQL server, over pg8000's protocol core (imported on first use).

pg8000 does the startup, authentication (SCRAM-SHA-256, md5, password) and the message loop; the statements run
through the extended protocol with binary parameters and binary results, as tokio-postgres runs them for Spin,
so every value is converted by runtime.spin.postgres.codec and no session setting (DateStyle, TimeZone, ...)
changes what the guest gets. One statement per call: Parse, Bind, Describe, Execute and Sync pipelined in one
round trip; a string of several statements is the server's error, as in Spin.

As in Spin (factor-outbound-pg client.rs):
- a server that cannot be reached or refuses the login fails ``open`` with connection-failed(reason);
- a server ErrorResponse is query-failed(db-error: severity, code, message, detail, extras);
- a query's columns come from its first row (a query returning no rows has no columns), ``execute`` returns the
  rows the command reports (0 for a command without a count);
- parameter conversion failures are bad-parameter in ``query`` and value-conversion-failed in ``execute``.
- sslmode ``disable`` / ``prefer`` (the default: TLS when the server offers it) / ``require``; TLS verifies the
  server's certificate and name against the trust store (native-tls's default, which Spin uses).

Bounds: every socket operation waits at most the request's remaining time (``timeout`` of each call); a call that
times out cancels its query on the server (PostgreSQL's CancelRequest) and closes the connection. A result is
read at most MAX_RESULT_BYTES far (each value's size plus a fixed per-value cost, as Spin counts against its
128 MiB MAX_HOST_BUFFERED_BYTES; lower here because each value becomes Python objects in the worker); beyond that
the rest is read and dropped and the call is query-failed, as in Spin. Spin keeps a pool of up to 64
connections per address and component; this host opens one per ``open`` and closes it at drop or request end
(runtime.spin.bindings.support.RequestConnections), so no session state crosses requests.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wasmtime.component import Variant

from runtime.spin.postgres.address import check_allowed, masked, parse_connection_string
from runtime.spin.postgres.codec import (
    BUILTIN_TYPE_NAMES,
    DATA_TYPES,
    ConversionError,
    ParameterError,
    data_type,
    decode_value,
    encode_parameter,
)
from runtime.spin.postgres.errors import DbError, PgError

if TYPE_CHECKING:
    from runtime.spin.outbound import OutboundPolicy

#: The most a single socket operation waits, whatever the request's deadline.
MAX_SOCKET_TIMEOUT_S = 30.0
#: The most result data one query holds (see the module docstring).
MAX_RESULT_BYTES = 32 << 20
#: What each value costs on top of its bytes, in that count (Spin counts the WIT value's size, >= 32 bytes).
PER_VALUE_BYTES = 32
#: Spin's bound on a guest's connections: its pool's size per address (CONNECTION_POOL_SIZE), beyond which Spin
#: would wait for a free one; here the next ``open`` fails with Spin's "too many connections".
MAX_OPEN_CONNECTIONS_PER_INSTANCE = 64
#: The protocol's bound on a statement's parameters (a 16-bit count in Parse and Bind).
MAX_PARAMETERS = 65535
_SSL_REQUEST = struct.pack(">ii", 8, 80877103)
_CANCEL_REQUEST_CODE = 80877102


@dataclass(frozen=True)
class RowSet:
    """A query's result in v4 form: columns as (name, db-data-type) and rows of db-values."""

    columns: list[tuple[str, Variant]]
    rows: list[list[Variant]]


class PgConnection:
    """A guest's open connection. ``open`` checks the address against ``policy`` before any socket is made."""

    def __init__(self, address: str, policy: OutboundPolicy, timeout: float) -> None:
        self.address = masked(address)
        options = parse_connection_string(address)
        check_allowed(options, policy)
        if options.user is None:
            raise PgError("connection-failed", "invalid configuration: user missing")
        if not options.hosts:
            raise PgError("connection-failed", "invalid configuration: host missing")
        self._options = options
        self._wire: Any = None
        self._endpoint: tuple[str, int] = ("", 0)
        self._type_names: dict[int, str] = dict(BUILTIN_TYPE_NAMES)
        self._connect(timeout)

    # --------------------------------------------------------------------------------------------- connecting

    def _connect(self, timeout: float) -> None:
        from runtime.spin.postgres.wire import wire_class  # noqa: PLC0415 - pg8000 only for apps that use it

        try:
            wire_type = wire_class()
        except ImportError as exc:
            raise PgError("other", f"the PostgreSQL client cannot be loaded: {exc}") from None
        deadline = time.monotonic() + _bounded(timeout)
        if self._options.connect_timeout is not None:
            deadline = min(deadline, time.monotonic() + self._options.connect_timeout)
        errors: list[str] = []
        targets = self._options.hostaddrs or self._options.hosts
        for (host, port), target in zip(self._options.endpoints(), targets, strict=False):
            try:
                sock = self._socket(host, target, port, deadline)
            except (OSError, ValueError, PgError) as exc:  # ValueError: a host name IDNA cannot encode
                errors.append(f"{host}:{port}: {exc}")
                continue
            try:
                self._wire = wire_type(sock, self._options)
            except Exception as exc:  # noqa: BLE001 - pg8000's DatabaseError/InterfaceError, socket errors
                sock.close()
                errors.append(f"{host}:{port}: {_connect_reason(exc)}")
                continue
            self._endpoint = (target, port)
            if self._options.target_session_attrs == "read-write" and self._read_only(deadline):
                self.close()
                errors.append(f"{host}:{port}: the server is read-only (target_session_attrs=read-write)")
                continue
            return
        raise PgError("connection-failed", f"error connecting to server {self.address}: " + "; ".join(errors))

    def _socket(self, host: str, target: str, port: int, deadline: float) -> socket.socket:
        sock = socket.create_connection((target, port), timeout=_left(deadline))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._options.sslmode == "disable":
                return sock
            sock.sendall(_SSL_REQUEST)
            answer = sock.recv(1)
            if answer == b"S":
                context = ssl.create_default_context()  # verifies the chain and the name, as native-tls does
                return context.wrap_socket(sock, server_hostname=host)
            if answer != b"N":
                raise PgError("connection-failed", "unexpected response to the TLS request")
            if self._options.sslmode == "require":
                raise PgError("connection-failed", "server does not support TLS")
            return sock
        except BaseException:
            sock.close()
            raise

    def _read_only(self, deadline: float) -> bool:
        result = self._run("SHOW transaction_read_only", [], _left(deadline), "query")
        return bool(result.rows and result.rows[0] and result.rows[0][0].payload == "on")

    # --------------------------------------------------------------------------------------------- statements

    def query(self, statement: str, params: Sequence[Variant], timeout: float) -> RowSet:
        return self._run(statement, params, timeout, "query")

    def execute(self, statement: str, params: Sequence[Variant], timeout: float) -> int:
        return self._run(statement, params, timeout, "execute", rows_wanted=False)

    def _run(self, statement: str, params: Sequence[Variant], timeout: float, purpose: str,
             *, rows_wanted: bool = True) -> Any:
        if "\x00" in statement:  # the Parse message carries it as a C string, as tokio-postgres refuses it
            raise PgError("query-failed", "the statement contains a NUL character")
        if len(params) > MAX_PARAMETERS:
            raise PgError("query-failed", f"too many parameters: {len(params)} (the protocol allows "
                                          f"{MAX_PARAMETERS})")
        encoded = []
        for index, param in enumerate(params):
            try:
                encoded.append(encode_parameter(param))
            except ParameterError as exc:
                kind = "bad-parameter" if purpose == "query" else "value-conversion-failed"
                raise PgError(kind, f"parameter {index + 1}: {exc}") from None
        wire = self._open_wire()
        outcome = self._exchange(wire, statement, encoded, timeout)
        if not rows_wanted:
            return max(outcome.row_count, 0)
        return self._row_set(wire, outcome, timeout)

    def _row_set(self, wire: Any, outcome: Any, timeout: float) -> RowSet:
        if not outcome.rows:
            return RowSet([], [])  # Spin infers the columns from the first row
        oids = [column["type_oid"] for column in outcome.columns]
        try:
            rows = [[decode_value(oid, raw) for oid, raw in zip(oids, row, strict=True)] for row in outcome.rows]
        except ConversionError as exc:
            raise PgError("query-failed", f"error deserializing a column: {exc}") from None
        self._look_up_type_names(wire, [oid for oid in oids if oid not in DATA_TYPES], timeout)
        columns = [(column["name"], data_type(column["type_oid"], self._type_names.get(column["type_oid"], "")))
                   for column in outcome.columns]
        return RowSet(columns, rows)

    def _look_up_type_names(self, wire: Any, oids: list[int], timeout: float) -> None:
        """pg_type.typname of the ``other`` columns' types not known yet (tokio-postgres asks the catalog too)."""
        missing = sorted({oid for oid in oids if oid not in self._type_names})
        if not missing:
            return
        array = encode_parameter(Variant("array-int64", missing))
        try:
            found = self._exchange(wire, "SELECT oid::int8, typname::text FROM pg_catalog.pg_type "
                                         "WHERE oid = ANY($1::int8[]::oid[])", [array], timeout)
        except PgError:  # e.g. inside a failed transaction: the name stays empty
            return
        for raw_oid, raw_name in found.rows:
            self._type_names[struct.unpack(">q", raw_oid)[0]] = raw_name.decode()

    def _open_wire(self) -> Any:
        if self._wire is None:
            # tokio-postgres's Closed error, which Spin reports as query-failed(text)
            raise PgError("query-failed", "connection closed (a previous call failed or timed out)")
        return self._wire

    def _exchange(self, wire: Any, statement: str, encoded: list[Any], timeout: float) -> Any:
        wire.set_timeout(_bounded(timeout))
        try:
            outcome = wire.run(statement, encoded, MAX_RESULT_BYTES, PER_VALUE_BYTES)
        except TimeoutError:
            self._cancel(wire)
            self.close()
            raise PgError("query-failed", "timed out waiting for the server (the request's deadline)") from None
        except Exception as exc:  # noqa: BLE001 - classified below
            fields = getattr(wire, "error_fields", lambda _exc: None)(exc)
            if fields is not None:
                if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                    self.close()  # the server ends the session after these
                raise PgError("query-failed", DbError.from_fields(fields)) from None
            self.close()
            raise PgError("query-failed", f"connection to {self.address} lost: {exc}") from None
        if outcome.error is not None:
            raise PgError("query-failed", outcome.error)
        return outcome

    def _cancel(self, wire: Any) -> None:
        """Ask the server to stop the query this connection is running (best effort, one second at most)."""
        key = getattr(wire, "_backend_key_data", None)
        if not key:
            return
        try:
            with socket.create_connection(self._endpoint, timeout=1.0) as sock:
                sock.sendall(struct.pack(">ii", 16, _CANCEL_REQUEST_CODE) + key[:8])
        except OSError:
            pass

    def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            try:
                wire.set_timeout(1.0)
                wire.close()
            except Exception:  # noqa: BLE001 - closing a broken connection: the socket goes either way
                wire.abandon()


def _bounded(timeout: float) -> float:
    return max(0.05, min(timeout, MAX_SOCKET_TIMEOUT_S))


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _connect_reason(exc: BaseException) -> str:
    """The reason a login failed: the server's error (e.g. password authentication failed), or the socket's."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else None
    if fields is not None:
        return f"db error: {fields.get('S', 'FATAL')}: {fields.get('M', '')} (SQLSTATE {fields.get('C', '')})"
    cause = exc.__cause__ or exc.__context__
    return f"{exc}: {cause}" if cause is not None and str(cause) not in str(exc) else str(exc)
