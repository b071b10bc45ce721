"""The protocol layer: pg8000's CoreConnection, taught to run one statement with binary values, bounded.

Imported only when a guest opens a PostgreSQL connection: importing pg8000 costs 60-200 ms (warm to cold, on
these machines: dateutil, asn1crypto through scramp, its DB-API modules), which no other app should pay.

What is changed from pg8000, and why:
- ``run`` pipelines Parse/Bind/Describe/Execute/Sync with per-parameter formats and binary results (pg8000's own
  execute sends text only and converts with its own type table).
- DataRow keeps each value's raw bytes, and stops keeping them once the result is over its byte budget (the rest
  is read and dropped, so the connection stays usable and memory stays bounded).
- CommandComplete only takes the row count: pg8000 raises "in failed transaction block" for a COMMIT of a failed
  transaction, which the server answers with ROLLBACK and tokio-postgres (Spin) reports as success.
- COPY ... FROM STDIN is refused with CopyFail (the server then reports the error), COPY ... TO STDOUT read and
  dropped, notifications dropped (pg8000 would wait for a stream, or fail on a non-ASCII payload).
- A server that asks for a password the connection string does not carry gets a clear error, not pg8000's
  AttributeError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.spin.postgres.address import ConnectOptions

_WIRE: type | None = None


@dataclass
class Outcome:
    columns: list[dict[str, Any]]
    rows: list[list[bytes | None]]
    row_count: int
    #: A failure found while reading the result (too large, COPY OUT): the call fails, the connection is fine.
    error: str | None


def wire_class() -> type:
    global _WIRE
    if _WIRE is None:
        _WIRE = _build()
    return _WIRE


def _import_pg8000() -> tuple[Any, Any]:
    """pg8000.core and pg8000.exceptions (pg8000 and scramp read their own version from their dist-info at import,
    which the task sandbox's finder serves: shim.wasm.sandbox.python_paths)."""
    from pg8000 import core, exceptions  # noqa: PLC0415 - see the module docstring

    return core, exceptions


def _build() -> type:  # noqa: C901 - one class, its overrides side by side
    core, exceptions = _import_pg8000()
    DatabaseError, InterfaceError = exceptions.DatabaseError, exceptions.InterfaceError  # noqa: N806

    h_unpack = struct.Struct("!h").unpack_from
    i_unpack = struct.Struct("!i").unpack_from

    class Wire(core.CoreConnection):  # type: ignore[misc, valid-type]
        def __init__(self, sock: Any, options: ConnectOptions) -> None:
            startup = {"client_encoding": "UTF8"}
            if options.options:
                startup["options"] = options.options
            super().__init__(options.user, host=None, database=options.dbname, port=None,
                             password=options.password, sock=sock, ssl_context=False, tcp_keepalive=False,
                             application_name=options.application_name, startup_params=startup)

        # ------------------------------------------------------------------------------------ statements

        def run(self, statement: str, encoded: list[tuple[int, int, bytes | None]], max_bytes: int,
                per_value: int) -> Outcome:
            context = core.Context(statement)
            context.rows = []
            context.budget = max_bytes
            context.max_bytes = max_bytes
            context.per_value = per_value
            context.result_error = None
            bind = bytearray(core.NULL_BYTE + core.NULL_BYTE)  # unnamed portal, unnamed statement
            bind += struct.pack(f"!H{len(encoded)}h", len(encoded), *(fmt for _, fmt, _ in encoded))
            bind += struct.pack("!H", len(encoded))
            for _, _, value in encoded:
                bind += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
            bind += struct.pack("!hh", 1, 1)  # every result column in binary
            try:
                self.send_PARSE(core.NULL_BYTE, statement, [oid for oid, _, _ in encoded])
                self._send_message(core.BIND, bytes(bind))
                self._send_message(core.DESCRIBE, core.PORTAL + core.NULL_BYTE)
                core._write(self._sock, core.EXECUTE_MSG)
                core._write(self._sock, core.SYNC_MSG)
                core._flush(self._sock)
                self.handle_messages(context)
            except InterfaceError as exc:
                if isinstance(exc.__cause__, TimeoutError):
                    raise TimeoutError("timed out") from None
                raise
            return Outcome(context.columns or [], context.rows, context.row_count, context.result_error)

        def error_fields(self, exc: BaseException) -> dict[str, str] | None:
            """The server's ErrorResponse fields when ``exc`` is one (the connection is still in sync)."""
            if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
                return exc.args[0]
            return None

        def set_timeout(self, seconds: float) -> None:
            if self._usock is not None:
                self._usock.settimeout(seconds)

        def abandon(self) -> None:
            usock, self._usock, self._sock = self._usock, None, None
            if usock is not None:
                usock.close()

        # ------------------------------------------------------------------------------------ messages

        def handle_DATA_ROW(self, data: bytes, context: Any) -> None:  # noqa: N802 - pg8000's handler names
            if context.result_error is not None:
                return  # over budget: drain
            count = h_unpack(data)[0]
            position, size = 2, 0
            row: list[bytes | None] = []
            for _ in range(count):
                length = i_unpack(data, position)[0]
                position += 4
                if length < 0:
                    row.append(None)
                    size += context.per_value
                else:
                    row.append(data[position:position + length])
                    position += length
                    size += length + context.per_value
            context.budget -= size
            if context.budget < 0:
                context.result_error = f"query result exceeds limit of {context.max_bytes} bytes"
                context.rows.clear()
            else:
                context.rows.append(row)

        def handle_COMMAND_COMPLETE(self, data: bytes, context: Any) -> None:  # noqa: N802
            words = data.rstrip(core.NULL_BYTE).split(b" ")
            if len(words) > 1 and words[-1].isdigit():
                context.row_count = int(words[-1])

        def handle_COPY_IN_RESPONSE(self, data: bytes, context: Any) -> None:  # noqa: N802
            self._send_message(b"f", b"COPY FROM STDIN is not supported by Spin's PostgreSQL API\x00")
            core._write(self._sock, core.SYNC_MSG)  # the pipelined Sync was ignored in copy-in mode
            core._flush(self._sock)

        def handle_COPY_OUT_RESPONSE(self, data: bytes, context: Any) -> None:  # noqa: N802
            context.stream_write = lambda _chunk: None
            context.result_error = "COPY TO STDOUT is not supported by Spin's PostgreSQL API"

        def handle_NOTIFICATION_RESPONSE(self, data: bytes, context: Any) -> None:  # noqa: N802
            pass  # Spin has no LISTEN API: nothing would read them

        def handle_AUTHENTICATION_REQUEST(self, data: bytes, context: Any) -> None:  # noqa: N802
            if self.password is None and i_unpack(data)[0] in (3, 5, 10):
                raise InterfaceError("the server asks for a password, and the connection string has none")
            super().handle_AUTHENTICATION_REQUEST(data, context)

    return Wire
