"""py-spin's /mysql route: Spin's MySQL API (fermyon:spin/mysql@2.0.0) through the SDK's `spin_sdk.mysql`.

`POST /mysql?address=mysql://user:pass@host:port/db` with a JSON body: a list of steps run in order on one
connection, each `["query" | "execute", statement, [[case, value], ...]]`, where `case` is a parameter-value
case as the WIT spells it (`int8` ... `uint64`, `floating32`, `floating64`, `str`, `binary` with the value in
hex, `boolean`, `db-null` with value null). The answer is a JSON list with, per step, null for `execute` and
`{"columns": [[name, data-type]], "rows": [[[case, value], ...]]}` for `query` (binary values in hex), or 500
with `ERROR: <the SDK's error dataclass>` (e.g. `Error_QueryFailed(value='...')`) for the first step that fails.
"""

import json
import re

from spin_sdk import mysql
from spin_sdk.http import Response
from spin_sdk.wit.imports import rdbms_types
from spin_sdk.wit.types import Err


def _camel(case: str) -> str:
    return "".join(part.capitalize() for part in case.split("-"))


def _kebab(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", camel).lower()


def _parameter(case: str, value: object):
    cls = getattr(rdbms_types, f"ParameterValue_{_camel(case)}")
    if case == "db-null":
        return cls()
    return cls(bytes.fromhex(value) if case == "binary" else value)


def _value(value: object) -> list:
    case = _kebab(type(value).__name__.removeprefix("DbValue_"))
    payload = getattr(value, "value", None)
    return [case, payload.hex() if isinstance(payload, bytes) else payload]


def _row_set(result) -> dict:
    return {"columns": [[column.name, column.data_type.name.lower()] for column in result.columns],
            "rows": [[_value(value) for value in row] for row in result.rows]}


def route(address: str, body: bytes) -> Response:
    """The response to `POST /mysql?address=<address>` with `body`."""
    results = []
    try:
        with mysql.open(address) as connection:
            for kind, statement, params in json.loads(body or b"[]"):
                values = [_parameter(case, value) for case, value in params]
                if kind == "query":
                    results.append(_row_set(connection.query(statement, values)))
                else:
                    connection.execute(statement, values)
                    results.append(None)
    except Err as exc:
        return Response(500, {"content-type": "text/plain"}, f"ERROR: {exc.value!r}".encode())
    return Response(200, {"content-type": "application/json"}, json.dumps(results).encode())
