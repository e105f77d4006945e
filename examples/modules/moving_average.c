/*
 * moving_average: per-device moving average over the last N readings.
 *
 * config:  window  N, 1..64, default 5
 *          field   number to average, default "value"
 * input:   a JSON object with that number; the device is its string member `device`, or the
 *          message topic when there is none: {"device":"d1","value":21.5}
 * output:  one object per input on the default topic, with the average over the last n
 *          readings of that device (n grows up to N) and the reading itself:
 *          {"device":"d1","avg":21.25,"n":2,"value":21.5}
 * rejects: not a JSON object, no number in the field, a device id over 64 bytes, or a 257th
 *          device (the table holds 256).
 * init fails with 1 when window is not a whole number in 1..64, 2 when field is too long.
 *
 * State lives in the instance's memory. It is lost when the instance is replaced (after a
 * trap elsewhere in the batch, or a restart), and each replica of a container averages only
 * the messages it saw: route a device to one replica, or keep the window in kv, if that
 * matters.
 */
#include "iotwasm.h"

#define MAX_WINDOW 64
#define MAX_DEVICES 256
#define MAX_ID 64
#define SLOTS 512   /* open addressing stays fast when at most half the slots are taken */

typedef struct device {
    uint32_t id_len;        /* 0: free slot */
    uint32_t count;         /* readings seen, saturating at the window */
    uint32_t next;          /* ring position of the next reading */
    int id_escaped;         /* id came from JSON (already escaped) rather than a topic */
    char id[MAX_ID];
    double ring[MAX_WINDOW];
} device;

static device table[SLOTS];
static uint32_t devices;
static uint32_t window = 5;
static char field[65] = "value";

static int init(void) {
    double w = 5;
    /* range first: converting an out-of-range double to an integer is undefined */
    if (iot_config_number("window", &w) < 0 || !(w >= 1 && w <= MAX_WINDOW) || w != (double)(uint32_t)w)
        return 1;
    window = (uint32_t)w;
    if (iot_config_string("field", field, sizeof field) >= (int32_t)sizeof field) return 2;
    return 0;
}

static uint32_t hash(const char *s, uint32_t n) {   /* FNV-1a */
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* Finds or creates the device's slot; 0 when the table is full. */
static device *lookup(const char *id, uint32_t n, int escaped) {
    for (uint32_t i = hash(id, n) & (SLOTS - 1);; i = (i + 1) & (SLOTS - 1)) {
        device *d = &table[i];
        if (d->id_len == 0) {
            if (devices == MAX_DEVICES) return 0;
            devices++;
            d->id_len = n;
            d->id_escaped = escaped;
            memcpy(d->id, id, n);
            return d;
        }
        if (d->id_len == n && memcmp(d->id, id, n) == 0) return d;
    }
}

static int handle(const iot_msg *in, iot_out *out) {
    double v;
    if (!iot_json_number(in->payload, in->payload_len, field, &v)) {
        char text[128];
        iot_buf t;
        iot_buf_init(&t, text, sizeof text);
        iot_buf_str(&t, "no number in field \"");
        iot_buf_str(&t, field);
        iot_buf_str(&t, "\" of a JSON object");
        return iot_reject(out, t.data, t.len);
    }
    const char *id = in->topic;
    uint32_t id_len = in->topic_len;
    int escaped = iot_json_string(in->payload, in->payload_len, "device", &id, &id_len);
    if (id_len == 0 || id_len > MAX_ID) return iot_reject_str(out, "device id empty or over 64 bytes");
    device *d = lookup(id, id_len, escaped);
    if (!d) return iot_reject_str(out, "device table full (256 devices)");

    /* Emit first: if the output is full this input is redone on the next call, and it must
     * not be counted twice. */
    double sum = v;
    uint32_t n = d->count < window ? d->count + 1 : window;
    for (uint32_t k = 1; k < n; k++) sum += d->ring[(d->next + MAX_WINDOW - k) % MAX_WINDOW];

    iot_buf b;
    if (iot_emit_begin(out, 0, 0, &b)) return IOT_OUTPUT_FULL;
    iot_buf_char(&b, '{');
    iot_buf_key(&b, "device");
    if (d->id_escaped) iot_buf_json_raw_str(&b, d->id, d->id_len);
    else iot_buf_json_str(&b, d->id, d->id_len);
    iot_buf_field_num(&b, "avg", sum / n);
    iot_buf_field_int(&b, "n", n);
    iot_buf_field_num(&b, "value", v);
    iot_buf_char(&b, '}');
    int rc = iot_emit_end(out, &b);
    if (rc != IOT_OK) return rc;

    d->ring[d->next] = v;
    d->next = (d->next + 1) % MAX_WINDOW;
    d->count = n;
    return IOT_OK;
}

IOT_MODULE_WITH_INIT(handle, init)
