/*
 * zoo._rans: a range-asymmetric-numeral-system (rANS) coder driven by integer CDF tables.
 *
 * State: 64-bit, kept in [2^31, 2^63); renormalisation moves 32-bit words; probabilities have
 * 16-bit precision. Tables follow CompressAI's layout: row t holds cdf_length[t] entries, cdf[0] = 0,
 * cdf[len-1] = 65536, and the last symbol (index len-2) is the escape symbol. A value v is coded as
 * s = v - offset[t]; when s falls outside [0, len-2) the escape symbol is coded, followed by the exact
 * value in "bypass" form: a 4-bit count n-1 and n 4-bit digits, each coded with a uniform frequency.
 * Nothing here depends on floating point, so streams are bit-exact across platforms.
 *
 * Streams: 8 bytes of final encoder state, then 32-bit little-endian words in decode order.
 * A decoder that ends with the initial state and every word consumed has decoded the stream cleanly.
 *
 * Decoding a slot: a 257-entry lookup per table narrows the search to the symbols whose interval meets
 * the slot's 1/256th of the range; a binary search finishes it (most peaked tables need 0–1 steps).
 *
 * Threads: the loops run without the GIL, so every method holds the object's own lock while it touches the
 * object's state; one coder shared between threads serialises its calls instead of racing on freed memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PREC 16
#define TOTAL (1u << PREC)
#define RANS_L (1ull << 31)
#define LUT_BITS 8
#define LUT_SIZE ((1 << LUT_BITS) + 1)
#define BYPASS_BITS 4
#define MAX_BYPASS_DIGITS 16

typedef struct {
    uint32_t start;
    uint32_t freq;
} Op;

typedef struct {
    Op *ops;
    size_t n, cap;
} OpBuf;

static int opbuf_reserve(OpBuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + extra) cap *= 2;
    Op *p = (Op *)PyMem_RawRealloc(b->ops, cap * sizeof(Op));
    if (!p) return -1;
    b->ops = p;
    b->cap = cap;
    return 0;
}

/* ---- tables ------------------------------------------------------------------------------ */

typedef struct {
    const int32_t *cdf;     /* [T * stride] */
    const int32_t *length;  /* [T] */
    const int32_t *offset;  /* [T] */
    const int32_t *lut;     /* [T * LUT_SIZE] */
    Py_ssize_t ntables, stride;
} Tables;

/* Buffers are validated by zoo/coder.py (CdfTables) once; here only their sizes are checked. */
static int get_tables(PyObject *cdf, PyObject *length, PyObject *offset, PyObject *lut, Py_ssize_t stride,
                      Tables *t, Py_buffer views[4]) {
    PyObject *objs[4] = {cdf, length, offset, lut};
    for (int i = 0; i < 4; i++) {
        if (PyObject_GetBuffer(objs[i], &views[i], PyBUF_C_CONTIGUOUS) < 0) {
            for (int j = 0; j < i; j++) PyBuffer_Release(&views[j]);
            return -1;
        }
    }
    Py_ssize_t T = views[1].len / 4;
    if (stride <= 2 || views[0].len != T * stride * 4 || views[2].len != T * 4 || views[3].len != T * LUT_SIZE * 4) {
        for (int j = 0; j < 4; j++) PyBuffer_Release(&views[j]);
        PyErr_SetString(PyExc_ValueError, "inconsistent CDF table buffers");
        return -1;
    }
    t->cdf = (const int32_t *)views[0].buf;
    t->length = (const int32_t *)views[1].buf;
    t->offset = (const int32_t *)views[2].buf;
    t->lut = (const int32_t *)views[3].buf;
    t->ntables = T;
    t->stride = stride;
    return 0;
}

static void release_tables(Py_buffer views[4]) {
    for (int j = 0; j < 4; j++) PyBuffer_Release(&views[j]);
}

/* ---- per-object locks -------------------------------------------------------------------- */

/* Take the object's lock; waits without the GIL so the holder (which may need the GIL) can finish. */
static void lock_object(PyThread_type_lock lock) {
    if (!PyThread_acquire_lock(lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

/* tp_new for both coder types: the lock member sits at `lock_offset` in the object. */
static PyObject *new_locked_object(PyTypeObject *type, size_t lock_offset) {
    PyObject *self = type->tp_alloc(type, 0);
    if (!self) return NULL;
    PyThread_type_lock lock = PyThread_allocate_lock();
    if (!lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    *(PyThread_type_lock *)((char *)self + lock_offset) = lock;
    return self;
}

/* ---- encoder ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD OpBuf buf;
    PyThread_type_lock lock;
} EncoderObject;

/* Append the ops for symbols[i] with table indexes[i]; returns -1 (with *bad set) on a bad index. */
static int push_ops(OpBuf *b, const Tables *t, const int32_t *symbols, const int32_t *indexes, Py_ssize_t n,
                    Py_ssize_t *bad) {
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t idx = indexes[i];
        if (idx < 0 || idx >= t->ntables) {
            *bad = i;
            return -1;
        }
        const int32_t *cdf = t->cdf + (Py_ssize_t)idx * t->stride;
        int32_t len = t->length[idx];
        int32_t escape = len - 2;
        int64_t s = (int64_t)symbols[i] - (int64_t)t->offset[idx];
        if (opbuf_reserve(b, 2 + MAX_BYPASS_DIGITS) < 0) return -2;
        if (s >= 0 && s < escape) {
            b->ops[b->n++] = (Op){(uint32_t)cdf[s], (uint32_t)(cdf[s + 1] - cdf[s])};
            continue;
        }
        b->ops[b->n++] = (Op){(uint32_t)cdf[escape], (uint32_t)(cdf[escape + 1] - cdf[escape])};
        uint64_t raw = s < 0 ? (uint64_t)(-2 * s - 1) : (uint64_t)(2 * (s - escape));
        int digits = 1;
        while (digits < MAX_BYPASS_DIGITS && (raw >> (BYPASS_BITS * digits))) digits++;
        const uint32_t unit = TOTAL >> BYPASS_BITS;
        b->ops[b->n++] = (Op){(uint32_t)(digits - 1) * unit, unit};
        for (int d = 0; d < digits; d++) {
            uint32_t digit = (uint32_t)((raw >> (BYPASS_BITS * d)) & ((1u << BYPASS_BITS) - 1));
            b->ops[b->n++] = (Op){digit * unit, unit};
        }
    }
    return 0;
}

/* rANS runs backwards: encode the ops in reverse so the decoder reads them forwards. */
static PyObject *flush_ops(const OpBuf *b) {
    size_t cap = b->n + 4;
    uint32_t *words = (uint32_t *)PyMem_RawMalloc(cap * sizeof(uint32_t));
    if (!words) return PyErr_NoMemory();
    size_t pos = cap; /* words are written downwards from the end */
    uint64_t x = RANS_L;
    Py_BEGIN_ALLOW_THREADS
    for (size_t k = b->n; k-- > 0;) {
        uint64_t freq = b->ops[k].freq;
        uint64_t x_max = ((RANS_L >> PREC) << 32) * freq;
        if (x >= x_max) {
            words[--pos] = (uint32_t)x;
            x >>= 32;
        }
        x = ((x / freq) << PREC) + (x % freq) + b->ops[k].start;
    }
    Py_END_ALLOW_THREADS
    words[--pos] = (uint32_t)(x >> 32);
    words[--pos] = (uint32_t)x;
    size_t nwords = cap - pos;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(nwords * 4));
    if (out) {
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
        for (size_t i = 0; i < nwords; i++) {
            uint32_t w = words[pos + i];
            dst[4 * i] = (unsigned char)w;
            dst[4 * i + 1] = (unsigned char)(w >> 8);
            dst[4 * i + 2] = (unsigned char)(w >> 16);
            dst[4 * i + 3] = (unsigned char)(w >> 24);
        }
    }
    PyMem_RawFree(words);
    return out;
}

static int raise_bad_index(Py_ssize_t i, Py_ssize_t T) {
    PyErr_Format(PyExc_ValueError, "table index out of range at element %zd (tables: %zd)", i, T);
    return -1;
}

/* push(symbols, indexes, cdf, length, offset, lut, stride) */
static PyObject *Encoder_push(EncoderObject *self, PyObject *args) {
    PyObject *sym, *idx, *cdf, *len, *off, *lut;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "OOOOOOn", &sym, &idx, &cdf, &len, &off, &lut, &stride)) return NULL;
    Py_buffer vs, vi, tv[4];
    Tables t;
    if (get_tables(cdf, len, off, lut, stride, &t, tv) < 0) return NULL;
    if (PyObject_GetBuffer(sym, &vs, PyBUF_C_CONTIGUOUS) < 0) {
        release_tables(tv);
        return NULL;
    }
    if (PyObject_GetBuffer(idx, &vi, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&vs);
        release_tables(tv);
        return NULL;
    }
    PyObject *result = NULL;
    if (vs.len != vi.len || vs.len % 4) {
        PyErr_SetString(PyExc_ValueError, "symbols and indexes must be int32 arrays of one size");
    } else {
        Py_ssize_t bad = -1;
        lock_object(self->lock);
        size_t before = self->buf.n;
        int rc = push_ops(&self->buf, &t, (const int32_t *)vs.buf, (const int32_t *)vi.buf, vs.len / 4, &bad);
        if (rc < 0) self->buf.n = before; /* a failed push adds nothing */
        PyThread_release_lock(self->lock);
        if (rc == -1) raise_bad_index(bad, t.ntables);
        else if (rc == -2) PyErr_NoMemory();
        else result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&vs);
    PyBuffer_Release(&vi);
    release_tables(tv);
    return result;
}

static PyObject *Encoder_flush(EncoderObject *self, PyObject *Py_UNUSED(ignored)) {
    lock_object(self->lock);
    PyObject *out = flush_ops(&self->buf);
    if (out) self->buf.n = 0; /* on failure (out of memory) the pushed symbols stay for another try */
    PyThread_release_lock(self->lock);
    return out;
}

static PyObject *Encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    return new_locked_object(type, offsetof(EncoderObject, lock));
}

static void Encoder_dealloc(EncoderObject *self) {
    PyMem_RawFree(self->buf.ops);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Encoder_methods[] = {
    {"push", (PyCFunction)Encoder_push, METH_VARARGS, "Append symbols coded with the given tables."},
    {"flush", (PyCFunction)Encoder_flush, METH_NOARGS, "Encode everything pushed so far into bytes and reset."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zoo._rans.Encoder",
    .tp_basicsize = sizeof(EncoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Encoder_new,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_doc = "Accumulates symbols from any number of push() calls into one rANS stream.",
};

/* ---- decoder ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD PyObject *data; /* bytes */
    const unsigned char *buf;
    Py_ssize_t size, pos;
    uint64_t x;
    int overrun;
    PyThread_type_lock lock;
} DecoderObject;

static inline uint32_t read_word(DecoderObject *d) {
    if (d->pos + 4 > d->size) {
        d->overrun = 1;
        return 0;
    }
    const unsigned char *p = d->buf + d->pos;
    d->pos += 4;
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint32_t decode_slot(DecoderObject *d) { return (uint32_t)(d->x & (TOTAL - 1)); }

static inline void advance(DecoderObject *d, uint32_t start, uint32_t freq) {
    d->x = (uint64_t)freq * (d->x >> PREC) + (d->x & (TOTAL - 1)) - start;
    if (d->x < RANS_L) {
        d->x = (d->x << 32) | read_word(d);
    }
}

static PyObject *Decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    return new_locked_object(type, offsetof(DecoderObject, lock));
}

static int Decoder_init(DecoderObject *self, PyObject *args, PyObject *kwds) {
    PyObject *data;
    if (!PyArg_ParseTuple(args, "S", &data)) return -1;
    lock_object(self->lock);
    /* the old bytes are released only after the lock is dropped: no other call can still be reading them */
    PyObject *old = self->data;
    self->data = Py_NewRef(data);
    self->buf = (const unsigned char *)PyBytes_AS_STRING(data);
    self->size = PyBytes_GET_SIZE(data);
    self->pos = 0;
    self->overrun = 0;
    uint64_t lo = read_word(self);
    uint64_t hi = read_word(self);
    self->x = lo | (hi << 32);
    int overrun = self->overrun, bad_state = self->x < RANS_L;
    PyThread_release_lock(self->lock);
    Py_XDECREF(old);
    if (overrun) {
        PyErr_SetString(PyExc_EOFError, "entropy-coded stream is shorter than its 8-byte header");
        return -1;
    }
    if (bad_state) {
        PyErr_SetString(PyExc_EOFError, "entropy-coded stream has an invalid initial state");
        return -1;
    }
    return 0;
}

static inline int32_t find_symbol(const int32_t *cdf, const int32_t *lut, uint32_t slot) {
    int32_t lo = lut[slot >> (PREC - LUT_BITS)], hi = lut[(slot >> (PREC - LUT_BITS)) + 1];
    /* largest s in [lo, hi] with cdf[s] <= slot */
    while (lo < hi) {
        int32_t mid = (lo + hi + 1) >> 1;
        if ((uint32_t)cdf[mid] <= slot) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* decode(indexes, out, cdf, length, offset, lut, stride) -> None; fills the int32 buffer `out` */
static PyObject *Decoder_decode(DecoderObject *self, PyObject *args) {
    PyObject *idx, *out, *cdf, *len, *off, *lut;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "OOOOOOn", &idx, &out, &cdf, &len, &off, &lut, &stride)) return NULL;
    if (!self->data) {
        PyErr_SetString(PyExc_RuntimeError, "decoder not initialised");
        return NULL;
    }
    Py_buffer vi, vo, tv[4];
    Tables t;
    if (get_tables(cdf, len, off, lut, stride, &t, tv) < 0) return NULL;
    if (PyObject_GetBuffer(idx, &vi, PyBUF_C_CONTIGUOUS) < 0) {
        release_tables(tv);
        return NULL;
    }
    if (PyObject_GetBuffer(out, &vo, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&vi);
        release_tables(tv);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = vi.len / 4, bad = -1;
    if (vi.len != vo.len || vi.len % 4) {
        PyErr_SetString(PyExc_ValueError, "indexes and output must be int32 arrays of one size");
        goto done;
    }
    const int32_t *indexes = (const int32_t *)vi.buf;
    int32_t *symbols = (int32_t *)vo.buf;
    const uint32_t unit = TOTAL >> BYPASS_BITS;
    lock_object(self->lock);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t ti = indexes[i];
        if (ti < 0 || ti >= t.ntables) {
            bad = i;
            break;
        }
        const int32_t *cdfrow = t.cdf + (Py_ssize_t)ti * t.stride;
        int32_t escape = t.length[ti] - 2;
        uint32_t slot = decode_slot(self);
        int32_t s = find_symbol(cdfrow, t.lut + (Py_ssize_t)ti * LUT_SIZE, slot);
        advance(self, (uint32_t)cdfrow[s], (uint32_t)(cdfrow[s + 1] - cdfrow[s]));
        uint64_t value = (uint64_t)(int64_t)s;
        if (s == escape) {
            uint32_t digits = (decode_slot(self) >> (PREC - BYPASS_BITS)) + 1;
            advance(self, (digits - 1) * unit, unit);
            uint64_t raw = 0;
            for (uint32_t d = 0; d < digits; d++) {
                uint32_t digit = decode_slot(self) >> (PREC - BYPASS_BITS);
                advance(self, digit * unit, unit);
                raw |= (uint64_t)digit << (BYPASS_BITS * d);
            }
            /* unsigned arithmetic: a garbage stream yields a wrapped value, never undefined behaviour */
            value = (raw & 1) ? (uint64_t)0 - ((raw >> 1) + 1) : (raw >> 1) + (uint64_t)(int64_t)escape;
        }
        symbols[i] = (int32_t)(uint32_t)(value + (uint64_t)(int64_t)t.offset[ti]);
    }
    Py_END_ALLOW_THREADS
    int overrun = self->overrun;
    PyThread_release_lock(self->lock);
    if (bad >= 0) {
        raise_bad_index(bad, t.ntables);
        goto done;
    }
    if (overrun) {
        PyErr_SetString(PyExc_EOFError, "entropy-coded stream ended early");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&vi);
    PyBuffer_Release(&vo);
    release_tables(tv);
    return result;
}

static PyObject *Decoder_finished(DecoderObject *self, PyObject *Py_UNUSED(ignored)) {
    lock_object(self->lock);
    int done = self->data && !self->overrun && self->x == RANS_L && self->pos == self->size;
    PyThread_release_lock(self->lock);
    return PyBool_FromLong(done);
}

static void Decoder_dealloc(DecoderObject *self) {
    Py_XDECREF(self->data);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_VARARGS, "Decode len(indexes) symbols into out."},
    {"finished", (PyCFunction)Decoder_finished, METH_NOARGS, "True when the stream was consumed exactly."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zoo._rans.Decoder",
    .tp_basicsize = sizeof(DecoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Decoder_new,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
    .tp_doc = "Decodes one rANS stream across any number of decode() calls.",
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "zoo._rans", "rANS entropy coder over integer CDF tables.", -1, NULL,
};

PyMODINIT_FUNC PyInit__rans(void) {
    if (PyType_Ready(&EncoderType) < 0 || PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "PRECISION", PREC);
    PyModule_AddIntConstant(m, "LUT_SIZE", LUT_SIZE);
    if (PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
