"""The OTEL_* task env as Spin reads it (crates/telemetry env.rs, detector.rs) and the OTLP exporter spec."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidSettingError
from runtime.telemetry.config import from_env


def test_no_endpoint_is_off():
    assert from_env({}) is None
    assert from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None  # set but empty: Spin's any_vars_set says no
    assert from_env({"OTEL_SERVICE_NAME": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None


def test_protocol_of_a_signal_that_is_off_is_not_read():
    # Spin never reads the protocol of a signal without an endpoint, so http/json there is no error
    assert from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) is None


@pytest.mark.parametrize("disabled", ["true", "1", "false"])
def test_sdk_disabled_set_to_anything_not_empty_turns_everything_off(disabled):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": disabled}
    assert from_env(env) is None


def test_empty_sdk_disabled_does_not_disable():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": ""})
    assert config is not None and config.traces is not None


def test_general_endpoint_gets_the_signal_paths_for_http_protobuf():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.default:4318/"})
    assert config is not None and config.traces is not None and config.metrics is not None
    assert config.traces.endpoint == "http://otel-collector.default:4318/v1/traces"
    assert config.metrics.endpoint == "http://otel-collector.default:4318/v1/metrics"
    assert config.traces.protocol == config.metrics.protocol == "http/protobuf"
    assert config.traces.timeout == 10.0


def test_general_endpoint_with_a_path_keeps_it():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gateway.example/otlp"})
    assert config is not None and config.traces is not None
    assert config.traces.endpoint == "https://gateway.example/otlp/v1/traces"


def test_per_signal_endpoint_is_used_as_it_is_and_turns_on_only_its_signal():
    config = from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/custom"})
    assert config is not None and config.metrics is None
    assert config.traces is not None and config.traces.endpoint == "http://tempo:4318/custom"
    config = from_env({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://prom:4318/v1/metrics"})
    assert config is not None and config.traces is None
    assert config.metrics is not None and config.metrics.endpoint == "http://prom:4318/v1/metrics"


def test_per_signal_endpoint_wins_over_the_general_one():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                       "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://b:9090/m"})
    assert config is not None and config.traces is not None and config.metrics is not None
    assert config.traces.endpoint == "http://a:4318/v1/traces"
    assert config.metrics.endpoint == "http://b:9090/m"


def test_grpc_uses_the_general_endpoint_as_it_is():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                       "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert config is not None and config.traces is not None and config.metrics is not None
    assert (config.traces.protocol, config.traces.endpoint) == ("grpc", "http://collector:4317")
    assert (config.metrics.protocol, config.metrics.endpoint) == ("grpc", "http://collector:4317")


def test_per_signal_protocol_wins_over_the_general_one():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                       "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                       "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
    assert config is not None and config.traces is not None and config.metrics is not None
    assert config.traces.protocol == "grpc"
    assert (config.metrics.protocol, config.metrics.endpoint) == ("http/protobuf", "http://collector:4318/v1/metrics")


def test_http_json_is_refused_as_in_spin():
    with pytest.raises(InvalidSettingError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json"):
        from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})


def test_unknown_protocol_warns_and_uses_http_protobuf(caplog):
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})
    assert config is not None and config.traces is not None
    assert config.traces.protocol == "http/protobuf"
    assert "'thrift' is not a valid OTLP protocol" in caplog.text


def test_service_name_from_otel_service_name_then_resource_attributes_then_spin():
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert from_env(base).resource["service.name"] == "spin"  # type: ignore[union-attr]
    attrs = {**base, "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod,k8s.pod.name=a%2Cb"}
    resource = from_env(attrs).resource  # type: ignore[union-attr]
    assert resource == {"service.name": "from-attrs", "deployment.environment": "prod", "k8s.pod.name": "a,b"}
    resource = from_env({**attrs, "OTEL_SERVICE_NAME": "checkout"}).resource  # type: ignore[union-attr]
    assert resource["service.name"] == "checkout" and resource["deployment.environment"] == "prod"


def test_headers_general_and_per_signal_merge():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                       "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=a",
                       "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=b"})
    assert config is not None and config.traces is not None and config.metrics is not None
    assert config.traces.headers == {"authorization": "Bearer abc", "x-tenant": "b"}
    assert config.metrics.headers == {"authorization": "Bearer abc", "x-tenant": "a"}


def test_malformed_key_value_lists_are_named():
    with pytest.raises(InvalidSettingError, match="OTEL_RESOURCE_ATTRIBUTES=.*'nokey' is not key=value"):
        from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_RESOURCE_ATTRIBUTES": "a=1,nokey"})


def test_intervals_and_timeouts_are_milliseconds():
    config = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_BSP_SCHEDULE_DELAY": "200",
                       "OTEL_METRIC_EXPORT_INTERVAL": "1500", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
                       "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "500"})
    assert config is not None and config.traces is not None and config.metrics is not None
    assert (config.span_delay, config.metric_interval) == (0.2, 1.5)
    assert (config.traces.timeout, config.metrics.timeout) == (2.5, 0.5)
    defaults = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert defaults is not None and (defaults.span_delay, defaults.metric_interval) == (5.0, 60.0)


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_bad_interval_is_an_error(value):
    with pytest.raises(InvalidSettingError, match="OTEL_METRIC_EXPORT_INTERVAL"):
        from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRIC_EXPORT_INTERVAL": value})


@pytest.mark.parametrize(("env", "wanted"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),  # no endpoint: off
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
      "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, True),
    # grpc asked only for traces, whose endpoint is not set: metrics over http/protobuf need no grpc
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"},
     False),
])
def test_needs_grpc_agrees_with_the_config(env, wanted):
    from runtime.telemetry import needs_grpc

    assert needs_grpc(env) is wanted
    config = from_env(env)
    from_config = config is not None and any(
        signal is not None and signal.protocol == "grpc" for signal in (config.traces, config.metrics))
    assert from_config is wanted
