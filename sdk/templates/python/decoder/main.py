from iotwasm_sdk import emit, handler, reject


@handler
def handle(msg):
    readings = []
    for n, line in enumerate(msg.text.splitlines(), 1):
        parts = line.split(",")
        if len(parts) != 3:
            reject(f"line {n}: expected device,sensor,value")
        device, sensor, value = parts
        try:
            readings.append({"device": device, "sensor": sensor, "value": float(value)})
        except ValueError:
            reject(f"line {n}: {value!r} is not a number")
    for r in readings:  # emitted only when every line decoded
        emit(r, topic=f"out/{r['device']}/{r['sensor']}")
