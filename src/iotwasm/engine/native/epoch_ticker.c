/*
 * The epoch ticker in native code: advances wasmtime engines' epochs from a thread that
 * never takes Python's GIL.
 *
 * A Python thread ticking every millisecond takes the GIL 1,000 times a second: each time
 * it wakes the interpreter's machinery, and when the event loop's thread holds the GIL it
 * forces a switch. This thread does the same work (wasmtime_engine_increment_epoch on each
 * engine, then the epoch count Python reads) without Python at all. Its rules are those of
 * iotwasm/engine/ticker.py, whose docstring says why they are safe:
 *
 *  - normal: one increment per `period_ns`, measured from the end of the last one (a thread
 *    scheduled late makes the epoch run slow, never burst to catch up);
 *  - idle: one increment per `idle_period_ns` once no call is running (`running`) and none
 *    was armed or started for `idle_after_ns`;
 *  - an arm (iw_ticker_arm) or a call's start (iw_ticker_enter) sets `armed` and, finding
 *    the ticker idle, wakes it; the ticker publishes `idle` before it reads `armed` and
 *    `running` a last time (all sequentially consistent), so one of the two always sees the
 *    other.
 *
 * Python reads and writes only `iw_shared`; it calls iw_ticker_arm for every deadline and
 * iw_ticker_enter / iw_ticker_leave around every call into a guest (the native batch call
 * does so itself, through the addresses Python hands it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

typedef void (*iw_increment_fn)(void *engine);

/* Owned by Python (a buffer of iw_shared_size() bytes; engine/ticker.py reads the first four
 * fields), so that the epoch stays readable and an arm stays safe after the thread has ended
 * and the ticker is freed: an arm touches nothing else. */
typedef struct {
    int64_t epoch;                /* increments done so far; written after every engine's */
    int32_t armed;                /* set by every arm, cleared when the ticker notes it */
    int32_t idle;                 /* 1 while ticking at the idle period */
    int32_t running;              /* calls into guests in progress (iw_ticker_enter/leave) */
    int32_t reserved;
    const int64_t *manual_clock;  /* NULL: CLOCK_MONOTONIC; else the idle window's clock (ns) */
    /* below: only under `lock` */
    int32_t woken, stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
} iw_shared;

typedef struct {
    iw_shared *s;
    iw_increment_fn increment;
    int64_t period_ns, idle_period_ns, idle_after_ns;
    int64_t seen_at;
    int n_engines, cap_engines;
    void **engines;
    pthread_t thread;
} iw_ticker;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t window_now(iw_ticker *t) {
    const int64_t *manual = t->s->manual_clock;
    if (manual)
        return __atomic_load_n(manual, __ATOMIC_ACQUIRE);
    return mono_ns();
}

/* Waits up to `ns` or until stopped, or (`wakeable`, while idle) woken by an arm; returns 1
 * if woken. Called with the lock held. A normal period is never cut short: a wake left over
 * from an arm that raced with going idle must not bring the next increment forward. */
static int wait_locked(iw_ticker *t, int64_t ns, int wakeable) {
    int64_t until = mono_ns() + ns;
    struct timespec ts = {until / 1000000000, until % 1000000000};
    while (!t->s->stop && !(wakeable && t->s->woken)) {
        if (pthread_cond_timedwait(&t->s->cond, &t->s->lock, &ts) == ETIMEDOUT)
            break;
    }
    int woken = wakeable && t->s->woken;
    if (woken)
        t->s->woken = 0;
    return woken;
}

static void note_arm(iw_ticker *t) {
    __atomic_store_n(&t->s->armed, 0, __ATOMIC_SEQ_CST);
    t->seen_at = window_now(t);
}

/* Whether a call was armed or started since the ticker last looked, or is running now. */
static int busy(iw_ticker *t) {
    return __atomic_load_n(&t->s->armed, __ATOMIC_SEQ_CST)
           || __atomic_load_n(&t->s->running, __ATOMIC_SEQ_CST) > 0;
}

static void *run(void *arg) {
    iw_ticker *t = arg;
    pthread_mutex_lock(&t->s->lock);
    for (;;) {
        if (__atomic_load_n(&t->s->idle, __ATOMIC_SEQ_CST)) {
            int woken = wait_locked(t, t->idle_period_ns, 1);
            if (t->s->stop)
                break;
            if (woken || busy(t)) {
                __atomic_store_n(&t->s->idle, 0, __ATOMIC_SEQ_CST);
                note_arm(t);
                continue; /* no increment: the next comes one normal period from now */
            }
        } else {
            wait_locked(t, t->period_ns, 0);
            if (t->s->stop)
                break;
        }
        for (int i = 0; i < t->n_engines; i++)
            t->increment(t->engines[i]);
        __atomic_add_fetch(&t->s->epoch, 1, __ATOMIC_RELEASE);
        if (__atomic_load_n(&t->s->idle, __ATOMIC_SEQ_CST))
            continue;
        if (busy(t)) {
            note_arm(t);
        } else if (window_now(t) - t->seen_at > t->idle_after_ns) {
            t->s->woken = 0;
            __atomic_store_n(&t->s->idle, 1, __ATOMIC_SEQ_CST);
            if (busy(t)) /* an arm or a start that read idle == 0 */
                __atomic_store_n(&t->s->idle, 0, __ATOMIC_SEQ_CST);
        }
    }
    pthread_mutex_unlock(&t->s->lock);
    return NULL;
}

/* Starts a ticker; NULL if the thread could not be made. */
iw_ticker *iw_ticker_start(iw_shared *shared, iw_increment_fn increment, int64_t period_ns,
                           int64_t idle_period_ns, int64_t idle_after_ns) {
    iw_ticker *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->s = shared;
    t->increment = increment;
    t->period_ns = period_ns;
    t->idle_period_ns = idle_period_ns;
    t->idle_after_ns = idle_after_ns;
    t->seen_at = window_now(t); /* a new ticker counts as just armed */
    /* never destroyed: an arm may use them after the ticker is freed (Python frees them) */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&shared->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&shared->lock, NULL);
    if (pthread_create(&t->thread, NULL, run, t) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

/* Adds an engine to tick; 0 on success. The engine must outlive the ticker (iw_ticker_stop). */
int iw_ticker_add_engine(iw_ticker *t, void *engine) {
    int rc = 0;
    pthread_mutex_lock(&t->s->lock);
    if (t->n_engines == t->cap_engines) {
        int cap = t->cap_engines ? 2 * t->cap_engines : 8;
        void **grown = realloc(t->engines, cap * sizeof *grown);
        if (grown) {
            t->engines = grown;
            t->cap_engines = cap;
        } else {
            rc = -1;
        }
    }
    if (rc == 0)
        t->engines[t->n_engines++] = engine;
    pthread_mutex_unlock(&t->s->lock);
    return rc;
}

/* What every deadline armed does: note it, and wake an idle ticker. Never blocks for long. */
void iw_ticker_arm(iw_shared *s) {
    __atomic_store_n(&s->armed, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->idle, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&s->lock);
        s->woken = 1;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }
}

/* A call into a guest starts: counted as running until iw_ticker_leave, so the ticker keeps
 * its normal period however long the call takes; an idle ticker is woken. */
void iw_ticker_enter(iw_shared *s) {
    __atomic_add_fetch(&s->running, 1, __ATOMIC_SEQ_CST);
    iw_ticker_arm(s);
}

/* The call started by the matching iw_ticker_enter has returned (or trapped). */
void iw_ticker_leave(iw_shared *s) {
    __atomic_sub_fetch(&s->running, 1, __ATOMIC_SEQ_CST);
}

size_t iw_shared_size(void) { return sizeof(iw_shared); }

/* Ends the thread and frees the ticker: after this no engine and no `iw_shared` is touched. */
void iw_ticker_stop(iw_ticker *t) {
    pthread_mutex_lock(&t->s->lock);
    t->s->stop = 1;
    pthread_cond_signal(&t->s->cond);
    pthread_mutex_unlock(&t->s->lock);
    pthread_join(t->thread, NULL);
    free(t->engines);
    free(t);
}
