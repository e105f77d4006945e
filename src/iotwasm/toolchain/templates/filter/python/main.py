"""{{name}}: passes a JSON message on when its "value" lies in [min, max] (config)."""

from iotwasm_sdk import (
    Malformed,
    config,
    handler,
    is_object,
    log,
    members,
    parse_number,
    reject,
    setup,
)

LO, HI = float("-inf"), float("inf")


@setup
def read_config():
    # config is read once per instance; raising refuses to start: the node reports it
    global LO, HI
    LO = config.number("min", LO)
    HI = config.number("max", HI)
    log.info("filter ready")


@handler
def handle(msg):
    text = msg.text
    # reject() (or any exception) sends the message to the dead letters with this text
    if not is_object(text):
        reject("payload is not a JSON object")
    value = None
    try:
        for key, raw in members(text):
            if key == "value":
                value = parse_number(raw)
                break
    except Malformed:
        reject("payload is not a JSON object")
    if value is None:
        reject('"value" missing or not a number')
    if value < LO or value > HI:
        return None  # dropped
    return msg  # passed on unchanged, on the route's topic
