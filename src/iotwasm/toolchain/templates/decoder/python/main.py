"""{{name}}: decodes the 12-byte frames of the simulated sensors into JSON, on the topic
sensors/<device>/<sensor>. Frame, little-endian: magic 0xA5, version 1, device u16, seq u16,
sensor type u8, flags u8, value*100 i16, battery u8, CRC-8 (poly 0x07) of bytes 0-10."""

from iotwasm_sdk import emit, format_number, handler, log, reject, setup

SENSORS = ("unknown", "temperature", "humidity", "vibration", "pressure")


def crc8(data):
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


@setup
def ready():
    log.info("decoder ready")


@handler
def handle(msg):
    p = msg.data
    if len(p) != 12:
        reject(f"frame is {len(p)} bytes, expected 12")
    if crc8(p[:11]) != p[11]:
        reject("bad CRC")
    if p[0] != 0xA5 or p[1] != 1:
        reject("bad magic or version")
    device = f"dev-{p[2] | p[3] << 8:04d}"
    seq = p[4] | p[5] << 8
    sensor = SENSORS[p[6] if p[6] <= 4 else 0]
    value = int.from_bytes(p[8:10], "little", signed=True) / 100.0
    emit(f'{{"device":"{device}","seq":{seq},"sensor":"{sensor}",'
         f'"value":{format_number(value)},"battery":{p[10]}}}',
         topic=f"sensors/{device}/{sensor}")
