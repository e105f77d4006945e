"""range_filter: passes a JSON message on when one of its numbers lies in [min, max].

The Python twin of ../../range_filter.c, with the same config, outputs and reject texts:

config (read once per instance in setup):
  field   member to test, default "value" (at most 64 bytes)
  min     lower bound, inclusive, default -inf
  max     upper bound, inclusive, default +inf
input:    a JSON object, e.g. {"device":"d1","value":21.5}
output:   the input unchanged on the default topic, or nothing when out of range.
rejects:  payload is not a JSON object / field "value" missing / field "value" is not a
          number / field "value" is NaN
"""

import json
import math

from iotwasm_sdk import config, handler, reject, setup

FIELD = "value"
LO = -math.inf
HI = math.inf


@setup
def read_config():
    global FIELD, LO, HI
    LO = config.number("min", -math.inf)
    HI = config.number("max", math.inf)
    FIELD = config.get("field", "value")
    if len(FIELD.encode()) > 64:
        raise ValueError("field is longer than 64 bytes")
    if LO > HI:
        raise ValueError(f"min {LO} > max {HI}")


@handler
def handle(msg):
    try:
        reading = json.loads(msg.text)
    except ValueError:
        reading = None
    if not isinstance(reading, dict):
        reject("payload is not a JSON object")
    if FIELD not in reading:
        reject(f'field "{FIELD}" missing')
    v = reading[FIELD]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        reject(f'field "{FIELD}" is not a number')
    if v != v:
        reject(f'field "{FIELD}" is NaN')
    if v < LO or v > HI:
        return None  # dropped: no output at all
    return msg
