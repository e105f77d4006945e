"""unit_convert: rewrites the reading of a JSON message into another unit.

The Python twin of ../../unit_convert.c, with the same config, outputs and reject texts.
Members are copied as they were written (the SDK's `members` walks them with the C SDK's
rules), except `value`, converted and written with up to 6 decimals, and `unit`, set to the
target (appended when the input had none).

config:  to  target unit (required): C, F, K; Pa, hPa, kPa, psi, bar (any case, "°" allowed)
"""

from iotwasm_sdk import (Malformed, config, format_number, handler, is_object, members,
                         parse_number, reject, setup)

TEMPERATURE, PRESSURE = 1, 2
# name, quantity, scale, offset: base = value * scale + offset (°C or Pa)
UNITS = [("C", TEMPERATURE, 1.0, 0.0), ("F", TEMPERATURE, 5.0 / 9.0, -32.0 * 5.0 / 9.0),
         ("K", TEMPERATURE, 1.0, -273.15), ("Pa", PRESSURE, 1.0, 0.0),
         ("hPa", PRESSURE, 100.0, 0.0), ("kPa", PRESSURE, 1000.0, 0.0),
         ("psi", PRESSURE, 6894.757293168361, 0.0), ("bar", PRESSURE, 100000.0, 0.0)]
TARGET = UNITS[0]


def find_unit(text):
    if text.startswith("\u00b0"):
        text = text[1:]
    if text.isascii():  # case-insensitive in ASCII only, as the C version
        low = text.lower()
        for unit in UNITS:
            if unit[0].lower() == low:
                return unit
    return None


@setup
def read_config():
    global TARGET
    to = config.get("to")
    if to is None:
        raise ValueError("config 'to' is missing")
    unit = find_unit(to) if len(to.encode()) <= 16 else None
    if unit is None:
        raise ValueError(f"config to={to!r} is not a known unit")
    TARGET = unit


def convert(v, src, dst):
    if src is dst:
        return v
    if src[1] == TEMPERATURE and dst[1] == TEMPERATURE:
        return (v * src[2] + src[3] - dst[3]) / dst[2]
    return v * (src[2] / dst[2])


def excerpt(text):
    return text.encode()[:64].decode("utf-8", "replace")


@handler
def handle(msg):
    text = msg.text
    if not is_object(text):
        reject("payload is not a JSON object")
    fields = []
    value = None
    have_unit = False
    src = sensor = None
    try:
        for key, raw in members(text):
            fields.append((key, raw))
            if key == "value":
                value = parse_number(raw)
            elif key == "unit":
                if raw[0] != '"':
                    reject("unit is not a string")
                have_unit = True
                src = find_unit(raw[1:-1])
                if src is None:
                    reject(f'unknown unit "{excerpt(raw[1:-1])}"')
            elif key == "sensor" and raw[0] == '"':
                sensor = raw[1:-1]
    except Malformed:
        reject("payload is not a well-formed JSON object")
    if value is None:
        reject("value missing or not a number")
    if src is None:
        if sensor == "temperature":
            src = UNITS[0]
        elif sensor == "pressure":
            src = UNITS[4]
        elif sensor is not None:
            reject(f'no unit given and sensor "{excerpt(sensor)}" has no default unit')
        else:
            reject("no unit and no sensor given")
    if src[1] != TARGET[1]:
        reject(f"cannot convert {src[0]} to {TARGET[0]}")
    converted = format_number(convert(value, src, TARGET))
    parts = []
    for key, raw in fields:
        if key == "value":
            raw = converted
        elif key == "unit":
            raw = f'"{TARGET[0]}"'
        parts.append(f'"{key}":{raw}')
    if not have_unit:
        parts.append(f'"unit":"{TARGET[0]}"')
    return "{" + ",".join(parts) + "}"
