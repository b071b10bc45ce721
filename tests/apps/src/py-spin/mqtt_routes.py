"""py-spin's /mqtt route: Spin's outbound MQTT API (fermyon:spin/mqtt@2.0.0) through the SDK's `spin_sdk.mqtt`.

`POST /mqtt?address=<mqtt url>&topic=<topic>&qos=0|1|2[&username=u&password=p&keep_alive=30&count=N]` publishes
the request body N times (default 1) to `topic` on one connection. The answer is 200 `published N`, or 500
`ERROR: <the SDK's error dataclass>` (e.g. `Error_ConnectionFailed(value='address ... is not permitted')`) from
the open or the first publish that fails.
"""

from spin_sdk import mqtt
from spin_sdk.http import Response
from spin_sdk.wit.types import Err

_QOS = {"0": mqtt.Qos.AT_MOST_ONCE, "1": mqtt.Qos.AT_LEAST_ONCE, "2": mqtt.Qos.EXACTLY_ONCE}


def route(query: dict[str, list[str]], body: bytes) -> Response:
    """The response to `POST /mqtt?...` with `body`."""

    def arg(name: str, default: str = "") -> str:
        return query.get(name, [default])[0]

    count = int(arg("count", "1"))
    try:
        with mqtt.open(arg("address"), arg("username"), arg("password"), int(arg("keep_alive", "30"))) as conn:
            for _ in range(count):
                conn.publish(arg("topic"), body, _QOS[arg("qos", "1")])
    except Err as exc:
        return Response(500, {"content-type": "text/plain"}, f"ERROR: {exc.value!r}".encode())
    return Response(200, {"content-type": "text/plain"}, f"published {count}".encode())
