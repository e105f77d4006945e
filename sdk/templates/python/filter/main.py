from iotwasm_sdk import config, handler, reject, setup

LO, HI = float("-inf"), float("inf")


@setup
def read_config():
    global LO, HI
    LO = config.number("min", LO)
    HI = config.number("max", HI)


@handler
def handle(msg):
    reading = msg.json()
    value = reading.get("value") if isinstance(reading, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        reject("no numeric value")
    if LO <= value <= HI:
        return msg  # passed on unchanged
    return None  # dropped
