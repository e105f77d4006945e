/* {{name}}: passes a JSON message on when its "value" lies in [min, max] (config). */
#include "iotwasm.h"

static double lo = -__builtin_inf(), hi = __builtin_inf();

static int init(void) {
    /* config is read once per instance; 1 refuses to start: the node reports it */
    if (iot_config_number("min", &lo) < 0 || iot_config_number("max", &hi) < 0) return 1;
    iot_log_str(IOT_LOG_INFO, "filter ready");
    return 0;
}

static int handle(const iot_msg *in, iot_out *out) {
    iot_json_field f;
    if (iot_json_find(in->payload, in->payload_len, "value", &f) < 0)
        return iot_reject_str(out, "payload is not a JSON object");
    double v;
    if (!iot_json_number(in->payload, in->payload_len, "value", &v))
        return iot_reject_str(out, "\"value\" missing or not a number");
    if (v < lo || v > hi) return IOT_OK;   /* dropped */
    return iot_emit(out, 0, 0, in->payload, in->payload_len);
}

IOT_MODULE_WITH_INIT(handle, init)
