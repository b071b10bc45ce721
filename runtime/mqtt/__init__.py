"""MQTT for Spin apps: the paho-mqtt client driven without threads (``pump``), the MQTT trigger's config as
spin-trigger-mqtt defines it (``trigger_config``) and the broker-side subscriber that trigger runs
(``subscriber``). runtime.spin.mqtt_outbound (Spin's outbound MQTT API) uses ``pump`` too.

paho-mqtt is imported on first use only (measured: 17-21 ms in a worker that has the runtime imported, ~50 ms in
a bare interpreter): nothing here imports it at module level.
"""
