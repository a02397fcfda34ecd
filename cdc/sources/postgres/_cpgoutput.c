/* The pgoutput TupleData decoder of cdc/sources/postgres/pgoutput.py, in C.
 *
 * decode(plan, data, pos, old) -> (row, key, pos, json_null)
 *
 * plan: (names, codes, converters, memos, key_indexes, fallback, unavailable), built by
 * pgoutput._compile.  codes[i] says how column i's text is converted (the CODE_* below);
 * converters[i] is the Python converter (or None), memos[i] a dict or None.  Anything the
 * fast path does not expect (another column count, a value cut short) goes to
 * fallback(data, pos, old), the pure-Python decoder, so both paths give the same result
 * and raise the same errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { CODE_TEXT = 0, CODE_INT = 1, CODE_BOOL = 2, CODE_MEMO = 3, CODE_CALL = 4, CODE_JSON = 5 };
#define MEMO_SIZE 4096

static PyObject *
parse_int(const char *s, Py_ssize_t n)
{
    /* int(b"...") for PostgreSQL's integer text: [-]digits; anything else as Python does */
    Py_ssize_t i = 0;
    int negative = 0;
    if (n > 0 && s[0] == '-') {
        negative = 1;
        i = 1;
    }
    if (n - i >= 1 && n - i <= 18) {
        long long v = 0;
        for (; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < '0' || c > '9')
                break;
            v = v * 10 + (c - '0');
        }
        if (i == n)
            return PyLong_FromLongLong(negative ? -v : v);
    }
    PyObject *raw = PyBytes_FromStringAndSize(s, n);
    if (raw == NULL)
        return NULL;
    PyObject *v = PyNumber_Long(raw);
    Py_DECREF(raw);
    return v;
}

static PyObject *
to_hex(const unsigned char *s, Py_ssize_t n)
{
    static const char digits[] = "0123456789abcdef";
    PyObject *out = PyUnicode_New(2 * n, 127);
    if (out == NULL)
        return NULL;
    Py_UCS1 *p = PyUnicode_1BYTE_DATA(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        p[2 * i] = digits[s[i] >> 4];
        p[2 * i + 1] = digits[s[i] & 15];
    }
    return out;
}

static inline long
read_i32(const unsigned char *p)
{
    return (long)(int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
}

static PyObject *
decode(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode(plan, data, pos, old)");
        return NULL;
    }
    PyObject *plan = args[0], *data = args[1], *old = args[3];
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 7) {
        PyErr_SetString(PyExc_TypeError, "decode: a plan from pgoutput._compile");
        return NULL;
    }
    PyObject *names = PyTuple_GET_ITEM(plan, 0), *codes = PyTuple_GET_ITEM(plan, 1);
    PyObject *convs = PyTuple_GET_ITEM(plan, 2), *memos = PyTuple_GET_ITEM(plan, 3);
    PyObject *keys = PyTuple_GET_ITEM(plan, 4), *fallback = PyTuple_GET_ITEM(plan, 5);
    PyObject *unavailable = PyTuple_GET_ITEM(plan, 6);
    if (!PyBytes_CheckExact(data) || (old != Py_None && !PyDict_CheckExact(old)) || start < 0)
        return PyObject_Vectorcall(fallback, args + 1, 3, NULL);

    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data), pos = start;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    const unsigned char *code = (const unsigned char *)PyBytes_AS_STRING(codes);
    if (start > size || size - pos < 2 || (buf[pos] << 8 | buf[pos + 1]) != n)
        return PyObject_Vectorcall(fallback, args + 1, 3, NULL);
    pos += 2;

#if PY_VERSION_HEX < 0x030E0000
    PyObject *row = _PyDict_NewPresized(n), *json_null = NULL, *value = NULL;
#else
    PyObject *row = PyDict_New(), *json_null = NULL, *value = NULL;
#endif
    if (row == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (pos >= size)
            goto cut_short;
        unsigned char kind = buf[pos];
        if (kind == 't') {
            if (size - pos < 5)
                goto cut_short;
            long len = read_i32(buf + pos + 1);
            if (len < 0 || len > size - pos - 5)
                goto cut_short;
            const char *raw = (const char *)buf + pos + 5;
            switch (code[i]) {
            case CODE_TEXT:
                value = PyUnicode_DecodeUTF8(raw, len, NULL);
                break;
            case CODE_INT:
                value = parse_int(raw, len);
                break;
            case CODE_BOOL:
                value = (len == 1 && raw[0] == 't') ? Py_True : Py_False;
                Py_INCREF(value);
                break;
            case CODE_MEMO: {
                PyObject *memo = PyTuple_GET_ITEM(memos, i);
                PyObject *k = PyBytes_FromStringAndSize(raw, len);
                if (k == NULL)
                    goto error;
                value = PyDict_GetItemWithError(memo, k);
                if (value != NULL && value != Py_None) {
                    Py_INCREF(value);
                } else if (!PyErr_Occurred()) {
                    value = PyObject_CallOneArg(PyTuple_GET_ITEM(convs, i), k);
                    if (value != NULL) {
                        if (PyDict_GET_SIZE(memo) >= MEMO_SIZE)
                            PyDict_Clear(memo);
                        if (PyDict_SetItem(memo, k, value) < 0)
                            Py_CLEAR(value);
                    }
                }
                Py_DECREF(k);
                break;
            }
            default: { /* CODE_CALL, CODE_JSON */
                PyObject *k = PyBytes_FromStringAndSize(raw, len);
                if (k == NULL)
                    goto error;
                value = PyObject_CallOneArg(PyTuple_GET_ITEM(convs, i), k);
                Py_DECREF(k);
                if (value == Py_None && code[i] == CODE_JSON) { /* JSON null, not SQL NULL */
                    if (json_null == NULL && (json_null = PyList_New(0)) == NULL)
                        goto error;
                    if (PyList_Append(json_null, name) < 0)
                        goto error;
                }
            }
            }
            if (value == NULL)
                goto error;
            pos += 5 + len;
        } else if (kind == 'n') {
            value = Py_None;
            Py_INCREF(value);
            pos += 1;
        } else if (kind == 'u') { /* unchanged TOAST: the old row's value, if it has one */
            value = old == Py_None ? NULL : PyDict_GetItemWithError(old, name);
            if (value == NULL) {
                if (PyErr_Occurred())
                    goto error;
                value = unavailable;
            }
            Py_INCREF(value);
            pos += 1;
        } else { /* 'b' binary, which cdc does not request: hex */
            if (size - pos < 5)
                goto cut_short;
            long len = read_i32(buf + pos + 1);
            if (len < 0 || len > size - pos - 5)
                goto cut_short;
            value = to_hex(buf + pos + 5, len);
            if (value == NULL)
                goto error;
            pos += 5 + len;
        }
        if (PyDict_SetItem(row, name, value) < 0)
            goto error;
        Py_CLEAR(value);
    }

    PyObject *key = PyDict_New();
    if (key == NULL)
        goto error;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(keys); j++) {
        PyObject *name = PyTuple_GET_ITEM(names, PyLong_AsSsize_t(PyTuple_GET_ITEM(keys, j)));
        PyObject *v = PyDict_GetItemWithError(row, name);
        if (v == NULL || PyDict_SetItem(key, name, v) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, name);
            Py_DECREF(key);
            goto error;
        }
    }
    PyObject *end = PyLong_FromSsize_t(pos);
    if (end == NULL) {
        Py_DECREF(key);
        goto error;
    }
    if (json_null == NULL) {
        json_null = Py_None;
        Py_INCREF(json_null);
    }
    PyObject *result = PyTuple_New(4);
    if (result == NULL) {
        Py_DECREF(key);
        Py_DECREF(end);
        goto error;
    }
    PyTuple_SET_ITEM(result, 0, row);
    PyTuple_SET_ITEM(result, 1, key);
    PyTuple_SET_ITEM(result, 2, end);
    PyTuple_SET_ITEM(result, 3, json_null);
    return result;

cut_short:
    Py_DECREF(row);
    Py_XDECREF(json_null);
    return PyObject_Vectorcall(fallback, args + 1, 3, NULL);
error:
    Py_XDECREF(value);
    Py_DECREF(row);
    Py_XDECREF(json_null);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(plan, data, pos, old) -> (row, key, pos, json_null): one TupleData"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpgoutput", "pgoutput TupleData in C (cdc.sources.postgres.pgoutput)", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cpgoutput(void)
{
    return PyModule_Create(&module);
}
