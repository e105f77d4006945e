/*
 * iotwasm.h - single-header C SDK for iotwasm ABI v1 guests (spec: docs/abi.md).
 *
 * Build freestanding, without any libc:
 *
 *     clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -I sdk/c -o m.wasm m.c
 *
 * A module is one callback:
 *
 *     #include "iotwasm.h"
 *
 *     static int handle(const iot_msg *in, iot_out *out) {
 *         return iot_emit(out, NULL, 0, in->payload, in->payload_len);
 *     }
 *     IOT_MODULE(handle)
 *
 * The header defines the exports (memory allocator, batch loop, ABI version) and, because
 * nothing else is linked in, the few memory routines clang expects to exist. Include it from
 * exactly one .c file per module; other .c files of the same module define
 * IOT_NO_IMPLEMENTATION before including it and only get the declarations.
 *
 * Everything besides the exports and the memory routines is `static`, so helpers a module
 * does not use cost nothing, and a host function the module never calls is not even
 * imported: the host links imports by capability, so an unused import would needlessly
 * demand a grant.
 *
 * Contents, in order:
 *   ABI constants and the types a handler sees (iot_msg, iot_out, iot_buf)
 *   host imports             iot_log, iot_now_ms, iot_random_fill, iot_kv_*, iot_config_get,
 *                            iot_metric, iot_http_request, iot_twin_get
 *   memory routines          memcpy, memmove, memset, memcmp
 *   allocator exports        iot_alloc, iot_free (and iot_abi_version)
 *   output records           iot_emit, iot_reject, iot_emit_begin / iot_emit_end
 *   the batch loop           IOT_MODULE(handler), IOT_MODULE_WITH_INIT(handler, init)
 *   numbers                  iot_parse_double
 *   building output          iot_buf_* (bytes, integers, doubles, hex, JSON strings/members)
 *   reading JSON             iot_json_iter_init / iot_json_next, iot_json_find,
 *                            iot_json_number, iot_json_string
 *   config                   iot_config_number, iot_config_string
 */
#ifndef IOTWASM_H
#define IOTWASM_H

/* These two come from clang's own resource directory and need no libc. */
#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "iotwasm.h targets wasm32: compile with clang --target=wasm32"
#endif

/* ---------------------------------------------------------------------------------------
 * ABI constants (docs/abi.md)
 * ------------------------------------------------------------------------------------- */

#define IOT_ABI_VERSION 1

/* iot_process return values; handlers return IOT_OK or a negative code too. */
#define IOT_OK 0
#define IOT_OUTPUT_FULL 1
#define IOT_ERR_FRAMING (-1)
#define IOT_ERR_INTERNAL (-2)

/* Output record kinds. */
#define IOT_KIND_MESSAGE 0u
#define IOT_KIND_ERROR 1u

/* iot_log levels and iot_metric kinds. */
#define IOT_LOG_DEBUG 0
#define IOT_LOG_INFO 1
#define IOT_LOG_WARN 2
#define IOT_LOG_ERROR 3
#define IOT_METRIC_COUNTER 0
#define IOT_METRIC_GAUGE 1

#define IOT_EXPORT(name) __attribute__((export_name(name)))
#define IOT_IMPORT(name) __attribute__((import_module("iot"), import_name(name)))

/* Helpers are static so that the ones a module does not call are dropped by the compiler;
 * `unused` keeps -Wall quiet about them. */
#define IOT_API static __attribute__((unused))

/* Sizes of the framing, in bytes. */
#define IOT_IN_RECORD_HEADER 16u
#define IOT_OUT_HEADER 8u
#define IOT_OUT_RECORD_HEADER 16u

/* ---------------------------------------------------------------------------------------
 * Types a handler sees
 * ------------------------------------------------------------------------------------- */

/* One input message. The pointers point into the host's input buffer: valid only during the
 * handler call, read-only, and neither is NUL-terminated. */
typedef struct iot_msg {
    int64_t timestamp_ms;   /* when the host received it, Unix ms */
    const char *topic;
    uint32_t topic_len;
    const uint8_t *payload;
    uint32_t payload_len;
    uint32_t index;         /* position in the current batch, 0-based */
} iot_msg;

/* The output buffer of the current batch. Handlers only pass it to iot_emit & co. */
typedef struct iot_out {
    uint8_t *base;          /* out_ptr: the 8-byte header, then records */
    uint32_t cap;           /* bytes available for records (out_cap - 8) */
    uint32_t used;          /* bytes of records written so far */
    uint32_t input;         /* index of the input being handled */
    uint32_t input_start;   /* `used` when that input started: where a rollback goes back to */
    uint32_t open;          /* offset of a record opened by iot_emit_begin, else UINT32_MAX */
    int full;               /* a record did not fit: this input will be redone next call */
} iot_out;

/* A byte buffer that never writes past its capacity. Once something did not fit, `overflow`
 * stays set and further writes are ignored, so callers check once at the end instead of
 * after every append. */
typedef struct iot_buf {
    uint8_t *data;
    uint32_t len;
    uint32_t cap;
    int overflow;
} iot_buf;

typedef int (*iot_handler)(const iot_msg *in, iot_out *out);

/* ---------------------------------------------------------------------------------------
 * Host imports (module "iot"). Declared only: clang imports a function only when the module
 * calls it, so a module needs exactly the capabilities of the functions it uses.
 * ------------------------------------------------------------------------------------- */

/* capability log: level IOT_LOG_*. */
IOT_IMPORT("log") void iot_log(int32_t level, const void *text, uint32_t len);
/* capability clock: wall clock, Unix ms. */
IOT_IMPORT("now_ms") int64_t iot_now_ms(void);
/* capability random: cryptographically secure bytes. */
IOT_IMPORT("random_fill") void iot_random_fill(void *buf, uint32_t len);
/* capability kv: value length, -1 when absent; when longer than val_cap nothing is copied
 * and the length is returned, so the caller can retry with a bigger buffer. */
IOT_IMPORT("kv_get") int32_t iot_kv_get(const void *key, uint32_t key_len, void *val, uint32_t val_cap);
/* capability kv: 0, or -1 when the container's kv quota is exceeded. */
IOT_IMPORT("kv_set") int32_t iot_kv_set(const void *key, uint32_t key_len, const void *val, uint32_t val_len);
/* capability kv: 0 deleted, -1 absent. */
IOT_IMPORT("kv_delete") int32_t iot_kv_delete(const void *key, uint32_t key_len);
/* capability config: like iot_kv_get, over the container's read-only config map. */
IOT_IMPORT("config_get") int32_t iot_config_get(const void *key, uint32_t key_len, void *val, uint32_t val_cap);
/* capability metrics: kind IOT_METRIC_COUNTER adds value, IOT_METRIC_GAUGE sets it. */
IOT_IMPORT("metric") void iot_metric(int32_t kind, const void *name, uint32_t name_len, double value);
/* capability http: one request to a URL of the deployment's allow-list. `req` is
 * "METHOD URL\n" then "Name: value\n" lines, an empty line and the body. At `resp` the host
 * writes the status (uint32, little-endian) and the body, cut at resp_cap - 4 bytes; returns
 * the body's full length, or IOT_HTTP_FAILED / IOT_HTTP_TOO_LARGE / IOT_HTTP_TIMEOUT. A URL
 * outside the allow-list traps: that input becomes a dead letter naming the URL and the list. */
IOT_IMPORT("http_request") int32_t iot_http_request(const void *req, uint32_t req_len, void *resp, uint32_t resp_cap);
#define IOT_HTTP_FAILED (-1)
#define IOT_HTTP_TOO_LARGE (-2)
#define IOT_HTTP_TIMEOUT (-3)
/* capability twin: the twin of device `id` in the deployment's namespace, as JSON
 * {"device", "reported", "reported_version", "desired", "desired_version", "delta", "last_seen",
 * "silent"}; like iot_kv_get: its length, -1 when the device is unknown, and nothing copied when
 * it is longer than val_cap. Read it with iot_json_find. */
IOT_IMPORT("twin_get") int32_t iot_twin_get(const void *id, uint32_t id_len, void *val, uint32_t val_cap);

/* ---------------------------------------------------------------------------------------
 * Memory routines. clang turns struct copies and simple loops into calls to these, and with
 * -nostdlib nobody else provides them. `no_builtin` stops clang from recognising the loops
 * below as memcpy/memset and compiling them into calls to themselves. They are weak, so a
 * module that does link a libc uses the libc versions instead.
 * ------------------------------------------------------------------------------------- */

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* wasm allows unaligned access; this type lets C say so without undefined behaviour. */
typedef uint32_t iot__u32u __attribute__((aligned(1)));

#ifndef IOT_NO_IMPLEMENTATION

__attribute__((weak, no_builtin)) void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    /* Word copies matter: payloads are copied once per output record. */
    for (; n >= 4; n -= 4, d += 4, s += 4) *(iot__u32u *)d = *(const iot__u32u *)s;
    while (n--) *d++ = *s++;
    return dst;
}

__attribute__((weak, no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d == s || n == 0) return dst;
    if (d < s || d >= s + n) return memcpy(dst, src, n);
    while (n--) d[n] = s[n];   /* overlapping with dst above src: copy backwards */
    return dst;
}

__attribute__((weak, no_builtin)) void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

__attribute__((weak, no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (; n; n--, x++, y++)
        if (*x != *y) return (int)*x - (int)*y;
    return 0;
}

#endif /* IOT_NO_IMPLEMENTATION */

/* ---------------------------------------------------------------------------------------
 * Small string helpers
 * ------------------------------------------------------------------------------------- */

IOT_API uint32_t iot_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* 1 when the n bytes at p are exactly the C string s. Input fields are length-delimited and
 * literals are NUL-terminated; this compares the two without copying. */
IOT_API int iot_span_eq(const void *p, uint32_t n, const char *s) {
    return iot_strlen(s) == n && memcmp(p, s, n) == 0;
}

/* Same, ignoring ASCII case (unit names such as "hPa" / "HPA"). */
IOT_API int iot_span_ieq(const void *p, uint32_t n, const char *s) {
    const uint8_t *a = (const uint8_t *)p;
    if (iot_strlen(s) != n) return 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t x = a[i], y = (uint8_t)s[i];
        if (x >= 'A' && x <= 'Z') x = (uint8_t)(x + 32);
        if (y >= 'A' && y <= 'Z') y = (uint8_t)(y + 32);
        if (x != y) return 0;
    }
    return 1;
}

IOT_API void iot_log_str(int32_t level, const char *text) { iot_log(level, text, iot_strlen(text)); }

/* ---------------------------------------------------------------------------------------
 * Allocator: the host calls iot_alloc for its input and output buffers; modules may use it
 * for their own data. A bump pointer over __heap_base (the first byte after static data and
 * the stack, placed by the linker) that grows linear memory on demand. Freed blocks go on a
 * short free list; a block freed at the top of the heap lowers the bump pointer instead.
 * Memory is not zeroed on reuse.
 * ------------------------------------------------------------------------------------- */

void *iot_alloc(uint32_t size);
void iot_free(void *ptr, uint32_t size);

#define IOT__ALIGN 16u

#ifndef IOT_NO_IMPLEMENTATION

extern unsigned char __heap_base;

typedef struct iot__free_block {
    uint32_t size;
    struct iot__free_block *next;
} iot__free_block;

static uint32_t iot__heap_top;              /* 0 until the first allocation */
static iot__free_block *iot__free_list;

IOT_EXPORT("iot_alloc") void *iot_alloc(uint32_t size) {
    if (size > 0xFFFFFFFFu - IOT__ALIGN) return 0;
    uint32_t n = size ? (size + IOT__ALIGN - 1) & ~(IOT__ALIGN - 1) : IOT__ALIGN;

    /* Reuse a freed block if it is not more than twice as big as needed: the host frees
     * buffers it outgrew, and handing such a buffer out for a tiny request would pin it. */
    for (iot__free_block **link = &iot__free_list; *link; link = &(*link)->next) {
        iot__free_block *b = *link;
        if (b->size >= n && b->size / 2 <= n) {
            *link = b->next;
            return b;
        }
    }

    if (iot__heap_top == 0)
        iot__heap_top = ((uint32_t)(uintptr_t)&__heap_base + IOT__ALIGN - 1) & ~(IOT__ALIGN - 1);
    uint64_t end = (uint64_t)iot__heap_top + n;
    if (end > 0xFFFFFFFFull) return 0;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uint64_t pages = (end - have + 65535u) / 65536u;
        /* -1 (as size_t) is the only failure: the host's memory limit or the 4 GiB of wasm32 */
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return 0;
    }
    void *p = (void *)(uintptr_t)iot__heap_top;
    iot__heap_top = (uint32_t)end;
    return p;
}

IOT_EXPORT("iot_free") void iot_free(void *ptr, uint32_t size) {
    if (!ptr || size > 0xFFFFFFFFu - IOT__ALIGN) return;
    uint32_t n = size ? (size + IOT__ALIGN - 1) & ~(IOT__ALIGN - 1) : IOT__ALIGN;
    uint32_t at = (uint32_t)(uintptr_t)ptr;
    if (at + n == iot__heap_top) {
        iot__heap_top = at;
        /* blocks that now end at the top can go back to the bump pointer as well */
        for (int again = 1; again;) {
            again = 0;
            for (iot__free_block **link = &iot__free_list; *link; link = &(*link)->next) {
                iot__free_block *b = *link;
                if ((uint32_t)(uintptr_t)b + b->size == iot__heap_top) {
                    iot__heap_top = (uint32_t)(uintptr_t)b;
                    *link = b->next;
                    again = 1;
                    break;
                }
            }
        }
        return;
    }
    iot__free_block *b = (iot__free_block *)ptr;
    b->size = n;
    b->next = iot__free_list;
    iot__free_list = b;
}

IOT_EXPORT("iot_abi_version") int32_t iot_abi_version(void) { return IOT_ABI_VERSION; }

#endif /* IOT_NO_IMPLEMENTATION */

/* ---------------------------------------------------------------------------------------
 * Output records
 * ------------------------------------------------------------------------------------- */

static inline void iot__put32(uint8_t *p, uint32_t v) { *(iot__u32u *)p = v; }
static inline uint32_t iot__get32(const uint8_t *p) { return *(const iot__u32u *)p; }

/* The header is what the host reads after a trap, so it is rewritten after every record
 * rather than once at the end. */
static inline void iot__publish(iot_out *out) { iot__put32(out->base, out->used); }

/* Returns where a record with this topic and payload fits, or marks the output full. Once
 * full, everything else for this input is refused too: this input is redone from the
 * start in the next call, so writing a later, smaller record now would only be rolled back. */
static inline uint8_t *iot__reserve(iot_out *out, uint32_t topic_len, uint32_t payload_len) {
    if (out->full) return 0;
    uint32_t room = out->cap - out->used;
    if (room < IOT_OUT_RECORD_HEADER || topic_len > room - IOT_OUT_RECORD_HEADER ||
        payload_len > room - IOT_OUT_RECORD_HEADER - topic_len) {
        out->full = 1;
        return 0;
    }
    return out->base + IOT_OUT_HEADER + out->used;
}

static inline int iot__record(iot_out *out, uint32_t kind, const void *topic, uint32_t topic_len,
                              const void *payload, uint32_t payload_len) {
    if (out->open != 0xFFFFFFFFu) return IOT_ERR_INTERNAL;   /* inside iot_emit_begin/end */
    uint8_t *r = iot__reserve(out, topic_len, payload_len);
    if (!r) return IOT_OUTPUT_FULL;
    iot__put32(r, out->input);
    iot__put32(r + 4, kind);
    iot__put32(r + 8, topic_len);
    iot__put32(r + 12, payload_len);
    memcpy(r + IOT_OUT_RECORD_HEADER, topic, topic_len);
    memcpy(r + IOT_OUT_RECORD_HEADER + topic_len, payload, payload_len);
    out->used += IOT_OUT_RECORD_HEADER + topic_len + payload_len;
    iot__publish(out);
    return IOT_OK;
}

/* Emits one message for the current input. topic_len 0 (topic may be NULL) means the
 * route's default output topic. Returns IOT_OK, or IOT_OUTPUT_FULL when it did not fit. On
 * IOT_OUTPUT_FULL the handler should return at once (returning that very value is fine): the
 * SDK drops this input's records and the host calls again, with a bigger buffer if needed,
 * starting at this input, which then runs again from the beginning. */
IOT_API int iot_emit(iot_out *out, const void *topic, uint32_t topic_len,
                     const void *payload, uint32_t payload_len) {
    return iot__record(out, IOT_KIND_MESSAGE, topic, topic_len, payload, payload_len);
}

/* Dead-letters the current input with an error text. Messages already emitted for it are
 * kept by the host. Return IOT_OK from the handler afterwards: the batch goes on. */
IOT_API int iot_reject(iot_out *out, const void *msg, uint32_t len) {
    return iot__record(out, IOT_KIND_ERROR, 0, 0, msg, len);
}

IOT_API int iot_reject_str(iot_out *out, const char *msg) {
    return iot_reject(out, msg, iot_strlen(msg));
}

/* Builds a message payload in place in the output buffer, saving the copy iot_emit makes:
 *
 *     iot_buf b;
 *     if (iot_emit_begin(out, topic, topic_len, &b)) return IOT_OUTPUT_FULL;
 *     ... iot_buf_* / iot_buf_field_* into b ...
 *     return iot_emit_end(out, &b);
 *
 * `b` spans all of the remaining room; if the payload outgrows it, iot_emit_end reports
 * IOT_OUTPUT_FULL exactly like iot_emit. No other record may be written in between (iot_emit
 * and iot_reject return IOT_ERR_INTERNAL then). */
IOT_API int iot_emit_begin(iot_out *out, const void *topic, uint32_t topic_len, iot_buf *payload) {
    payload->len = 0;
    payload->overflow = 1;   /* writes into a refused payload are ignored */
    payload->data = 0;
    payload->cap = 0;
    if (out->open != 0xFFFFFFFFu) return IOT_ERR_INTERNAL;
    uint8_t *r = iot__reserve(out, topic_len, 0);
    if (!r) return IOT_OUTPUT_FULL;
    iot__put32(r, out->input);
    iot__put32(r + 4, IOT_KIND_MESSAGE);
    iot__put32(r + 8, topic_len);
    memcpy(r + IOT_OUT_RECORD_HEADER, topic, topic_len);
    payload->data = r + IOT_OUT_RECORD_HEADER + topic_len;
    payload->cap = out->cap - out->used - IOT_OUT_RECORD_HEADER - topic_len;
    payload->overflow = 0;
    out->open = out->used;
    return IOT_OK;
}

IOT_API int iot_emit_end(iot_out *out, iot_buf *payload) {
    if (out->open == 0xFFFFFFFFu) return out->full ? IOT_OUTPUT_FULL : IOT_ERR_INTERNAL;
    uint8_t *r = out->base + IOT_OUT_HEADER + out->open;
    out->open = 0xFFFFFFFFu;
    if (payload->overflow) {
        out->full = 1;
        return IOT_OUTPUT_FULL;
    }
    iot__put32(r + 12, payload->len);
    out->used += IOT_OUT_RECORD_HEADER + iot__get32(r + 8) + payload->len;
    iot__publish(out);
    return IOT_OK;
}

/* ---------------------------------------------------------------------------------------
 * The batch loop behind iot_process (docs/abi.md §2-3)
 * ------------------------------------------------------------------------------------- */

/* Inlined into each module's iot_process, so the handler call is a direct call. */
static inline __attribute__((always_inline)) int32_t
iot_process_batch(const uint8_t *in, uint32_t in_len, uint32_t count,
                  uint8_t *out_base, uint32_t out_cap, iot_handler handler) {
    /* Without room for the header there is no way to report anything. */
    if (out_cap < IOT_OUT_HEADER) return IOT_ERR_INTERNAL;
    iot_out out;
    out.base = out_base;
    out.cap = out_cap - IOT_OUT_HEADER;
    out.used = 0;
    out.open = 0xFFFFFFFFu;
    out.full = 0;
    iot__put32(out_base, 0);
    iot__put32(out_base + 4, 0);

    uint32_t pos = 0;
    for (uint32_t i = 0; i < count; i++) {
        /* The host frames the input, but a bad frame must fail cleanly, never read past it. */
        if (in_len - pos < IOT_IN_RECORD_HEADER) return IOT_ERR_FRAMING;
        const uint8_t *rec = in + pos;
        uint32_t topic_len = iot__get32(rec + 8);
        uint32_t payload_len = iot__get32(rec + 12);
        uint32_t rest = in_len - pos - IOT_IN_RECORD_HEADER;
        if (topic_len > rest || payload_len > rest - topic_len) return IOT_ERR_FRAMING;

        iot_msg msg;
        msg.timestamp_ms = (int64_t)((uint64_t)iot__get32(rec) | (uint64_t)iot__get32(rec + 4) << 32);
        msg.topic = (const char *)rec + IOT_IN_RECORD_HEADER;
        msg.topic_len = topic_len;
        msg.payload = rec + IOT_IN_RECORD_HEADER + topic_len;
        msg.payload_len = payload_len;
        msg.index = i;
        pos += IOT_IN_RECORD_HEADER + topic_len + payload_len;

        out.input = i;
        out.input_start = out.used;
        int rc = handler(&msg, &out);
        out.open = 0xFFFFFFFFu;   /* a begin without end never reached `used`: dropped */

        /* The whole input is redone on the next call, so its records must not be delivered
         * now as well: roll `used` back to where the input started. The same holds when the
         * handler gives up: the host dead-letters this input and keeps only earlier ones. */
        if (out.full) {
            out.used = out.input_start;
            iot__publish(&out);
            return IOT_OUTPUT_FULL;
        }
        if (rc < 0) {
            out.used = out.input_start;
            iot__publish(&out);
            return rc;
        }
        iot__put32(out_base + 4, i + 1);
    }
    return IOT_OK;
}

/* Defines the iot_process export for a handler `int handler(const iot_msg *, iot_out *)`.
 * The handler returns IOT_OK (or whatever iot_emit returned) when the input is done, or a
 * negative value to give up on it: the host then dead-letters that input and continues the
 * batch on a fresh instance. */
#define IOT_MODULE(handler)                                                                  \
    IOT_EXPORT("iot_process") int32_t iot_process(const uint8_t *in_ptr, uint32_t in_len,    \
                                                  uint32_t count, uint8_t *out_ptr,          \
                                                  uint32_t out_cap) {                        \
        return iot_process_batch(in_ptr, in_len, count, out_ptr, out_cap, handler);          \
    }

/* Also exports iot_init, which the host calls once per fresh instance before any batch.
 * `int init(void)` returns 0, or non-zero to refuse to start (the container reports
 * "iot_init returned N"), e.g. when a required config key is missing. */
#define IOT_MODULE_WITH_INIT(handler, init)                                                  \
    IOT_MODULE(handler)                                                                      \
    IOT_EXPORT("iot_init") int32_t iot_init(void) { return (int32_t)init(); }

/* ---------------------------------------------------------------------------------------
 * Numbers: parsing and formatting without libc
 * ------------------------------------------------------------------------------------- */

static inline uint8_t iot__lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

IOT_API int iot__prefix_ieq(const uint8_t *p, uint32_t n, const char *word) {
    uint32_t k = iot_strlen(word);
    if (n < k) return 0;
    for (uint32_t i = 0; i < k; i++)
        if (iot__lower(p[i]) != (uint8_t)word[i]) return 0;
    return 1;
}

/* Parses a decimal number at the start of s: optional sign, digits, fraction, exponent
 * (JSON syntax plus a leading '+'), or inf / infinity / nan in any case (Python's json
 * module writes Infinity and NaN). Returns the number of bytes consumed, 0 when s does not
 * start with a number.
 *
 * Exact (correctly rounded) for up to 15 significant digits with exponents within ±22,
 * which covers sensor readings; beyond that it is accurate to a few ulps. */
IOT_API uint32_t iot_parse_double(const void *str, uint32_t len, double *out) {
    /* exactly representable, so one multiplication or division rounds only once */
    static const double pow10[23] = {
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    };
    const uint8_t *s = (const uint8_t *)str;
    uint32_t i = 0;
    int neg = 0;
    if (i < len && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';

    if (i < len && (iot__lower(s[i]) == 'i' || iot__lower(s[i]) == 'n')) {
        double v;
        if (iot__prefix_ieq(s + i, len - i, "infinity")) { i += 8; v = __builtin_inf(); }
        else if (iot__prefix_ieq(s + i, len - i, "inf")) { i += 3; v = __builtin_inf(); }
        else if (iot__prefix_ieq(s + i, len - i, "nan")) { i += 3; v = __builtin_nan(""); }
        else return 0;
        *out = neg ? -v : v;
        return i;
    }

    uint64_t mant = 0;
    int digits = 0;      /* significant digits kept in mant */
    int exp10 = 0;       /* value = mant * 10^exp10 */
    int any = 0;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        any = 1;
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(s[i] - '0');
            if (mant) digits++;
        } else {
            exp10++;     /* digits past what fits only shift the magnitude */
        }
    }
    if (i < len && s[i] == '.') {
        uint32_t dot = i++;
        int frac = 0;
        for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
            frac = 1;
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(s[i] - '0');
                if (mant) digits++;
                exp10--;
            }
        }
        if (!frac) i = dot;   /* "5." is not a number's end: stop before the dot */
        any |= frac;
    }
    if (!any) return 0;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        uint32_t j = i + 1;
        int eneg = 0, e = 0, edigits = 0;
        if (j < len && (s[j] == '-' || s[j] == '+')) eneg = s[j++] == '-';
        for (; j < len && s[j] >= '0' && s[j] <= '9'; j++, edigits++)
            if (e < 100000) e = e * 10 + (s[j] - '0');
        if (edigits) {
            exp10 += eneg ? -e : e;
            i = j;
        }
    }

    double v = (double)mant;
    if (mant != 0) {
        if (exp10 > 0) {
            while (exp10 > 22 && v < 1e308) { v *= 1e22; exp10 -= 22; }
            v *= exp10 > 22 ? 1e22 : pow10[exp10];
        } else if (exp10 < 0) {
            /* divide: 1e-n is not exact, so multiplying by it would round twice */
            while (exp10 < -22 && v > 0) { v /= 1e22; exp10 += 22; }
            v /= pow10[exp10 < -22 ? 22 : -exp10];
        }
    }
    *out = neg ? -v : v;
    return i;
}

/* ---------------------------------------------------------------------------------------
 * iot_buf: appending bytes, numbers and JSON
 * ------------------------------------------------------------------------------------- */

IOT_API void iot_buf_init(iot_buf *b, void *mem, uint32_t cap) {
    b->data = (uint8_t *)mem;
    b->len = 0;
    b->cap = cap;
    b->overflow = 0;
}

IOT_API void iot_buf_put(iot_buf *b, const void *p, uint32_t n) {
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

IOT_API void iot_buf_char(iot_buf *b, char c) {
    if (b->overflow || b->len >= b->cap) {
        b->overflow = 1;
        return;
    }
    b->data[b->len++] = (uint8_t)c;
}

IOT_API void iot_buf_str(iot_buf *b, const char *s) { iot_buf_put(b, s, iot_strlen(s)); }

IOT_API void iot_buf_u64(iot_buf *b, uint64_t v) {
    char tmp[20];
    int n = 0;
    do {
        tmp[19 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    iot_buf_put(b, tmp + 20 - n, (uint32_t)n);
}

IOT_API void iot_buf_i64(iot_buf *b, int64_t v) {
    if (v < 0) {
        iot_buf_char(b, '-');
        iot_buf_u64(b, (uint64_t)0 - (uint64_t)v);   /* also right for INT64_MIN */
    } else {
        iot_buf_u64(b, (uint64_t)v);
    }
}

/* Zero-padded to at least `width` digits ("dev-0007"). */
IOT_API void iot_buf_u64_pad(iot_buf *b, uint64_t v, int width) {
    uint64_t t = v;
    int n = 1;
    while (t >= 10) { t /= 10; n++; }
    for (; n < width; n++) iot_buf_char(b, '0');
    iot_buf_u64(b, v);
}

/* Writes a double as a JSON number: fixed notation, rounded to 6 decimals with trailing
 * zeros trimmed ("21.5", "-0.25", "3"); NaN and infinities, which JSON cannot express, as
 * null. Magnitudes of 1e13 and above lose their fraction (a double has no more than ~3
 * decimals left there), and from 1.8e19 on they are written with an exponent. */
IOT_API void iot_buf_double(iot_buf *b, double v) {
    if (v != v || v - v != 0) {   /* NaN, or inf (inf - inf is NaN) */
        iot_buf_str(b, "null");
        return;
    }
    int neg = v < 0;
    double a = neg ? -v : v;
    if (a < 1e13) {
        uint64_t scaled = (uint64_t)(a * 1e6 + 0.5);
        if (scaled == 0) {        /* also -0 and values that round to zero: no "-0" */
            iot_buf_char(b, '0');
            return;
        }
        if (neg) iot_buf_char(b, '-');
        iot_buf_u64(b, scaled / 1000000u);
        uint32_t frac = (uint32_t)(scaled % 1000000u);
        if (frac) {
            char d[7];
            int n = 6;
            d[0] = '.';
            for (int k = 6; k >= 1; k--) {
                d[k] = (char)('0' + frac % 10);
                frac /= 10;
            }
            while (d[n] == '0') n--;
            iot_buf_put(b, d, (uint32_t)n + 1);
        }
    } else if (a < 1.8e19) {
        if (neg) iot_buf_char(b, '-');
        iot_buf_u64(b, (uint64_t)(a + 0.5));
    } else {
        int e = 0;
        while (a >= 1e16) { a /= 1e16; e += 16; }
        while (a >= 10) { a /= 10; e++; }
        if (neg) iot_buf_char(b, '-');
        iot_buf_double(b, a);
        iot_buf_str(b, "e+");
        iot_buf_u64(b, (uint64_t)e);
    }
}

IOT_API void iot_buf_hex(iot_buf *b, const void *p, uint32_t n) {
    static const char digits[] = "0123456789abcdef";
    const uint8_t *s = (const uint8_t *)p;
    for (uint32_t i = 0; i < n; i++) {
        iot_buf_char(b, digits[s[i] >> 4]);
        iot_buf_char(b, digits[s[i] & 15]);
    }
}

/* Writes bytes as a JSON string, escaping quotes, backslashes and control characters.
 * Use it for text that is not JSON yet (topics, config values). */
IOT_API void iot_buf_json_str(iot_buf *b, const void *p, uint32_t n) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = (const uint8_t *)p;
    iot_buf_char(b, '"');
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '"' || c == '\\') {
            iot_buf_char(b, '\\');
            iot_buf_char(b, (char)c);
        } else if (c == '\n') {
            iot_buf_str(b, "\\n");
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            iot_buf_put(b, e, 6);
        } else {
            iot_buf_char(b, (char)c);
        }
    }
    iot_buf_char(b, '"');
}

/* Writes already-escaped JSON string content between quotes: for strings taken from an
 * input document with iot_json_string, which returns them still escaped. */
IOT_API void iot_buf_json_raw_str(iot_buf *b, const void *p, uint32_t n) {
    iot_buf_char(b, '"');
    iot_buf_put(b, p, n);
    iot_buf_char(b, '"');
}

/* Object members: iot_buf_key writes the separating comma itself unless the member is the
 * first after '{', so members can be added conditionally without bookkeeping. */
IOT_API void iot_buf_key(iot_buf *b, const char *key) {
    if (b->len && b->data[b->len - 1] != '{' && b->data[b->len - 1] != '[') iot_buf_char(b, ',');
    iot_buf_char(b, '"');
    iot_buf_str(b, key);
    iot_buf_str(b, "\":");
}

/* Same with a key that is not a C string, e.g. one taken from an input document. */
IOT_API void iot_buf_key_n(iot_buf *b, const void *key, uint32_t key_len) {
    if (b->len && b->data[b->len - 1] != '{' && b->data[b->len - 1] != '[') iot_buf_char(b, ',');
    iot_buf_json_raw_str(b, key, key_len);
    iot_buf_char(b, ':');
}

IOT_API void iot_buf_field_num(iot_buf *b, const char *key, double v) {
    iot_buf_key(b, key);
    iot_buf_double(b, v);
}

IOT_API void iot_buf_field_int(iot_buf *b, const char *key, int64_t v) {
    iot_buf_key(b, key);
    iot_buf_i64(b, v);
}

IOT_API void iot_buf_field_str(iot_buf *b, const char *key, const void *p, uint32_t n) {
    iot_buf_key(b, key);
    iot_buf_json_str(b, p, n);
}

IOT_API void iot_buf_field_raw_str(iot_buf *b, const char *key, const void *p, uint32_t n) {
    iot_buf_key(b, key);
    iot_buf_json_raw_str(b, p, n);
}

/* ---------------------------------------------------------------------------------------
 * Reading JSON objects. A scanner, not a parser: it walks the top-level members of one
 * object and hands out raw value spans; nested objects and arrays are skipped over, not
 * looked into. Strings are returned as they appear (escapes not decoded), which is what
 * copying them into another JSON document needs.
 * ------------------------------------------------------------------------------------- */

typedef struct iot_json_iter {
    const uint8_t *p;
    uint32_t len;
    uint32_t pos;      /* after iot_json_next returned 0: just past the closing '}' */
    int started;
} iot_json_iter;

typedef struct iot_json_field {
    const char *key;   /* without quotes, still escaped */
    uint32_t key_len;
    const char *val;   /* the raw value: strings keep their quotes */
    uint32_t val_len;
} iot_json_field;

static inline int iot__ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

IOT_API uint32_t iot__skip_ws(const uint8_t *p, uint32_t len, uint32_t i) {
    while (i < len && iot__ws(p[i])) i++;
    return i;
}

/* i at an opening quote; returns the index after the closing quote, or 0 if unterminated. */
IOT_API uint32_t iot__skip_string(const uint8_t *p, uint32_t len, uint32_t i) {
    for (i++; i < len; i++) {
        if (p[i] == '\\') i++;
        else if (p[i] == '"') return i + 1;
    }
    return 0;
}

/* Returns the index after the value starting at i, or 0 when malformed. */
IOT_API uint32_t iot__skip_value(const uint8_t *p, uint32_t len, uint32_t i) {
    if (i >= len) return 0;
    if (p[i] == '"') return iot__skip_string(p, len, i);
    if (p[i] == '{' || p[i] == '[') {
        uint32_t depth = 0;
        while (i < len) {
            uint8_t c = p[i];
            if (c == '"') {
                i = iot__skip_string(p, len, i);
                if (!i) return 0;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if ((c == '}' || c == ']') && --depth == 0) return i + 1;
            i++;
        }
        return 0;
    }
    uint32_t start = i;   /* number, true, false, null */
    while (i < len && !iot__ws(p[i]) && p[i] != ',' && p[i] != '}' && p[i] != ']') i++;
    return i > start ? i : 0;
}

/* Starts walking an object; 0 when the text does not start with '{'. */
IOT_API int iot_json_iter_init(iot_json_iter *it, const void *json, uint32_t len) {
    it->p = (const uint8_t *)json;
    it->len = len;
    it->started = 0;
    it->pos = iot__skip_ws(it->p, len, 0);
    return it->pos < len && it->p[it->pos] == '{';
}

/* 1: the next member is in *f. 0: the object ended well-formed (it->pos is past its '}').
 * -1: the text is not a well-formed object at this point. */
IOT_API int iot_json_next(iot_json_iter *it, iot_json_field *f) {
    const uint8_t *p = it->p;
    uint32_t len = it->len, i = it->pos;
    if (!it->started) {
        if (i >= len || p[i] != '{') return -1;
        it->started = 1;
        i = iot__skip_ws(p, len, i + 1);
        if (i < len && p[i] == '}') {
            it->pos = i + 1;
            return 0;
        }
    } else {
        i = iot__skip_ws(p, len, i);
        if (i < len && p[i] == '}') {
            it->pos = i + 1;
            return 0;
        }
        if (i >= len || p[i] != ',') return -1;
        i = iot__skip_ws(p, len, i + 1);
    }
    if (i >= len || p[i] != '"') return -1;
    uint32_t kend = iot__skip_string(p, len, i);
    if (!kend) return -1;
    f->key = (const char *)p + i + 1;
    f->key_len = kend - i - 2;
    i = iot__skip_ws(p, len, kend);
    if (i >= len || p[i] != ':') return -1;
    i = iot__skip_ws(p, len, i + 1);
    uint32_t vend = iot__skip_value(p, len, i);
    if (!vend) return -1;
    f->val = (const char *)p + i;
    f->val_len = vend - i;
    it->pos = vend;
    return 1;
}

/* Finds a top-level member by key (the first one, if repeated). 1 found, 0 absent from a
 * well-formed object, -1 when the text is not a JSON object (or is malformed before the key
 * turned up). */
IOT_API int iot_json_find(const void *json, uint32_t len, const char *key, iot_json_field *f) {
    iot_json_iter it;
    if (!iot_json_iter_init(&it, json, len)) return -1;
    uint32_t klen = iot_strlen(key);
    int r;
    while ((r = iot_json_next(&it, f)) == 1)
        if (f->key_len == klen && memcmp(f->key, key, klen) == 0) return 1;
    return r;
}

/* 1 and *out when member `key` exists and is a number (JSON syntax, or Infinity/NaN as
 * Python writes them); 0 otherwise. */
IOT_API int iot_json_number(const void *json, uint32_t len, const char *key, double *out) {
    iot_json_field f;
    if (iot_json_find(json, len, key, &f) != 1) return 0;
    double v;
    if (iot_parse_double(f.val, f.val_len, &v) != f.val_len) return 0;
    *out = v;
    return 1;
}

/* 1 and the string's content (without quotes, escapes not decoded) when member `key` exists
 * and is a string; 0 otherwise. */
IOT_API int iot_json_string(const void *json, uint32_t len, const char *key,
                            const char **str, uint32_t *str_len) {
    iot_json_field f;
    if (iot_json_find(json, len, key, &f) != 1 || f.val[0] != '"') return 0;
    *str = f.val + 1;
    *str_len = f.val_len - 2;
    return 1;
}

/* ---------------------------------------------------------------------------------------
 * Config (capability config). Meant for iot_init: each call is a host round trip.
 * ------------------------------------------------------------------------------------- */

/* 1: *out holds the value of config `key`; 0: the key is absent (*out untouched, so set the
 * default first); -1: present but not a number. Surrounding whitespace is ignored. */
IOT_API int iot_config_number(const char *key, double *out) {
    char buf[64];
    int32_t n = iot_config_get(key, iot_strlen(key), buf, sizeof buf);
    if (n < 0) return 0;
    if ((uint32_t)n > sizeof buf) return -1;
    uint32_t a = iot__skip_ws((const uint8_t *)buf, (uint32_t)n, 0), e = (uint32_t)n;
    while (e > a && iot__ws((uint8_t)buf[e - 1])) e--;
    double v;
    if (e == a || iot_parse_double(buf + a, e - a, &v) != e - a) return -1;
    *out = v;
    return 1;
}

/* Copies config `key` into buf and returns its length; -1 when absent. A value longer than
 * cap is not copied and its length is returned (so `> cap` means "too long"). The copy is
 * NUL-terminated when there is room for it. */
IOT_API int32_t iot_config_string(const char *key, char *buf, uint32_t cap) {
    int32_t n = iot_config_get(key, iot_strlen(key), buf, cap);
    if (n >= 0 && (uint32_t)n < cap) buf[n] = 0;
    return n;
}

#endif /* IOTWASM_H */
