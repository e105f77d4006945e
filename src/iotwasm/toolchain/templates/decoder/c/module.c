/* {{name}}: decodes the 12-byte frames of the simulated sensors into JSON, on the topic
 * sensors/<device>/<sensor>. Frame, little-endian: magic 0xA5, version 1, device u16, seq u16,
 * sensor type u8, flags u8, value*100 i16, battery u8, CRC-8 (poly 0x07) of bytes 0-10. */
#include "iotwasm.h"

static const char *const sensors[] = {"unknown", "temperature", "humidity", "vibration", "pressure"};

static uint8_t crc8(const uint8_t *p, uint32_t n) {
    uint8_t crc = 0;
    for (uint32_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (uint8_t)(crc & 0x80 ? (crc << 1) ^ 0x07 : crc << 1);
    }
    return crc;
}

static int init(void) {
    iot_log_str(IOT_LOG_INFO, "decoder ready");
    return 0;
}

static int handle(const iot_msg *in, iot_out *out) {
    const uint8_t *p = in->payload;
    char text[64], topic[64];
    iot_buf t;
    if (in->payload_len != 12) {
        iot_buf_init(&t, text, sizeof text);
        iot_buf_str(&t, "frame is ");
        iot_buf_u64(&t, in->payload_len);
        iot_buf_str(&t, " bytes, expected 12");
        return iot_reject(out, t.data, t.len);
    }
    if (crc8(p, 11) != p[11]) return iot_reject_str(out, "bad CRC");
    if (p[0] != 0xA5 || p[1] != 1) return iot_reject_str(out, "bad magic or version");
    uint32_t device = p[2] | p[3] << 8, seq = p[4] | p[5] << 8;
    const char *sensor = sensors[p[6] <= 4 ? p[6] : 0];
    int16_t value = (int16_t)(p[8] | p[9] << 8);

    iot_buf_init(&t, topic, sizeof topic);
    iot_buf_str(&t, "sensors/dev-");
    iot_buf_u64_pad(&t, device, 4);
    iot_buf_char(&t, '/');
    iot_buf_str(&t, sensor);

    iot_buf b;
    if (iot_emit_begin(out, t.data, t.len, &b)) return IOT_OUTPUT_FULL;
    iot_buf_str(&b, "{\"device\":\"dev-");
    iot_buf_u64_pad(&b, device, 4);
    iot_buf_char(&b, '"');
    iot_buf_field_int(&b, "seq", seq);
    iot_buf_field_str(&b, "sensor", sensor, iot_strlen(sensor));
    iot_buf_field_num(&b, "value", value / 100.0);
    iot_buf_field_int(&b, "battery", p[10]);
    iot_buf_char(&b, '}');
    return iot_emit_end(out, &b);
}

IOT_MODULE_WITH_INIT(handle, init)
