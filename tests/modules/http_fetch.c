/*
 * http_fetch: makes the HTTP request its input describes, through iot_http_request
 * (capability `http`), and reports what came back.
 *
 * input:   a request as iot_http_request takes it: "METHOD URL\n", header lines, an empty
 *          line and the body (e.g. "GET http://127.0.0.1:8080/a\n\n")
 * output:  "<status> <body length> <body>" (the body cut at 4 KiB), or
 *          "error <code>" for IOT_HTTP_FAILED / IOT_HTTP_TOO_LARGE / IOT_HTTP_TIMEOUT.
 *          A URL outside the allow-list traps in the host: the input is dead-lettered.
 */
#include "iotwasm.h"

static uint8_t resp[4 + 4096];
static char text[4096 + 64];

static int handle(const iot_msg *in, iot_out *out) {
    int32_t n = iot_http_request(in->payload, in->payload_len, resp, sizeof resp);
    iot_buf b;
    iot_buf_init(&b, text, sizeof text);
    if (n < 0) {
        iot_buf_str(&b, "error ");
        iot_buf_i64(&b, n);
    } else {
        uint32_t status = resp[0] | (uint32_t)resp[1] << 8 | (uint32_t)resp[2] << 16 | (uint32_t)resp[3] << 24;
        uint32_t kept = (uint32_t)n < sizeof resp - 4 ? (uint32_t)n : sizeof resp - 4;
        iot_buf_u64(&b, status);
        iot_buf_char(&b, ' ');
        iot_buf_u64(&b, (uint64_t)n);
        iot_buf_char(&b, ' ');
        iot_buf_put(&b, resp + 4, kept);
    }
    return iot_emit(out, NULL, 0, b.data, b.len);
}

IOT_MODULE(handle)
