#!/usr/bin/env python3
"""Baseline: the same transform as plain Python in one paho-mqtt (v2 API) client, no sandbox.

    plain_python.py --port P        # prints "ready" once subscribed; SIGTERM stops it

in/{device} (QoS 1) → json.loads → °C to °F → keep 40 ≤ °F ≤ 104 → out/{device} (QoS 1).
The callback runs in paho's network thread and publishes from there, which is the cheapest
way to do it with paho.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-inflight", type=int, default=100,
                    help="QoS 1 publishes awaiting PUBACK (iotwasm's MQTT bus uses 100)")
    args = ap.parse_args()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-plain-python",
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(args.max_inflight)
    loads, dumps = json.loads, json.dumps

    def on_connect(c, userdata, flags, reason_code, properties):
        c.subscribe("in/+", qos=1)

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        print("ready", flush=True)

    def on_message(c, userdata, msg):
        try:
            d = loads(msg.payload)
            if d.get("unit") != "C":
                return
            f = d["value"] * 9 / 5 + 32
        except (ValueError, KeyError, TypeError):
            return
        if 40 <= f <= 104:
            d["value"] = round(f, 6)
            d["unit"] = "F"
            c.publish("out/" + d["device"], dumps(d, separators=(",", ":")), qos=1)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *a: client.disconnect())
    client.connect(args.host, args.port, keepalive=60)
    client.loop_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
