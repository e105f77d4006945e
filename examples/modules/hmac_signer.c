/*
 * hmac_signer: signs JSON messages with HMAC-SHA256 so receivers can check their origin.
 *
 * config:  key    the HMAC key (required), its bytes as given, up to 1024
 * input:   a JSON object
 * output:  the same bytes with ,"sig":"<64 hex digits>" inserted before the final '}'
 *          ("sig":"..." alone for an empty object). The signature is over the original
 *          payload bytes, exactly as received: a receiver removes the sig member it was
 *          given (the 73 or 72 bytes before the '}') and recomputes.
 * rejects: a payload that is not one well-formed JSON object, or that has a sig member
 *          already (a second one would make the document ambiguous).
 * init fails with 1 when key is missing or empty, 2 when it is longer than 1024 bytes.
 */
#include "iotwasm.h"
#include "sha256.h"

static hmac_sha256_key key;

static int init(void) {
    static char raw[1024];
    int32_t n = iot_config_string("key", raw, sizeof raw);
    if (n <= 0) return 1;
    if ((uint32_t)n > sizeof raw) return 2;
    hmac_sha256_setkey(&key, raw, (uint32_t)n);
    memset(raw, 0, sizeof raw);   /* only the derived pads need to stay in memory */
    return 0;
}

static int handle(const iot_msg *in, iot_out *out) {
    const uint8_t *p = in->payload;
    uint32_t len = in->payload_len;
    iot_json_iter it;
    iot_json_field f;
    int r, members = 0;

    if (!iot_json_iter_init(&it, p, len)) return iot_reject_str(out, "payload is not a JSON object");
    while ((r = iot_json_next(&it, &f)) == 1) {
        if (iot_span_eq(f.key, f.key_len, "sig")) return iot_reject_str(out, "payload already has a sig member");
        members++;
    }
    uint32_t end = it.pos;   /* just past the closing '}' */
    while (end < len && (p[end] == ' ' || p[end] == '\t' || p[end] == '\r' || p[end] == '\n')) end++;
    if (r < 0 || end != len) return iot_reject_str(out, "payload is not a well-formed JSON object");

    uint8_t mac[32];
    hmac_sha256(&key, p, len, mac);

    uint32_t close = it.pos - 1;
    iot_buf b;
    if (iot_emit_begin(out, 0, 0, &b)) return IOT_OUTPUT_FULL;
    iot_buf_put(&b, p, close);
    iot_buf_str(&b, members ? ",\"sig\":\"" : "\"sig\":\"");
    iot_buf_hex(&b, mac, sizeof mac);
    iot_buf_char(&b, '"');
    iot_buf_put(&b, p + close, len - close);
    return iot_emit_end(out, &b);
}

IOT_MODULE_WITH_INIT(handle, init)
