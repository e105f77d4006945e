/*
 * frame_decoder: decodes the packed binary frames constrained sensors send into JSON.
 *
 * Frame, 12 bytes, little-endian (the format src/iotwasm/sensors.py produces):
 *
 *   offset size field
 *   0      1    magic       0xA5
 *   1      1    version     1
 *   2      2    device_id   u16
 *   4      2    seq         u16, wraps around
 *   6      1    sensor_type 1 temperature (°C), 2 humidity (%), 3 vibration (mm/s),
 *                           4 pressure (hPa); anything else decodes as "unknown"
 *   7      1    flags       reserved, not decoded
 *   8      2    value       i16, the reading × 100
 *   10     1    battery     %
 *   11     1    crc         CRC-8, polynomial 0x07, initial value 0, over bytes 0..10
 *
 * input:   a payload of one frame, or several frames back to back (a gateway batching its
 *          radio packets): one output per frame.
 * output:  {"device":"dev-0007","seq":42,"sensor":"temperature","value":21.53,"battery":87}
 *          on topic sensors/dev-0007/temperature.
 * rejects: a payload that is empty or not a multiple of 12 bytes, a bad CRC, magic or
 *          version. Every frame is checked before anything is emitted, so a payload is
 *          either decoded completely or dead-lettered completely.
 * No config and no host functions: the module imports nothing.
 */
#include "iotwasm.h"

#define FRAME 12

static const char *const sensor_names[] = {"unknown", "temperature", "humidity", "vibration", "pressure"};

/* CRC-8, polynomial 0x07, initial value 0. Bit by bit: 11 bytes per frame do not justify
 * a lookup table. */
static uint8_t crc8(const uint8_t *p, uint32_t n) {
    uint8_t c = 0;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = (uint8_t)((c & 0x80) ? (c << 1) ^ 0x07 : c << 1);
    }
    return c;
}

static uint16_t u16le(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Error text for one frame, or 0 when it is good. Checked in the order of the reference
 * decoder in sensors.py: CRC first, so a corrupted magic byte reads as the corruption it is. */
static int check(const uint8_t *f, iot_buf *why) {
    uint8_t crc = crc8(f, FRAME - 1);
    if (crc != f[FRAME - 1]) {
        iot_buf_str(why, "bad CRC: frame says 0x");
        iot_buf_hex(why, &f[FRAME - 1], 1);
        iot_buf_str(why, ", computed 0x");
        iot_buf_hex(why, &crc, 1);
        return 1;
    }
    if (f[0] != 0xA5) {
        iot_buf_str(why, "bad magic 0x");
        iot_buf_hex(why, &f[0], 1);
        iot_buf_str(why, " (expected 0xa5)");
        return 1;
    }
    if (f[1] != 1) {
        iot_buf_str(why, "unsupported frame version ");
        iot_buf_u64(why, f[1]);
        iot_buf_str(why, " (expected 1)");
        return 1;
    }
    return 0;
}

static int handle(const iot_msg *in, iot_out *out) {
    const uint8_t *p = in->payload;
    uint32_t len = in->payload_len;
    char text[128];
    iot_buf why;
    iot_buf_init(&why, text, sizeof text);

    if (len == 0 || len % FRAME) {
        iot_buf_str(&why, "frame is ");
        iot_buf_u64(&why, len);
        iot_buf_str(&why, " bytes, expected 12 (or a multiple of 12 for several frames)");
        return iot_reject(out, why.data, why.len);
    }
    uint32_t frames = len / FRAME;
    for (uint32_t i = 0; i < frames; i++) {
        if (frames > 1) {
            iot_buf_str(&why, "frame ");
            iot_buf_u64(&why, i + 1);
            iot_buf_str(&why, " of ");
            iot_buf_u64(&why, frames);
            iot_buf_str(&why, ": ");
        }
        if (check(p + i * FRAME, &why)) return iot_reject(out, why.data, why.len);
        why.len = 0;
    }

    for (uint32_t i = 0; i < frames; i++) {
        const uint8_t *f = p + i * FRAME;
        const char *sensor = sensor_names[f[6] <= 4 ? f[6] : 0];
        uint16_t dev = u16le(f + 2);

        char topic[48];
        iot_buf t;
        iot_buf_init(&t, topic, sizeof topic);
        iot_buf_str(&t, "sensors/dev-");
        iot_buf_u64_pad(&t, dev, 4);
        iot_buf_char(&t, '/');
        iot_buf_str(&t, sensor);

        iot_buf b;
        if (iot_emit_begin(out, t.data, t.len, &b)) return IOT_OUTPUT_FULL;
        iot_buf_str(&b, "{\"device\":\"dev-");
        iot_buf_u64_pad(&b, dev, 4);
        iot_buf_char(&b, '"');
        iot_buf_field_int(&b, "seq", u16le(f + 4));
        iot_buf_key(&b, "sensor");
        iot_buf_json_str(&b, sensor, iot_strlen(sensor));
        /* the exact quotient, as Python's value / 100 gives it, then written with the usual
         * 6-decimal formatting (which never needs more than 2 here) */
        iot_buf_field_num(&b, "value", (int16_t)u16le(f + 8) / 100.0);
        iot_buf_field_int(&b, "battery", f[10]);
        iot_buf_char(&b, '}');
        int rc = iot_emit_end(out, &b);
        if (rc) return rc;
    }
    return IOT_OK;
}

IOT_MODULE(handle)
