/*
 * The common case of DocumentBuilder.from_json_line, compiled.
 *
 * A JSONL record that is a flat object with plain, already clean text (the great
 * majority) goes from bytes to a Candidate here: strict JSON and UTF-8 checks, field
 * extraction, the cleanliness checks of normalize_text, cashtags, both SHA-256 ids
 * and the Document's protobuf encoding, with no Python objects but the results.
 *
 * Everything else -- nested values, HTML, text that cleaning would change, odd field
 * types, timestamps that need a flag, any doubt -- is *declined*: the record's slot
 * stays None and the Python builder handles it, refusals included. So this code never
 * rejects anything and never has to reproduce an error message; it only has to
 * agree with the Python builder on what it accepts, byte for byte, which the tests
 * check on generated input (tests/ingest/test_fastpath.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define ID_HEX 32            /* services.ingest.ids.ID_HEX_CHARS */
#define MAX_KEYS 64          /* records with more keys are declined */
#define MAX_NUMBER_CHARS 4000 /* under Python's int conversion limit (4300 digits) */
#define MAX_ID_CHARS 512      /* services.ingest.decode.MAX_ID_CHARS */
#define MAX_SHORT_CHARS 4096  /* services.ingest.decode.MAX_SHORT_FIELD_CHARS */
#define MAX_SOURCE_CHARS 256
#define MAX_LANG_CHARS 35
#define EPOCH_SECONDS_BELOW 100000000000LL /* parse_time's fast case: epoch seconds */
#define NS 1000000000LL
#define ENTITY_KIND_CASHTAG 1

enum { F_TEXT, F_ID, F_TIME, F_SOURCE, F_URL, F_TITLE, F_LANG, N_FIELDS };
enum { J_ABSENT = 0, J_STRING, J_NUMBER, J_TRUE, J_FALSE, J_NULL };

typedef struct {
    int type;
    const unsigned char *p; /* strings: after the opening quote; numbers: first char */
    Py_ssize_t n;           /* raw length (strings: between the quotes) */
    int escaped;            /* string holds a backslash escape */
    int is_int;             /* number without fraction or exponent */
} Value;

/* A growable byte buffer. */
typedef struct {
    unsigned char *b;
    Py_ssize_t n, cap;
} Buf;

static int buf_reserve(Buf *buf, Py_ssize_t extra) {
    if (buf->n + extra <= buf->cap)
        return 0;
    Py_ssize_t cap = buf->cap ? buf->cap : 1024;
    while (cap < buf->n + extra)
        cap *= 2;
    unsigned char *b = PyMem_Realloc(buf->b, (size_t)cap);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buf->b = b;
    buf->cap = cap;
    return 0;
}

static inline void put(Buf *buf, const void *p, Py_ssize_t n) {
    memcpy(buf->b + buf->n, p, (size_t)n);
    buf->n += n;
}

static inline void put_varint(Buf *buf, uint64_t v) {
    while (v >= 0x80) {
        buf->b[buf->n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    buf->b[buf->n++] = (unsigned char)v;
}

static int varint_size(uint64_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A length-delimited protobuf field; proto3 leaves empty strings out. */
static int put_bytes_field(Buf *buf, unsigned char tag, const void *p, Py_ssize_t n) {
    if (n == 0)
        return 0;
    if (buf_reserve(buf, 1 + 10 + n) < 0)
        return -1;
    buf->b[buf->n++] = tag;
    put_varint(buf, (uint64_t)n);
    put(buf, p, n);
    return 0;
}

/* google.protobuf.Timestamp as field `tag`; a set sub-message is written even if empty. */
static int put_timestamp(Buf *buf, unsigned char tag, int64_t seconds, int32_t nanos) {
    int size = (seconds ? 1 + varint_size((uint64_t)seconds) : 0) +
               (nanos ? 1 + varint_size((uint64_t)(int64_t)nanos) : 0);
    if (buf_reserve(buf, 2 + size) < 0)
        return -1;
    buf->b[buf->n++] = tag;
    put_varint(buf, (uint64_t)size);
    if (seconds) {
        buf->b[buf->n++] = 0x08;
        put_varint(buf, (uint64_t)seconds);
    }
    if (nanos) {
        buf->b[buf->n++] = 0x10;
        put_varint(buf, (uint64_t)(int64_t)nanos);
    }
    return 0;
}

/* -- JSON ---------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static inline int hexval(unsigned char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Length of the well-formed UTF-8 sequence at p (lead byte >= 0x80), or 0. The same
 * rules as Python's strict decoder: no overlong forms, no surrogates, <= U+10FFFF. */
static int utf8_sequence(const unsigned char *p, const unsigned char *end) {
    unsigned char b0 = p[0];
    Py_ssize_t left = end - p;
#define CONT(i) ((p[i] & 0xC0) == 0x80)
    if (b0 >= 0xC2 && b0 <= 0xDF)
        return left >= 2 && CONT(1) ? 2 : 0;
    if (b0 >= 0xE0 && b0 <= 0xEF) {
        if (left < 3 || !CONT(1) || !CONT(2))
            return 0;
        if (b0 == 0xE0 && p[1] < 0xA0)
            return 0;
        if (b0 == 0xED && p[1] > 0x9F)
            return 0;
        return 3;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
        if (left < 4 || !CONT(1) || !CONT(2) || !CONT(3))
            return 0;
        if (b0 == 0xF0 && p[1] < 0x90)
            return 0;
        if (b0 == 0xF4 && p[1] > 0x8F)
            return 0;
        return 4;
    }
    return 0;
#undef CONT
}

/* A string token at c->p (on the opening quote): strict JSON, valid UTF-8. 0 if not. */
static int scan_string(Cursor *c, Value *v) {
    const unsigned char *p = c->p + 1, *end = c->end;
    v->type = J_STRING;
    v->p = p;
    v->escaped = 0;
    while (p < end) {
        unsigned char ch = *p;
        if (ch == '"') {
            v->n = p - v->p;
            c->p = p + 1;
            return 1;
        }
        if (ch == '\\') {
            v->escaped = 1;
            if (p + 1 >= end)
                return 0;
            unsigned char e = p[1];
            if (e == 'u') {
                if (end - p < 6)
                    return 0;
                for (int i = 2; i < 6; i++)
                    if (hexval(p[i]) < 0)
                        return 0;
                p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p += 2;
            } else {
                return 0;
            }
        } else if (ch < 0x20) {
            return 0; /* raw control characters are not allowed in strict JSON */
        } else if (ch >= 0x80) {
            int n = utf8_sequence(p, end);
            if (n == 0)
                return 0;
            p += n;
        } else {
            p++;
        }
    }
    return 0;
}

/* A number token: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(Cursor *c, Value *v) {
    const unsigned char *p = c->p, *end = c->end;
    v->type = J_NUMBER;
    v->p = p;
    v->is_int = 1;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return 0;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        v->is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        v->is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    v->n = p - v->p;
    c->p = p;
    return v->n <= MAX_NUMBER_CHARS;
}

static int scan_literal(Cursor *c, Value *v, const char *word, int type) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return 0;
    v->type = type;
    v->p = c->p;
    v->n = (Py_ssize_t)n;
    c->p += n;
    return 1;
}

/* A scalar value; objects and arrays are declined (0) like any malformed input. */
static int scan_value(Cursor *c, Value *v) {
    if (c->p >= c->end)
        return 0;
    switch (*c->p) {
    case '"':
        return scan_string(c, v);
    case 't':
        return scan_literal(c, v, "true", J_TRUE);
    case 'f':
        return scan_literal(c, v, "false", J_FALSE);
    case 'n':
        return scan_literal(c, v, "null", J_NULL);
    default:
        return scan_number(c, v);
    }
}

static void put_utf8(Buf *out, uint32_t cp) {
    if (cp < 0x80) {
        out->b[out->n++] = (unsigned char)cp;
    } else if (cp < 0x800) {
        out->b[out->n++] = (unsigned char)(0xC0 | (cp >> 6));
        out->b[out->n++] = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out->b[out->n++] = (unsigned char)(0xE0 | (cp >> 12));
        out->b[out->n++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out->b[out->n++] = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        out->b[out->n++] = (unsigned char)(0xF0 | (cp >> 18));
        out->b[out->n++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        out->b[out->n++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out->b[out->n++] = (unsigned char)(0x80 | (cp & 0x3F));
    }
}

static uint32_t hex4(const unsigned char *p) {
    return (uint32_t)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

/*
 * A scanned string's text as UTF-8 in *s, *n: the raw bytes when it has no escapes,
 * else decoded onto the end of `out`. Returns 1, 0 to decline (a lone surrogate
 * escape: Python would keep it and refuse it later), -1 on error.
 */
static int string_utf8(const Value *v, Buf *out, const unsigned char **s, Py_ssize_t *n) {
    if (!v->escaped) {
        *s = v->p;
        *n = v->n;
        return 1;
    }
    if (buf_reserve(out, v->n) < 0) /* escapes never decode longer than they are */
        return -1;
    Py_ssize_t start = out->n;
    const unsigned char *p = v->p, *end = v->p + v->n;
    while (p < end) {
        if (*p != '\\') {
            out->b[out->n++] = *p++;
            continue;
        }
        unsigned char e = p[1];
        p += 2;
        switch (e) {
        case 'b': out->b[out->n++] = '\b'; break;
        case 'f': out->b[out->n++] = '\f'; break;
        case 'n': out->b[out->n++] = '\n'; break;
        case 'r': out->b[out->n++] = '\r'; break;
        case 't': out->b[out->n++] = '\t'; break;
        case 'u': {
            uint32_t cp = hex4(p);
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return 0;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
                    return 0;
                uint32_t low = hex4(p + 2);
                if (low < 0xDC00 || low > 0xDFFF)
                    return 0;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                p += 6;
            }
            put_utf8(out, cp);
            break;
        }
        default: out->b[out->n++] = e; break; /* " \ / */
        }
    }
    *s = out->b + start;
    *n = out->n - start;
    return 1;
}

/* -- per-record checks ------------------------------------------------------------- */

static int is_ascii(const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] >= 0x80)
            return 0;
    return 1;
}

/* decode._short_string's fast case: ASCII, no NUL, within the limit. */
static int short_ascii(const unsigned char *s, Py_ssize_t n, Py_ssize_t limit) {
    return n <= limit && is_ascii(s, n) && memchr(s, 0, (size_t)n) == NULL;
}

/* str.isspace() for ASCII: what str.strip() removes. */
static inline int ascii_space(unsigned char ch) {
    return ch == ' ' || (ch >= 0x09 && ch <= 0x0D) || (ch >= 0x1C && ch <= 0x1F);
}

static inline int is_word(Py_UCS4 ch) { return ch == '_' || Py_UNICODE_ISALNUM(ch); }

/* -- the builder --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *fields[N_FIELDS]; /* bytes (UTF-8 names) or None */
    PyObject *source;           /* str: the connector's source */
    PyObject *candidate;        /* the Candidate class (a tuple subclass) */
    PyObject *is_nfc;           /* callable(str) -> bool */
    PyObject *parse_time;       /* callable(value, now_ns) -> int ns, 0 (none) or None (decline) */
    PyObject *find_entities;    /* callable(str) -> list[Match], or None: cashtags here */
    Py_ssize_t max_chars;
    Py_ssize_t max_record;
    long long skew_ns;
    int cashtags;
    int strip_html;
    const char *source_utf8;
    Py_ssize_t source_len;
    /* Reused between records: decoded field values, decoded keys, hash input, output. */
    Buf field_buf[N_FIELDS], key_buf, hash_buf, out;
    Py_ssize_t *byte_at; /* code point index -> UTF-8 offset, for non-ASCII cashtags */
    Py_ssize_t byte_at_cap;
    PyObject *last_source; /* the source str of the previous record, reused when equal */
    EVP_MD_CTX *sha;
} Builder;

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} Span;

/* The entities of a record, in order; cashtag ids and names are ASCII. */
#define MAX_ENTITIES 64
typedef struct {
    Span id, name;
    long kind;
} Entity;

/* Cashtags as entities.py finds them (the _CASHTAG regex, and no letter or digit
 * glued in front), first occurrence per ticker. Works on code points, so that "\w"
 * after a ticker means what it means to Python's re for str patterns. `text` holds
 * the same characters as UTF-8; ASCII runs are read from it directly. */
static int find_cashtags(int kind, const void *data, Py_ssize_t len, const unsigned char *utf8,
                         const Py_ssize_t *byte_at, Entity *out, int max) {
    int found = 0;
    Py_ssize_t i = 0;
#define CH(k) PyUnicode_READ(kind, data, (k))
#define UPPER(k) ((k) < len && CH(k) >= 'A' && CH(k) <= 'Z')
    while (i < len) {
        if (CH(i) != '$') {
            i++;
            continue;
        }
        Py_ssize_t start = i, j = i + 1;
        while (UPPER(j))
            j++;
        Py_ssize_t run = j - (i + 1);
        Py_ssize_t end = -1; /* end of the ticker, exclusive */
        if (run >= 1 && run <= 6) {
            if (j < len && CH(j) == '.') {
                Py_ssize_t k = j + 1;
                while (UPPER(k))
                    k++;
                Py_ssize_t m = k - (j + 1);
                if (m >= 1 && m <= 2 && !(k < len && (CH(k) == '$' || is_word(CH(k)))))
                    end = k;
                else
                    end = j; /* "." itself is neither \w nor "$" */
            } else if (!(j < len && (CH(j) == '$' || is_word(CH(j))))) {
                end = j;
            }
        }
        if (end < 0) {
            i = start + 1;
            continue;
        }
        i = end; /* the regex resumes after a match */
        if (start > 0 && Py_UNICODE_ISALNUM(CH(start - 1)))
            continue; /* "US$AAPL" */
        Py_ssize_t b0 = byte_at ? byte_at[start] : start;
        Py_ssize_t b1 = byte_at ? byte_at[end] : end;
        Span id = {utf8 + b0 + 1, b1 - b0 - 1};
        int dup = 0;
        for (int e = 0; e < found; e++)
            if (out[e].id.n == id.n && memcmp(out[e].id.p, id.p, (size_t)id.n) == 0)
                dup = 1;
        if (dup)
            continue;
        if (found == max)
            return -1;
        out[found].id = id;
        out[found].name = (Span){utf8 + b0, b1 - b0};
        out[found].kind = ENTITY_KIND_CASHTAG;
        found++;
    }
    return found;
#undef UPPER
#undef CH
}

/* SHA-256, fetched once (the same OpenSSL implementation hashlib uses). */
static EVP_MD *sha256_md;

static int sha_hex(EVP_MD_CTX *ctx, const unsigned char *data, Py_ssize_t n, char *hex) {
    static const char digits[] = "0123456789abcdef";
    unsigned char digest[EVP_MAX_MD_SIZE];
    if (!EVP_DigestInit_ex2(ctx, sha256_md, NULL) || !EVP_DigestUpdate(ctx, data, (size_t)n) ||
        !EVP_DigestFinal_ex(ctx, digest, NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
        return -1;
    }
    for (int i = 0; i < ID_HEX / 2; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    return 0;
}

static PyObject *ascii_str(const void *p, Py_ssize_t n) {
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL)
        memcpy(PyUnicode_DATA(s), p, (size_t)n);
    return s;
}

/* Is this UTF-8 text clean as normalize_text would leave it? 1 yes, 0 decline, -1 error.
 * For non-ASCII text, *unicode receives the str (the caller owns it). */
static int clean_text(Builder *self, const unsigned char *s, Py_ssize_t n, int ascii,
                      PyObject **unicode) {
    *unicode = NULL;
    if (n == 0 || s[0] == ' ' || s[n - 1] == ' ')
        return 0;
    if (self->strip_html && (memchr(s, '<', (size_t)n) || memchr(s, '&', (size_t)n)))
        return 0;
    if (ascii) {
        if (n > self->max_chars)
            return 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char ch = s[i];
            if (ch < 0x20 || ch > 0x7E || (ch == ' ' && s[i + 1] == ' '))
                return 0;
        }
        return 1;
    }
    PyObject *u = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    if (u == NULL)
        return -1;
    Py_ssize_t len = PyUnicode_GET_LENGTH(u);
    int kind = PyUnicode_KIND(u);
    const void *data = PyUnicode_DATA(u);
    int ok = len <= self->max_chars;
    for (Py_ssize_t i = 0; ok && i < len; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        if (!Py_UNICODE_ISPRINTABLE(ch) || (ch == ' ' && i + 1 < len &&
                                            PyUnicode_READ(kind, data, i + 1) == ' '))
            ok = 0;
    }
    if (ok) {
        PyObject *r = PyObject_CallOneArg(self->is_nfc, u);
        if (r == NULL) {
            Py_DECREF(u);
            return -1;
        }
        ok = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (ok < 0) {
            Py_DECREF(u);
            return -1;
        }
    }
    if (!ok) {
        Py_DECREF(u);
        return 0;
    }
    *unicode = u;
    return 1;
}

static int field_index_matches(Builder *self, int f, const unsigned char *key, Py_ssize_t n) {
    PyObject *name = self->fields[f];
    return name != Py_None && PyBytes_GET_SIZE(name) == n &&
           memcmp(PyBytes_AS_STRING(name), key, (size_t)n) == 0;
}


/* A string field under decode._short_string's fast case (ASCII, no NUL, within
 * `limit`). 1 with its text (empty when absent or null), 0 to decline, -1 on error. */
static int short_field(Builder *self, int f, const Value *v, Py_ssize_t limit,
                       const unsigned char **s, Py_ssize_t *n) {
    *s = (const unsigned char *)"";
    *n = 0;
    if (v->type == J_ABSENT || v->type == J_NULL)
        return 1;
    if (v->type != J_STRING)
        return 0;
    self->field_buf[f].n = 0;
    int r = string_utf8(v, &self->field_buf[f], s, n);
    if (r <= 0)
        return r;
    return short_ascii(*s, *n, limit);
}

/* Document.published_at in ns: 1 with *ns (0: none), 0 to decline, -1 on error. */
static int publication_time(Builder *self, const Value *v, long long now_ns, long long *ns) {
    *ns = 0;
    if (v->type == J_ABSENT || v->type == J_NULL)
        return 1;
    if (v->type == J_NUMBER && v->is_int && v->p[0] != '-' && v->n <= 11) {
        long long seconds = 0;
        for (Py_ssize_t i = 0; i < v->n; i++)
            seconds = seconds * 10 + (v->p[i] - '0');
        if (seconds > 0 && seconds < EPOCH_SECONDS_BELOW && seconds * NS <= now_ns + self->skew_ns) {
            *ns = seconds * NS;
            return 1;
        }
    }
    /* Anything else goes through normalize.parse_time. */
    PyObject *value = NULL;
    if (v->type == J_NUMBER) {
        char token[64];
        if (v->n >= (Py_ssize_t)sizeof token)
            return 0;
        memcpy(token, v->p, (size_t)v->n);
        token[v->n] = 0;
        if (v->is_int) {
            value = PyLong_FromString(token, NULL, 10);
        } else {
            double d = PyOS_string_to_double(token, NULL, NULL);
            value = d == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(d);
        }
    } else if (v->type == J_STRING) {
        const unsigned char *s;
        Py_ssize_t n;
        self->field_buf[F_TIME].n = 0;
        int r = string_utf8(v, &self->field_buf[F_TIME], &s, &n);
        if (r <= 0)
            return r;
        value = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    } else {
        return 0; /* booleans are refused by the Python builder */
    }
    if (value == NULL)
        return -1;
    PyObject *now = PyLong_FromLongLong(now_ns);
    if (now == NULL) {
        Py_DECREF(value);
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(self->parse_time, value, now, NULL);
    Py_DECREF(value);
    Py_DECREF(now);
    if (r == NULL)
        return -1;
    if (r == Py_None) {
        Py_DECREF(r);
        return 0;
    }
    *ns = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (*ns == -1 && PyErr_Occurred())
        return -1;
    return *ns >= 0;
}

/* Entities from the configured dictionary (and cashtags), found by the Python matcher:
 * how many, or -1 (with an exception set on error, without one to decline). */
static int dictionary_entities(Builder *self, const unsigned char *t, Py_ssize_t tn,
                               PyObject *unicode, PyObject **keep, Entity *out) {
    PyObject *text = unicode;
    if (text == NULL) {
        text = ascii_str(t, tn);
        if (text == NULL)
            return -1;
    } else {
        Py_INCREF(text);
    }
    PyObject *matches = PyObject_CallOneArg(self->find_entities, text);
    Py_DECREF(text);
    if (matches == NULL)
        return -1;
    *keep = matches; /* the UTF-8 of ids and names lives as long as the matches */
    if (!PyList_Check(matches)) {
        PyErr_SetString(PyExc_TypeError, "find_entities must return a list");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(matches);
    if (n > MAX_ENTITIES)
        return -1; /* no exception: more than fit, declined */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = PyList_GET_ITEM(matches, i);
        if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) < 3) {
            PyErr_SetString(PyExc_TypeError, "an entity match must be (id, name, kind, ...)");
            return -1;
        }
        const char *id = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(m, 0), &out[i].id.n);
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(m, 1), &out[i].name.n);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(m, 2));
        if (id == NULL || name == NULL || (kind == -1 && PyErr_Occurred()))
            return -1;
        out[i].id.p = (const unsigned char *)id;
        out[i].name.p = (const unsigned char *)name;
        out[i].kind = kind;
    }
    return (int)n;
}

static int cashtag_entities(Builder *self, const unsigned char *t, Py_ssize_t tn,
                            PyObject *unicode, Entity *out) {
    if (memchr(t, '$', (size_t)tn) == NULL)
        return 0;
    if (unicode == NULL)
        return find_cashtags(PyUnicode_1BYTE_KIND, t, tn, t, NULL, out, MAX_ENTITIES);
    Py_ssize_t len = PyUnicode_GET_LENGTH(unicode);
    if (len + 1 > self->byte_at_cap) {
        Py_ssize_t *b = PyMem_Realloc(self->byte_at, (size_t)(len + 1) * sizeof *b);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->byte_at = b;
        self->byte_at_cap = len + 1;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        self->byte_at[i] = at;
        unsigned char b0 = t[at];
        at += b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
    }
    self->byte_at[len] = at;
    return find_cashtags(PyUnicode_KIND(unicode), PyUnicode_DATA(unicode), len, t,
                         self->byte_at, out, MAX_ENTITIES);
}

static int put_entity(Buf *buf, const Entity *e) {
    Py_ssize_t size = 0;
    if (e->id.n)
        size += 1 + varint_size((uint64_t)e->id.n) + e->id.n;
    if (e->name.n)
        size += 1 + varint_size((uint64_t)e->name.n) + e->name.n;
    if (e->kind)
        size += 1 + varint_size((uint64_t)(int64_t)e->kind);
    if (buf_reserve(buf, 1 + 10 + size) < 0)
        return -1;
    buf->b[buf->n++] = 0x3A; /* Document.entities = 7 */
    put_varint(buf, (uint64_t)size);
    if (put_bytes_field(buf, 0x0A, e->id.p, e->id.n) < 0 ||
        put_bytes_field(buf, 0x12, e->name.p, e->name.n) < 0 || buf_reserve(buf, 11) < 0)
        return -1;
    if (e->kind) {
        buf->b[buf->n++] = 0x18;
        put_varint(buf, (uint64_t)(int64_t)e->kind);
    }
    return 0;
}

/* The record's source as a str: the connector's, or the previous record's when equal. */
static PyObject *source_str(Builder *self, const unsigned char *s, Py_ssize_t n) {
    if (s == (const unsigned char *)self->source_utf8) {
        Py_INCREF(self->source);
        return self->source;
    }
    PyObject *last = self->last_source;
    if (last != NULL && PyUnicode_GET_LENGTH(last) == n &&
        memcmp(PyUnicode_DATA(last), s, (size_t)n) == 0) {
        Py_INCREF(last);
        return last;
    }
    PyObject *fresh = ascii_str(s, n);
    if (fresh == NULL)
        return NULL;
    Py_XSETREF(self->last_source, fresh);
    Py_INCREF(fresh);
    return fresh;
}

typedef struct {
    Span text, source_id, source, url, lang;
    PyObject *unicode; /* the text as str when it is not ASCII */
    long long published_ns;
} Fields;

/* The fields of one flat JSON object: 1, 0 to decline, -1 on error. */
static int scan_record(Builder *self, const unsigned char *p, Py_ssize_t size, long long now_ns,
                       Fields *out) {
    Cursor c = {p, p + size};
    Value kv[MAX_KEYS];
    Span keys[MAX_KEYS];
    int n_keys = 0;
    /* Decoded keys go here; reserving the record's size up front means the buffer
     * never moves while `keys` point into it. */
    self->key_buf.n = 0;
    if (buf_reserve(&self->key_buf, size) < 0)
        return -1;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return 0;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            Value key;
            if (n_keys == MAX_KEYS || c.p >= c.end || *c.p != '"' || !scan_string(&c, &key))
                return 0;
            skip_ws(&c);
            if (c.p >= c.end || *c.p != ':')
                return 0;
            c.p++;
            skip_ws(&c);
            if (!scan_value(&c, &kv[n_keys]))
                return 0;
            int r = string_utf8(&key, &self->key_buf, &keys[n_keys].p, &keys[n_keys].n);
            if (r <= 0)
                return r;
            for (int i = 0; i < n_keys; i++)
                if (keys[i].n == keys[n_keys].n &&
                    memcmp(keys[i].p, keys[n_keys].p, (size_t)keys[i].n) == 0)
                    return 0; /* a duplicate key: refused by the Python builder */
            n_keys++;
            skip_ws(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                skip_ws(&c);
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            return 0;
        }
    }
    skip_ws(&c);
    if (c.p != c.end)
        return 0;

    Value v[N_FIELDS];
    memset(v, 0, sizeof v);
    for (int i = 0; i < n_keys; i++)
        for (int f = 0; f < N_FIELDS; f++)
            if (field_index_matches(self, f, keys[i].p, keys[i].n))
                v[f] = kv[i];

    /* text: a string that cleaning leaves as it is */
    if (v[F_TEXT].type != J_STRING)
        return 0;
    self->field_buf[F_TEXT].n = 0;
    int r = string_utf8(&v[F_TEXT], &self->field_buf[F_TEXT], &out->text.p, &out->text.n);
    if (r <= 0)
        return r;

    /* source id: an integer, or a short ASCII string (stripped) */
    const Value *id = &v[F_ID];
    out->source_id = (Span){(const unsigned char *)"", 0};
    if (id->type == J_NUMBER) {
        if (!id->is_int)
            return 0;
        if (id->n == 2 && id->p[0] == '-' && id->p[1] == '0')
            out->source_id = (Span){(const unsigned char *)"0", 1}; /* str(int("-0")) */
        else
            out->source_id = (Span){id->p, id->n};
    } else if (id->type == J_STRING) {
        const unsigned char *s;
        Py_ssize_t n;
        r = short_field(self, F_ID, id, MAX_ID_CHARS, &s, &n);
        if (r <= 0)
            return r;
        while (n > 0 && ascii_space(s[0])) {
            s++;
            n--;
        }
        while (n > 0 && ascii_space(s[n - 1]))
            n--;
        out->source_id = (Span){s, n};
    } else if (id->type != J_ABSENT && id->type != J_NULL) {
        return 0;
    }

    /* title: documents with one take the Python path (markup and cleaning) */
    if (v[F_TITLE].type != J_ABSENT && v[F_TITLE].type != J_NULL &&
        !(v[F_TITLE].type == J_STRING && v[F_TITLE].n == 0))
        return 0;

    if ((r = short_field(self, F_SOURCE, &v[F_SOURCE], MAX_SOURCE_CHARS, &out->source.p,
                         &out->source.n)) <= 0 ||
        (r = short_field(self, F_URL, &v[F_URL], MAX_SHORT_CHARS, &out->url.p, &out->url.n)) <=
            0 ||
        (r = short_field(self, F_LANG, &v[F_LANG], MAX_LANG_CHARS, &out->lang.p,
                         &out->lang.n)) <= 0)
        return r;
    if (out->source.n == 0)
        out->source = (Span){(const unsigned char *)self->source_utf8, self->source_len};

    if ((r = publication_time(self, &v[F_TIME], now_ns, &out->published_ns)) <= 0)
        return r;
    return clean_text(self, out->text.p, out->text.n, is_ascii(out->text.p, out->text.n),
                      &out->unicode);
}

/* The Document and its Candidate from scanned fields. */
static PyObject *candidate(Builder *self, Fields *f, const Buf *ingested) {
    PyObject *keep = NULL, *result = NULL;
    Entity entities[MAX_ENTITIES];
    int n_entities = 0;
    if (self->find_entities != Py_None)
        n_entities = dictionary_entities(self, f->text.p, f->text.n, f->unicode, &keep, entities);
    else if (self->cashtags)
        n_entities = cashtag_entities(self, f->text.p, f->text.n, f->unicode, entities);
    if (n_entities < 0) {
        if (!PyErr_Occurred()) { /* more entities than fit: let Python do it */
            Py_XDECREF(keep);
            Py_RETURN_NONE;
        }
        goto done;
    }

    /* ids: sha256 of source \x1f source_id, and of source \x1f \x1f text */
    char content[ID_HEX], channel[ID_HEX];
    Buf *h = &self->hash_buf;
    h->n = 0;
    if (buf_reserve(h, f->source.n + 2 + f->text.n + f->source_id.n) < 0)
        goto done;
    put(h, f->source.p, f->source.n);
    put(h, "\x1f\x1f", 2);
    put(h, f->text.p, f->text.n);
    if (sha_hex(self->sha, h->b, h->n, content) < 0)
        goto done;
    int has_channel = f->source_id.n > 0;
    if (has_channel) {
        h->n = f->source.n + 1;
        put(h, f->source_id.p, f->source_id.n);
        if (sha_hex(self->sha, h->b, h->n, channel) < 0)
            goto done;
    }
    const char *doc_id = has_channel ? channel : content;

    Buf *o = &self->out;
    o->n = 0;
    if (put_bytes_field(o, 0x0A, doc_id, ID_HEX) < 0 ||
        put_bytes_field(o, 0x12, f->source.p, f->source.n) < 0 ||
        put_bytes_field(o, 0x1A, f->source_id.p, f->source_id.n) < 0 ||
        put_bytes_field(o, 0x22, f->text.p, f->text.n) < 0 ||
        put_bytes_field(o, 0x32, f->lang.p, f->lang.n) < 0)
        goto done;
    for (int i = 0; i < n_entities; i++)
        if (put_entity(o, &entities[i]) < 0)
            goto done;
    if (f->published_ns > 0 &&
        put_timestamp(o, 0x42, f->published_ns / NS, (int32_t)(f->published_ns % NS)) < 0)
        goto done;
    if (buf_reserve(o, ingested->n) < 0)
        goto done;
    put(o, ingested->b, ingested->n);
    if (put_bytes_field(o, 0x5A, f->url.p, f->url.n) < 0)
        goto done;

    PyObject *items[6] = {NULL};
    items[0] = ascii_str(doc_id, ID_HEX);
    items[1] = n_entities ? PyBytes_FromStringAndSize((const char *)entities[0].id.p,
                                                      entities[0].id.n)
                          : PyBytes_FromStringAndSize(doc_id, ID_HEX);
    items[2] = PyBytes_FromStringAndSize((const char *)o->b, o->n);
    items[3] = source_str(self, f->source.p, f->source.n);
    if (has_channel) {
        items[4] = items[0];
        Py_XINCREF(items[4]);
    } else {
        items[4] = Py_None;
        Py_INCREF(Py_None);
    }
    items[5] = ascii_str(content, ID_HEX);
    PyTypeObject *type = (PyTypeObject *)self->candidate;
    PyObject *cand = NULL;
    int ok = 1;
    for (int i = 0; i < 6; i++)
        ok = ok && items[i] != NULL;
    if (ok)
        cand = type->tp_alloc(type, 6); /* what tuple.__new__ does for a subclass */
    if (cand == NULL) {
        for (int i = 0; i < 6; i++)
            Py_XDECREF(items[i]);
        goto done;
    }
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(cand, i, items[i]);
    result = cand;
done:
    Py_XDECREF(keep);
    return result;
}

/* One record: a new Candidate, None to decline, or NULL with an exception set. */
static PyObject *build_one(Builder *self, PyObject *line, long long now_ns, const Buf *ingested) {
    if (!PyBytes_CheckExact(line)) /* Oversized and anything unexpected */
        Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(line);
    Py_ssize_t size = PyBytes_GET_SIZE(line);
    /* decode_line hands a possible byte-order mark (or an empty record) to Python */
    if (size == 0 || size > self->max_record || p[0] == 0xEF || p[0] == 0xFF ||
        p[0] == 0xFE || p[0] == 0x00)
        Py_RETURN_NONE;
    Fields f;
    memset(&f, 0, sizeof f);
    int r = scan_record(self, p, size, now_ns, &f);
    if (r <= 0) {
        Py_XDECREF(f.unicode);
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *result = candidate(self, &f, ingested);
    Py_XDECREF(f.unicode);
    return result;
}

static PyObject *Builder_build(Builder *self, PyObject *args) {
    PyObject *lines;
    long long now_ns;
    if (!PyArg_ParseTuple(args, "O!L:build", &PyList_Type, &lines, &now_ns))
        return NULL;
    if (now_ns < 0) {
        PyErr_SetString(PyExc_ValueError, "now_ns must not be negative");
        return NULL;
    }
    Buf ingested = {NULL, 0, 0};
    if (put_timestamp(&ingested, 0x4A, now_ns / NS, (int32_t)(now_ns % NS)) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(lines);
    PyObject *items = PyList_New(n);
    PyObject *declined = PyList_New(0);
    if (items == NULL || declined == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        Py_INCREF(line);
        PyObject *item = build_one(self, line, now_ns, &ingested);
        Py_DECREF(line);
        if (item == NULL) {
            /* An error in a callback is the Python builder's to report (it turns it
             * into a dead letter); only a lack of memory or an interrupt stops here. */
            if (PyErr_ExceptionMatches(PyExc_MemoryError) ||
                !PyErr_ExceptionMatches(PyExc_Exception))
                goto fail;
            PyErr_Clear();
            item = Py_None;
            Py_INCREF(item);
        }
        PyList_SET_ITEM(items, i, item);
        if (item == Py_None) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(declined, index) < 0) {
                Py_XDECREF(index);
                goto fail;
            }
            Py_DECREF(index);
        }
    }
    PyMem_Free(ingested.b);
    return Py_BuildValue("(NN)", items, declined);
fail:
    PyMem_Free(ingested.b);
    Py_XDECREF(items);
    Py_XDECREF(declined);
    return NULL;
}

static int Builder_init(Builder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fields", "source", "candidate", "is_nfc", "parse_time",
                             "find_entities", "max_chars", "max_record", "skew_ns",
                             "cashtags", "strip_html", NULL};
    PyObject *fields, *source, *candidate_type, *is_nfc, *parse_time, *find_entities;
    Py_ssize_t max_chars, max_record;
    long long skew_ns;
    int cashtags, strip_html;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!UO!OOOnnLpp:Builder", kwlist,
                                     &PyTuple_Type, &fields, &source, &PyType_Type,
                                     &candidate_type, &is_nfc, &parse_time, &find_entities,
                                     &max_chars, &max_record, &skew_ns, &cashtags, &strip_html))
        return -1;
    if (PyTuple_GET_SIZE(fields) != N_FIELDS) {
        PyErr_Format(PyExc_ValueError, "fields must name %d fields", N_FIELDS);
        return -1;
    }
    if (!PyType_IsSubtype((PyTypeObject *)candidate_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "candidate must be a tuple subclass");
        return -1;
    }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *name = PyTuple_GET_ITEM(fields, f);
        if (name != Py_None && !PyBytes_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "field names must be bytes or None");
            return -1;
        }
        Py_INCREF(name);
        Py_XSETREF(self->fields[f], name);
    }
    const char *utf8 = PyUnicode_AsUTF8AndSize(source, &self->source_len);
    if (utf8 == NULL)
        return -1;
    self->source_utf8 = utf8;
    Py_INCREF(source);
    Py_XSETREF(self->source, source);
    Py_INCREF(candidate_type);
    Py_XSETREF(self->candidate, candidate_type);
    Py_INCREF(is_nfc);
    Py_XSETREF(self->is_nfc, is_nfc);
    Py_INCREF(parse_time);
    Py_XSETREF(self->parse_time, parse_time);
    Py_INCREF(find_entities);
    Py_XSETREF(self->find_entities, find_entities);
    self->max_chars = max_chars;
    self->max_record = max_record;
    self->skew_ns = skew_ns;
    self->cashtags = cashtags;
    self->strip_html = strip_html;
    if (self->sha == NULL && (self->sha = EVP_MD_CTX_new()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int Builder_traverse(Builder *self, visitproc visit, void *arg) {
    for (int f = 0; f < N_FIELDS; f++)
        Py_VISIT(self->fields[f]);
    Py_VISIT(self->source);
    Py_VISIT(self->candidate);
    Py_VISIT(self->is_nfc);
    Py_VISIT(self->parse_time);
    Py_VISIT(self->find_entities);
    Py_VISIT(self->last_source);
    return 0;
}

static int Builder_clear(Builder *self) {
    for (int f = 0; f < N_FIELDS; f++)
        Py_CLEAR(self->fields[f]);
    Py_CLEAR(self->source);
    Py_CLEAR(self->candidate);
    Py_CLEAR(self->is_nfc);
    Py_CLEAR(self->parse_time);
    Py_CLEAR(self->find_entities);
    Py_CLEAR(self->last_source);
    return 0;
}

static void Builder_dealloc(Builder *self) {
    PyObject_GC_UnTrack(self);
    Builder_clear(self);
    for (int f = 0; f < N_FIELDS; f++)
        PyMem_Free(self->field_buf[f].b);
    PyMem_Free(self->key_buf.b);
    PyMem_Free(self->hash_buf.b);
    PyMem_Free(self->out.b);
    PyMem_Free(self->byte_at);
    EVP_MD_CTX_free(self->sha);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Builder_methods[] = {
    {"build", (PyCFunction)Builder_build, METH_VARARGS,
     "build(lines, now_ns) -> (items, declined): a Candidate per line, or None where the "
     "Python builder must decide; declined lists those indexes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "services.ingest._fastpath.Builder",
    .tp_basicsize = sizeof(Builder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Documents from JSONL records, for the records that need no special care.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Builder_init,
    .tp_dealloc = (destructor)Builder_dealloc,
    .tp_traverse = (traverseproc)Builder_traverse,
    .tp_clear = (inquiry)Builder_clear,
    .tp_methods = Builder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastpath",
    .m_doc = "The common case of building ingest documents from JSONL, compiled.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (sha256_md == NULL && (sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    if (PyType_Ready(&BuilderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BuilderType);
    if (PyModule_AddObject(m, "Builder", (PyObject *)&BuilderType) < 0) {
        Py_DECREF(&BuilderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
