"""runtime.spin.rdbms_types: fermyon:spin/rdbms-types@2.0.0's values, ranges, errors and Spin's result budget,
and that what it builds lowers into the real WIT types of the SDK's mysql / postgres 2.0.0 imports."""

from __future__ import annotations

import math

import pytest
from wasmtime.component import Variant

from runtime.host.values import Err, Ok
from runtime.spin import rdbms_types as rt
from tests.unit.test_spin_bindings import _func_types, _lowers, sdk_imports  # noqa: F401 - fixture

EVERY_PARAMETER = [
    ("boolean", True), ("int8", -128), ("int16", 32767), ("int32", -(1 << 31)), ("int64", (1 << 63) - 1),
    ("uint8", 255), ("uint16", 65535), ("uint32", (1 << 32) - 1), ("uint64", (1 << 64) - 1),
    ("floating32", 1.5), ("floating64", -2.25), ("str", "héllo"), ("binary", b"\x00\xff"), ("db-null", None),
]


@pytest.mark.parametrize(("kind", "value"), EVERY_PARAMETER)
def test_every_parameter_case_becomes_its_python_value_with_its_width(kind, value):
    assert rt.parameter(Variant(kind, value)) == rt.Parameter(kind, value)
    assert rt.python_value(Variant(kind, value)) == value


def test_parameters_keep_order_and_null_is_marked():
    params = rt.parameters([Variant("int8", 1), Variant("db-null", None), Variant("str", "x")])
    assert [p.kind for p in params] == ["int8", "db-null", "str"]
    assert [p.is_null for p in params] == [False, True, False]


@pytest.mark.parametrize(("kind", "value", "reason"), [
    ("int8", 128, "out of range"), ("uint8", -1, "out of range"), ("uint64", 1 << 64, "out of range"),
    ("int32", 1.0, "needs an integer"), ("int16", True, "needs an integer"), ("boolean", 1, "needs a bool"),
    ("str", b"x", "needs a string"), ("binary", "x", "needs bytes"), ("floating64", "1", "needs a number"),
    ("floating32", 1e39, "range of a 32-bit float"), ("db-null", 0, "carries no value"),
    ("unsupported", None, "not a case"), ("nonsense", 1, "not a case"),
])
def test_a_parameter_that_does_not_fit_its_case_is_bad_parameter(kind, value, reason):
    with pytest.raises(rt.RdbmsError) as raised:
        rt.parameters([Variant("int8", 1), Variant(kind, value)])
    assert raised.value.kind == "bad-parameter"
    assert "parameter 2" in raised.value.message and reason in raised.value.message


def test_floating32_is_rounded_to_what_an_f32_holds():
    assert rt.parameter(Variant("floating32", 0.1)).value == pytest.approx(0.1, rel=1e-7)
    assert rt.parameter(Variant("floating32", 0.1)).value != 0.1  # the nearest f32, not the double
    assert rt.to_f32(rt.F32_MAX) == rt.F32_MAX
    assert math.isinf(rt.to_f32(math.inf)) and math.isnan(rt.to_f32(math.nan))


@pytest.mark.parametrize(("kind", "value"), EVERY_PARAMETER + [("unsupported", None)])
def test_every_db_value_case_is_built(kind, value):
    built = rt.db_value(kind, value)
    assert built == Variant(kind, value)


@pytest.mark.parametrize(("kind", "value"), [
    ("int8", 200), ("uint16", -5), ("uint32", 1 << 32), ("str", b"\xff"), ("binary", 7), ("boolean", "yes"),
    ("floating32", 3.5e38),
])
def test_a_db_value_that_does_not_fit_is_value_conversion_failed(kind, value):
    with pytest.raises(rt.RdbmsError) as raised:
        rt.db_value(kind, value)
    assert raised.value.kind == "value-conversion-failed" and kind in raised.value.message


def test_db_value_of_an_unknown_case_is_a_host_bug():
    with pytest.raises(ValueError):
        rt.db_value("decimal", "1.0")


def test_column_and_row_set_records():
    assert rt.column("id", "int32") == {"name": "id", "data-type": "int32"}
    with pytest.raises(ValueError):
        rt.column("d", "date")
    rows = rt.row_set([rt.column("a", "str")], [(rt.db_value("str", "x"),), [rt.DB_NULL]])
    assert rows == {"columns": [{"name": "a", "data-type": "str"}],
                    "rows": [[Variant("str", "x")], [Variant("db-null", None)]]}


def test_errors_carry_their_message_in_every_case():
    for kind in rt.ERROR_KINDS:
        exc = rt.RdbmsError(kind, "why")
        assert exc.variant() == Variant(kind, "why") == rt.error_value(exc)
        assert rt.err(exc) == Err(Variant(kind, "why"))
        assert str(exc) == f"{kind}: why"
    with pytest.raises(ValueError):
        rt.RdbmsError("access-denied", "not a case")  # type: ignore[arg-type]


def test_result_budget_counts_as_spin_does_and_stops_at_the_limit():
    assert rt.memory_size(rt.db_value("int64", 1)) == rt.DB_VALUE_SIZE
    assert rt.memory_size(rt.db_value("str", "é")) == rt.DB_VALUE_SIZE + 2
    assert rt.memory_size(rt.db_value("binary", b"abc")) == rt.DB_VALUE_SIZE + 3
    budget = rt.ResultBudget(limit=rt.ROW_SET_SIZE + 2 * rt.DB_VALUE_SIZE + 10)
    budget.add_row([rt.db_value("binary", b"0123456789"), rt.DB_NULL])
    with pytest.raises(rt.RdbmsError) as raised:
        budget.add_row([rt.DB_NULL])
    assert raised.value.kind == "other"
    assert raised.value.message == f"query result exceeds limit of {budget.limit} bytes"
    assert rt.MAX_RESULT_BYTES == 128 << 20


@pytest.mark.parametrize("interface", ["fermyon:spin/mysql@2.0.0", "fermyon:spin/postgres@2.0.0"])
def test_every_value_and_error_lowers_into_the_sdks_real_types(sdk_imports, interface):  # noqa: F811
    engine, component = sdk_imports
    query = _func_types(engine, component, interface)["[method]connection.query"]
    values = [rt.db_value(kind, value) for kind, value in EVERY_PARAMETER] + [rt.UNSUPPORTED]
    columns = [rt.column(f"c{i}", data_type) for i, data_type in enumerate(rt.DB_DATA_TYPES)]
    _lowers(engine, query, Ok(rt.row_set(columns, [values, values])))
    _lowers(engine, query, Ok(rt.row_set([], [])))
    for kind in rt.ERROR_KINDS:
        _lowers(engine, query, rt.err(rt.RdbmsError(kind, "message")))
    execute = _func_types(engine, component, interface)["[method]connection.execute"]
    _lowers(engine, execute, rt.err(rt.RdbmsError("query-failed", "no")))
