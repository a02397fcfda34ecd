/* The C twin of the row decoders that cdc/sources/mysql/decoder.py generates in Python.

   A Decoder is made once per table layout (``decoder._c_decoder``) from one spec tuple per
   column; its methods have the signatures of the generated functions (``images``, ``pairs``,
   ``emit_c``, ``emit_u``, ``emit_d``) and give the same values.  Every read is checked
   against ``end``: on anything the C code does not expect (bytes past ``end``, a DECIMAL
   group above 999999999, a DATETIME2 below zero, an ENUM index past its members, another
   event class...) the whole event goes to the generated Python function instead, which
   gives what it always gave (a value, or its exception).  Nothing is appended before the
   event is decoded whole. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <string.h>

enum {
    K_I8, K_U8, K_I16, K_U16, K_I24, K_U24, K_I32, K_U32, K_I64, K_U64, K_FLOAT, K_DOUBLE, K_YEAR,
    K_TEXT, K_BINARY, K_ENUM, K_SET, K_BIT, K_DECIMAL, K_DATETIME2, K_TIMESTAMP2, K_TIME2, K_DATE,
    K_COUNT
};
enum { ENC_OTHER, ENC_UTF8, ENC_LATIN1, ENC_ASCII };

#define FALLBACK 1  /* decode_* result: give the event to the Python decoder */
#define MAX_GROUPS 16

typedef struct {
    int kind;
    int a, b;             /* ints: -; text/binary: length bytes, padding; enum/set: size; bit: bytes, bits;
                             decimal: precision, scale; temporal: fsp */
    int json;             /* the value goes through the json function */
    int memo;             /* reuse the previous value when its bytes are the same */
    int enc;
    PyObject *name;
    PyObject *obj;        /* encoding name (text), members (enum list, set tuple) */
    const char *encoding;
    /* decimal */
    int size, ngroups, gbytes[MAX_GROUPS], gdigits[MAX_GROUPS];
} Col;

static const char *SLOTS[] = {"id", "op", "before", "after", "key", "source", "ts_ms", "table", "position",
                              "destination", "message"};
enum { S_ID, S_OP, S_BEFORE, S_AFTER, S_KEY, S_SOURCE, S_TS_MS, S_TABLE, S_POSITION, S_DESTINATION,
       S_MESSAGE, N_SLOTS };

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    Col *cols;
    Py_ssize_t nkey;
    Py_ssize_t *key;
    Py_ssize_t njson;
    Py_ssize_t *jsoncols;
    PyObject *json_func, *float32;
    PyObject *fallback[5];     /* images, pairs, emit_c, emit_u, emit_d */
    PyTypeObject *event;
    Py_ssize_t offsets[N_SLOTS];
} Decoder;

typedef struct {
    const unsigned char *ptr;  /* the bytes of the previous value (in the caller's buffer) */
    Py_ssize_t len;
    PyObject *value;           /* owned */
} Memo;

static PyObject *S_row, *S_json_null, *S_c, *S_u, *S_d, *S_comma;

static const int DIG2BYTES[10] = {0, 1, 1, 2, 2, 3, 3, 4, 4, 4};
static const int FSP_BYTES[7] = {0, 1, 1, 2, 2, 3, 3};
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* --- value builders ---------------------------------------------------------------- */

static PyObject *ascii(const char *s, Py_ssize_t len) {
    PyObject *u = PyUnicode_New(len, 127);
    if (u)
        memcpy(PyUnicode_DATA(u), s, len);
    return u;
}

static char *put_uint(char *o, unsigned long long v, int width) {
    /* decimal digits of v, zero-padded to width (as f"{v:0{width}d}") */
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n < width) tmp[n++] = '0';
    while (n) *o++ = tmp[--n];
    return o;
}

static char *put_frac(char *o, long long micro) {
    /* types.frac: "." and the six-digit fraction without its trailing zeros, "" for 0 */
    if (!micro) return o;
    char tmp[24];
    char *e = put_uint(tmp, (unsigned long long)micro, 6);
    while (e > tmp && e[-1] == '0') e--;
    *o++ = '.';
    memcpy(o, tmp, e - tmp);
    return o + (e - tmp);
}

static unsigned long long be(const unsigned char *s, int n) {
    unsigned long long v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | s[i];
    return v;
}

static unsigned long long le(const unsigned char *s, int n) {
    unsigned long long v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | s[i];
    return v;
}

static PyObject *float32(Decoder *self, const unsigned char *s) {
    /* types.float32: the shortest of 6..9 significant digits that packs to the same float32 */
    double x = PyFloat_Unpack4((const char *)s, 1);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    if (!isfinite(x)) {
        PyObject *f = PyFloat_FromDouble(x), *r;
        if (!f) return NULL;
        r = PyObject_CallOneArg(self->float32, f);
        Py_DECREF(f);
        return r;
    }
    char raw[4], packed[4];
    if (PyFloat_Pack4(x, raw, 1) < 0) return NULL;
    for (int digits = 6; digits <= 9; digits++) {
        char *text = PyOS_double_to_string(x, 'g', digits, 0, NULL);
        if (!text) return NULL;
        double c = PyOS_string_to_double(text, NULL, NULL);
        PyMem_Free(text);
        if (c == -1.0 && PyErr_Occurred()) return NULL;
        if (PyFloat_Pack4(c, packed, 1) < 0) return NULL;
        if (!memcmp(raw, packed, 4)) return PyFloat_FromDouble(c);
    }
    return PyFloat_FromDouble(x);
}

static PyObject *base64(const unsigned char *s, Py_ssize_t len, Py_ssize_t pad) {
    /* base64 of the bytes, zero-padded to pad bytes first (binary(n)) */
    Py_ssize_t total = len < pad ? pad : len;
    if (total > (PY_SSIZE_T_MAX - 3) / 4 * 3) return PyErr_NoMemory();
    Py_ssize_t outlen = (total + 2) / 3 * 4;
    PyObject *u = PyUnicode_New(outlen, 127);
    if (!u) return NULL;
    char *o = (char *)PyUnicode_DATA(u);
    Py_ssize_t i = 0;
#define BYTE(k) ((k) < len ? s[k] : 0)
    for (; i + 3 <= total; i += 3) {
        unsigned v = (unsigned)BYTE(i) << 16 | (unsigned)BYTE(i + 1) << 8 | BYTE(i + 2);
        *o++ = B64[v >> 18];
        *o++ = B64[v >> 12 & 63];
        *o++ = B64[v >> 6 & 63];
        *o++ = B64[v & 63];
    }
    if (total - i == 1) {
        unsigned v = (unsigned)BYTE(i) << 16;
        *o++ = B64[v >> 18];
        *o++ = B64[v >> 12 & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (total - i == 2) {
        unsigned v = (unsigned)BYTE(i) << 16 | (unsigned)BYTE(i + 1) << 8;
        *o++ = B64[v >> 18];
        *o++ = B64[v >> 12 & 63];
        *o++ = B64[v >> 6 & 63];
        *o++ = '=';
    }
#undef BYTE
    return u;
}

static PyObject *text(Col *c, const unsigned char *s, Py_ssize_t len) {
    switch (c->enc) {
    case ENC_UTF8: return PyUnicode_DecodeUTF8((const char *)s, len, NULL);
    case ENC_LATIN1: return PyUnicode_DecodeLatin1((const char *)s, len, NULL);
    case ENC_ASCII: return PyUnicode_DecodeASCII((const char *)s, len, NULL);
    default: return PyUnicode_Decode((const char *)s, len, c->encoding, NULL);
    }
}

/* decimal: big-endian groups of 9 digits, the first bit the sign (set: positive), every bit
   inverted for a negative value.  FALLBACK (NULL, no exception) for a group above its
   digits: the generated code would carry it into the next group. */
static PyObject *decimal(Col *c, const unsigned char *s, int *fallback) {
    static const unsigned long long P10[10] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                                               100000000, 1000000000};
    unsigned char b[MAX_GROUPS * 4];
    int negative = !(s[0] & 0x80);
    for (int i = 0; i < c->size; i++) b[i] = negative ? (unsigned char)~s[i] : s[i];
    b[0] &= 0x7F;
    char digits[MAX_GROUPS * 9 + 1], out[MAX_GROUPS * 9 + 8];
    char *o = digits;
    int at = 0;
    for (int g = 0; g < c->ngroups; g++) {
        unsigned long long v = be(b + at, c->gbytes[g]);
        at += c->gbytes[g];
        if (v >= P10[c->gdigits[g]]) {
            *fallback = 1;
            return NULL;
        }
        o = put_uint(o, v, c->gdigits[g]);
    }
    /* digits: every digit of n (zero-padded); n's own digits start at the first non-zero */
    Py_ssize_t nd = o - digits, start = 0;
    while (start < nd && digits[start] == '0') start++;
    int scale = c->b;
    char *w = out;
    if (negative) *w++ = '-';
    if (scale) {
        if (nd - start > scale) {  /* n >= 10**scale: its digits, the point before the last scale */
            memcpy(w, digits + start, nd - start - scale);
            w += nd - start - scale;
        } else {
            *w++ = '0';
        }
        *w++ = '.';
        memcpy(w, digits + nd - scale, scale);
        w += scale;
    } else if (start == nd) {
        *w++ = '0';
    } else {
        memcpy(w, digits + start, nd - start);
        w += nd - start;
    }
    return ascii(out, w - out);
}

static void civil(long long days, int *y, int *m, int *d) {
    /* days since 1970-01-01 -> proleptic Gregorian date (H. Hinnant's civil_from_days) */
    long long z = days + 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static long long fsp_micro(const unsigned char *s, int fsp) {
    int size = FSP_BYTES[fsp];
    if (!size) return 0;
    static const long long SCALE[4] = {1, 10000, 100, 1};
    return (long long)be(s, size) * SCALE[size];
}

static void clear_vals(PyObject **vals, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) Py_CLEAR(vals[i]);
}

/* --- one row image ----------------------------------------------------------------- */

/* Reads one row image at *pp into vals (new references) and nulls (the NULL bits).
   0: done; -1: a Python exception; FALLBACK: hand the event to Python.  On non-zero,
   vals holds nothing. */
static int decode_row(Decoder *self, const unsigned char *d, Py_ssize_t *pp, Py_ssize_t end, PyObject **vals,
                      char *nulls, Memo *memo) {
    Py_ssize_t p = *pp, n = self->n, i;
    Py_ssize_t nbytes = (n + 7) / 8;
    if (end - p < nbytes) return FALLBACK;
    const unsigned char *bitmap = d + p;
    p += nbytes;
    for (i = 0; i < n; i++) {
        Col *c = &self->cols[i];
        PyObject *v = NULL;
        Py_ssize_t size = 0;
        int fallback = 0;
        nulls[i] = (bitmap[i >> 3] >> (i & 7)) & 1;
        if (nulls[i]) {
            Py_INCREF(Py_None);
            vals[i] = Py_None;
            continue;
        }
        const unsigned char *s = d + p;
        Py_ssize_t left = end - p;
#define NEED(k) do { if (left < (k)) goto fall; } while (0)
        switch (c->kind) {
        case K_I8: NEED(1); v = PyLong_FromLong((signed char)s[0]); size = 1; break;
        case K_U8: NEED(1); v = PyLong_FromLong(s[0]); size = 1; break;
        case K_I16: NEED(2); v = PyLong_FromLong((short)(unsigned short)le(s, 2)); size = 2; break;
        case K_U16: NEED(2); v = PyLong_FromLong((long)le(s, 2)); size = 2; break;
        case K_I24: {
            NEED(3);
            long x = (long)le(s, 3);
            v = PyLong_FromLong(x >= 0x800000 ? x - 0x1000000 : x);
            size = 3;
            break;
        }
        case K_U24: NEED(3); v = PyLong_FromLong((long)le(s, 3)); size = 3; break;
        case K_I32: NEED(4); v = PyLong_FromLong((long)(int)(unsigned)le(s, 4)); size = 4; break;
        case K_U32: NEED(4); v = PyLong_FromUnsignedLong((unsigned long)le(s, 4)); size = 4; break;
        case K_I64: NEED(8); v = PyLong_FromLongLong((long long)le(s, 8)); size = 8; break;
        case K_U64: NEED(8); v = PyLong_FromUnsignedLongLong(le(s, 8)); size = 8; break;
        case K_FLOAT: NEED(4); v = float32(self, s); size = 4; break;
        case K_DOUBLE: {
            NEED(8);
            double x = PyFloat_Unpack8((const char *)s, 1);
            v = (x == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(x);
            size = 8;
            break;
        }
        case K_YEAR:
            NEED(1);
            if (s[0]) {
                v = PyLong_FromLong(s[0] + 1900);
            } else {
                Py_INCREF(Py_None);
                v = Py_None;
            }
            size = 1;
            break;
        case K_TEXT: case K_BINARY: {
            int w = c->a;
            NEED(w);
            Py_ssize_t len = (Py_ssize_t)le(s, w);
            if (left - w < len) goto fall;
            size = w + len;
            if (c->memo && memo[i].value && memo[i].len == len && !memcmp(memo[i].ptr, s + w, len)) {
                v = memo[i].value;
                Py_INCREF(v);
                break;
            }
            v = c->kind == K_TEXT ? text(c, s + w, len) : base64(s + w, len, c->b);
            if (v && c->json) {
                PyObject *j = PyObject_CallOneArg(self->json_func, v);
                Py_DECREF(v);
                v = j;
            }
            if (v && c->memo) {
                Py_XSETREF(memo[i].value, Py_NewRef(v));
                memo[i].ptr = s + w;
                memo[i].len = len;
            }
            break;
        }
        case K_ENUM: {
            NEED(c->a);
            unsigned long long index = le(s, c->a);
            if (index >= (unsigned long long)PyList_GET_SIZE(c->obj)) goto fall;  /* Python: IndexError */
            v = PyList_GET_ITEM(c->obj, (Py_ssize_t)index);
            Py_INCREF(v);
            size = c->a;
            break;
        }
        case K_SET: {
            NEED(c->a);
            unsigned long long m = le(s, c->a);
            Py_ssize_t k, count = PyTuple_GET_SIZE(c->obj);
            PyObject *members = PyList_New(0);
            if (!members) break;
            for (k = 0; k < count; k++)
                if (m >> k & 1 && PyList_Append(members, PyTuple_GET_ITEM(c->obj, k)) < 0) {
                    Py_CLEAR(members);
                    break;
                }
            if (members) {
                v = PyUnicode_Join(S_comma, members);
                Py_DECREF(members);
            }
            size = c->a;
            break;
        }
        case K_BIT: {
            NEED(c->a);
            unsigned long long x = be(s, c->a);
            int bits = 0, width;
            while (bits < 64 && (x >> bits)) bits++;
            width = bits > c->b ? bits : c->b;
            if (width < 1) width = 1;
            char buf[64];
            for (int k = 0; k < width; k++) buf[k] = (char)('0' + (x >> (width - 1 - k) & 1));
            v = ascii(buf, width);
            size = c->a;
            break;
        }
        case K_DECIMAL:
            NEED(c->size);
            size = c->size;
            if (memo[i].value && !memcmp(memo[i].ptr, s, size)) {
                v = Py_NewRef(memo[i].value);
                break;
            }
            v = decimal(c, s, &fallback);
            if (fallback) goto fall;
            if (v) {
                Py_XSETREF(memo[i].value, Py_NewRef(v));
                memo[i].ptr = s;
            }
            break;
        case K_DATETIME2: case K_TIMESTAMP2: case K_TIME2: case K_DATE: {
            size = c->size;
            NEED(size);
            if (memo[i].value && !memcmp(memo[i].ptr, s, size)) {
                v = Py_NewRef(memo[i].value);
                break;
            }
            char buf[64], *o = buf;
            if (c->kind == K_DATETIME2) {
                long long x = (long long)be(s, 5) - 0x8000000000LL;
                if (x < 0) goto fall;  /* Python's floor divisions of a negative value */
                long long ymd = x >> 17, hms = x & 0x1FFFF, ym = ymd >> 5, day = ymd & 31;
                long long year = ym / 13, month = ym % 13;
                if (!(year && month && day)) {
                    v = Py_NewRef(Py_None);
                } else {
                    o = put_uint(o, year, 4); *o++ = '-';
                    o = put_uint(o, month, 2); *o++ = '-';
                    o = put_uint(o, day, 2); *o++ = 'T';
                    o = put_uint(o, hms >> 12, 2); *o++ = ':';
                    o = put_uint(o, hms >> 6 & 63, 2); *o++ = ':';
                    o = put_uint(o, hms & 63, 2);
                    o = put_frac(o, fsp_micro(s + 5, c->a));
                    v = ascii(buf, o - buf);
                }
            } else if (c->kind == K_TIMESTAMP2) {
                unsigned long long secs = be(s, 4);
                if (!secs) {
                    v = Py_NewRef(Py_None);
                } else {
                    int y, m, dd;
                    civil((long long)(secs / 86400), &y, &m, &dd);
                    unsigned long long r = secs % 86400;
                    o = put_uint(o, y, 4); *o++ = '-';
                    o = put_uint(o, m, 2); *o++ = '-';
                    o = put_uint(o, dd, 2); *o++ = 'T';
                    o = put_uint(o, r / 3600, 2); *o++ = ':';
                    o = put_uint(o, r / 60 % 60, 2); *o++ = ':';
                    o = put_uint(o, r % 60, 2);
                    o = put_frac(o, fsp_micro(s + 4, c->a));
                    *o++ = 'Z';
                    v = ascii(buf, o - buf);
                }
            } else if (c->kind == K_TIME2) {
                /* MySQL's my_time_packed_from_binary: 24-bit int part, then the fraction */
                long long intpart = (long long)be(s, 3) - 0x800000, packed;
                if (size == 3) {
                    packed = intpart * (1LL << 24);
                } else if (size == 6) {
                    packed = (long long)be(s, 6) - 0x800000000000LL;
                } else {
                    long long fracv = (long long)be(s + 3, size - 3);
                    if (intpart < 0 && fracv) {
                        intpart += 1;
                        fracv -= size == 4 ? 0x100 : 0x10000;
                    }
                    packed = intpart * (1LL << 24) + fracv * (size == 4 ? 10000 : 100);
                }
                int negative = packed < 0;
                if (negative) packed = -packed;
                long long hms = packed >> 24, micro = packed & 0xFFFFFF;
                if (negative) *o++ = '-';
                o = put_uint(o, hms >> 12 & 0x3FF, 2); *o++ = ':';
                o = put_uint(o, hms >> 6 & 63, 2); *o++ = ':';
                o = put_uint(o, hms & 63, 2);
                o = put_frac(o, micro);
                v = ascii(buf, o - buf);
            } else {
                unsigned long long x = le(s, 3);
                unsigned long long year = x >> 9, month = x >> 5 & 15, day = x & 31;
                if (!(year && month && day)) {
                    v = Py_NewRef(Py_None);
                } else {
                    o = put_uint(o, year, 4); *o++ = '-';
                    o = put_uint(o, month, 2); *o++ = '-';
                    o = put_uint(o, day, 2);
                    v = ascii(buf, o - buf);
                }
            }
            if (v) {
                Py_XSETREF(memo[i].value, Py_NewRef(v));
                memo[i].ptr = s;
            }
            break;
        }
        default:
            goto fall;
        }
#undef NEED
        if (!v) goto error;
        vals[i] = v;
        p += size;
        continue;
    fall:
        clear_vals(vals, i);
        return FALLBACK;
    error:
        clear_vals(vals, i);
        return -1;
    }
    *pp = p;
    return 0;
}

static PyObject *make_row(Decoder *self, PyObject **vals) {
    PyObject *row = _PyDict_NewPresized(self->n);
    if (!row) return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++)
        if (PyDict_SetItem(row, self->cols[i].name, vals[i]) < 0) {
            Py_DECREF(row);
            return NULL;
        }
    return row;
}

/* Per-call scratch: values, NULL bits and memos of one table layout. */
typedef struct {
    PyObject **vals;
    char *nulls;
    Memo *memo;
} Scratch;

static int scratch_new(Decoder *self, Scratch *s) {
    Py_ssize_t n = self->n ? self->n : 1;
    s->vals = PyMem_Calloc(n, sizeof(PyObject *));
    s->nulls = PyMem_Calloc(n, 1);
    s->memo = PyMem_Calloc(n, sizeof(Memo));
    if (!s->vals || !s->nulls || !s->memo) {
        PyMem_Free(s->vals);
        PyMem_Free(s->nulls);
        PyMem_Free(s->memo);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void scratch_free(Decoder *self, Scratch *s) {
    for (Py_ssize_t i = 0; i < self->n; i++) Py_XDECREF(s->memo[i].value);
    clear_vals(s->vals, self->n);
    PyMem_Free(s->vals);
    PyMem_Free(s->nulls);
    PyMem_Free(s->memo);
}

/* d, p, end of a call, checked: 0 ok, FALLBACK otherwise (the Python function decides). */
static int buffer_args(PyObject *const *args, const unsigned char **d, Py_ssize_t *p, Py_ssize_t *end) {
    if (!PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2])) return FALLBACK;
    *p = PyLong_AsSsize_t(args[1]);
    *end = PyLong_AsSsize_t(args[2]);
    if ((*p == -1 || *end == -1) && PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;
    }
    if (*p < 0 || *end > PyBytes_GET_SIZE(args[0])) return FALLBACK;
    *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    return 0;
}

static PyObject *call_fallback(Decoder *self, int which, PyObject *const *args, Py_ssize_t nargs) {
    return PyObject_Vectorcall(self->fallback[which], args, nargs, NULL);
}

/* images(d, p, end) -> [row], pairs(d, p, end) -> [(before, after)] */
static PyObject *rows_common(Decoder *self, PyObject *const *args, Py_ssize_t nargs, int pairs) {
    if (nargs != 3) return call_fallback(self, pairs, args, nargs);
    const unsigned char *d;
    Py_ssize_t p, end;
    if (buffer_args(args, &d, &p, &end)) return call_fallback(self, pairs, args, nargs);
    Scratch s;
    if (scratch_new(self, &s) < 0) return NULL;
    PyObject *out = PyList_New(0), *before = NULL;
    int r = 0;
    if (!out) goto error;
    while (p < end) {
        r = decode_row(self, d, &p, end, s.vals, s.nulls, s.memo);
        if (r) goto stop;
        PyObject *row = make_row(self, s.vals);
        clear_vals(s.vals, self->n);
        if (!row) goto error;
        if (pairs) {
            before = row;
            r = decode_row(self, d, &p, end, s.vals, s.nulls, s.memo);
            if (r) goto stop;
            PyObject *after = make_row(self, s.vals);
            clear_vals(s.vals, self->n);
            if (!after) goto error;
            row = PyTuple_Pack(2, before, after);
            Py_CLEAR(before);
            Py_DECREF(after);
            if (!row) goto error;
        }
        int failed = PyList_Append(out, row);
        Py_DECREF(row);
        if (failed) goto error;
    }
    scratch_free(self, &s);
    return out;
stop:
    Py_XDECREF(before);
    Py_XDECREF(out);
    scratch_free(self, &s);
    if (r == FALLBACK) return call_fallback(self, pairs, args, nargs);
    return NULL;
error:
    Py_XDECREF(before);
    Py_XDECREF(out);
    scratch_free(self, &s);
    return NULL;
}

static PyObject *Decoder_images(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    return rows_common(self, args, nargs, 0);
}

static PyObject *Decoder_pairs(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    return rows_common(self, args, nargs, 1);
}

static PyObject *event_id(PyObject *prefix, long long number) {
    /* f"{prefix}{number}" */
    char digits[24];
    int neg = number < 0;
    unsigned long long u = neg ? 0ULL - (unsigned long long)number : (unsigned long long)number;
    char *e = digits;
    if (neg) *e++ = '-';
    e = put_uint(e, u, 1);
    Py_ssize_t nd = e - digits;
    if (PyUnicode_IS_ASCII(prefix)) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(prefix);
        PyObject *u8 = PyUnicode_New(len + nd, 127);
        if (!u8) return NULL;
        char *o = (char *)PyUnicode_DATA(u8);
        memcpy(o, PyUnicode_DATA(prefix), len);
        memcpy(o + len, digits, nd);
        return u8;
    }
    PyObject *tail = ascii(digits, nd), *r;
    if (!tail) return NULL;
    r = PyUnicode_Concat(prefix, tail);
    Py_DECREF(tail);
    return r;
}

#define SLOT(obj, k) (*(PyObject **)((char *)(obj) + self->offsets[k]))

/* emit_<op>(d, p, end, first, index, prefix, base, now_ms, table, pos, append, Event) -> rows */
static PyObject *emit_common(Decoder *self, PyObject *const *args, Py_ssize_t nargs, int op) {
    int which = 2 + op;  /* 0 c, 1 u, 2 d */
    if (nargs != 12 || !self->event || args[11] != (PyObject *)self->event || !PyDict_CheckExact(args[6])
        || !PyUnicode_CheckExact(args[5]) || !PyLong_CheckExact(args[3]) || !PyLong_CheckExact(args[4]))
        return call_fallback(self, which, args, nargs);
    const unsigned char *d;
    Py_ssize_t p, end;
    if (buffer_args(args, &d, &p, &end)) return call_fallback(self, which, args, nargs);
    int overflow1 = 0, overflow2 = 0;
    long long first = PyLong_AsLongLongAndOverflow(args[3], &overflow1);
    long long index = PyLong_AsLongLongAndOverflow(args[4], &overflow2);
    if (overflow1 || overflow2 || index > (1LL << 62) || index < -(1LL << 62))
        return call_fallback(self, which, args, nargs);
    PyObject *prefix = args[5], *base = args[6], *now_ms = args[7], *table = args[8], *pos = args[9];
    PyObject *append = args[10];
    PyObject *opname = op == 0 ? S_c : op == 1 ? S_u : S_d;
    Scratch s;
    if (scratch_new(self, &s) < 0) return NULL;
    PyObject *out = PyList_New(0), *before = NULL, *after = NULL, *jn = NULL, *src = NULL, *key = NULL,
             *id = NULL, *number = NULL;
    long long rowno = 0;
    int r = 0;
    if (!out) goto error;
    while (p < end) {
        r = decode_row(self, d, &p, end, s.vals, s.nulls, s.memo);
        if (r) goto stop;
        if (op == 1) {  /* the before image, then the after image */
            if (rowno >= first) {
                before = make_row(self, s.vals);
                if (!before) goto error;
            }
            clear_vals(s.vals, self->n);
            r = decode_row(self, d, &p, end, s.vals, s.nulls, s.memo);
            if (r) goto stop;
        }
        if (rowno >= first) {
            if (op != 2 && self->njson) {  /* json columns of after holding JSON null */
                for (Py_ssize_t k = 0; k < self->njson; k++) {
                    Py_ssize_t i = self->jsoncols[k];
                    if (s.vals[i] == Py_None && !s.nulls[i]) {
                        if (!jn && !(jn = PyList_New(0))) goto error;
                        if (PyList_Append(jn, self->cols[i].name) < 0) goto error;
                    }
                }
            }
            if (!(src = PyDict_Copy(base))) goto error;
            if (!(number = PyLong_FromLongLong(rowno)) || PyDict_SetItem(src, S_row, number) < 0) goto error;
            Py_CLEAR(number);
            if (jn && PyDict_SetItem(src, S_json_null, jn) < 0) goto error;
            Py_CLEAR(jn);
            if (self->nkey) {
                if (!(key = _PyDict_NewPresized(self->nkey))) goto error;
                for (Py_ssize_t k = 0; k < self->nkey; k++) {
                    Py_ssize_t i = self->key[k];
                    if (PyDict_SetItem(key, self->cols[i].name, s.vals[i]) < 0) goto error;
                }
            } else {
                key = Py_NewRef(Py_None);
            }
            if (!(after = make_row(self, s.vals))) goto error;
            if (!(id = event_id(prefix, index + rowno))) goto error;
            PyObject *e = self->event->tp_alloc(self->event, 0);
            if (!e) goto error;
            SLOT(e, S_ID) = id;
            SLOT(e, S_OP) = Py_NewRef(opname);
            if (op == 2) {
                SLOT(e, S_BEFORE) = after;
                SLOT(e, S_AFTER) = Py_NewRef(Py_None);
            } else {
                SLOT(e, S_BEFORE) = op == 1 ? before : Py_NewRef(Py_None);
                SLOT(e, S_AFTER) = after;
            }
            SLOT(e, S_KEY) = key;
            SLOT(e, S_SOURCE) = src;
            SLOT(e, S_TS_MS) = Py_NewRef(now_ms);
            SLOT(e, S_TABLE) = Py_NewRef(table);
            SLOT(e, S_POSITION) = Py_NewRef(pos);
            SLOT(e, S_DESTINATION) = Py_NewRef(Py_None);
            SLOT(e, S_MESSAGE) = Py_NewRef(Py_None);
            id = after = key = src = before = NULL;
            int failed = PyList_Append(out, e);
            Py_DECREF(e);
            if (failed) goto error;
        }
        clear_vals(s.vals, self->n);
        rowno++;
    }
    scratch_free(self, &s);
    Py_ssize_t count = PyList_GET_SIZE(out);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *res = PyObject_CallOneArg(append, PyList_GET_ITEM(out, k));
        if (!res) {
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(res);
    }
    Py_DECREF(out);
    return PyLong_FromLongLong(rowno);
stop:
    Py_XDECREF(before);
    Py_XDECREF(out);
    scratch_free(self, &s);
    if (r == FALLBACK) return call_fallback(self, which, args, nargs);
    return NULL;
error:
    Py_XDECREF(before);
    Py_XDECREF(after);
    Py_XDECREF(jn);
    Py_XDECREF(src);
    Py_XDECREF(key);
    Py_XDECREF(id);
    Py_XDECREF(number);
    Py_XDECREF(out);
    scratch_free(self, &s);
    return NULL;
}

static PyObject *Decoder_emit_c(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    return emit_common(self, args, nargs, 0);
}

static PyObject *Decoder_emit_u(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    return emit_common(self, args, nargs, 1);
}

static PyObject *Decoder_emit_d(Decoder *self, PyObject *const *args, Py_ssize_t nargs) {
    return emit_common(self, args, nargs, 2);
}

/* --- the type ---------------------------------------------------------------------- */

static int Decoder_traverse(Decoder *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; self->cols && i < self->n; i++) {
        Py_VISIT(self->cols[i].name);
        Py_VISIT(self->cols[i].obj);
    }
    Py_VISIT(self->json_func);
    Py_VISIT(self->float32);
    for (int k = 0; k < 5; k++) Py_VISIT(self->fallback[k]);
    Py_VISIT(self->event);
    return 0;
}

static int Decoder_clear(Decoder *self) {
    for (Py_ssize_t i = 0; self->cols && i < self->n; i++) {
        Py_CLEAR(self->cols[i].name);
        Py_CLEAR(self->cols[i].obj);
    }
    Py_CLEAR(self->json_func);
    Py_CLEAR(self->float32);
    for (int k = 0; k < 5; k++) Py_CLEAR(self->fallback[k]);
    Py_CLEAR(self->event);
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    PyObject_GC_UnTrack(self);
    Decoder_clear(self);
    PyMem_Free(self->cols);
    PyMem_Free(self->key);
    PyMem_Free(self->jsoncols);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int encoding_of(const char *name) {
    if (!strcmp(name, "utf8") || !strcmp(name, "utf-8") || !strcmp(name, "utf_8")) return ENC_UTF8;
    if (!strcmp(name, "latin1") || !strcmp(name, "latin-1") || !strcmp(name, "iso-8859-1")) return ENC_LATIN1;
    if (!strcmp(name, "ascii")) return ENC_ASCII;
    return ENC_OTHER;
}

static int setup_column(Col *c, PyObject *spec) {
    /* (kind, name, a, b, json, obj) */
    PyObject *name, *obj;
    if (!PyArg_ParseTuple(spec, "iUiipO", &c->kind, &name, &c->a, &c->b, &c->json, &obj)) return -1;
    c->name = Py_NewRef(name);
    PyUnicode_InternInPlace(&c->name);
    c->obj = Py_NewRef(obj);
    if (c->kind < 0 || c->kind >= K_COUNT) goto bad;
    switch (c->kind) {
    case K_TEXT: case K_BINARY:
        if (c->a < 1 || c->a > 4 || c->b < 0) goto bad;
        c->memo = !c->json;
        if (c->kind == K_TEXT) {
            if (!PyUnicode_Check(obj) || !(c->encoding = PyUnicode_AsUTF8(obj))) goto bad;
            c->enc = encoding_of(c->encoding);
        }
        break;
    case K_ENUM:
        if (c->a < 1 || c->a > 8 || !PyList_Check(obj)) goto bad;
        break;
    case K_SET:
        if (c->a < 1 || c->a > 8 || !PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) > 64) goto bad;
        break;
    case K_BIT:
        if (c->a < 1 || c->a > 8 || c->b < 0 || c->b > 64) goto bad;
        break;
    case K_DECIMAL: {
        int precision = c->a, scale = c->b, intg = precision - scale, k = 0;
        if (scale < 0 || intg < 0 || precision < 1 || precision > 65 || scale > 38) goto bad;
        if (intg % 9) { c->gbytes[k] = DIG2BYTES[intg % 9]; c->gdigits[k++] = intg % 9; }
        for (int g = 0; g < intg / 9 + scale / 9; g++) { c->gbytes[k] = 4; c->gdigits[k++] = 9; }
        if (scale % 9) { c->gbytes[k] = DIG2BYTES[scale % 9]; c->gdigits[k++] = scale % 9; }
        c->ngroups = k;
        c->size = 0;
        for (int g = 0; g < k; g++) c->size += c->gbytes[g];
        if (!k) goto bad;
        break;
    }
    case K_DATETIME2: case K_TIMESTAMP2: case K_TIME2:
        if (c->a < 0 || c->a > 6) goto bad;
        c->size = (c->kind == K_DATETIME2 ? 5 : c->kind == K_TIMESTAMP2 ? 4 : 3) + FSP_BYTES[c->a];
        break;
    case K_DATE:
        c->size = 3;
        break;
    }
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "_crows: a column spec it cannot decode");
    return -1;
}

static int event_slots(Decoder *self, PyObject *event) {
    /* the slot offsets of ChangeEvent: its events are built as the generated code builds them,
       object.__new__ and slot stores, without __init__ */
    if (!PyType_Check(event)) goto bad;
    PyTypeObject *t = (PyTypeObject *)event;
    if (t->tp_new != PyBaseObject_Type.tp_new || !t->tp_alloc || t->tp_itemsize || t->tp_dictoffset) goto bad;
    for (int k = 0; k < N_SLOTS; k++) {
        PyObject *descr = PyDict_GetItemString(t->tp_dict, SLOTS[k]);
        if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) goto bad;
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || m->offset <= 0 || m->offset + (Py_ssize_t)sizeof(PyObject *) > t->tp_basicsize)
            goto bad;
        self->offsets[k] = m->offset;
    }
    self->event = (PyTypeObject *)Py_NewRef(event);
    return 0;
bad:
    self->event = NULL;  /* emit_* always falls back */
    return 0;
}

static PyObject *Decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    /* Decoder(specs, key indices, json function, float32, (images, pairs, emit_c, emit_u, emit_d), Event) */
    PyObject *specs, *keys, *json_func, *f32, *fallbacks, *event;
    static char *names[] = {"specs", "key", "json", "float32", "fallback", "event", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OOO!O", names, &PyTuple_Type, &specs, &PyTuple_Type, &keys,
                                     &json_func, &f32, &PyTuple_Type, &fallbacks, &event))
        return NULL;
    if (PyTuple_GET_SIZE(fallbacks) != 5) {
        PyErr_SetString(PyExc_ValueError, "_crows: five fallback functions");
        return NULL;
    }
    Decoder *self = (Decoder *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(specs), i;
    self->cols = PyMem_Calloc(n ? n : 1, sizeof(Col));
    self->key = PyMem_Calloc(PyTuple_GET_SIZE(keys) + 1, sizeof(Py_ssize_t));
    self->jsoncols = PyMem_Calloc(n + 1, sizeof(Py_ssize_t));
    if (!self->cols || !self->key || !self->jsoncols) {
        PyErr_NoMemory();
        goto error;
    }
    self->n = n;
    for (i = 0; i < n; i++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, i);
        if (!PyTuple_Check(spec)) {
            PyErr_SetString(PyExc_TypeError, "_crows: a column spec is a tuple");
            goto error;
        }
        if (setup_column(&self->cols[i], spec) < 0) goto error;
        if (self->cols[i].json) self->jsoncols[self->njson++] = i;
    }
    for (i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(keys, i));
        if (k == -1 && PyErr_Occurred()) goto error;
        if (k < 0 || k >= n) {
            PyErr_SetString(PyExc_ValueError, "_crows: a key column out of range");
            goto error;
        }
        self->key[self->nkey++] = k;
    }
    self->json_func = Py_NewRef(json_func);
    self->float32 = Py_NewRef(f32);
    for (i = 0; i < 5; i++) self->fallback[i] = Py_NewRef(PyTuple_GET_ITEM(fallbacks, i));
    event_slots(self, event);
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static PyMethodDef Decoder_methods[] = {
    {"images", (PyCFunction)(void (*)(void))Decoder_images, METH_FASTCALL, "images(d, p, end) -> [row]"},
    {"pairs", (PyCFunction)(void (*)(void))Decoder_pairs, METH_FASTCALL, "pairs(d, p, end) -> [(before, after)]"},
    {"emit_c", (PyCFunction)(void (*)(void))Decoder_emit_c, METH_FASTCALL, "emit_c(...) -> number of rows"},
    {"emit_u", (PyCFunction)(void (*)(void))Decoder_emit_u, METH_FASTCALL, "emit_u(...) -> number of rows"},
    {"emit_d", (PyCFunction)(void (*)(void))Decoder_emit_d, METH_FASTCALL, "emit_d(...) -> number of rows"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cdc.sources.mysql._crows.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The row decoder of one table layout (decoder.py's generated functions, in C).",
    .tp_new = Decoder_new,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_traverse = (traverseproc)Decoder_traverse,
    .tp_clear = (inquiry)Decoder_clear,
    .tp_methods = Decoder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_crows", "MySQL/MariaDB row images to JSON values, in C (see decoder.py).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__crows(void) {
    if (PyType_Ready(&DecoderType) < 0) return NULL;
    S_row = PyUnicode_InternFromString("row");
    S_json_null = PyUnicode_InternFromString("json_null");
    S_c = PyUnicode_InternFromString("c");
    S_u = PyUnicode_InternFromString("u");
    S_d = PyUnicode_InternFromString("d");
    S_comma = PyUnicode_InternFromString(",");
    if (!S_row || !S_json_null || !S_c || !S_u || !S_d || !S_comma) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(&DecoderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "KINDS", K_COUNT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
