/*
 * unit_convert: rewrites the reading of a JSON message into another unit.
 *
 * config:  to     target unit (required): C, F, K for temperature; Pa, hPa, kPa, psi, bar
 *                 for pressure. Case does not matter, a leading "°" is allowed.
 * input:   a JSON object with a number `value` and a string `unit`, e.g.
 *          {"device":"d1","sensor":"temperature","value":21.5,"unit":"C"}
 *          Without `unit` the unit follows from `sensor`: temperature is °C and pressure is
 *          hPa, the units of frame_decoder's output.
 * output:  the same object, every member kept in its order, with `value` converted and
 *          `unit` set to the target (appended when the input had none):
 *          {"device":"d1","sensor":"temperature","value":70.7,"unit":"F"}
 *          Values are written with up to 6 decimals.
 * rejects: not a JSON object, `value` missing or not a number, an unknown unit, or a unit
 *          of another quantity than the target (e.g. hPa to F).
 * init fails with 1 when `to` is missing, 2 when it is not a known unit.
 */
#include "iotwasm.h"

enum quantity { NONE, TEMPERATURE, PRESSURE };

typedef struct unit {
    const char *name;      /* canonical spelling, written to the output */
    enum quantity q;
    /* base = value * scale + offset; base is °C for temperature and Pa for pressure */
    double scale, offset;
} unit;

static const unit units[] = {
    {"C", TEMPERATURE, 1.0, 0.0},
    {"F", TEMPERATURE, 5.0 / 9.0, -32.0 * 5.0 / 9.0},
    {"K", TEMPERATURE, 1.0, -273.15},
    {"Pa", PRESSURE, 1.0, 0.0},
    {"hPa", PRESSURE, 100.0, 0.0},
    {"kPa", PRESSURE, 1000.0, 0.0},
    {"psi", PRESSURE, 6894.757293168361, 0.0},
    {"bar", PRESSURE, 100000.0, 0.0},
};

static const unit *target;

static const unit *find_unit(const char *s, uint32_t n) {
    if (n >= 2 && (uint8_t)s[0] == 0xC2 && (uint8_t)s[1] == 0xB0) {   /* "°" in UTF-8 */
        s += 2;
        n -= 2;
    }
    for (uint32_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (iot_span_ieq(s, n, units[i].name)) return &units[i];
    return 0;
}

static int init(void) {
    char to[16];
    int32_t n = iot_config_string("to", to, sizeof to);
    if (n < 0) return 1;
    if ((uint32_t)n > sizeof to || !(target = find_unit(to, (uint32_t)n))) return 2;
    return 0;
}

/* Unchanged when the units are equal; otherwise through the base unit, which costs an ulp or
 * two, far below the 6 decimals written. */
static double convert(double v, const unit *from, const unit *to) {
    if (from == to) return v;
    if (to->q == TEMPERATURE && from->q == TEMPERATURE) {
        double c = v * from->scale + from->offset;
        return (c - to->offset) / to->scale;
    }
    return v * (from->scale / to->scale);
}

static int reject2(iot_out *out, const char *a, const char *s, uint32_t n, const char *b) {
    char text[160];
    iot_buf t;
    iot_buf_init(&t, text, sizeof text);
    iot_buf_str(&t, a);
    iot_buf_put(&t, s, n > 64 ? 64 : n);
    iot_buf_str(&t, b);
    return iot_reject(out, t.data, t.len);
}

static int handle(const iot_msg *in, iot_out *out) {
    iot_json_iter it;
    iot_json_field f;
    double value = 0;
    int have_value = 0, have_unit = 0, r;
    const char *sensor = 0;
    uint32_t sensor_len = 0;
    const unit *from = 0;

    if (!iot_json_iter_init(&it, in->payload, in->payload_len))
        return iot_reject_str(out, "payload is not a JSON object");
    while ((r = iot_json_next(&it, &f)) == 1) {
        if (iot_span_eq(f.key, f.key_len, "value")) {
            have_value = iot_parse_double(f.val, f.val_len, &value) == f.val_len;
        } else if (iot_span_eq(f.key, f.key_len, "unit")) {
            if (f.val[0] != '"') return iot_reject_str(out, "unit is not a string");
            have_unit = 1;
            if (!(from = find_unit(f.val + 1, f.val_len - 2)))
                return reject2(out, "unknown unit \"", f.val + 1, f.val_len - 2, "\"");
        } else if (iot_span_eq(f.key, f.key_len, "sensor") && f.val[0] == '"') {
            sensor = f.val + 1;
            sensor_len = f.val_len - 2;
        }
    }
    if (r < 0) return iot_reject_str(out, "payload is not a well-formed JSON object");
    if (!have_value) return iot_reject_str(out, "value missing or not a number");
    if (!from) {
        if (sensor && iot_span_eq(sensor, sensor_len, "temperature")) from = &units[0];
        else if (sensor && iot_span_eq(sensor, sensor_len, "pressure")) from = &units[4];
        else if (sensor) return reject2(out, "no unit given and sensor \"", sensor, sensor_len,
                                        "\" has no default unit");
        else return iot_reject_str(out, "no unit and no sensor given");
    }
    if (from->q != target->q) {
        char text[64];
        iot_buf t;
        iot_buf_init(&t, text, sizeof text);
        iot_buf_str(&t, "cannot convert ");
        iot_buf_str(&t, from->name);
        iot_buf_str(&t, " to ");
        iot_buf_str(&t, target->name);
        return iot_reject(out, t.data, t.len);
    }
    double converted = convert(value, from, target);

    /* Second pass, writing straight into the output buffer: every member is copied as it
     * was, except the two this module owns. */
    iot_buf b;
    if (iot_emit_begin(out, 0, 0, &b)) return IOT_OUTPUT_FULL;
    iot_buf_char(&b, '{');
    iot_json_iter_init(&it, in->payload, in->payload_len);
    while (iot_json_next(&it, &f) == 1) {
        iot_buf_key_n(&b, f.key, f.key_len);
        if (iot_span_eq(f.key, f.key_len, "value")) iot_buf_double(&b, converted);
        else if (iot_span_eq(f.key, f.key_len, "unit")) iot_buf_json_str(&b, target->name, iot_strlen(target->name));
        else iot_buf_put(&b, f.val, f.val_len);
    }
    if (!have_unit) iot_buf_field_str(&b, "unit", target->name, iot_strlen(target->name));
    iot_buf_char(&b, '}');
    return iot_emit_end(out, &b);
}

IOT_MODULE_WITH_INIT(handle, init)
