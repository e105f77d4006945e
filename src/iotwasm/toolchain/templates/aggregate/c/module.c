/* {{name}}: per device, collects `window` readings (config, default 10) of "value" and then
 * emits their count, mean, min and max. The sums live in the instance's memory: a replaced
 * instance (after a trap or a restart) starts over, and each replica sees only its share. */
#include "iotwasm.h"

#define MAX_DEVICES 256
#define MAX_ID 64

typedef struct acc {
    char id[MAX_ID];
    uint32_t id_len, n;
    double sum, min, max;
} acc;

static acc accs[MAX_DEVICES];
static uint32_t used;
static double window = 10;

static int init(void) {
    if (iot_config_number("window", &window) < 0 || window < 1) return 1;
    iot_log_str(IOT_LOG_INFO, "aggregate ready");
    return 0;
}

static acc *find(const char *id, uint32_t len) {
    for (uint32_t i = 0; i < used; i++)
        if (accs[i].id_len == len && memcmp(accs[i].id, id, len) == 0) return &accs[i];
    if (used == MAX_DEVICES || len > MAX_ID) return 0;
    acc *a = &accs[used++];
    memcpy(a->id, id, len);
    a->id_len = len;
    a->n = 0;
    return a;
}

static int handle(const iot_msg *in, iot_out *out) {
    const char *id;
    uint32_t id_len;
    double v;
    if (!iot_json_string(in->payload, in->payload_len, "device", &id, &id_len))
        return iot_reject_str(out, "\"device\" missing or not a string");
    if (!iot_json_number(in->payload, in->payload_len, "value", &v))
        return iot_reject_str(out, "\"value\" missing or not a number");
    acc *a = find(id, id_len);
    if (!a) return iot_reject_str(out, "too many devices");
    /* updated on copies: an input whose output does not fit is redone from the start, and
     * must not be counted twice */
    uint32_t n = a->n + 1;
    double sum = a->n ? a->sum + v : v;
    double min = a->n && a->min < v ? a->min : v, max = a->n && a->max > v ? a->max : v;
    if (n < window) {
        a->n = n, a->sum = sum, a->min = min, a->max = max;
        return IOT_OK;
    }
    iot_buf b;
    if (iot_emit_begin(out, 0, 0, &b)) return IOT_OUTPUT_FULL;
    iot_buf_char(&b, '{');
    iot_buf_field_raw_str(&b, "device", a->id, a->id_len);
    iot_buf_field_int(&b, "count", n);
    iot_buf_field_num(&b, "mean", sum / n);
    iot_buf_field_num(&b, "min", min);
    iot_buf_field_num(&b, "max", max);
    iot_buf_char(&b, '}');
    int rc = iot_emit_end(out, &b);
    if (rc == IOT_OK) a->n = 0;
    return rc;
}

IOT_MODULE_WITH_INIT(handle, init)
