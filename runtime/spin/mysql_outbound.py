"""Spin's outbound MySQL (``fermyon:spin/mysql@2.0.0``): a guest's connection to a MySQL / MariaDB server.

As in Spin (crates/factor-outbound-mysql):

- ``open(address)`` takes ``mysql://user:password@host[:port]/database`` (port 3306 by default; user, password
  and database percent-decoded; ``?ssl-mode=...`` / ``?sslmode=...`` other than ``DISABLED`` asks for TLS,
  verified against the trust store). An address the component's ``allowed_outbound_hosts`` does not allow, or
  one that cannot be parsed, is ``connection-failed("address ... is not permitted")``; a server that cannot be
  reached or refuses the login is ``connection-failed`` with the reason.
- ``query`` and ``execute`` run the statement as a server-side prepared statement with the parameters bound by
  type (runtime.spin.mysql_wire); any failure of the statement, the server's errors included, is
  ``query-failed``. ``execute`` discards whatever rows the statement returns.
- Column types map as Spin's ``convert_data_type`` maps them: TINYINT/SMALLINT/MEDIUMINT/INT/BIGINT to
  ``int8``..``int64`` or, UNSIGNED, ``uint8``..``uint64`` (MEDIUMINT is 32 bits); FLOAT ``floating32``, DOUBLE
  ``floating64``; CHAR/VARCHAR/TEXT (and ENUM, SET, which the server sends as strings) ``str``; BINARY/VARBINARY
  and BLOB, and any string column with the BINARY flag (a ``_bin`` collation, MariaDB's JSON) ``binary``;
  everything else (DECIMAL, DATE, TIME, DATETIME, TIMESTAMP, YEAR, BIT, MySQL's JSON, GEOMETRY, a bare NULL) is
  ``other``, and a non-NULL value in an ``other`` column is ``value-conversion-failed`` ("Cannot convert value
  ... data type Other"): Spin returns no value for them, so a guest casts in SQL (``CAST(d AS CHAR)``). No column
  is ever ``boolean`` (BOOLEAN is TINYINT(1): ``int8``) and no value ``unsupported``. NULL is ``db-null``.
- A result above Spin's 128 MiB (rdbms_types.ResultBudget) is ``other("query result exceeds limit of ...")``.

The password never appears in an error or a log line: addresses are shown ``masked`` and every message from a
connection is scrubbed of it. The driver is PyMySQL (imported on first use, pure Python: it loads from the
read-only site-packages bind inside the task's sandbox), used for the login and its packet layer only; every
socket operation is bounded by the request's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from runtime.host.values import Variant
from runtime.spin import mysql_wire as wire
from runtime.spin import rdbms_types as rt
from runtime.spin.mysql_wire import ColumnDef, ColumnType, WireParameter, WireValue
from runtime.spin.rdbms_types import RdbmsError

if TYPE_CHECKING:
    from runtime.spin.outbound import OutboundPolicy

SCHEME: Final = "mysql"
DEFAULT_PORT: Final = 3306
#: The most connections one request may hold open. Spin's table allows 1024, but each is a socket of the worker
#: and a thread of the server (MariaDB's default max_connections is 151), so this host stops at 256, as it does
#: for Redis.
MAX_OPEN_CONNECTIONS_PER_INSTANCE: Final = 256
#: The most a single socket operation waits, whatever the request's deadline.
MAX_SOCKET_TIMEOUT_S: Final = 30.0
_SSL_PARAMETERS: Final = ("ssl-mode", "sslmode")

#: Spin's convert_numeric_type: (column type) -> (signed case, unsigned case).
_NUMERIC: Final[dict[int, tuple[str, str]]] = {
    ColumnType.DOUBLE: ("floating64", "floating64"),
    ColumnType.FLOAT: ("floating32", "floating32"),
    ColumnType.INT24: ("int32", "uint32"),
    ColumnType.LONG: ("int32", "uint32"),
    ColumnType.LONGLONG: ("int64", "uint64"),
    ColumnType.SHORT: ("int16", "uint16"),
    ColumnType.TINY: ("int8", "uint8"),
}
#: Spin's convert_character_type over mysql_common's is_character_type (STRING, VAR_STRING, VARCHAR, BLOB):
#: (column type) -> (case without the BINARY flag, with it). VARCHAR never comes in a result set.
_CHARACTER: Final[dict[int, tuple[str, str]]] = {
    ColumnType.BLOB: ("str", "binary"),
    ColumnType.STRING: ("str", "binary"),
    ColumnType.VAR_STRING: ("str", "binary"),
    ColumnType.VARCHAR: ("other", "other"),
}
_WIRE_KINDS: Final[dict[str, str]] = {
    "int8": "int", "int16": "int", "int32": "int", "int64": "int",
    "uint8": "uint", "uint16": "uint", "uint32": "uint", "uint64": "uint",
    "floating32": "float", "floating64": "double",
}


# ---------------------------------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class MysqlAddress:
    host: str
    port: int
    user: str
    password: str
    database: str | None
    tls: bool


def masked(address: str) -> str:
    """``address`` without its password, for messages and logs.

    Everything between the user's ``:`` and the *last* ``@`` is hidden, not just what a URL parser calls the
    password: a guest that forgets to percent-encode a ``/``, ``@`` or ``#`` in its password would otherwise see
    the rest of it shown as the URL's path.
    """
    scheme, separator, rest = address.partition("://")
    if not separator or "@" not in rest:
        return address
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def parse_mysql_url(address: str) -> MysqlAddress:
    """The connection settings of a ``mysql://`` URL; ``connection-failed`` (address masked) if it has none."""
    try:
        parts: SplitResult = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise RdbmsError("connection-failed", f"{masked(address)}: {exc}") from None
    if parts.scheme != SCHEME or not parts.hostname:
        raise RdbmsError("connection-failed", f"{masked(address)}: not a mysql:// URL with a host")
    if not parts.username:
        raise RdbmsError("connection-failed", f"{masked(address)}: the address names no user")
    tls = False
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _SSL_PARAMETERS:
            tls = value.lower() != "disabled"
    database = unquote(parts.path.lstrip("/")) or None
    return MysqlAddress(host=parts.hostname, port=port or DEFAULT_PORT, user=unquote(parts.username),
                        password=unquote(parts.password or ""), database=database, tls=tls)


def check_address(address: str, policy: OutboundPolicy) -> None:
    """Spin's allow-list check (``check_url(address, "mysql")``): a URL it cannot parse is not allowed either."""
    if policy.allows(address, default_scheme=SCHEME):
        return
    hint = ""
    try:
        parts = urlsplit(address)
        # Only when the host is the one the masked address shows: with a password that was not percent-encoded
        # the URL's "host" is a piece of the password.
        if parts.hostname and urlsplit(masked(address)).hostname == parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            hint = (f" (add \"{parts.scheme or SCHEME}://{host}:{parts.port or DEFAULT_PORT}\" to the component's "
                    "allowed_outbound_hosts)")
    except ValueError:
        pass
    raise RdbmsError("connection-failed", f"address {masked(address)} is not permitted{hint}")


# ---------------------------------------------------------------------------------------------------- Spin's mapping


def data_type(column: ColumnDef) -> str:
    """Spin's ``convert_data_type``: the ``db-data-type`` of a result column."""
    numeric = _NUMERIC.get(column.type_code)
    if numeric is not None:
        return numeric[1] if column.unsigned else numeric[0]
    character = _CHARACTER.get(column.type_code)
    if character is not None:
        return character[1] if column.binary else character[0]
    return "other"


def wire_parameter(param: rt.Parameter) -> WireParameter:
    """Spin's ``to_sql_parameter``: the mysql_async Value each parameter-value case becomes."""
    if param.kind == "db-null":
        return WireParameter("null", None)
    if param.kind == "boolean":
        return WireParameter("int", int(bool(param.value)))
    if param.kind == "str":
        assert isinstance(param.value, str)
        return WireParameter("bytes", param.value.encode("utf-8"))
    if param.kind == "binary":
        return WireParameter("bytes", param.value)
    return WireParameter(_WIRE_KINDS[param.kind], param.value)


def debug_value(value: WireValue, unsigned: bool = False) -> str:
    """A value as Spin's messages show it (mysql_common's ``Value`` Debug form)."""
    if value is None:
        return "NULL"
    if isinstance(value, (wire.Date, wire.Time)):
        return repr(value)
    if isinstance(value, float):
        return f"Double({value!r})"
    if isinstance(value, int):
        return f"UInt({value})" if unsigned else f"Int({value})"
    text = value.decode("utf-8", "replace")
    shown = text[:8].replace("\\", "\\\\").replace('"', '\\"')
    return f'Bytes("{shown}..")' if len(text) > 8 else f'Bytes("{shown}")'


def db_value(value: WireValue, column: ColumnDef, case: str) -> Variant:
    """Spin's ``convert_value``: the ``db-value`` of one column value."""
    if value is None:
        return rt.DB_NULL
    if case == "other":
        type_name = wire.TYPE_NAMES.get(column.type_code, str(column.type_code))
        raise RdbmsError("value-conversion-failed",
                         f"Cannot convert value {debug_value(value, column.unsigned)} in column {column.name} "
                         f"data type Other (MySQL type {type_name})")
    if case == "str":
        if isinstance(value, bytes):
            try:
                return rt.db_value("str", value.decode("utf-8"))
            except UnicodeDecodeError:
                pass
    elif case == "binary":
        if isinstance(value, bytes):
            return rt.db_value("binary", value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return rt.db_value(case, value)
    raise RdbmsError("value-conversion-failed",
                     f"Couldn't convert the value `{debug_value(value, column.unsigned)}` to a desired type")


# ---------------------------------------------------------------------------------------------------- connection


class MysqlConnection:
    """One guest connection: a PyMySQL login, then Spin's statements as prepared statements over its packets."""

    def __init__(self, address: str, policy: OutboundPolicy, timeout: float) -> None:
        check_address(address, policy)
        target = parse_mysql_url(address)
        import pymysql  # noqa: PLC0415 - only apps that use MySQL pay for the import

        self._pymysql = pymysql
        self.address = masked(address)
        self._password = target.password
        self._lost: str | None = None
        timeout = _socket_timeout(timeout)
        ssl_context = None
        if target.tls:
            import ssl  # noqa: PLC0415 - loaded before the sandbox's pivot for outbound HTTPS anyway

            ssl_context = ssl.create_default_context()
        try:
            # autocommit=None leaves the server's default (on), as mysql_async does; no LOCAL INFILE, no multiple
            # statements per query (PyMySQL's defaults); PyMySQL's charset default utf8mb4 is mysql_async's too.
            # Without ssl-mode, no TLS at all, as in Spin: PyMySQL 1.2 would otherwise try unverified TLS, and
            # building that context (loading the trust store) cost 70 ms of every open here.
            self._conn = pymysql.connect(
                host=target.host, port=target.port, user=target.user, password=target.password,
                database=target.database, connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
                autocommit=None, local_infile=False, ssl=ssl_context, ssl_disabled=ssl_context is None,
                charset="utf8mb4",
            )
        except (pymysql.err.MySQLError, OSError, ValueError) as exc:
            raise RdbmsError("connection-failed", f"{self.address}: {self._describe(exc)}") from None

    # ------------------------------------------------------------------------------------------------ the API

    def query(self, statement: str, params: Sequence[Variant], timeout: float) -> dict[str, Any]:
        columns, rows = self._run(statement, params, timeout, collect=True)
        return rt.row_set(columns, rows)

    def execute(self, statement: str, params: Sequence[Variant], timeout: float) -> None:
        self._run(statement, params, timeout, collect=False)

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is None or not conn.open:
            return
        try:
            conn._write_timeout = 1.0  # COM_QUIT is one small packet; never hold the request's end for it
            conn.close()
        except Exception:  # noqa: BLE001 - a dead socket is closed either way
            conn._force_close()

    # ------------------------------------------------------------------------------------------------ statements

    def _run(self, statement: str, params: Sequence[Variant], timeout: float,
             collect: bool) -> tuple[list[dict[str, str]], list[list[Variant]]]:
        wire_params = [wire_parameter(p) for p in rt.parameters(params)]  # bad-parameter before any I/O
        conn = self._conn
        if self._lost is not None or not conn.open:
            raise RdbmsError("query-failed", f"{self.address}: the connection is closed ({self._lost or 'closed'})")
        deadline = time.monotonic() + max(timeout, 0.0)
        conn._read_timeout = conn._write_timeout = _socket_timeout(timeout)
        try:
            conn._execute_command(wire.COM_STMT_PREPARE, statement)
            prepared = wire.parse_prepare_ok(conn._read_packet().get_all_data())
            try:
                self._skip_definitions(prepared.num_params)
                self._skip_definitions(prepared.num_columns)
                if len(wire_params) != prepared.num_params:
                    raise RdbmsError("query-failed", f"the statement takes {prepared.num_params} parameters but "
                                                     f"{len(wire_params)} were supplied")
                conn._execute_command(wire.COM_STMT_EXECUTE, wire.execute_payload(prepared.statement_id,
                                                                                 wire_params))
                return self._read_results(collect, deadline)
            finally:
                if conn.open:
                    conn._execute_command(wire.COM_STMT_CLOSE, wire.close_payload(prepared.statement_id))
        except self._pymysql.err.MySQLError as exc:
            raise RdbmsError("query-failed", self._describe(exc)) from None
        except RdbmsError:
            raise
        except wire.ProtocolError as exc:
            self._lose(f"protocol error: {exc}")
            raise RdbmsError("query-failed", f"{self.address}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a driver surprise: the stream may be out of step, drop it
            self._lose(f"{type(exc).__name__}: {exc}")
            raise RdbmsError("query-failed", f"{self.address}: {self._describe(exc)}") from None

    def _skip_definitions(self, count: int) -> None:
        """Parameter or column definitions of COM_STMT_PREPARE_OK, each list closed by an EOF packet."""
        if count == 0:
            return
        for _ in range(count):
            self._conn._read_packet()
        self._expect_eof()

    def _expect_eof(self) -> bytes:
        payload = self._conn._read_packet().get_all_data()
        if not wire.is_eof(payload):
            raise wire.ProtocolError("expected an EOF packet after the definitions")
        return payload

    def _read_results(self, collect: bool,
                      deadline: float) -> tuple[list[dict[str, str]], list[list[Variant]]]:
        """The first result set (rows converted when ``collect``), then any further ones (a CALL's) discarded."""
        columns, rows, status = self._read_result_set(collect, deadline)
        while status & wire.SERVER_MORE_RESULTS_EXISTS:
            _, _, status = self._read_result_set(False, deadline)
        return columns, rows

    def _read_result_set(self, collect: bool,
                         deadline: float) -> tuple[list[dict[str, str]], list[list[Variant]], int]:
        from pymysql.protocol import FieldDescriptorPacket  # noqa: PLC0415 - loaded with pymysql

        conn = self._conn
        first = conn._read_packet().get_all_data()
        if wire.is_ok(first):  # no result set (INSERT, UPDATE, ...)
            return [], [], wire.ok_status(first)
        definitions = []
        for _ in range(wire.column_count(first)):
            field = conn._read_packet(FieldDescriptorPacket)
            definitions.append(ColumnDef(field.name, field.type_code, field.flags))
        self._expect_eof()
        cases = [data_type(d) for d in definitions]
        columns = [rt.column(d.name, case) for d, case in zip(definitions, cases)]
        rows: list[list[Variant]] = []
        budget = rt.ResultBudget()
        failure: RdbmsError | None = None
        while True:
            payload = conn._read_packet().get_all_data()
            if wire.is_eof(payload):
                status = wire.eof_status(payload)
                break
            if not collect or failure is not None:
                if time.monotonic() > deadline:  # the rest of a result nobody will see: not past the deadline
                    self._lose("the request's deadline passed while discarding a result")
                    raise failure or RdbmsError("query-failed", "the request's deadline passed")
                continue
            try:
                values = wire.decode_binary_row(payload, definitions)
                row = [db_value(v, d, c) for v, d, c in zip(values, definitions, cases)]
                budget.add_row(row)
                rows.append(row)
            except RdbmsError as exc:
                failure = exc  # read the rest (the connection stays usable), then report, as Spin does
                rows = []
        if failure is not None:
            raise failure
        return columns, rows, status

    # ------------------------------------------------------------------------------------------------ helpers

    def _lose(self, reason: str) -> None:
        self._lost = reason
        self._conn._force_close()

    def _describe(self, exc: BaseException) -> str:
        """An error's text for the guest: ``ERROR <code>: <message>`` for the server's, never the password."""
        args = getattr(exc, "args", ())
        if len(args) == 2 and isinstance(args[0], int):
            text = f"ERROR {args[0]}: {args[1]}" if args[0] else str(args[1])
        else:
            text = str(exc) or type(exc).__name__
        if self._conn_lost():
            self._lost = self._lost or text
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _conn_lost(self) -> bool:
        conn = getattr(self, "_conn", None)
        return conn is not None and not conn.open


def _socket_timeout(timeout: float) -> float:
    return max(0.1, min(timeout, MAX_SOCKET_TIMEOUT_S))
