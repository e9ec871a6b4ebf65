/*
 * The common case of DocumentBuilder.from_json_line, compiled.
 *
 * A JSONL record that is a flat object with plain, already clean text (the great
 * majority) goes from bytes to a Candidate here: strict JSON and UTF-8 checks, field
 * extraction, the cleanliness checks of normalize_text, cashtags, both SHA-256 ids
 * and the Document's protobuf encoding.
 *
 * Everything else -- nested values, HTML, text that cleaning would change, odd field
 * types, timestamps that need a flag, any doubt -- is *declined*: the record's slot
 * stays None and the Python builder handles it, refusals included. So this code never
 * rejects anything and never has to reproduce an error message; it only has to
 * agree with the Python builder on what it accepts, byte for byte, which the tests
 * check on generated input (tests/ingest/test_fastpath.py).
 *
 * A call builds a list of records in two passes. The first runs without the GIL, so
 * the publisher's threads run meanwhile: it builds every record that needs no Python
 * call into an arena of bytes. The second, with the GIL, makes the Python objects and
 * builds the few records that need a Python call (a dictionary matcher, a timestamp
 * that is not epoch seconds, text that unicodedata must confirm is NFC).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <limits.h>
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
    /* The raw allocator: records are also built without the GIL. */
    unsigned char *b = PyMem_RawRealloc(buf->b, (size_t)cap);
    if (b == NULL)
        return -1;
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

#include "_nfc_unsafe.h"

/* Result codes of the steps below. */
#define DECLINE 0
#define OK 1
#define NEEDS_GIL 2 /* the record needs a Python call: built in the second pass */
#define FAILED (-1) /* out of memory (without the GIL), or a Python error is set */

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} Span;

#define MAX_ENTITIES 64
typedef struct {
    Span id, name;
    long kind;
} Entity;

/* A record built without the GIL, waiting for its Python objects. */
typedef struct {
    int status;
    Py_ssize_t value_at, value_len, key_at, key_len, source_at, source_len; /* in arena */
    char doc_id[ID_HEX], content[ID_HEX];
    int has_channel;
    PyObject *line; /* a reference held while the GIL is released */
} Slot;

typedef struct {
    PyObject_HEAD
    PyObject *fields[N_FIELDS]; /* bytes (UTF-8 names) or None */
    PyObject *source;           /* str: the connector's source */
    PyObject *candidate;        /* the Candidate class (a tuple subclass) */
    PyObject *is_nfc;           /* callable(str) -> bool */
    PyObject *parse_time;       /* callable(value, now_ns) -> ns, 0 (none) or None (decline) */
    PyObject *find_entities;    /* callable(str) -> list[Match], or None: cashtags here */
    Py_ssize_t max_chars;
    Py_ssize_t max_record;
    long long skew_ns;
    int cashtags;
    int strip_html;
    const char *source_utf8;
    Py_ssize_t source_len;
    /* Scratch space reused between records (raw allocations: used without the GIL):
     * decoded field values, decoded keys, the hash input, the text as code points and
     * their UTF-8 offsets, the cleaned text, and the encoded documents of one call. */
    Buf field_buf[N_FIELDS], key_buf, hash_buf, clean_buf, arena;
    Py_UCS4 *ucs4;
    Py_ssize_t *byte_at;
    Py_ssize_t ucs4_cap;
    Slot *slots;
    Py_ssize_t slots_cap;
    PyObject *last_source; /* the source str of the previous record, reused when equal */
    EVP_MD_CTX *sha;
    PyThread_type_lock lock; /* one build at a time: the scratch space is shared */
} Builder;

/* Cashtags as entities.py finds them (the _CASHTAG regex, and no letter or digit
 * glued in front), first occurrence per ticker. Works on code points, so that "\w"
 * after a ticker means what it means to Python's re for str patterns; `utf8` holds
 * the same text, byte_at[i] the offset of code point i (NULL: ASCII, offset = i). */
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
        !EVP_DigestFinal_ex(ctx, digest, NULL))
        return -1;
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

/* Whether a code point can make a text change under NFC (see nfctable.py). */
static int nfc_unsafe_point(Py_UCS4 c) {
    if (c < 0x300)
        return 0;
    int lo = 0, hi = NFC_UNSAFE_RANGES - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < nfc_unsafe[mid][0])
            hi = mid - 1;
        else if (c > nfc_unsafe[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* The text of a record, as the steps after the scan need it. */
typedef struct {
    Span utf8;
    int ascii;
    Py_ssize_t len;   /* code points */
    int nfc_unsure;   /* holds a code point that NFC may change: ask unicodedata */
} Text;

/* Non-ASCII text as code points (self->ucs4) and their UTF-8 offsets (self->byte_at). */
static int decode_ucs4(Builder *self, Text *t) {
    if (t->utf8.n + 1 > self->ucs4_cap) {
        Py_ssize_t cap = t->utf8.n + 1;
        Py_UCS4 *u = PyMem_RawRealloc(self->ucs4, (size_t)cap * sizeof *u);
        if (u == NULL)
            return FAILED;
        self->ucs4 = u;
        Py_ssize_t *b = PyMem_RawRealloc(self->byte_at, (size_t)cap * sizeof *b);
        if (b == NULL)
            return FAILED;
        self->byte_at = b;
        self->ucs4_cap = cap;
    }
    const unsigned char *s = t->utf8.p;
    Py_ssize_t at = 0, len = 0, n = t->utf8.n;
    while (at < n) { /* well-formed: checked by the scan */
        unsigned char b0 = s[at];
        Py_UCS4 c;
        int k;
        if (b0 < 0x80) {
            c = b0;
            k = 1;
        } else if (b0 < 0xE0) {
            c = (Py_UCS4)(b0 & 0x1F) << 6 | (s[at + 1] & 0x3F);
            k = 2;
        } else if (b0 < 0xF0) {
            c = (Py_UCS4)(b0 & 0x0F) << 12 | (Py_UCS4)(s[at + 1] & 0x3F) << 6 | (s[at + 2] & 0x3F);
            k = 3;
        } else {
            c = (Py_UCS4)(b0 & 0x07) << 18 | (Py_UCS4)(s[at + 1] & 0x3F) << 12 |
                (Py_UCS4)(s[at + 2] & 0x3F) << 6 | (s[at + 3] & 0x3F);
            k = 4;
        }
        self->byte_at[len] = at;
        self->ucs4[len++] = c;
        at += k;
    }
    self->byte_at[len] = at;
    t->len = len;
    return OK;
}

/* Characters clean_for_model removes: C0/C1 controls but tab, newline and carriage
 * return (sentiflow.text._CONTROLS), and zero-width, bidi and similar invisible
 * characters (_INVISIBLE). */
static int removed_by_cleaning(Py_UCS4 c) {
    if (c < 0x20)
        return c != '\t' && c != '\n' && c != '\r';
    if (c >= 0x7F && c <= 0x9F)
        return 1;
    return c == 0x00AD || (c >= 0x200B && c <= 0x200F) || (c >= 0x202A && c <= 0x202E) ||
           (c >= 0x2060 && c <= 0x2064) || (c >= 0x2066 && c <= 0x206F) || c == 0xFEFF;
}

/* clean_for_model on text without NFC-sensitive characters (NFC leaves it as it is):
 * invisible and control characters removed, whitespace runs made one space, the ends
 * stripped. Code points in self->ucs4; the result, as UTF-8, in self->clean_buf. */
static int clean_into(Builder *self, const Text *t) {
    Buf *out = &self->clean_buf;
    out->n = 0;
    if (buf_reserve(out, t->utf8.n) < 0) /* cleaning never makes text longer */
        return FAILED;
    int space = 0;
    for (Py_ssize_t i = 0; i < t->len; i++) {
        Py_UCS4 c = self->ucs4[i];
        if (removed_by_cleaning(c))
            continue;
        if (Py_UNICODE_ISSPACE(c)) {
            space = 1;
            continue;
        }
        if (space && out->n > 0)
            out->b[out->n++] = ' ';
        space = 0;
        put_utf8(out, c);
    }
    return OK;
}

/* Does text (t->utf8) end as normalize_text leaves it, without markup or truncation?
 * OK (t and f->raw_text set to the document's text and raw text), DECLINE, NEEDS_GIL
 * or FAILED. */
static int check_text(Builder *self, Text *t, Span *raw_text, int with_gil) {
    const unsigned char *s = t->utf8.p;
    Py_ssize_t n = t->utf8.n;
    *raw_text = (Span){NULL, 0};
    if (n == 0 || memchr(s, 0, (size_t)n) != NULL) /* empty, or NUL: refused */
        return DECLINE;
    if (self->strip_html && (memchr(s, '<', (size_t)n) || memchr(s, '&', (size_t)n)))
        return DECLINE;
    t->ascii = is_ascii(s, n);
    int clean = s[0] != ' ' && s[n - 1] != ' ';
    if (t->ascii) {
        for (Py_ssize_t i = 0; clean && i < n; i++) {
            unsigned char ch = s[i];
            if (ch < 0x20 || ch > 0x7E || (ch == ' ' && s[i + 1] == ' '))
                clean = 0;
        }
        if (clean) {
            t->len = n;
            return n <= self->max_chars ? OK : DECLINE;
        }
    }
    if (decode_ucs4(self, t) < 0)
        return FAILED;
    int unsure = 0;
    for (Py_ssize_t i = 0; i < t->len; i++) {
        Py_UCS4 ch = self->ucs4[i];
        if (!Py_UNICODE_ISPRINTABLE(ch) || (ch == ' ' && i + 1 < t->len && self->ucs4[i + 1] == ' '))
            clean = 0;
        unsure |= nfc_unsafe_point(ch);
    }
    if (clean) {
        if (t->len > self->max_chars)
            return DECLINE;
        if (!unsure)
            return OK;
        if (!with_gil)
            return NEEDS_GIL;
        PyObject *u = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
        if (u == NULL)
            return FAILED;
        PyObject *r = PyObject_CallOneArg(self->is_nfc, u);
        Py_DECREF(u);
        if (r == NULL)
            return FAILED;
        int nfc = PyObject_IsTrue(r);
        Py_DECREF(r);
        return nfc < 0 ? FAILED : nfc ? OK : DECLINE;
    }
    if (unsure)
        return DECLINE; /* cleaning starts with NFC: the Python builder's job */
    if (clean_into(self, t) < 0)
        return FAILED;
    Buf *cleaned = &self->clean_buf;
    if (cleaned->n == 0)
        return DECLINE; /* empty after cleaning: refused */
    /* The raw text is kept (cut to four times the limit) when cleaning changed it. */
    if (cleaned->n != n || memcmp(cleaned->b, s, (size_t)n) != 0) {
        Py_ssize_t keep = t->len / 4 < self->max_chars ? t->len : self->max_chars * 4;
        *raw_text = (Span){s, self->byte_at[keep]};
    }
    t->utf8 = (Span){cleaned->b, cleaned->n};
    t->ascii = is_ascii(cleaned->b, cleaned->n);
    if (t->ascii)
        t->len = cleaned->n;
    else if (decode_ucs4(self, t) < 0)
        return FAILED;
    return t->len <= self->max_chars ? OK : DECLINE;
}

static int field_index_matches(Builder *self, int f, const unsigned char *key, Py_ssize_t n) {
    PyObject *name = self->fields[f];
    return name != Py_None && PyBytes_GET_SIZE(name) == n &&
           memcmp(PyBytes_AS_STRING(name), key, (size_t)n) == 0;
}

/* A string field under decode._short_string's fast case (ASCII, no NUL, within
 * `limit`): OK with its text (empty when absent or null), DECLINE, or FAILED. */
static int short_field(Builder *self, int f, const Value *v, Py_ssize_t limit,
                       const unsigned char **s, Py_ssize_t *n) {
    *s = (const unsigned char *)"";
    *n = 0;
    if (v->type == J_ABSENT || v->type == J_NULL)
        return OK;
    if (v->type != J_STRING)
        return DECLINE;
    self->field_buf[f].n = 0;
    int r = string_utf8(v, &self->field_buf[f], s, n);
    if (r <= 0)
        return r;
    return short_ascii(*s, *n, limit) ? OK : DECLINE;
}

/* Document.published_at in ns (0: none): OK, DECLINE, NEEDS_GIL or FAILED. Epoch
 * seconds are read here; anything else goes through normalize.parse_time. */
static int publication_time(Builder *self, const Value *v, long long now_ns, int with_gil,
                            long long *ns) {
    *ns = 0;
    if (v->type == J_ABSENT || v->type == J_NULL)
        return OK;
    if (v->type == J_NUMBER && v->is_int && v->p[0] != '-' && v->n <= 11) {
        long long seconds = 0;
        for (Py_ssize_t i = 0; i < v->n; i++)
            seconds = seconds * 10 + (v->p[i] - '0');
        /* seconds * NS <= now_ns + skew_ns, without overflowing */
        long long latest = self->skew_ns > LLONG_MAX - now_ns ? LLONG_MAX : now_ns + self->skew_ns;
        if (seconds > 0 && seconds < EPOCH_SECONDS_BELOW && seconds <= latest / NS) {
            *ns = seconds * NS;
            return OK;
        }
    }
    if (v->type != J_NUMBER && v->type != J_STRING)
        return DECLINE; /* booleans are refused by the Python builder */
    if (!with_gil)
        return NEEDS_GIL;
    PyObject *value = NULL;
    if (v->type == J_NUMBER) {
        char token[64];
        if (v->n >= (Py_ssize_t)sizeof token)
            return DECLINE;
        memcpy(token, v->p, (size_t)v->n);
        token[v->n] = 0;
        if (v->is_int) {
            value = PyLong_FromString(token, NULL, 10);
        } else {
            double d = PyOS_string_to_double(token, NULL, NULL);
            value = d == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(d);
        }
    } else {
        const unsigned char *s;
        Py_ssize_t n;
        self->field_buf[F_TIME].n = 0;
        int r = string_utf8(v, &self->field_buf[F_TIME], &s, &n);
        if (r <= 0)
            return r;
        value = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    }
    if (value == NULL)
        return FAILED;
    PyObject *now = PyLong_FromLongLong(now_ns);
    if (now == NULL) {
        Py_DECREF(value);
        return FAILED;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(self->parse_time, value, now, NULL);
    Py_DECREF(value);
    Py_DECREF(now);
    if (r == NULL)
        return FAILED;
    if (r == Py_None) {
        Py_DECREF(r);
        return DECLINE;
    }
    *ns = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (*ns == -1 && PyErr_Occurred())
        return FAILED;
    return *ns >= 0 ? OK : DECLINE;
}

typedef struct {
    Text text;
    Span raw_text; /* set when cleaning changed the text */
    Span source_id, source, url, lang;
    long long published_ns;
    Entity entities[MAX_ENTITIES];
    int n_entities;
    PyObject *matches; /* the dictionary matcher's answer, whose strings `entities` use */
} Fields;

/* The fields of one flat JSON object. OK, DECLINE, NEEDS_GIL or FAILED. */
static int scan_record(Builder *self, const unsigned char *p, Py_ssize_t size, long long now_ns,
                       int with_gil, Fields *out) {
    Cursor c = {p, p + size};
    Value kv[MAX_KEYS];
    Span keys[MAX_KEYS];
    int n_keys = 0;
    /* Decoded keys go here; reserving the record's size up front means the buffer
     * never moves while `keys` point into it. */
    self->key_buf.n = 0;
    if (buf_reserve(&self->key_buf, size) < 0)
        return FAILED;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return DECLINE;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            Value key;
            if (n_keys == MAX_KEYS || c.p >= c.end || *c.p != '"' || !scan_string(&c, &key))
                return DECLINE;
            skip_ws(&c);
            if (c.p >= c.end || *c.p != ':')
                return DECLINE;
            c.p++;
            skip_ws(&c);
            if (!scan_value(&c, &kv[n_keys]))
                return DECLINE;
            int r = string_utf8(&key, &self->key_buf, &keys[n_keys].p, &keys[n_keys].n);
            if (r <= 0)
                return r;
            for (int i = 0; i < n_keys; i++)
                if (keys[i].n == keys[n_keys].n &&
                    memcmp(keys[i].p, keys[n_keys].p, (size_t)keys[i].n) == 0)
                    return DECLINE; /* a duplicate key: refused by the Python builder */
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
            return DECLINE;
        }
    }
    skip_ws(&c);
    if (c.p != c.end)
        return DECLINE;

    Value v[N_FIELDS];
    memset(v, 0, sizeof v);
    for (int i = 0; i < n_keys; i++)
        for (int f = 0; f < N_FIELDS; f++)
            if (field_index_matches(self, f, keys[i].p, keys[i].n))
                v[f] = kv[i];

    /* text: a string that cleaning leaves as it is */
    if (v[F_TEXT].type != J_STRING)
        return DECLINE;
    self->field_buf[F_TEXT].n = 0;
    int r = string_utf8(&v[F_TEXT], &self->field_buf[F_TEXT], &out->text.utf8.p,
                        &out->text.utf8.n);
    if (r <= 0)
        return r;

    /* source id: an integer, or a short ASCII string (stripped) */
    const Value *id = &v[F_ID];
    out->source_id = (Span){(const unsigned char *)"", 0};
    if (id->type == J_NUMBER) {
        if (!id->is_int)
            return DECLINE;
        if (id->n == 2 && id->p[0] == '-' && id->p[1] == '0')
            out->source_id = (Span){(const unsigned char *)"0", 1}; /* str(int("-0")) */
        else
            out->source_id = (Span){id->p, id->n};
    } else if (id->type == J_STRING) {
        const unsigned char *s;
        Py_ssize_t n;
        r = short_field(self, F_ID, id, MAX_ID_CHARS, &s, &n);
        if (r != OK)
            return r;
        while (n > 0 && ascii_space(s[0])) {
            s++;
            n--;
        }
        while (n > 0 && ascii_space(s[n - 1]))
            n--;
        out->source_id = (Span){s, n};
    } else if (id->type != J_ABSENT && id->type != J_NULL) {
        return DECLINE;
    }

    /* title: documents with one take the Python path (markup and cleaning) */
    if (v[F_TITLE].type != J_ABSENT && v[F_TITLE].type != J_NULL &&
        !(v[F_TITLE].type == J_STRING && v[F_TITLE].n == 0))
        return DECLINE;

    if ((r = short_field(self, F_SOURCE, &v[F_SOURCE], MAX_SOURCE_CHARS, &out->source.p,
                         &out->source.n)) != OK ||
        (r = short_field(self, F_URL, &v[F_URL], MAX_SHORT_CHARS, &out->url.p, &out->url.n)) !=
            OK ||
        (r = short_field(self, F_LANG, &v[F_LANG], MAX_LANG_CHARS, &out->lang.p,
                         &out->lang.n)) != OK)
        return r;
    if (out->source.n == 0)
        out->source = (Span){(const unsigned char *)self->source_utf8, self->source_len};

    if ((r = publication_time(self, &v[F_TIME], now_ns, with_gil, &out->published_ns)) != OK)
        return r;
    return check_text(self, &out->text, &out->raw_text, with_gil);
}

/* Entities from the configured dictionary (and cashtags), found by the Python matcher. */
static int dictionary_entities(Builder *self, Fields *f) {
    PyObject *text = PyUnicode_DecodeUTF8((const char *)f->text.utf8.p, f->text.utf8.n, "strict");
    if (text == NULL)
        return FAILED;
    PyObject *matches = PyObject_CallOneArg(self->find_entities, text);
    Py_DECREF(text);
    if (matches == NULL)
        return FAILED;
    f->matches = matches; /* the UTF-8 of ids and names lives as long as the matches */
    if (!PyList_Check(matches)) {
        PyErr_SetString(PyExc_TypeError, "find_entities must return a list");
        return FAILED;
    }
    Py_ssize_t n = PyList_GET_SIZE(matches);
    if (n > MAX_ENTITIES)
        return DECLINE;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = PyList_GET_ITEM(matches, i);
        if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) < 3) {
            PyErr_SetString(PyExc_TypeError, "an entity match must be (id, name, kind, ...)");
            return FAILED;
        }
        Entity *e = &f->entities[i];
        const char *id = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(m, 0), &e->id.n);
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(m, 1), &e->name.n);
        e->kind = PyLong_AsLong(PyTuple_GET_ITEM(m, 2));
        if (id == NULL || name == NULL || (e->kind == -1 && PyErr_Occurred()))
            return FAILED;
        e->id.p = (const unsigned char *)id;
        e->name.p = (const unsigned char *)name;
    }
    f->n_entities = (int)n;
    return OK;
}

/* The record's entities: OK, DECLINE, NEEDS_GIL or FAILED. */
static int find_entities(Builder *self, Fields *f, int with_gil) {
    f->n_entities = 0;
    if (self->find_entities != Py_None)
        return with_gil ? dictionary_entities(self, f) : NEEDS_GIL;
    if (!self->cashtags || memchr(f->text.utf8.p, '$', (size_t)f->text.utf8.n) == NULL)
        return OK;
    int n = f->text.ascii ? find_cashtags(PyUnicode_1BYTE_KIND, f->text.utf8.p, f->text.len,
                                          f->text.utf8.p, NULL, f->entities, MAX_ENTITIES)
                          : find_cashtags(PyUnicode_4BYTE_KIND, self->ucs4, f->text.len,
                                          f->text.utf8.p, self->byte_at, f->entities,
                                          MAX_ENTITIES);
    if (n < 0)
        return DECLINE; /* more than fit */
    f->n_entities = n;
    return OK;
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

/* The ids (sha256 of source \x1f source_id, and of source \x1f \x1f text) and the
 * Document, appended to `out`. Pure C: OK or FAILED (no exception set). */
static int encode_document(Builder *self, const Fields *f, const Buf *ingested, Buf *out,
                           Slot *slot) {
    Buf *h = &self->hash_buf;
    h->n = 0;
    if (buf_reserve(h, f->source.n + 2 + f->text.utf8.n + f->source_id.n) < 0)
        return FAILED;
    put(h, f->source.p, f->source.n);
    put(h, "\x1f\x1f", 2);
    put(h, f->text.utf8.p, f->text.utf8.n);
    if (sha_hex(self->sha, h->b, h->n, slot->content) < 0)
        return FAILED;
    slot->has_channel = f->source_id.n > 0;
    if (slot->has_channel) {
        h->n = f->source.n + 1;
        put(h, f->source_id.p, f->source_id.n);
        if (sha_hex(self->sha, h->b, h->n, slot->doc_id) < 0)
            return FAILED;
    } else {
        memcpy(slot->doc_id, slot->content, ID_HEX);
    }

    slot->value_at = out->n;
    if (put_bytes_field(out, 0x0A, slot->doc_id, ID_HEX) < 0 ||
        put_bytes_field(out, 0x12, f->source.p, f->source.n) < 0 ||
        put_bytes_field(out, 0x1A, f->source_id.p, f->source_id.n) < 0 ||
        put_bytes_field(out, 0x22, f->text.utf8.p, f->text.utf8.n) < 0 ||
        put_bytes_field(out, 0x2A, f->raw_text.p, f->raw_text.n) < 0 ||
        put_bytes_field(out, 0x32, f->lang.p, f->lang.n) < 0)
        return FAILED;
    for (int i = 0; i < f->n_entities; i++)
        if (put_entity(out, &f->entities[i]) < 0)
            return FAILED;
    if (f->published_ns > 0 &&
        put_timestamp(out, 0x42, f->published_ns / NS, (int32_t)(f->published_ns % NS)) < 0)
        return FAILED;
    if (buf_reserve(out, ingested->n) < 0)
        return FAILED;
    put(out, ingested->b, ingested->n);
    if (put_bytes_field(out, 0x5A, f->url.p, f->url.n) < 0)
        return FAILED;
    slot->value_len = out->n - slot->value_at;

    /* The key (primary entity, else the id) and the source, beside the value. */
    const Span key = f->n_entities ? f->entities[0].id
                                   : (Span){(const unsigned char *)slot->doc_id, ID_HEX};
    if (buf_reserve(out, key.n + f->source.n) < 0)
        return FAILED;
    slot->key_at = out->n;
    slot->key_len = key.n;
    put(out, key.p, key.n);
    if (f->source.p == (const unsigned char *)self->source_utf8) {
        slot->source_at = -1;
    } else {
        slot->source_at = out->n;
        slot->source_len = f->source.n;
        put(out, f->source.p, f->source.n);
    }
    return OK;
}

/* One record, start to end. OK (slot filled, bytes in `out`), DECLINE, NEEDS_GIL
 * (only without the GIL) or FAILED. */
static int build_record(Builder *self, const unsigned char *p, Py_ssize_t size, long long now_ns,
                        const Buf *ingested, Buf *out, int with_gil, Slot *slot) {
    /* decode_line hands a possible byte-order mark (or an empty record) to Python */
    if (size == 0 || size > self->max_record || p[0] == 0xEF || p[0] == 0xFF ||
        p[0] == 0xFE || p[0] == 0x00)
        return DECLINE;
    Fields f;
    f.matches = NULL;
    int r = scan_record(self, p, size, now_ns, with_gil, &f);
    if (r == OK)
        r = find_entities(self, &f, with_gil);
    if (r == OK)
        r = encode_document(self, &f, ingested, out, slot);
    Py_XDECREF(f.matches);
    return r;
}

/* The source of a record as a str: the connector's, or the previous record's when equal. */
static PyObject *source_str(Builder *self, const Slot *slot) {
    if (slot->source_at < 0) {
        Py_INCREF(self->source);
        return self->source;
    }
    const unsigned char *s = self->arena.b + slot->source_at;
    Py_ssize_t n = slot->source_len;
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

/* The Candidate of a built slot, from the bytes in the arena. */
static PyObject *make_candidate(Builder *self, const Slot *slot) {
    const unsigned char *arena = self->arena.b;
    PyObject *items[6];
    items[0] = ascii_str(slot->doc_id, ID_HEX);
    items[1] = PyBytes_FromStringAndSize((const char *)arena + slot->key_at, slot->key_len);
    items[2] = PyBytes_FromStringAndSize((const char *)arena + slot->value_at, slot->value_len);
    items[3] = source_str(self, slot);
    items[4] = slot->has_channel ? items[0] : Py_None;
    Py_XINCREF(items[4]);
    items[5] = ascii_str(slot->content, ID_HEX);
    PyTypeObject *type = (PyTypeObject *)self->candidate;
    PyObject *cand = NULL;
    if (items[0] && items[1] && items[2] && items[3] && items[5])
        cand = type->tp_alloc(type, 6); /* what tuple.__new__ does for a subclass */
    if (cand == NULL) {
        for (int i = 0; i < 6; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(cand, i, items[i]);
    /* It holds str, bytes and None only, so it can be in no reference cycle: out of
     * the collector's sight, it costs no collection anything (CPython untracks such
     * plain tuples itself, but never instances of tuple subclasses). */
    PyObject_GC_UnTrack(cand);
    return cand;
}

/* The first pass, without the GIL: every record that needs no Python call. */
static void build_without_gil(Builder *self, Py_ssize_t n, long long now_ns, const Buf *ingested) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Slot *slot = &self->slots[i];
        if (slot->line == NULL) {
            slot->status = DECLINE;
            continue;
        }
        slot->status = build_record(self, (const unsigned char *)PyBytes_AS_STRING(slot->line),
                                    PyBytes_GET_SIZE(slot->line), now_ns, ingested, &self->arena,
                                    0, slot);
    }
}

/* The item of slot i in the second pass, with the GIL: a new reference (a Candidate or
 * None), or NULL with an exception set. */
static PyObject *second_pass(Builder *self, Slot *slot, long long now_ns, const Buf *ingested) {
    int status = slot->status;
    if (status == NEEDS_GIL) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(slot->line);
        status = build_record(self, p, PyBytes_GET_SIZE(slot->line), now_ns, ingested,
                              &self->arena, 1, slot);
    }
    if (status == OK)
        return make_candidate(self, slot);
    if (status == FAILED) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    Py_RETURN_NONE;
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
    /* Another thread may be building with this builder: wait for it without the GIL. */
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    PyObject *result = NULL, *items = NULL, *declined = NULL;
    Py_ssize_t n = PyList_GET_SIZE(lines), held = 0;
    Buf ingested = {NULL, 0, 0};
    if (put_timestamp(&ingested, 0x4A, now_ns / NS, (int32_t)(now_ns % NS)) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (n > self->slots_cap) {
        Slot *slots = PyMem_RawRealloc(self->slots, (size_t)n * sizeof *slots);
        if (slots == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        self->slots = slots;
        self->slots_cap = n;
    }
    /* The lines stay alive (and bytes never change) while the GIL is released. */
    for (; held < n; held++) {
        PyObject *line = PyList_GET_ITEM(lines, held);
        self->slots[held].line = PyBytes_CheckExact(line) ? line : NULL; /* Oversized: Python */
        Py_XINCREF(self->slots[held].line);
    }
    self->arena.n = 0;
    Py_BEGIN_ALLOW_THREADS
    build_without_gil(self, n, now_ns, &ingested);
    Py_END_ALLOW_THREADS
    items = PyList_New(n);
    declined = PyList_New(0);
    if (items == NULL || declined == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = second_pass(self, &self->slots[i], now_ns, &ingested);
        if (item == NULL) {
            /* An error in a callback is the Python builder's to report (it turns it
             * into a dead letter); only a lack of memory or an interrupt stops here. */
            if (PyErr_ExceptionMatches(PyExc_MemoryError) ||
                !PyErr_ExceptionMatches(PyExc_Exception))
                goto done;
            PyErr_Clear();
            item = Py_None;
            Py_INCREF(item);
        }
        PyList_SET_ITEM(items, i, item);
        if (item == Py_None) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(declined, index) < 0) {
                Py_XDECREF(index);
                goto done;
            }
            Py_DECREF(index);
        }
    }
    result = Py_BuildValue("(OO)", items, declined);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        Py_CLEAR(self->slots[i].line);
    PyMem_RawFree(ingested.b);
    Py_XDECREF(items);
    Py_XDECREF(declined);
    PyThread_release_lock(self->lock);
    return result;
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
    if (self->lock != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Builder is initialised once");
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
    if ((self->sha = EVP_MD_CTX_new()) == NULL || (self->lock = PyThread_allocate_lock()) == NULL) {
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
        PyMem_RawFree(self->field_buf[f].b);
    PyMem_RawFree(self->key_buf.b);
    PyMem_RawFree(self->hash_buf.b);
    PyMem_RawFree(self->clean_buf.b);
    PyMem_RawFree(self->arena.b);
    PyMem_RawFree(self->ucs4);
    PyMem_RawFree(self->byte_at);
    PyMem_RawFree(self->slots);
    EVP_MD_CTX_free(self->sha);
    if (self->lock != NULL)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Builder_build_method(Builder *self, PyObject *args) {
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Builder was not initialised");
        return NULL;
    }
    return Builder_build(self, args);
}

static PyMethodDef Builder_methods[] = {
    {"build", (PyCFunction)Builder_build_method, METH_VARARGS,
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
    PyObject *version = PyUnicode_FromString(NFC_UNSAFE_UNICODE_VERSION);
    if (version == NULL || PyModule_AddObject(m, "NFC_TABLE_UNICODE_VERSION", version) < 0) {
        Py_XDECREF(version);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&BuilderType);
    if (PyModule_AddObject(m, "Builder", (PyObject *)&BuilderType) < 0) {
        Py_DECREF(&BuilderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
