/* One iotwasm-v1 batch call in native code: frame the inputs into guest memory, call
 * `iot_process`, read the output header and build the outputs, in one call from Python.
 *
 * Why: at a batch of one the Python around a guest call (framing through struct, two memory
 * writes, a ctypes call with five arguments, the header read, the copy and parse of the
 * outputs) costs several times the call itself. This extension does only the common case:
 * inputs that fit the buffers the guest already allocated, a call that neither traps nor
 * errors, status IOT_OK, every input done, well-formed message records and no error record.
 * For anything else it says so and the caller goes on in Python (engine/abi_v1.py), where the
 * whole protocol lives; nothing here decides what a failure means.
 *
 * Safety: the guest is untrusted. Every offset it wrote (the header's `used`, each record's
 * lengths) is checked against the buffer and the memory size read after the call, in 64-bit
 * arithmetic, before a byte is read. Guest memory cannot change while this runs: the pool
 * hands an instance to one caller at a time and only its own call runs guest code.
 * The wasmtime functions are passed in as addresses by the caller (the library wasmtime-py
 * loaded), so this links against nothing but Python; so are the epoch ticker's
 * iw_ticker_enter and iw_ticker_leave (engine/native/epoch_ticker.c), which bracket the call
 * so that the ticker keeps its normal period while it runs (engine/ticker.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "wasm memory is little-endian; this file reads it in place"
#endif

typedef union {
    int32_t i32;
    int64_t i64;
    uint8_t v128[16];
    void *ref;
} raw_val;

typedef void *(*call_unchecked_fn)(void *ctx, const void *func, raw_val *vals, size_t n,
                                   void **trap);
typedef uint8_t *(*memory_data_fn)(const void *ctx, const void *mem);
typedef void (*ticker_fn)(void *shared);
typedef size_t (*memory_size_fn)(const void *ctx, const void *mem);

static call_unchecked_fn call_unchecked;
static memory_data_fn memory_data;
static memory_size_fn memory_size;

#define IN_RECORD 16   /* timestamp_ms i64, topic_len u32, payload_len u32 */
#define OUT_RECORD 16  /* input_index, kind, topic_len, payload_len: u32 each */
#define OUT_HEADER 8   /* used, inputs_done */
#define ON_STACK 16

typedef struct {
    PyObject_HEAD
    PyObject *keep;        /* what keeps the store and the handles below alive */
    PyTypeObject *output;  /* iotwasm.message.Output, a tuple subclass */
    PyTypeObject *message; /* iotwasm.message.Message: only exactly these are framed here */
    void *ctx, *func, *mem;
    raw_val *vals;         /* at least 5 */
    uint64_t in_ptr, in_cap, out_ptr, out_cap, min_buffer, max_output;
    uint64_t size;         /* memory size after the last call */
    void *ticker;          /* the ticker's shared state, and its enter and leave: NULL when */
    ticker_fn enter, leave;  /* the caller brackets the call itself */
} BatchCall;

typedef struct {
    PyObject *topic_obj, *payload_obj;
    const char *topic, *payload;
    Py_ssize_t topic_len, payload_len;
    int64_t timestamp_ms;
} Input;

static PyObject *s_topic, *s_payload, *s_timestamp_ms;

static void *address(PyObject *o, const char *what) {
    void *p = PyLong_AsVoidPtr(o);
    if (p == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s is a null address", what);
    return p;
}

static int BatchCall_init(BatchCall *self, PyObject *args, PyObject *kwds) {
    PyObject *keep, *output, *message, *ctx, *func, *mem, *vals;
    unsigned long long min_buffer, max_output, ticker = 0, enter = 0, leave = 0;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "BatchCall takes positional arguments only");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOOOOOKK|KKK:BatchCall", &keep, &output, &message, &ctx, &func,
                          &mem, &vals, &min_buffer, &max_output, &ticker, &enter, &leave))
        return -1;
    if ((ticker || enter || leave) && !(ticker && enter && leave)) {
        PyErr_SetString(PyExc_ValueError, "the ticker's state, enter and leave go together");
        return -1;
    }
    if (!PyType_Check(output) || !PyType_IsSubtype((PyTypeObject *)output, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "output must be a tuple subclass");
        return -1;
    }
    if (!PyType_Check(message)) {
        PyErr_SetString(PyExc_TypeError, "message must be a type");
        return -1;
    }
    if (call_unchecked == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() the wasmtime functions first");
        return -1;
    }
    if (!(self->ctx = address(ctx, "ctx")) || !(self->func = address(func, "func")) ||
        !(self->mem = address(mem, "mem")) || !(self->vals = address(vals, "vals")))
        return -1;
    Py_INCREF(keep);
    Py_XSETREF(self->keep, keep);
    Py_INCREF(output);
    Py_XSETREF(self->output, (PyTypeObject *)output);
    Py_INCREF(message);
    Py_XSETREF(self->message, (PyTypeObject *)message);
    self->min_buffer = min_buffer;
    self->max_output = max_output;
    self->ticker = (void *)(uintptr_t)ticker;
    self->enter = (ticker_fn)(uintptr_t)enter;
    self->leave = (ticker_fn)(uintptr_t)leave;
    self->in_ptr = self->in_cap = self->out_ptr = self->out_cap = 0;
    self->size = memory_size(self->ctx, self->mem);
    return 0;
}

static void BatchCall_dealloc(BatchCall *self) {
    Py_XDECREF(self->keep);
    Py_XDECREF(self->output);
    Py_XDECREF(self->message);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *BatchCall_buffers(BatchCall *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 4) {
        PyErr_SetString(PyExc_TypeError, "buffers(in_ptr, in_cap, out_ptr, out_cap)");
        return NULL;
    }
    uint64_t v[4];
    for (int i = 0; i < 4; i++) {
        v[i] = PyLong_AsUnsignedLongLong(args[i]);
        if (v[i] == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
        if (v[i] > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "buffer address or size beyond 32 bits");
            return NULL;
        }
    }
    self->in_ptr = v[0];
    self->in_cap = v[1];
    self->out_ptr = v[2];
    self->out_cap = v[3];
    Py_RETURN_NONE;
}

static void release_inputs(Input *in, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(in[i].topic_obj);
        Py_XDECREF(in[i].payload_obj);
    }
}

/* What a message would frame to, or -1 when Python should frame it (it then raises the
 * same error it always did, or handles a payload that is not bytes). Only an exact Message
 * with an exact int timestamp is read here: its attributes are slots, so no Python code runs
 * while the batch is framed (none could change the sequence being read). */
static int read_input(BatchCall *self, PyObject *m, Input *in) {
    PyObject *ts;
    in->topic_obj = in->payload_obj = NULL;
    if (!Py_IS_TYPE(m, self->message))
        return -1;
    in->topic_obj = PyObject_GetAttr(m, s_topic);
    in->payload_obj = in->topic_obj ? PyObject_GetAttr(m, s_payload) : NULL;
    if (!in->payload_obj || !PyUnicode_Check(in->topic_obj) || !PyBytes_Check(in->payload_obj))
        goto python;
    in->topic = PyUnicode_AsUTF8AndSize(in->topic_obj, &in->topic_len);
    if (!in->topic)
        goto python;
    in->payload = PyBytes_AS_STRING(in->payload_obj);
    in->payload_len = PyBytes_GET_SIZE(in->payload_obj);
    if (in->topic_len > UINT32_MAX || in->payload_len > UINT32_MAX)
        goto python;
    ts = PyObject_GetAttr(m, s_timestamp_ms);
    if (!ts)
        goto python;
    if (!PyLong_CheckExact(ts)) {  /* its __index__ would be Python code */
        Py_DECREF(ts);
        return -1;
    }
    in->timestamp_ms = PyLong_AsLongLong(ts);
    Py_DECREF(ts);
    if (in->timestamp_ms == -1 && PyErr_Occurred())
        goto python;
    return 0;
python:
    PyErr_Clear();
    return -1;
}

/* Outputs of a finished batch, or Py_None when anything is not the common case. */
static PyObject *read_outputs(BatchCall *self, const uint8_t *base, uint64_t msize, uint64_t n) {
    uint32_t used, done;
    if (self->out_ptr + OUT_HEADER > msize || self->out_cap < OUT_HEADER)
        Py_RETURN_NONE;
    memcpy(&used, base + self->out_ptr, 4);
    memcpy(&done, base + self->out_ptr + 4, 4);
    if (done != n || used > self->out_cap - OUT_HEADER ||
        self->out_ptr + OUT_HEADER + (uint64_t)used > msize)
        Py_RETURN_NONE;
    const uint8_t *buf = base + self->out_ptr + OUT_HEADER;
    PyObject *outs = PyList_New(0);
    if (!outs)
        return NULL;
    uint64_t off = 0;
    while (off < used) {
        uint32_t rec[4];
        if (off + OUT_RECORD > used)
            goto python;
        memcpy(rec, buf + off, OUT_RECORD);
        off += OUT_RECORD;
        uint64_t stop = off + (uint64_t)rec[2] + rec[3];
        if (stop > used || rec[0] >= n || rec[1] != 0)
            goto python;  /* truncated, out of the batch, or an error record */
        PyObject *topic;
        if (rec[2]) {
            topic = PyUnicode_DecodeUTF8((const char *)buf + off, rec[2], "replace");
            if (!topic)
                goto fail;
        } else {
            topic = Py_NewRef(Py_None);
        }
        PyObject *payload = PyBytes_FromStringAndSize((const char *)buf + off + rec[2], rec[3]);
        PyObject *index = PyLong_FromUnsignedLong(rec[0]);
        PyObject *out = self->output->tp_alloc(self->output, 3);
        if (!payload || !index || !out) {
            Py_DECREF(topic);
            Py_XDECREF(payload);
            Py_XDECREF(index);
            Py_XDECREF(out);
            goto fail;
        }
        PyTuple_SET_ITEM(out, 0, index);
        PyTuple_SET_ITEM(out, 1, topic);
        PyTuple_SET_ITEM(out, 2, payload);
        int rc = PyList_Append(outs, out);
        Py_DECREF(out);
        if (rc)
            goto fail;
        off = stop;
    }
    return outs;
python:
    Py_DECREF(outs);
    Py_RETURN_NONE;
fail:
    Py_DECREF(outs);
    return NULL;
}

/* run(messages) -> list of outputs (the common case), None (nothing was called: frame and
 * call in Python), or (status, error address, trap address) of a call whose outcome
 * Python reads from the guest's memory as it always does. */
static PyObject *BatchCall_run(BatchCall *self, PyObject *messages) {
    Input stack[ON_STACK], *in = stack;
    PyObject *seq = PySequence_Fast(messages, "messages must be a sequence");
    if (!seq)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), got = 0;
    if (n == 0 || n > UINT32_MAX) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    if (n > ON_STACK && !(in = PyMem_Calloc((size_t)n, sizeof(Input)))) {
        PyErr_NoMemory();
        goto out;
    }
    uint64_t total = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (; got < n; got++) {
        if (read_input(self, items[got], &in[got])) {
            got++;  /* its references, if any, are released below */
            result = Py_NewRef(Py_None);
            goto out;
        }
        total += IN_RECORD + (uint64_t)in[got].topic_len + (uint64_t)in[got].payload_len;
    }
    uint64_t want_out = total * 2 > self->min_buffer ? total * 2 : self->min_buffer;
    if (want_out > self->max_output)
        want_out = self->max_output;
    uint8_t *base = memory_data(self->ctx, self->mem);
    uint64_t msize = memory_size(self->ctx, self->mem);
    if (total > self->in_cap || self->out_cap < want_out || self->in_ptr + total > msize ||
        self->out_ptr + OUT_HEADER > msize || total > INT32_MAX) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    uint8_t *w = base + self->in_ptr;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t tl = (uint32_t)in[i].topic_len, pl = (uint32_t)in[i].payload_len;
        memcpy(w, &in[i].timestamp_ms, 8);
        memcpy(w + 8, &tl, 4);
        memcpy(w + 12, &pl, 4);
        memcpy(w + IN_RECORD, in[i].topic, tl);
        memcpy(w + IN_RECORD + tl, in[i].payload, pl);
        w += IN_RECORD + (uint64_t)tl + pl;
    }
    memset(base + self->out_ptr, 0, OUT_HEADER);
    raw_val *v = self->vals;
    v[0].i32 = (int32_t)(uint32_t)self->in_ptr;
    v[1].i32 = (int32_t)total;
    v[2].i32 = (int32_t)(uint32_t)n;
    v[3].i32 = (int32_t)(uint32_t)self->out_ptr;
    v[4].i32 = (int32_t)(uint32_t)self->out_cap;
    void *trap = NULL, *err;
    if (self->enter)
        self->enter(self->ticker);
    Py_BEGIN_ALLOW_THREADS
    err = call_unchecked(self->ctx, self->func, v, 5, &trap);
    Py_END_ALLOW_THREADS
    if (self->leave)
        self->leave(self->ticker);
    msize = memory_size(self->ctx, self->mem);  /* the call may have grown (and moved) it */
    self->size = msize;
    int32_t status = v[0].i32;
    if (err || trap || status != 0) {
        result = Py_BuildValue("(iNN)", status, PyLong_FromVoidPtr(err), PyLong_FromVoidPtr(trap));
        goto out;
    }
    result = read_outputs(self, memory_data(self->ctx, self->mem), msize, (uint64_t)n);
    if (result == Py_None) {
        Py_DECREF(result);
        result = Py_BuildValue("(iii)", status, 0, 0);
    }
out:
    release_inputs(in, got);
    if (in != stack)
        PyMem_Free(in);
    Py_DECREF(seq);
    return result;
}

static PyObject *BatchCall_get_size(BatchCall *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->size);
}

static PyMethodDef BatchCall_methods[] = {
    {"run", (PyCFunction)BatchCall_run, METH_O,
     "run(messages) -> outputs | None | (status, error address, trap address)"},
    {"buffers", (PyCFunction)(void (*)(void))BatchCall_buffers, METH_FASTCALL,
     "buffers(in_ptr, in_cap, out_ptr, out_cap): where the guest's buffers are now"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BatchCall_getset[] = {
    {"size", (getter)BatchCall_get_size, NULL, "memory size after the last call", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "iotwasm_v1_batch.BatchCall",
    .tp_basicsize = sizeof(BatchCall),
    .tp_dealloc = (destructor)BatchCall_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The common case of an iotwasm-v1 batch call, in one native call.",
    .tp_methods = BatchCall_methods,
    .tp_getset = BatchCall_getset,
    .tp_init = (initproc)BatchCall_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *bind(PyObject *mod, PyObject *const *args, Py_ssize_t n) {
    (void)mod;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "bind(call_unchecked, memory_data, memory_data_size)");
        return NULL;
    }
    void *p[3];
    for (int i = 0; i < 3; i++)
        if (!(p[i] = address(args[i], "a wasmtime function")))
            return NULL;
    call_unchecked = (call_unchecked_fn)p[0];
    memory_data = (memory_data_fn)p[1];
    memory_size = (memory_size_fn)p[2];
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(call_unchecked, memory_data, memory_data_size): the wasmtime functions' addresses"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "iotwasm_v1_batch",
    "One iotwasm-v1 batch call (frame, call, read outputs) in native code.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_iotwasm_v1_batch(void) {
    if (PyType_Ready(&BatchCallType) < 0)
        return NULL;
    s_topic = PyUnicode_InternFromString("topic");
    s_payload = PyUnicode_InternFromString("payload");
    s_timestamp_ms = PyUnicode_InternFromString("timestamp_ms");
    if (!s_topic || !s_payload || !s_timestamp_ms)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&BatchCallType);
    if (PyModule_AddObject(m, "BatchCall", (PyObject *)&BatchCallType) < 0) {
        Py_DECREF(&BatchCallType);
        Py_DECREF(m);
        return NULL;
    }
    /* what engine/v1_native.py checks before it uses a build: 2 takes the ticker's hooks */
    if (PyModule_AddIntConstant(m, "INTERFACE", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
