/*
 * range_filter: passes a JSON message on when one of its numbers lies in [min, max].
 *
 * config (all optional; reading them needs capability `config`):
 *   field   member to test, default "value"
 *   min     lower bound, inclusive, default -inf
 *   max     upper bound, inclusive, default +inf
 * input:   a JSON object, e.g. {"device":"d1","value":21.5}
 * output:  the input payload unchanged on the default topic, or nothing when out of range.
 *          A payload that is not a JSON object, lacks the field or holds no number there
 *          (or NaN) is dead-lettered with the reason.
 * init fails with 1 when min or max is not a number, 2 when field is longer than 64 bytes,
 * 3 when min > max.
 */
#include "iotwasm.h"

static char field[65] = "value";
static double lo = -__builtin_inf();
static double hi = __builtin_inf();

static int init(void) {
    /* config is read once per instance here: a host call per message would cost more than
     * the comparison itself */
    if (iot_config_number("min", &lo) < 0 || iot_config_number("max", &hi) < 0) return 1;
    /* absent leaves the default in place; too long copies nothing */
    if (iot_config_string("field", field, sizeof field) >= (int32_t)sizeof field) return 2;
    if (lo > hi) return 3;
    return 0;
}

static int reject_field(iot_out *out, const char *what) {
    char text[128];
    iot_buf b;
    iot_buf_init(&b, text, sizeof text);
    iot_buf_str(&b, "field \"");
    iot_buf_str(&b, field);
    iot_buf_str(&b, what);
    return iot_reject(out, b.data, b.len);
}

static int handle(const iot_msg *in, iot_out *out) {
    iot_json_field f;
    int found = iot_json_find(in->payload, in->payload_len, field, &f);
    if (found < 0) return iot_reject_str(out, "payload is not a JSON object");
    if (found == 0) return reject_field(out, "\" missing");
    double v;
    if (iot_parse_double(f.val, f.val_len, &v) != f.val_len) return reject_field(out, "\" is not a number");
    if (v != v) return reject_field(out, "\" is NaN");
    if (v < lo || v > hi) return IOT_OK;   /* dropped: no output at all */
    return iot_emit(out, 0, 0, in->payload, in->payload_len);
}

IOT_MODULE_WITH_INIT(handle, init)
