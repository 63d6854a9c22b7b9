/* abkit.core._speedups: the assignment hot path in C, for the few steps where CPython's per-call
 * objects cost more than the work. Four pieces, each the native twin of a pure-Python one that
 * stays the reference and the fallback (this build is optional, pyproject.toml):
 *
 * - Seeded: the seeded SHA-256 digests of abkit.core.hashing;
 * - RecentKeys: the memory of logged exposures of abkit.core.recent;
 * - PlainRequests: the common-case check of a unit id and its attributes of abkit.core.limits;
 * - read_plain_unit, read_plain_batch and assign_plain: Assign and AssignBatch calls of plain
 *   units, from their wire bytes to the answers and exposure rows, of abkit.core.plain.
 *
 * Each is held equal to its Python twin by tests (hash vectors, property tests). All of it is
 * pure: no I/O, no clock, no environment, like the rest of abkit/core.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

/* ---------------------------------------------------------------------------------------------
 * Seeded.
 *
 * Every bucket is sha256(utf8(seed + ":" + unit_id)) (abkit/core/hashing.py, docs/design.md
 * "Hashing"). Through hashlib one digest costs about 280 ns on this project's machine, of which
 * OpenSSL's compression is about 50: the rest is copying a hash object, a method call to feed it
 * and another to read it, each allocating. Here a Seeded object holds the SHA-256 state after
 * "seed:" in a plain struct; calling it with a unit id copies the struct on the stack, feeds the
 * id's UTF-8 (cached by CPython for ASCII strings: no encoding, no allocation) and returns the
 * 32-byte digest -- about 60 ns, with OpenSSL's SHA-256 (SHA-NI where the CPU has it). Same
 * bytes as hashlib by construction (one SHA-256 over the same input). The shared state is only
 * read: safe from any thread.
 *
 * OpenSSL's low-level SHA256_* functions are deprecated in 3.0 in favour of EVP, whose context is
 * heap-allocated and looked up through a provider on every use -- what this exists to avoid.
 * Every OpenSSL 3 release still ships them.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    SHA256_CTX prefix; /* the state after utf8(seed) and ":" */
} Seeded;

static PyObject *
seeded_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a seeded digest takes one argument: the unit id");
        return NULL;
    }
    PyObject *unit = args[0];
    if (!PyUnicode_Check(unit)) {
        PyErr_Format(PyExc_TypeError, "unit id must be str, not %.100s", Py_TYPE(unit)->tp_name);
        return NULL;
    }
    Py_ssize_t size;
    const char *data = PyUnicode_AsUTF8AndSize(unit, &size); /* lone surrogates: an error */
    if (data == NULL) {
        return NULL;
    }
    SHA256_CTX ctx = ((Seeded *)self)->prefix;
    unsigned char out[SHA256_DIGEST_LENGTH];
    SHA256_Update(&ctx, data, (size_t)size);
    SHA256_Final(out, &ctx);
    return PyBytes_FromStringAndSize((const char *)out, SHA256_DIGEST_LENGTH);
}

static PyObject *
seeded_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"seed", NULL};
    PyObject *text;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U:Seeded", keywords, &text)) {
        return NULL; /* a str only, as the hashlib path (bytes would hash as their repr there) */
    }
    Py_ssize_t size;
    const char *seed = PyUnicode_AsUTF8AndSize(text, &size); /* lone surrogates: an error */
    if (seed == NULL) {
        return NULL;
    }
    Seeded *self = (Seeded *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = seeded_call;
    SHA256_Init(&self->prefix);
    SHA256_Update(&self->prefix, seed, (size_t)size);
    SHA256_Update(&self->prefix, ":", 1);
    return (PyObject *)self;
}

PyDoc_STRVAR(seeded_doc,
"Seeded(seed)\n--\n\n"
"The SHA-256 state after utf8(seed + ':'). Called with a unit id (str), returns\n"
"sha256(utf8(seed + ':' + unit_id)).digest().");

static PyTypeObject SeededType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "abkit.core._speedups.Seeded",
    .tp_doc = seeded_doc,
    .tp_basicsize = sizeof(Seeded),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Seeded, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = seeded_new,
};

/* ---------------------------------------------------------------------------------------------
 * RecentKeys: the bounded memory of (experiment, unit) pairs whose exposure was already logged
 * (abkit/core/recent.py has the pure-Python one and the contract both keep).
 *
 * A set-associative table, as a CPU cache: buckets of WAYS entries, one 64-byte cache line each.
 * A pair lives in the bucket its hash picks, most recent first; a new pair goes in front and
 * pushes the bucket's oldest out. An entry is a tag -- the top 48 bits of the pair's hash and
 * the experiment's number (experiments are numbered in a dict as they come) -- and a strong
 * reference to the unit id. A check reads one cache line and compares tags; the unit strings
 * are compared only when a tag matches, so a new pair costs one cache miss and no allocation,
 * where two Python sets cost a miss each, a resize now and then, and the calls around them. The
 * references a full bucket pushes out are released in batches (RELEASE_BATCH), so that their
 * cache misses overlap instead of landing one by one on the caller.
 *
 * Exact: a pair is reported seen only if its experiment (by number) and its unit (by string) are
 * in the bucket; forgetting one only costs a redundant, idempotent write later. The latest WAYS
 * pairs are always remembered (a pair leaves only after WAYS later ones landed in its bucket);
 * each of the latest capacity / 2 is with probability at least 86 % (a Poisson(2) count of later
 * arrivals in its bucket is at most 3 that often), 96 % on average. Past 65,535 distinct
 * experiments the memory starts afresh.
 *
 * Called with the GIL held and never releasing it, and calling no Python code (exact str hashes
 * and comparisons; the numbering dict holds exact str keys), first() and `in` are atomic, and
 * update() is atomic per pair (its iterator is the caller's code): the table needs no lock.
 * ------------------------------------------------------------------------------------------- */

#define WAYS 4
#define EXPERIMENT_BITS 16
#define MAX_EXPERIMENTS ((1 << EXPERIMENT_BITS) - 1)
#define RELEASE_BATCH 1024

typedef struct {
    uint64_t tag;   /* hash bits | experiment number (from 1; 0: an empty entry) */
    PyObject *unit; /* exact str, NULL in an empty entry */
} Entry;

typedef struct {
    PyObject_HEAD
    void *allocation; /* what calloc returned */
    Entry *entries;   /* in it, buckets * WAYS, 64-byte aligned: one bucket, one cache line */
    Py_ssize_t buckets;
    Py_ssize_t count;
    PyObject *numbers; /* dict: experiment key (exact str) -> its number, 1..MAX_EXPERIMENTS */
    PyObject *released[RELEASE_BATCH];
    Py_ssize_t n_released;
} Recent;

static void
release_pending(Recent *self)
{
    for (Py_ssize_t i = 0; i < self->n_released; i++) {
        Py_DECREF(self->released[i]);
    }
    self->n_released = 0;
}

static void
release(Recent *self, PyObject *unit)
{
    if (self->n_released == RELEASE_BATCH) {
        release_pending(self);
    }
    self->released[self->n_released++] = unit;
}

static void
forget_all(Recent *self)
{
    for (Py_ssize_t i = 0; i < self->buckets * WAYS; i++) {
        if (self->entries[i].unit != NULL) { /* pages never used stay untouched */
            Py_CLEAR(self->entries[i].unit);
            self->entries[i].tag = 0;
        }
    }
    self->count = 0;
    PyDict_Clear(self->numbers);
}

/* The unit id as an exact str (new reference; a subclass is copied, so that its __hash__ and
 * __eq__ are never called), or NULL with TypeError. */
static PyObject *
exact_unit(PyObject *unit)
{
    if (PyUnicode_CheckExact(unit)) {
        return Py_NewRef(unit);
    }
    if (PyUnicode_Check(unit)) {
        return PyUnicode_FromObject(unit);
    }
    PyErr_Format(PyExc_TypeError, "unit id must be str, not %.100s", Py_TYPE(unit)->tp_name);
    return NULL;
}

/* The experiment's number: 0 when it has none and create is false; -1 on an error. */
static long
experiment_number(Recent *self, PyObject *experiment, int create)
{
    if (!PyUnicode_Check(experiment)) {
        PyErr_Format(PyExc_TypeError, "experiment key must be str, not %.100s",
                     Py_TYPE(experiment)->tp_name);
        return -1;
    }
    PyObject *key = PyUnicode_CheckExact(experiment) ? Py_NewRef(experiment)
                                                     : PyUnicode_FromObject(experiment);
    if (key == NULL) {
        return -1;
    }
    long number = 0;
    PyObject *known = PyDict_GetItemWithError(self->numbers, key); /* borrowed */
    if (known != NULL) {
        number = PyLong_AsLong(known);
    }
    else if (!PyErr_Occurred() && create) {
        if (PyDict_GET_SIZE(self->numbers) >= MAX_EXPERIMENTS) {
            forget_all(self);
        }
        number = (long)PyDict_GET_SIZE(self->numbers) + 1;
        PyObject *value = PyLong_FromLong(number);
        if (value == NULL || PyDict_SetItem(self->numbers, key, value) < 0) {
            number = -1;
        }
        Py_XDECREF(value);
    }
    else if (PyErr_Occurred()) {
        number = -1;
    }
    Py_DECREF(key);
    return number;
}

/* The pair's bucket and tag, and where in the bucket the pair is (-1: not there). */
static Entry *
find(Recent *self, long number, PyObject *unit, uint64_t *tag, Py_ssize_t *at)
{
    Py_uhash_t h = (Py_uhash_t)PyObject_Hash(unit); /* cached on the str object */
    h = (h ^ ((Py_uhash_t)number * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL;
    Entry *bucket = self->entries + (Py_ssize_t)((h >> 16) % (Py_uhash_t)self->buckets) * WAYS;
    *tag = ((uint64_t)h & ~(uint64_t)MAX_EXPERIMENTS) | (uint64_t)number;
    *at = -1;
    for (Py_ssize_t i = 0; i < WAYS && bucket[i].unit != NULL; i++) {
        if (bucket[i].tag == *tag &&
            (bucket[i].unit == unit || PyUnicode_Compare(bucket[i].unit, unit) == 0)) {
            *at = i;
            break;
        }
    }
    return bucket;
}

/* Remember the pair (steals unit); returns 1 when it is new, 0 when it was known. */
static int
remember(Recent *self, long number, PyObject *unit)
{
    uint64_t tag;
    Py_ssize_t at;
    Entry *bucket = find(self, number, unit, &tag, &at);
    if (at >= 0) { /* known: move it to the front, the bucket's most recent */
        Entry hit = bucket[at];
        memmove(bucket + 1, bucket, (size_t)at * sizeof(Entry));
        bucket[0] = hit;
        Py_DECREF(unit);
        return 0;
    }
    PyObject *oldest = bucket[WAYS - 1].unit;
    memmove(bucket + 1, bucket, (WAYS - 1) * sizeof(Entry));
    bucket[0].tag = tag;
    bucket[0].unit = unit;
    if (oldest != NULL) {
        release(self, oldest);
    }
    else {
        self->count++;
    }
    return 1;
}

static PyObject *
recent_first(Recent *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "first() takes an experiment key and a unit id");
        return NULL;
    }
    long number = experiment_number(self, args[0], 1);
    if (number < 0) {
        return NULL;
    }
    PyObject *unit = exact_unit(args[1]);
    if (unit == NULL) {
        return NULL;
    }
    return PyBool_FromLong(remember(self, number, unit));
}

static PyObject *
recent_update(Recent *self, PyObject *pairs)
{
    PyObject *iterator = PyObject_GetIter(pairs);
    if (iterator == NULL) {
        return NULL;
    }
    PyObject *pair;
    while ((pair = PyIter_Next(iterator)) != NULL) {
        long number = -1;
        PyObject *unit = NULL;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "update() takes (experiment key, unit id) tuples");
        }
        else if ((number = experiment_number(self, PyTuple_GET_ITEM(pair, 0), 1)) >= 0) {
            unit = exact_unit(PyTuple_GET_ITEM(pair, 1));
        }
        if (unit != NULL) {
            remember(self, number, unit); /* before the pair goes: its release runs no code */
        }
        Py_DECREF(pair);
        if (unit == NULL) {
            Py_DECREF(iterator);
            return NULL;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
recent_contains(Recent *self, PyObject *key)
{
    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(key, 0)) || !PyUnicode_Check(PyTuple_GET_ITEM(key, 1))) {
        return 0; /* not a pair of strings: never remembered */
    }
    long number = experiment_number(self, PyTuple_GET_ITEM(key, 0), 0);
    if (number <= 0) {
        return number; /* 0: an experiment never seen; -1: an error */
    }
    PyObject *unit = exact_unit(PyTuple_GET_ITEM(key, 1));
    if (unit == NULL) {
        return -1;
    }
    uint64_t tag;
    Py_ssize_t at;
    find(self, number, unit, &tag, &at);
    Py_DECREF(unit);
    return at >= 0;
}

static Py_ssize_t
recent_length(Recent *self)
{
    return self->count;
}

static PyObject *
recent_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:RecentKeys", keywords, &capacity)) {
        return NULL;
    }
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be at least 1");
        return NULL;
    }
    Recent *self = (Recent *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->buckets = capacity / WAYS > 0 ? capacity / WAYS : 1;
    /* calloc, not aligned_alloc and memset: a large table comes as zero pages from the kernel,
     * resident only once used (a client's memory grows with the pairs it meets). */
    self->allocation = calloc((size_t)self->buckets + 1, WAYS * sizeof(Entry)); /* +1: to align */
    self->numbers = PyDict_New();
    if (self->allocation == NULL || self->numbers == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->entries = (Entry *)(((uintptr_t)self->allocation + 63) & ~(uintptr_t)63);
    return (PyObject *)self;
}

static void
recent_dealloc(Recent *self)
{
    if (self->entries != NULL) {
        for (Py_ssize_t i = 0; i < self->buckets * WAYS; i++) {
            Py_XDECREF(self->entries[i].unit);
        }
    }
    free(self->allocation);
    release_pending(self);
    Py_XDECREF(self->numbers);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef recent_methods[] = {
    {"first", (PyCFunction)(void (*)(void))recent_first, METH_FASTCALL,
     "first(experiment_key, unit_id): True, and remember the pair, unless it was seen recently."},
    {"update", (PyCFunction)recent_update, METH_O,
     "update(pairs): remember (experiment_key, unit_id) tuples."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods recent_as_sequence = {
    .sq_length = (lenfunc)recent_length,
    .sq_contains = (objobjproc)recent_contains,
};

PyDoc_STRVAR(recent_doc,
"RecentKeys(capacity)\n--\n\n"
"A bounded, exact memory of recently seen (experiment_key, unit_id) pairs: at most\n"
"max(capacity, 4) of them, the latest 4 always, about 96 % of the latest capacity / 2.");

static PyTypeObject RecentType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "abkit.core._speedups.RecentKeys",
    .tp_doc = recent_doc,
    .tp_basicsize = sizeof(Recent),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = recent_new,
    .tp_dealloc = (destructor)recent_dealloc,
    .tp_methods = recent_methods,
    .tp_as_sequence = &recent_as_sequence,
};

/* ---------------------------------------------------------------------------------------------
 * PlainRequests: is this unit id, with these attributes, the common case that needs no further
 * check? The same answer as abkit.core.limits._plain_request (the reference; a property test
 * holds them equal): a unit id of printable ASCII and an acceptable length; attributes None or a
 * dict of at most max_attributes, each name printable ASCII of an acceptable length, each value a
 * bool, an int exact as a double, a finite float, or a str short enough in any encoding. False
 * only sends the request to the full check, which accepts, converts or names the problem. The
 * limits come from abkit.core.limits when it builds the checker: written down once.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_ssize_t max_unit_bytes;
    Py_ssize_t max_attributes;
    Py_ssize_t max_name_length;
    Py_ssize_t max_string_bytes;
    long long int_exact;
} Plain;

/* A str of 1..limit characters, all printable ASCII (what str.isascii() and isprintable() say). */
/* Python 3.11 still has "legacy" strings, built by deprecated C APIs and not ready until asked;
 * their length and kind are not set yet. The full check takes them. */
#if PY_VERSION_HEX < 0x030C0000
#define NOT_READY(text) (!PyUnicode_IS_READY(text))
#else
#define NOT_READY(text) 0
#endif

static int
printable_ascii(PyObject *text, Py_ssize_t limit)
{
    if (!PyUnicode_CheckExact(text) || NOT_READY(text) || !PyUnicode_IS_ASCII(text)) {
        return 0;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (length == 0 || length > limit) {
        return 0;
    }
    const Py_UCS1 *c = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < length; i++) {
        if (c[i] < 0x20 || c[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

static int
plain_value(Plain *self, PyObject *value)
{
    if (PyUnicode_CheckExact(value)) { /* at most 4 bytes of UTF-8 a character */
        return !NOT_READY(value) && PyUnicode_GET_LENGTH(value) <= self->max_string_bytes / 4;
    }
    if (PyBool_Check(value)) {
        return 1;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        return !overflow && number >= -self->int_exact && number <= self->int_exact;
    }
    if (PyFloat_CheckExact(value)) {
        return isfinite(PyFloat_AS_DOUBLE(value));
    }
    return 0;
}

static PyObject *
plain_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Plain *self = (Plain *)op;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "plain_request takes a unit id and its attributes");
        return NULL;
    }
    PyObject *attributes = args[1];
    if (!printable_ascii(args[0], self->max_unit_bytes)) {
        Py_RETURN_FALSE;
    }
    if (attributes == Py_None) {
        Py_RETURN_TRUE;
    }
    if (!PyDict_CheckExact(attributes) || PyDict_GET_SIZE(attributes) > self->max_attributes) {
        Py_RETURN_FALSE; /* another mapping: the full check reads it */
    }
    Py_ssize_t position = 0;
    PyObject *name, *value;
    while (PyDict_Next(attributes, &position, &name, &value)) {
        if (!printable_ascii(name, self->max_name_length) || !plain_value(self, value)) {
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

static PyObject *
plain_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"max_unit_bytes", "max_attributes", "max_name_length",
                               "max_string_bytes", "int_exact", NULL};
    Py_ssize_t unit, attributes, name, string;
    long long exact;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$nnnnL:PlainRequests", keywords, &unit,
                                     &attributes, &name, &string, &exact)) {
        return NULL;
    }
    Plain *self = (Plain *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = plain_call;
    self->max_unit_bytes = unit;
    self->max_attributes = attributes;
    self->max_name_length = name;
    self->max_string_bytes = string;
    self->int_exact = exact;
    return (PyObject *)self;
}

PyDoc_STRVAR(plain_doc,
"PlainRequests(*, max_unit_bytes, max_attributes, max_name_length, max_string_bytes, int_exact)\n"
"--\n\n"
"Called with (unit_id, attributes): True when both are the common case that needs no further\n"
"check (abkit.core.limits.plain_request).");

static PyTypeObject PlainType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "abkit.core._speedups.PlainRequests",
    .tp_doc = plain_doc,
    .tp_basicsize = sizeof(Plain),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Plain, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = plain_new,
};

/* ---------------------------------------------------------------------------------------------
 * Plain calls: an Assign request, or an AssignBatch request whose units all are, in the common
 * case -- a printable-ASCII unit id, no attributes, the same experiment keys -- read from its
 * wire bytes, assigned and encoded without a Python object per unit beyond the unit's str and
 * its answer. The pure-Python twins are abkit/core/plain.py (read: None, i.e. "take the
 * protobuf path"; assign: the compiled experiment's own closure), and property tests hold the
 * two equal.
 *
 * read_plain_unit and read_plain_batch(data, max_unit_bytes): the protobuf wire format
 * (protobuf.dev, "Encoding") of AssignRequest { string unit_id = 1; map<...> attributes = 2;
 * repeated string experiment_keys = 3; } and of AssignBatchRequest { repeated AssignRequest
 * requests = 1; }. Anything else -- an attribute, an unknown or repeated field, a unit id that is not plain, keys
 * that differ between units, invalid UTF-8, no units -- returns None: the caller parses the
 * request with protobuf and checks it unit by unit, which accepts it or names the problem.
 * ------------------------------------------------------------------------------------------- */

#define MAX_PLAIN_KEYS 100

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
} Span;

/* A varint at *p (advanced past it); 0 when it runs past end or over 10 bytes. */
static int
read_varint(const unsigned char **p, const unsigned char *end, uint64_t *out)
{
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char byte = *(*p)++;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* A length-delimited field's payload at *p (advanced past it); 0 when it runs past end. */
static int
read_span(const unsigned char **p, const unsigned char *end, Span *out)
{
    uint64_t size;
    if (!read_varint(p, end, &size) || size > (uint64_t)(end - *p)) {
        return 0;
    }
    out->data = *p;
    out->size = (Py_ssize_t)size;
    *p += size;
    return 1;
}

/* One AssignRequest: its unit id and keys, or 0 if it is not the plain case. */
static int
read_unit(Span message, Span *unit, Span *keys, Py_ssize_t *n_keys)
{
    const unsigned char *p = message.data, *end = message.data + message.size;
    int has_unit = 0;
    *n_keys = 0;
    while (p < end) {
        uint64_t tag;
        Span field;
        if (!read_varint(&p, end, &tag) || (tag != 0x0a && tag != 0x1a) ||
            !read_span(&p, end, &field)) {
            return 0; /* attributes (0x12), an unknown field, or a malformed one */
        }
        if (tag == 0x0a) {
            if (has_unit) {
                return 0; /* a singular field twice: protobuf keeps the last; let it */
            }
            has_unit = 1;
            *unit = field;
        }
        else {
            if (*n_keys == MAX_PLAIN_KEYS) {
                return 0;
            }
            keys[(*n_keys)++] = field;
        }
    }
    return has_unit;
}

static int
plain_unit(Span unit, Py_ssize_t limit)
{
    if (unit.size == 0 || unit.size > limit) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < unit.size; i++) {
        if (unit.data[i] < 0x20 || unit.data[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* The keys as a tuple of str, or NULL: with an error set, or without one when a key is not
 * UTF-8 (protobuf rejects the request, with its own message). */
static PyObject *
key_tuple(const Span *keys, Py_ssize_t n)
{
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *key = PyUnicode_DecodeUTF8((const char *)keys[k].data, keys[k].size, "strict");
        if (key == NULL) {
            Py_DECREF(tuple);
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
            }
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, k, key);
    }
    return tuple;
}

static PyObject *
ascii_str(Span text)
{
    PyObject *out = PyUnicode_New(text.size, 127);
    if (out != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(out), text.data, (size_t)text.size);
    }
    return out;
}

static int
read_arguments(PyObject *const *args, Py_ssize_t nargs, const char *name, Py_ssize_t *limit)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || (*limit = PyLong_AsSsize_t(args[1])) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%s takes the request's bytes and max_unit_bytes", name);
        }
        return 0;
    }
    return 1;
}

/* read_plain_unit(data, max_unit_bytes): (unit id, keys) of a plain AssignRequest, or None. */
static PyObject *
read_plain_unit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t limit, n_keys;
    if (!read_arguments(args, nargs, "read_plain_unit", &limit)) {
        return NULL;
    }
    Span message = {(const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0])};
    Span unit, keys[MAX_PLAIN_KEYS];
    if (!read_unit(message, &unit, keys, &n_keys) || !plain_unit(unit, limit)) {
        Py_RETURN_NONE;
    }
    PyObject *key_list = key_tuple(keys, n_keys);
    if (key_list == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *unit_id = ascii_str(unit);
    PyObject *result = unit_id == NULL ? NULL : PyTuple_Pack(2, unit_id, key_list);
    Py_XDECREF(unit_id);
    Py_DECREF(key_list);
    return result;
}

static PyObject *
read_plain_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t limit;
    if (!read_arguments(args, nargs, "read_plain_batch", &limit)) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *end = p + PyBytes_GET_SIZE(args[0]);
    Span first_keys[MAX_PLAIN_KEYS], keys[MAX_PLAIN_KEYS];
    Py_ssize_t n_first = -1, n_keys;
    PyObject *units = PyList_New(0);
    if (units == NULL) {
        return NULL;
    }
    while (p < end) {
        uint64_t tag;
        Span message, unit;
        if (!read_varint(&p, end, &tag) || tag != 0x0a || !read_span(&p, end, &message) ||
            !read_unit(message, &unit, n_first < 0 ? first_keys : keys, &n_keys) ||
            !plain_unit(unit, limit)) {
            goto not_plain;
        }
        if (n_first < 0) {
            n_first = n_keys;
        }
        else {
            if (n_keys != n_first) {
                goto not_plain;
            }
            for (Py_ssize_t k = 0; k < n_keys; k++) {
                if (keys[k].size != first_keys[k].size ||
                    memcmp(keys[k].data, first_keys[k].data, (size_t)keys[k].size) != 0) {
                    goto not_plain;
                }
            }
        }
        PyObject *text = ascii_str(unit);
        if (text == NULL) {
            goto error;
        }
        int failed = PyList_Append(units, text);
        Py_DECREF(text);
        if (failed) {
            goto error;
        }
    }
    if (n_first < 0) {
        goto not_plain; /* no units: the full path names the problem */
    }
    PyObject *keys_read = key_tuple(first_keys, n_first);
    if (keys_read == NULL) {
        if (PyErr_Occurred()) {
            goto error;
        }
        goto not_plain;
    }
    PyObject *result = PyTuple_Pack(2, units, keys_read);
    Py_DECREF(units);
    Py_DECREF(keys_read);
    return result;
not_plain:
    Py_DECREF(units);
    Py_RETURN_NONE;
error:
    Py_DECREF(units);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * assign_plain(units, plan, logged, experiment_key, tail, stored_id): every unit's answer for one
 * experiment when no unit has attributes, and the exposure rows of those randomized and not in
 * `logged`, as abkit.core.plain.assign_plain_python computes them with the experiment's closure
 * (abkit.core.assignment: status, override, holdout, layer, coverage, targeting, split). The plan
 * (CompiledExperiment.plain) is that closure's constants:
 *
 *   (constant, overrides, gates, after_gates, arm_digest, thresholds, split, heads)
 *
 * constant: the answer of every unit (draft/paused, concluded) or None; overrides: a dict of
 * unit id -> answer, or None; gates: (Seeded, low, high, miss) tuples, a unit passing when
 * low <= digest (< high when high is not None), else answered miss; after_gates: the answer of
 * every unit past the gates when targeting fails without attributes, or None; then the split:
 * the arm is bisect_right(thresholds, digest), answered split[arm], its row head heads[arm].
 * Digests compare as Python compares bytes. Returns (answers, text, new_units): the rows as COPY
 * text (head, tail, the escaped stored id, newline) and the units they are for, to remember once
 * the rows are recorded.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t size, capacity;
} Buffer;

static int
buffer_add(Buffer *b, const char *data, size_t size)
{
    if (b->size + size > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 4096;
        while (capacity < b->size + size) {
            capacity *= 2;
        }
        char *grown = realloc(b->data, capacity);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->size, data, size);
    b->size += size;
    return 0;
}

/* The stored id as a COPY text value (abkit.core.rows.escape). */
static int
buffer_add_escaped(Buffer *b, const char *data, Py_ssize_t size)
{
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        const char *escaped = NULL;
        switch (data[i]) {
        case '\\': escaped = "\\\\"; break;
        case '\t': escaped = "\\t"; break;
        case '\n': escaped = "\\n"; break;
        case '\r': escaped = "\\r"; break;
        default: continue;
        }
        if (buffer_add(b, data + start, (size_t)(i - start)) < 0 || buffer_add(b, escaped, 2) < 0) {
            return -1;
        }
        start = i + 1;
    }
    return buffer_add(b, data + start, (size_t)(size - start));
}

/* a < b as Python orders bytes: the shared prefix, then the shorter first. */
static int
digest_below(const unsigned char *a, PyObject *b)
{
    Py_ssize_t nb = PyBytes_GET_SIZE(b);
    Py_ssize_t n = nb < SHA256_DIGEST_LENGTH ? nb : SHA256_DIGEST_LENGTH;
    int c = memcmp(a, PyBytes_AS_STRING(b), (size_t)n);
    return c < 0 || (c == 0 && SHA256_DIGEST_LENGTH < nb);
}

static void
seeded_digest(PyObject *seeded, const char *data, Py_ssize_t size, unsigned char *out)
{
    SHA256_CTX ctx = ((Seeded *)seeded)->prefix;
    SHA256_Update(&ctx, data, (size_t)size);
    SHA256_Final(out, &ctx);
}

static int
check_plan(PyObject *plan)
{
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 8) {
        return 0;
    }
    PyObject *overrides = PyTuple_GET_ITEM(plan, 1), *gates = PyTuple_GET_ITEM(plan, 2);
    PyObject *thresholds = PyTuple_GET_ITEM(plan, 5), *split = PyTuple_GET_ITEM(plan, 6);
    PyObject *heads = PyTuple_GET_ITEM(plan, 7);
    if ((overrides != Py_None && !PyDict_CheckExact(overrides)) || !PyTuple_CheckExact(gates) ||
        Py_TYPE(PyTuple_GET_ITEM(plan, 4)) != &SeededType || !PyTuple_CheckExact(thresholds) ||
        !PyTuple_CheckExact(split) || !PyTuple_CheckExact(heads) ||
        PyTuple_GET_SIZE(split) != PyTuple_GET_SIZE(thresholds) + 1 ||
        PyTuple_GET_SIZE(heads) != PyTuple_GET_SIZE(split)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(thresholds); i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(thresholds, i))) {
            return 0;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(heads); i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(heads, i))) {
            return 0;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(gates); i++) {
        PyObject *gate = PyTuple_GET_ITEM(gates, i);
        if (!PyTuple_CheckExact(gate) || PyTuple_GET_SIZE(gate) != 4 ||
            Py_TYPE(PyTuple_GET_ITEM(gate, 0)) != &SeededType ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(gate, 1)) ||
            (PyTuple_GET_ITEM(gate, 2) != Py_None && !PyBytes_CheckExact(PyTuple_GET_ITEM(gate, 2)))) {
            return 0;
        }
    }
    return 1;
}

/* The answer of one unit (borrowed), and through *arm the split arm, -1 when not split. */
static PyObject *
plain_answer(PyObject *plan, PyObject *unit, const char *data, Py_ssize_t size, Py_ssize_t *arm)
{
    *arm = -1;
    PyObject *constant = PyTuple_GET_ITEM(plan, 0), *overrides = PyTuple_GET_ITEM(plan, 1);
    if (constant != Py_None) {
        return constant;
    }
    if (overrides != Py_None) {
        PyObject *forced = PyDict_GetItemWithError(overrides, unit);
        if (forced != NULL || PyErr_Occurred()) {
            return forced;
        }
    }
    unsigned char digest[SHA256_DIGEST_LENGTH];
    PyObject *gates = PyTuple_GET_ITEM(plan, 2);
    for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(gates); g++) {
        PyObject *gate = PyTuple_GET_ITEM(gates, g), *high = PyTuple_GET_ITEM(gate, 2);
        seeded_digest(PyTuple_GET_ITEM(gate, 0), data, size, digest);
        if (digest_below(digest, PyTuple_GET_ITEM(gate, 1)) ||
            (high != Py_None && !digest_below(digest, high))) {
            return PyTuple_GET_ITEM(gate, 3);
        }
    }
    if (PyTuple_GET_ITEM(plan, 3) != Py_None) {
        return PyTuple_GET_ITEM(plan, 3);
    }
    PyObject *thresholds = PyTuple_GET_ITEM(plan, 5);
    seeded_digest(PyTuple_GET_ITEM(plan, 4), data, size, digest);
    Py_ssize_t k = 0;
    while (k < PyTuple_GET_SIZE(thresholds) && !digest_below(digest, PyTuple_GET_ITEM(thresholds, k))) {
        k++;
    }
    *arm = k;
    return PyTuple_GET_ITEM(PyTuple_GET_ITEM(plan, 6), k);
}

static PyObject *
assign_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6 || !PyList_CheckExact(args[0]) || !check_plan(args[1]) ||
        Py_TYPE(args[2]) != &RecentType || !PyUnicode_Check(args[3]) ||
        !PyUnicode_Check(args[4]) || (args[5] != Py_None && !PyCallable_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError,
                        "assign_plain takes (units: list, plan: tuple, logged: RecentKeys, "
                        "experiment_key: str, tail: str, stored_id: callable | None)");
        return NULL;
    }
    PyObject *units = args[0], *plan = args[1], *stored_id = args[5];
    Recent *logged = (Recent *)args[2];
    long number = experiment_number(logged, args[3], 0); /* 0: no pair of it remembered */
    if (number < 0) {
        return NULL;
    }
    Py_ssize_t tail_size;
    const char *tail = PyUnicode_AsUTF8AndSize(args[4], &tail_size);
    if (tail == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(units);
    Buffer text = {NULL, 0, 0};
    PyObject *answers = PyList_New(n), *new_units = PyList_New(0), *result = NULL;
    if (answers == NULL || new_units == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *unit = PyList_GET_ITEM(units, i);
        if (!PyUnicode_CheckExact(unit)) {
            PyErr_Format(PyExc_TypeError, "unit id must be str, not %.100s", Py_TYPE(unit)->tp_name);
            goto done;
        }
        Py_ssize_t size, arm;
        const char *data = PyUnicode_AsUTF8AndSize(unit, &size);
        PyObject *answer = data == NULL ? NULL : plain_answer(plan, unit, data, size, &arm);
        if (answer == NULL) {
            goto done;
        }
        PyList_SET_ITEM(answers, i, Py_NewRef(answer));
        if (arm < 0) {
            continue; /* not randomized: no exposure */
        }
        if (number > 0) {
            uint64_t tag;
            Py_ssize_t at;
            find(logged, number, unit, &tag, &at);
            if (at >= 0) {
                continue; /* logged recently */
            }
        }
        Py_ssize_t head_size, id_size;
        const char *head = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(PyTuple_GET_ITEM(plan, 7), arm),
                                                   &head_size);
        if (head == NULL || buffer_add(&text, head, (size_t)head_size) < 0 ||
            buffer_add(&text, tail, (size_t)tail_size) < 0) {
            goto done;
        }
        if (stored_id == Py_None) {
            if (buffer_add_escaped(&text, data, size) < 0) {
                goto done;
            }
        }
        else {
            PyObject *stored = PyObject_CallOneArg(stored_id, unit);
            if (stored == NULL) {
                goto done;
            }
            const char *id = PyUnicode_Check(stored) ? PyUnicode_AsUTF8AndSize(stored, &id_size)
                                                     : NULL;
            if (id == NULL && !PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "stored_id must return a str");
            }
            int failed = id == NULL || buffer_add_escaped(&text, id, id_size) < 0;
            Py_DECREF(stored);
            if (failed) {
                goto done;
            }
        }
        if (buffer_add(&text, "\n", 1) < 0 || PyList_Append(new_units, unit) < 0) {
            goto done;
        }
    }
    PyObject *decoded = PyUnicode_DecodeUTF8(text.data ? text.data : "", (Py_ssize_t)text.size,
                                             "strict");
    if (decoded != NULL) {
        result = PyTuple_Pack(3, answers, decoded, new_units);
        Py_DECREF(decoded);
    }
done:
    free(text.data);
    Py_XDECREF(answers);
    Py_XDECREF(new_units);
    return result;
}

static PyMethodDef speedups_functions[] = {
    {"read_plain_unit", (PyCFunction)(void (*)(void))read_plain_unit, METH_FASTCALL,
     "read_plain_unit(data, max_unit_bytes): (unit id, experiment keys) of a plain\n"
     "AssignRequest, or None."},
    {"read_plain_batch", (PyCFunction)(void (*)(void))read_plain_batch, METH_FASTCALL,
     "read_plain_batch(data, max_unit_bytes): (unit ids, experiment keys) of a plain\n"
     "AssignBatchRequest, or None."},
    {"assign_plain", (PyCFunction)(void (*)(void))assign_plain, METH_FASTCALL,
     "assign_plain(units, plan, logged, experiment_key, tail, stored_id):\n"
     "(answers, rows text, units of the rows)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "abkit.core._speedups",
    .m_doc = "The assignment hot path in C: seeded SHA-256 digests (abkit.core.hashing), the memory\n"
             "of logged exposures (abkit.core.recent), the common-case request check\n"
             "(abkit.core.limits), plain AssignBatch requests (abkit.core.plain).",
    .m_size = -1,
    .m_methods = speedups_functions,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&SeededType) < 0 || PyType_Ready(&RecentType) < 0 ||
        PyType_Ready(&PlainType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Seeded", (PyObject *)&SeededType) < 0 ||
        PyModule_AddObjectRef(module, "RecentKeys", (PyObject *)&RecentType) < 0 ||
        PyModule_AddObjectRef(module, "PlainRequests", (PyObject *)&PlainType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
