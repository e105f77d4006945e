from iotwasm_sdk import config, handler, kv, reject, setup

WINDOW = 5


@setup
def read_config():
    global WINDOW
    WINDOW = max(1, int(config.number("window", WINDOW)))


@handler
def handle(msg):
    reading = msg.json()
    if not isinstance(reading, dict) or not isinstance(reading.get("value"), (int, float)):
        reject("no numeric value")
    device = str(reading.get("device", msg.topic))
    window = kv.get_json(f"w/{device}", [])[-(WINDOW - 1):] if WINDOW > 1 else []
    window.append(reading["value"])
    kv.set_json(f"w/{device}", window)  # a kv write: committed, never repeated after a trap
    return {"device": device, "avg": sum(window) / len(window), "n": len(window)}
