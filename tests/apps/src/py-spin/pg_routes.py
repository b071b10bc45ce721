"""py-spin's PostgreSQL route: `POST /pg?address=<postgres url>&v=4|3|2`, one connection, statements in order.

Body: a JSON list of `[op, statement, [params]]` with op `query` or `execute` and each param
`{"type": "<parameter-value case>", "value": <json>}` (binary/jsonb as hex; tuples, ranges as lists; an interval
as {"micros", "days", "months"}; `db-null` without value). Answer: 200 JSON list, per statement
`{"columns": [[name, data-type]], "rows": [[{"type": case, "value": json}]]}` for a query, `{"count": n}` for
execute; or 500 `ERROR: <repr of the SDK's error>` (e.g. `ERROR: Error_ConnectionFailed(value='...')`).

Every version goes through generated bindings, whose module names depend on the componentize-py version, hence
the lookup: 0.17.2 names spin:postgres/postgres `spin_postgres_postgres_3_0_0` / `_4_0_0`, and
fermyon:spin/postgres@2.0.0 `postgres` (the SDK's componentize-py.toml maps it so). The SDK's own
`spin_sdk.postgres` (a one-line `open` over that module) is used for v2 when it imports; a 200 answer names the
module used in `x-pg-api`. The lookups run at import, while componentize-py snapshots the app: imported any later,
`spin_sdk.postgres` is not found in the component. Importing this module never fails: a version whose bindings are
missing answers 501 with the import errors.
"""

import dataclasses
import importlib
import json
import re
from enum import Enum

from spin_sdk.http import Response
from spin_sdk.wit.types import Err


#: Why a version's bindings could not be imported (for the 501 answer).
_MISSING = []


def _bindings(*names):
    for name in names:
        try:
            return importlib.import_module(f"spin_sdk.wit.imports.{name}")
        except ImportError as exc:
            _MISSING.append(f"{name}: {exc}")
    return None


def _v2():
    types = _bindings("rdbms_types", "fermyon_spin_rdbms_types")
    try:
        from spin_sdk import postgres  # noqa: PLC0415 - the SDK's own API for fermyon:spin/postgres@2.0.0

        return postgres.open, types, "spin_sdk.postgres"
    except ImportError as exc:
        _MISSING.append(f"spin_sdk.postgres: {exc}")
    module = _bindings("postgres", "fermyon_spin_postgres")
    return (module.Connection.open, types, module.__name__) if module is not None else (None, None, None)


def _generated(*names):
    module = _bindings(*names)
    return (module.Connection.open, module, module.__name__) if module is not None else (None, None, None)


#: version -> (open, the module of its types, which API that is). Looked up at import, which componentize-py
#: runs while it snapshots the app, so the modules are part of the component whatever it bundles as files.
_APIS = {
    "2": _v2(),
    "3": _generated("spin_postgres_postgres_3_0_0", "spin_postgres_postgres"),
    "4": _generated("spin_postgres_postgres_4_0_0"),
}


def _camel(case):
    return "".join(part.capitalize() for part in case.split("-"))


def _kebab(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _bound(types, bound):
    if bound is None:
        return None
    value, kind = bound
    return (value, types.RangeBoundKind[kind.upper()])


def _param(types, param):
    case = param["type"]
    cls = getattr(types, f"ParameterValue_{_camel(case)}")
    if case == "db-null":
        return cls()
    value = param["value"]
    if case in ("binary", "jsonb"):
        value = bytes.fromhex(value)
    elif case in ("date", "time", "datetime"):
        value = tuple(value)
    elif case.startswith("range-"):
        value = (_bound(types, value[0]), _bound(types, value[1]))
    elif case == "interval":
        value = types.Interval(**value)
    return cls(value)


def _json_value(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Enum):
        return value.name.lower()  # RangeBoundKind
    return value


def _db_value(value):
    case = _kebab(type(value).__name__.split("_", 1)[1])
    entry = {"type": case}
    if hasattr(value, "value"):
        entry["value"] = _json_value(value.value)
    return entry


def _data_type(data_type):
    if isinstance(data_type, Enum):
        return data_type.name.lower().replace("_", "-")  # v2/v3: an enum
    case = _kebab(type(data_type).__name__.split("_", 1)[1])  # v4: a variant
    return f"{case}({data_type.value})" if hasattr(data_type, "value") else case


def route(version, address, body):
    open_, types, api = _APIS.get(version, (None, None, None))
    if open_ is None or types is None:
        reasons = "; ".join(_MISSING)
        return Response(501, {"content-type": "text/plain"},
                        f"no bindings for PostgreSQL v{version}: {reasons}".encode())
    try:
        with open_(address) as connection:
            results = []
            for op, statement, params in json.loads(body):
                values = [_param(types, p) for p in params]
                if op == "execute":
                    results.append({"count": connection.execute(statement, values)})
                    continue
                result = connection.query(statement, values)
                results.append({"columns": [[c.name, _data_type(c.data_type)] for c in result.columns],
                                "rows": [[_db_value(v) for v in row] for row in result.rows]})
    except Err as exc:
        return Response(500, {"content-type": "text/plain"}, f"ERROR: {exc.value!r}".encode())
    return Response(200, {"content-type": "application/json", "x-pg-api": api},
                    json.dumps(results, sort_keys=True).encode())
