/* The outbox's group commit in native code: one transaction that deletes the acknowledged
 * ranges and inserts the new rows, with the GIL released once for all of it.
 *
 * Why: Python's sqlite3 module releases the GIL around every statement step, so an append of
 * 16 rows through it (BEGIN, a DELETE, 16 INSERT steps, COMMIT) hands the GIL over about 20
 * times. While a lane's thread runs guest calls, each hand-over is a futex wake and a
 * context switch on both threads: on the event loop's thread the commit cost about 3 times
 * what SQLite itself spends (pipeline/outbox_native.py has the figures). Here the values are
 * read from the Python objects first, with the GIL held, and then the whole transaction runs
 * without it.
 *
 * Scope: only that transaction, on the outbox's table, with values of the plain types the
 * outbox stores (int, float, str, bytes, None). Anything else makes `append` answer
 * NotImplemented before it touches the database, and the caller writes in Python
 * (pipeline/outbox_writes.py), which stays the reference. An SQLite error rolls the transaction back
 * and comes back as (extended error code, message); the caller turns it into the error its
 * Python path would raise.
 *
 * The SQLite functions are passed in as addresses by the caller: those of the library that
 * Python's own sqlite3 module loaded. Two copies of SQLite in one process would not see each
 * other's POSIX locks on the file, so this links against nothing but Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define INTERFACE 1

/* SQLite's ABI, declared here (the header is not needed to build) */
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
#define SQLITE_OK 0
#define SQLITE_DONE 101
#define SQLITE_OPEN_READWRITE 0x00000002
#define SQLITE_MISUSE 21

typedef int (*open_v2_fn)(const char *, sqlite3 **, int, const char *);
typedef int (*close_v2_fn)(sqlite3 *);
typedef int (*prepare_v2_fn)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
typedef int (*stmt_fn)(sqlite3_stmt *);
typedef int (*bind_int64_fn)(sqlite3_stmt *, int, int64_t);
typedef int (*bind_double_fn)(sqlite3_stmt *, int, double);
typedef int (*bind_text_fn)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
typedef int (*bind_blob_fn)(sqlite3_stmt *, int, const void *, int, void (*)(void *));
typedef int (*bind_null_fn)(sqlite3_stmt *, int);
typedef int (*db_fn)(sqlite3 *);
typedef const char *(*errmsg_fn)(sqlite3 *);
typedef int (*busy_timeout_fn)(sqlite3 *, int);
typedef int (*exec_fn)(sqlite3 *, const char *, void *, void *, char **);

static struct {
    open_v2_fn open_v2;
    close_v2_fn close_v2;
    prepare_v2_fn prepare_v2;
    stmt_fn step, reset, finalize, clear_bindings;
    bind_int64_fn bind_int64;
    bind_double_fn bind_double;
    bind_text_fn bind_text;
    bind_blob_fn bind_blob;
    bind_null_fn bind_null;
    db_fn extended_errcode, get_autocommit;
    errmsg_fn errmsg;
    busy_timeout_fn busy_timeout;
    exec_fn exec;
} sq;
static int bound = 0;

enum { S_BEGIN, S_COMMIT, S_ROLLBACK, S_DELETE, S_INSERT, N_STMT };
static const char *SQL[N_STMT] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "DELETE FROM outbox WHERE sink = ? AND id BETWEEN ? AND ?",
    "INSERT INTO outbox(id, sink, topic, payload, created, envelope) VALUES (?,?,?,?,?,?)",
};

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *stmt[N_STMT];
    int busy;   /* an append runs without the GIL: close and another append must wait */
} Writer;

enum { V_NULL, V_INT, V_FLOAT, V_TEXT, V_BLOB };
typedef struct {
    int kind;
    const char *p;
    Py_ssize_t n;
    int64_t i;
    double d;
} Val;

/* `o` as a value to bind; 0 when it is of a type left to the Python path (no error set) */
static int to_val(PyObject *o, Val *v) {
    if (o == Py_None) {
        v->kind = V_NULL;
    } else if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        v->kind = V_INT;
        v->i = x;
    } else if (PyFloat_CheckExact(o)) {
        v->kind = V_FLOAT;
        v->d = PyFloat_AS_DOUBLE(o);
    } else if (PyUnicode_CheckExact(o)) {
        v->p = PyUnicode_AsUTF8AndSize(o, &v->n);
        if (v->p == NULL) {   /* e.g. a lone surrogate: Python's path raises what it raises */
            PyErr_Clear();
            return 0;
        }
        v->kind = V_TEXT;
    } else if (PyBytes_CheckExact(o)) {
        v->kind = V_BLOB;
        v->p = PyBytes_AS_STRING(o);
        v->n = PyBytes_GET_SIZE(o);
    } else {
        return 0;
    }
    if ((v->kind == V_TEXT || v->kind == V_BLOB) && v->n > INT32_MAX)
        return 0;
    return 1;
}

/* Each item of `seq` (a tuple) a tuple of `width` values, read into `out`; 0: not for here */
static int read_rows(PyObject *seq, Py_ssize_t width, Val *out) {
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *row = PyTuple_GET_ITEM(seq, r);
        if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != width)
            return 0;
        for (Py_ssize_t c = 0; c < width; c++)
            if (!to_val(PyTuple_GET_ITEM(row, c), &out[r * width + c]))
                return 0;
    }
    return 1;
}

static int bind(sqlite3_stmt *st, const Val *vals, int n) {
    for (int k = 0; k < n; k++) {
        const Val *v = &vals[k];
        int rc;
        switch (v->kind) {
        case V_NULL: rc = sq.bind_null(st, k + 1); break;
        case V_INT: rc = sq.bind_int64(st, k + 1, v->i); break;
        case V_FLOAT: rc = sq.bind_double(st, k + 1, v->d); break;
        case V_TEXT: rc = sq.bind_text(st, k + 1, v->p, (int)v->n, NULL); break;  /* static */
        default: rc = sq.bind_blob(st, k + 1, v->p, (int)v->n, NULL); break;
        }
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

/* Run `st` to its end and reset it; SQLITE_OK or the error */
static int run(sqlite3_stmt *st) {
    int rc = sq.step(st);
    sq.reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int transaction(Writer *w, const Val *del, Py_ssize_t n_del, const Val *ins, Py_ssize_t n_ins) {
    int rc = run(w->stmt[S_BEGIN]);
    if (rc != SQLITE_OK)
        return rc;
    for (Py_ssize_t k = 0; k < n_del && rc == SQLITE_OK; k++) {
        rc = bind(w->stmt[S_DELETE], &del[k * 3], 3);
        if (rc == SQLITE_OK)
            rc = run(w->stmt[S_DELETE]);
    }
    for (Py_ssize_t k = 0; k < n_ins && rc == SQLITE_OK; k++) {
        rc = bind(w->stmt[S_INSERT], &ins[k * 6], 6);
        if (rc == SQLITE_OK)
            rc = run(w->stmt[S_INSERT]);
    }
    sq.clear_bindings(w->stmt[S_DELETE]);   /* no pointer into a Python object outlives the call */
    sq.clear_bindings(w->stmt[S_INSERT]);
    if (rc == SQLITE_OK)
        rc = run(w->stmt[S_COMMIT]);
    return rc;
}

/* append(deletes, rows): deletes [(sink, lo, hi)], rows [(id, sink, topic, payload, created,
 * envelope)]. None: committed. (code, message): failed and rolled back. NotImplemented:
 * nothing done, the values are for the Python path. */
static PyObject *Writer_append(Writer *w, PyObject *args) {
    PyObject *del_list, *ins_list;
    if (!PyArg_ParseTuple(args, "O!O!:append", &PyList_Type, &del_list, &PyList_Type, &ins_list))
        return NULL;
    if (w->db == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the outbox writer is closed");
        return NULL;
    }
    if (w->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the outbox writer is in use by another thread");
        return NULL;
    }
    /* tuples of the lists' items: what the values point into stays alive while the GIL is
     * released, whatever another thread does to the lists meanwhile */
    PyObject *deletes = PyList_AsTuple(del_list), *rows = PyList_AsTuple(ins_list);
    Val *vals = NULL;
    PyObject *result = NULL;
    if (deletes == NULL || rows == NULL)
        goto out;
    Py_ssize_t n_del = PyTuple_GET_SIZE(deletes), n_ins = PyTuple_GET_SIZE(rows);
    vals = PyMem_Malloc(sizeof(Val) * (size_t)(n_del * 3 + n_ins * 6 + 1));
    if (vals == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    Val *del = vals, *ins = vals + n_del * 3;
    if (!read_rows(deletes, 3, del) || !read_rows(rows, 6, ins)) {
        result = Py_NewRef(Py_NotImplemented);
        goto out;
    }
    int rc, code = 0;
    char msg[512] = "";
    w->busy = 1;   /* this object's statements are this call's until it returns */
    Py_BEGIN_ALLOW_THREADS
    rc = transaction(w, del, n_del, ins, n_ins);
    if (rc != SQLITE_OK) {
        code = sq.extended_errcode(w->db);
        if (code == SQLITE_OK)
            code = rc;
        snprintf(msg, sizeof msg, "%s", sq.errmsg(w->db));
        if (!sq.get_autocommit(w->db))
            run(w->stmt[S_ROLLBACK]);
    }
    Py_END_ALLOW_THREADS
    w->busy = 0;
    result = rc == SQLITE_OK ? Py_NewRef(Py_None) : Py_BuildValue("(is)", code, msg);
out:
    PyMem_Free(vals);
    Py_XDECREF(deletes);
    Py_XDECREF(rows);
    return result;
}

static void finalize_all(Writer *w) {
    for (int k = 0; k < N_STMT; k++) {
        if (w->stmt[k] != NULL)
            sq.finalize(w->stmt[k]);
        w->stmt[k] = NULL;
    }
    if (w->db != NULL)
        sq.close_v2(w->db);
    w->db = NULL;
}

static PyObject *Writer_close(Writer *w, PyObject *Py_UNUSED(ignored)) {
    if (w->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the outbox writer is in use by another thread");
        return NULL;
    }
    finalize_all(w);
    Py_RETURN_NONE;
}

/* Writer(path, busy_timeout_ms): a connection of its own to the outbox file, with the
 * settings the outbox's Python connection has (sqlite.open_db): synchronous=NORMAL, no
 * automatic checkpoints (the outbox's Checkpointer runs them), the same busy timeout. */
static int Writer_init(Writer *w, PyObject *args, PyObject *kw) {
    const char *path;
    int timeout_ms;
    static char *names[] = {"path", "busy_timeout_ms", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "si:Writer", names, &path, &timeout_ms))
        return -1;
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "bind() the SQLite functions first");
        return -1;
    }
    finalize_all(w);
    int rc = sq.open_v2(path, &w->db, SQLITE_OPEN_READWRITE, NULL);
    if (rc == SQLITE_OK)
        rc = sq.busy_timeout(w->db, timeout_ms);
    if (rc == SQLITE_OK)
        rc = sq.exec(w->db, "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0", NULL, NULL, NULL);
    for (int k = 0; k < N_STMT && rc == SQLITE_OK; k++)
        rc = sq.prepare_v2(w->db, SQL[k], -1, &w->stmt[k], NULL);
    if (rc != SQLITE_OK) {
        PyErr_Format(PyExc_OSError, "cannot open the outbox writer on %s: %s (%d)", path,
                     w->db != NULL ? sq.errmsg(w->db) : "out of memory", rc);
        finalize_all(w);
        return -1;
    }
    return 0;
}

static void Writer_dealloc(Writer *w) {
    if (!w->busy)
        finalize_all(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef Writer_methods[] = {
    {"append", (PyCFunction)Writer_append, METH_VARARGS,
     "append(deletes, rows): one transaction; None, (code, message) or NotImplemented"},
    {"close", (PyCFunction)Writer_close, METH_NOARGS, "close the connection"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "iotwasm_outbox_writer.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The outbox's group commit in one call (see the module's source).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
};

static void *address(PyObject *o) {
    void *p = PyLong_AsVoidPtr(o);
    if (p == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a null address");
    return p;
}

/* bind(addresses): the SQLite functions, in the order of FUNCTIONS in outbox_native.py */
static PyObject *bind_functions(PyObject *Py_UNUSED(m), PyObject *args) {
    void **slots[] = {
        (void **)&sq.open_v2, (void **)&sq.close_v2, (void **)&sq.prepare_v2, (void **)&sq.step,
        (void **)&sq.reset, (void **)&sq.finalize, (void **)&sq.clear_bindings,
        (void **)&sq.bind_int64, (void **)&sq.bind_double, (void **)&sq.bind_text,
        (void **)&sq.bind_blob, (void **)&sq.bind_null, (void **)&sq.extended_errcode,
        (void **)&sq.get_autocommit, (void **)&sq.errmsg, (void **)&sq.busy_timeout,
        (void **)&sq.exec,
    };
    Py_ssize_t n = (Py_ssize_t)(sizeof(slots) / sizeof(slots[0]));
    if (PyTuple_GET_SIZE(args) != n) {
        PyErr_Format(PyExc_TypeError, "bind takes %zd addresses", n);
        return NULL;
    }
    void *got[sizeof(slots) / sizeof(slots[0])];
    for (Py_ssize_t k = 0; k < n; k++) {
        got[k] = address(PyTuple_GET_ITEM(args, k));
        if (got[k] == NULL)
            return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++)
        memcpy(slots[k], &got[k], sizeof(void *));
    bound = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", bind_functions, METH_VARARGS, "bind(*addresses): the SQLite functions to call"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "iotwasm_outbox_writer",
    "The outbox's group commit in one call, without the GIL (see outbox_writer.c).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_iotwasm_outbox_writer(void) {
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddIntConstant(m, "INTERFACE", INTERFACE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
