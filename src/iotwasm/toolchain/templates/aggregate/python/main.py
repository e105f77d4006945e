"""{{name}}: per device, collects `window` readings (config, default 10) of "value" and then
emits their count, mean, min and max. The sums live in the instance's memory: a replaced
instance (after a trap or a restart) starts over, and each replica sees only its share."""

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

MAX_DEVICES, MAX_ID = 256, 64
WINDOW = 10.0
ACCS = {}  # device (as written) -> [n, sum, min, max]


@setup
def read_config():
    global WINDOW
    WINDOW = config.number("window", WINDOW)
    if WINDOW < 1:
        raise ValueError(f"config window={WINDOW} must be at least 1")
    log.info("aggregate ready")


def fields(text):
    """The raw "device" and "value" members (None when absent or not an object)."""
    device = value = None
    if is_object(text):
        try:
            for key, raw in members(text):
                if key == "device" and device is None:
                    device = raw
                elif key == "value" and value is None:
                    value = raw
        except Malformed:
            pass
    return device, value


@handler
def handle(msg):
    device, raw = fields(msg.text)
    if device is None or not device.startswith('"'):
        reject('"device" missing or not a string')
    value = None if raw is None else parse_number(raw)
    if value is None:
        reject('"value" missing or not a number')
    acc = ACCS.get(device)
    if acc is None:
        if len(ACCS) == MAX_DEVICES or len(device.encode()) - 2 > MAX_ID:
            reject("too many devices")
        acc = ACCS[device] = [0, 0.0, value, value]
    n, total = acc[0] + 1, (acc[1] + value if acc[0] else value)
    lo = acc[2] if acc[0] and acc[2] < value else value
    hi = acc[3] if acc[0] and acc[3] > value else value
    if n < WINDOW:
        acc[:] = [n, total, lo, hi]
        return None
    acc[0] = 0
    return (f'{{"device":{device},"count":{n},"mean":{format_number(total / n)},'
            f'"min":{format_number(lo)},"max":{format_number(hi)}}}')
