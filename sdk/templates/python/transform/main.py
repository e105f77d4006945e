from iotwasm_sdk import config, handler, reject, setup

FIELD = "value"


@setup
def read_config():
    global FIELD
    FIELD = config.get("field", FIELD)


@handler
def handle(msg):
    reading = msg.json()
    value = reading.get(FIELD) if isinstance(reading, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        reject(f"{FIELD} is not a number")
    reading[FIELD] = round(value * 9 / 5 + 32, 2)
    reading["unit"] = "F"
    return reading  # a dict is written as JSON
