/* {{name}}: rewrites "value" as value * scale + offset (config), keeping the other members. */
#include "iotwasm.h"

static double scale = 1, offset = 0;

static int init(void) {
    if (iot_config_number("scale", &scale) < 0 || iot_config_number("offset", &offset) < 0) return 1;
    iot_log_str(IOT_LOG_INFO, "transform ready");
    return 0;
}

static int handle(const iot_msg *in, iot_out *out) {
    iot_json_iter it;
    iot_json_field f;
    if (!iot_json_iter_init(&it, in->payload, in->payload_len))
        return iot_reject_str(out, "payload is not a JSON object");
    double v;
    if (!iot_json_number(in->payload, in->payload_len, "value", &v))
        return iot_reject_str(out, "\"value\" missing or not a number");

    /* the output is built in place in the output buffer: members in their order */
    iot_buf b;
    if (iot_emit_begin(out, 0, 0, &b)) return IOT_OUTPUT_FULL;
    iot_buf_char(&b, '{');
    while (iot_json_next(&it, &f) == 1) {
        iot_buf_key_n(&b, f.key, f.key_len);
        if (iot_span_eq(f.key, f.key_len, "value")) iot_buf_double(&b, v * scale + offset);
        else iot_buf_put(&b, f.val, f.val_len);
    }
    iot_buf_char(&b, '}');
    return iot_emit_end(out, &b);
}

IOT_MODULE_WITH_INIT(handle, init)
