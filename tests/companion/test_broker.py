"""The end-to-end tests' broker is a real mosquitto that paho-mqtt talks to."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Broker


def test_paho_round_trips_a_binary_message(mosquitto: Broker) -> None:
    received: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-roundtrip")
    client.on_message = lambda _c, _u, message: received.put(message.payload)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        result, _mid = client.subscribe("mlmule/test/#", qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        payload = bytes(range(256)) * 1024
        client.publish("mlmule/test/blob", payload, qos=1).wait_for_publish(timeout=5)
        assert received.get(timeout=5) == payload
    finally:
        client.loop_stop()
        client.disconnect()
