/*
 * wasi_csv: a plain WASI command program, no SDK: CSV readings in, JSON lines out.
 *
 * Build: clang --target=wasm32-wasi -O2 -o wasi_csv.wasm wasi_csv.c   (uses wasi-libc)
 *
 * stdin:   lines "device,sensor,value", e.g. dev-1,temperature,21.5 (blank lines skipped)
 * stdout:  one JSON object per good line:
 *          {"device":"dev-1","sensor":"temperature","value":21.5}
 *          plus "unit":"..." when the environment variable UNIT is set (granted by the
 *          container as env UNIT=...).
 * stderr:  one line per bad line, naming it and the reason.
 * exit:    0 when every line was good, 1 otherwise; under the wasi-command ABI a non-zero
 *          exit dead-letters the message with the last stderr line.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes s as a JSON string; device and sensor names come from untrusted input. */
static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

/* The shortest %g form that reads back as the same double: 21.53, not 21.530000000000001. */
static const char *shortest(double v) {
    static char buf[32];
    for (int precision = 15; precision <= 17; precision++) {
        snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = 0;
    return s;
}

int main(void) {
    const char *unit = getenv("UNIT");
    char line[1024];
    int lineno = 0, bad = 0;

    while (fgets(line, sizeof line, stdin)) {
        lineno++;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n') line[--n] = 0;
        else if (n == sizeof line - 1) {   /* no newline in a full buffer: the line is longer */
            int c;
            while ((c = getchar()) != EOF && c != '\n') {}
            fprintf(stderr, "line %d: longer than %zu bytes\n", lineno, sizeof line - 2);
            bad++;
            continue;
        }
        char *text = trim(line);
        if (!*text) continue;

        char *c1 = strchr(text, ',');
        char *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
        if (!c2 || strchr(c2 + 1, ',')) {
            fprintf(stderr, "line %d: expected 3 fields device,sensor,value\n", lineno);
            bad++;
            continue;
        }
        *c1 = *c2 = 0;
        char *device = trim(text), *sensor = trim(c1 + 1), *value = trim(c2 + 1);
        if (!*device || !*sensor) {
            fprintf(stderr, "line %d: empty device or sensor\n", lineno);
            bad++;
            continue;
        }
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end || errno == ERANGE || !isfinite(v)) {
            fprintf(stderr, "line %d: value \"%s\" is not a finite number\n", lineno, value);
            bad++;
            continue;
        }

        printf("{\"device\":");
        json_string(device);
        printf(",\"sensor\":");
        json_string(sensor);
        printf(",\"value\":%s", shortest(v));
        if (unit) {
            printf(",\"unit\":");
            json_string(unit);
        }
        printf("}\n");
    }
    return bad ? 1 : 0;
}
