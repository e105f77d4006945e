"""{{name}}: rewrites "value" as value * scale + offset (config), keeping the other members
as they were written, in their order."""

from iotwasm_sdk import (
    Malformed,
    config,
    format_number,
    handler,
    is_object,
    log,
    members,
    parse_number,
    reject,
    setup,
)

SCALE, OFFSET = 1.0, 0.0


@setup
def read_config():
    global SCALE, OFFSET
    SCALE = config.number("scale", SCALE)
    OFFSET = config.number("offset", OFFSET)
    log.info("transform ready")


@handler
def handle(msg):
    text = msg.text
    if not is_object(text):
        reject("payload is not a JSON object")
    try:
        fields = list(members(text))  # (key, value) as written
    except Malformed:
        reject("payload is not a JSON object")
    value = next((parse_number(raw) for key, raw in fields if key == "value"), None)
    if value is None:
        reject('"value" missing or not a number')
    converted = format_number(value * SCALE + OFFSET)  # up to 6 decimals, as the C SDK writes
    return "{" + ",".join(f'"{key}":{converted if key == "value" else raw}'
                          for key, raw in fields) + "}"
