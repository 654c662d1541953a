"""RapidJSON 1.1.0 as TensorFlow Serving uses it: its reader, its PrettyWriter and its dtoa.

TensorFlow Serving reads and writes REST bodies with RapidJSON 1.1.0 (`tensorflow_serving/
workspace.bzl`, `com_github_tencent_rapidjson`), and its answers show RapidJSON's behaviour: which
bodies parse, the parse error texts and offsets, how a JSON value is printed inside an error text,
and the layout of every answer. This module ports the parts `util/json_tensor.cc` uses, line for
line where the result depends on it (the Tencent/rapidjson sources at tag v1.1.0):

- `parse(body)`: `Document::ParseStream<kParseIterativeFlag | kParseNanAndInfFlag |
  kParseStopWhenDoneFlag>` over an `EncodedInputStream<UTF8<>, MemoryStream>` (reader.h,
  encodedstream.h, memorystream.h). What that accepts beyond JSON: `NaN`, `Inf`, `Infinity`,
  `-Inf`, `-Infinity` (and `-NaN`, read as NaN); anything after the first complete value
  (`kParseStopWhenDoneFlag`); a leading UTF-8 byte order mark; bytes that are not UTF-8 inside
  strings (no encoding validation). A NUL byte ends the input (`MemoryStream::Peek`). Nesting is
  unlimited (the iterative parser). Numbers are read as RapidJSON reads them: integers in
  [-2**63, 2**64) stay integers, others become doubles through its "normal precision" strtod
  (not always the correctly rounded double), and a number past the double range is an error.
- `PrettyWriter`: rapidjson/prettywriter.h with 4-space indents and `kFormatSingleLineArray`.
- `debug_string(value)`: json_tensor.cc's `JsonValueToDebugString`, the JSON text of a value
  inside error messages (PrettyWriter, single-line arrays, cut after 256 bytes; a NaN or an
  infinity ends it, as RapidJSON's writer refuses them).
- `dtoa(value)`: rapidjson/internal/dtoa.h (Grisu2 and its Prettify), how the writer prints a double.

Parsed values: a JSON object is an `Object` (a list of (key, value) pairs in document order,
duplicate keys kept, as RapidJSON keeps them), an array a `list`, a string a `str` (its bytes
decoded with `surrogatepass`, so a `\\udc80` escape stays one code point) or `bytes` when its
bytes are not UTF-8, a number an `int` or a `float`, `true`/`false` a `bool`, `null` None.
`utf8(text)` gives the bytes RapidJSON holds for a string or key.
"""

import json
import math
import re
import struct

# --- reader ------------------------------------------------------------------------------------

# rapidjson/error/en.h, GetParseError_En.
DOCUMENT_EMPTY = "The document is empty."
ROOT_NOT_SINGULAR = "The document root must not be followed by other values."
VALUE_INVALID = "Invalid value."
OBJECT_MISS_NAME = "Missing a name for object member."
OBJECT_MISS_COLON = "Missing a colon after a name of object member."
OBJECT_MISS_COMMA = "Missing a comma or '}' after an object member."
ARRAY_MISS_COMMA = "Missing a comma or ']' after an array element."
UNICODE_ESCAPE_INVALID_HEX = "Incorrect hex digit after \\u escape in string."
UNICODE_SURROGATE_INVALID = "The surrogate pair in string is invalid."
ESCAPE_INVALID = "Invalid escape character in string."
MISS_QUOTATION_MARK = "Missing a closing quotation mark in string."
NUMBER_TOO_BIG = "Number too big to be stored in double."
NUMBER_MISS_FRACTION = "Miss fraction part in number."
NUMBER_MISS_EXPONENT = "Miss exponent in number."


class ParseError(ValueError):
    """A body RapidJSON refuses: `message` (GetParseError_En) and byte `offset` (GetErrorOffset)."""

    def __init__(self, message, offset):
        super().__init__(f"{message} at offset: {offset}")
        self.message = message
        self.offset = offset


class Object:
    """A JSON object: (key, value) pairs in document order, duplicates kept."""

    __slots__ = ("members",)

    def __init__(self, members=()):
        self.members = list(members)

    def __iter__(self):
        return iter(self.members)

    def __len__(self):
        return len(self.members)

    def __getitem__(self, index):
        return self.members[index]

    def __eq__(self, other):
        return isinstance(other, Object) and self.members == other.members

    def __repr__(self):
        return f"Object({self.members!r})"

    def append(self, member):
        self.members.append(member)

    def find(self, name):
        """The value of the first member named `name` (RapidJSON's FindMember), or raises KeyError."""
        for key, value in self.members:
            if key == name:
                return value
        raise KeyError(name)

    def has(self, name):
        return any(key == name for key, _ in self.members)


def utf8(text):
    """The bytes RapidJSON holds for a parsed string (a lone surrogate escape as its 3-byte form)."""
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


def _string_value(raw):
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return bytes(raw)


class _Fallback(Exception):
    """The fast path cannot decide; the port decides."""


# 1e0 ... 1e308 as the C++ literals of rapidjson/internal/pow10.h (correctly rounded doubles).
_POW10 = [float(f"1e{n}") for n in range(309)]
_DIGITS = b"0123456789"


def _fast_path(significand, exp):
    if exp < -308:
        return 0.0
    if exp >= 0:
        return significand * _POW10[exp]
    return significand / _POW10[-exp]


def _strtod_normal_precision(d, p):
    if p < -308:  # two steps, so that Pow10 never underflows
        return _fast_path(_fast_path(d, -308), p + 308)
    return _fast_path(d, p)


def _parse_number(data, pos, end):
    """GenericReader::ParseNumber with kParseNanAndInfFlag: (value, end position) or ParseError.

    Long on purpose: it follows reader.h's ParseNumber branch for branch, in its order, so the
    two can be read side by side (the error offsets and the int/uint/double choice depend on it)."""
    start = pos

    def peek(at):
        return data[at] if at < end else 0

    minus = peek(pos) == 0x2D  # '-'
    if minus:
        pos += 1
    i = i64 = 0
    use64 = use_nan_or_inf = use_double = False
    significand_digit = 0
    d = 0.0
    c = peek(pos)
    if c == 0x30:  # '0'
        pos += 1
    elif 0x31 <= c <= 0x39:
        i = c - 0x30
        pos += 1
        limit, last = (214748364, 0x38) if minus else (429496729, 0x35)  # 2**31, 2**32 - 1
        while 0x30 <= peek(pos) <= 0x39:
            if i >= limit and (i != limit or peek(pos) > last):
                i64, use64 = i, True
                break
            i = i * 10 + peek(pos) - 0x30
            pos += 1
            significand_digit += 1
    elif c in (0x49, 0x4E):  # 'I', 'N'
        use_nan_or_inf = True

        def consume(byte):
            nonlocal pos
            if peek(pos) == byte:
                pos += 1
                return True
            return False

        if consume(0x4E) and consume(0x61) and consume(0x4E):  # NaN
            d = math.nan
        elif consume(0x49) and consume(0x6E) and consume(0x66):  # Inf
            d = -math.inf if minus else math.inf
            if peek(pos) == 0x69 and not all(consume(b) for b in b"inity"):
                raise ParseError(VALUE_INVALID, pos)
        else:
            raise ParseError(VALUE_INVALID, pos)
    else:
        raise ParseError(VALUE_INVALID, pos)

    if use64:
        limit, last = (0x0CCCCCCCCCCCCCCC, 0x38) if minus else (0x1999999999999999, 0x35)  # 2**63, 2**64 - 1
        while 0x30 <= peek(pos) <= 0x39:
            if i64 >= limit and (i64 != limit or peek(pos) > last):
                d, use_double = float(i64), True
                break
            i64 = i64 * 10 + peek(pos) - 0x30
            pos += 1
            significand_digit += 1
    if use_double:  # an integer past 64 bits: digits accumulate in a double
        while 0x30 <= peek(pos) <= 0x39:
            if d >= 1.7976931348623157e307:  # DBL_MAX / 10
                raise ParseError(NUMBER_TOO_BIG, start)
            d = d * 10 + (peek(pos) - 0x30)
            pos += 1

    exp_frac = 0
    if peek(pos) == 0x2E:  # '.'
        pos += 1
        if not 0x30 <= peek(pos) <= 0x39:
            raise ParseError(NUMBER_MISS_FRACTION, pos)
        if not use_double:
            if not use64:
                i64 = i
            while 0x30 <= peek(pos) <= 0x39:
                if i64 > 0x1FFFFFFFFFFFFF:  # 2**53 - 1, the exact fast path
                    break
                i64 = i64 * 10 + peek(pos) - 0x30
                pos += 1
                exp_frac -= 1
                if i64 != 0:
                    significand_digit += 1
            d, use_double = float(i64), True
        while 0x30 <= peek(pos) <= 0x39:
            if significand_digit < 17:
                d = d * 10.0 + (peek(pos) - 0x30)
                exp_frac -= 1
                if d > 0.0:
                    significand_digit += 1
            pos += 1

    exp = 0
    if peek(pos) in (0x65, 0x45):  # 'e', 'E'
        pos += 1
        if not use_double:
            d, use_double = float(i64 if use64 else i), True
        exp_minus = False
        if peek(pos) == 0x2B:  # '+'
            pos += 1
        elif peek(pos) == 0x2D:
            pos += 1
            exp_minus = True
        if not 0x30 <= peek(pos) <= 0x39:
            raise ParseError(NUMBER_MISS_EXPONENT, pos)
        exp = peek(pos) - 0x30
        pos += 1
        if exp_minus:
            while 0x30 <= peek(pos) <= 0x39:
                exp = exp * 10 + peek(pos) - 0x30
                pos += 1
                if exp >= 214748364:  # RapidJSON issue #313: the rest of the exponent is skipped
                    while 0x30 <= peek(pos) <= 0x39:
                        pos += 1
            exp = -exp
        else:
            max_exp = 308 - exp_frac
            while 0x30 <= peek(pos) <= 0x39:
                exp = exp * 10 + peek(pos) - 0x30
                pos += 1
                if exp > max_exp:
                    raise ParseError(NUMBER_TOO_BIG, start)

    if use_double:
        d = _strtod_normal_precision(d, exp + exp_frac)
        return (-d if minus else d), pos
    if use_nan_or_inf:
        return d, pos
    value = i64 if use64 else i
    return (-value if minus else value), pos


_ESCAPES = {0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 0x08, 0x66: 0x0C, 0x6E: 0x0A, 0x72: 0x0D, 0x74: 0x09}


def _parse_hex4(data, pos, end, escape_offset):
    if pos + 4 <= end:
        digits = data[pos:pos + 4]
        if all(b in b"0123456789abcdefABCDEF" for b in digits):
            return int(digits, 16), pos + 4
    raise ParseError(UNICODE_ESCAPE_INVALID_HEX, escape_offset)


def _parse_string(data, pos, end):
    """ParseStringToStream without encoding validation: (raw bytes, position after the quote)."""
    pos += 1  # the opening quote
    out = bytearray()
    while True:
        c = data[pos] if pos < end else 0
        if c == 0x5C:  # backslash
            escape_offset = pos
            pos += 1
            e = data[pos] if pos < end else 0
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                pos += 1
            elif e == 0x75:  # 'u'
                codepoint, pos = _parse_hex4(data, pos + 1, end, escape_offset)
                if 0xD800 <= codepoint <= 0xDBFF:
                    if data[pos:pos + 2] != b"\\u":
                        raise ParseError(UNICODE_SURROGATE_INVALID, escape_offset)
                    low, pos = _parse_hex4(data, pos + 2, end, escape_offset)
                    if not 0xDC00 <= low <= 0xDFFF:
                        raise ParseError(UNICODE_SURROGATE_INVALID, escape_offset)
                    codepoint = (((codepoint - 0xD800) << 10) | (low - 0xDC00)) + 0x10000
                out += chr(codepoint).encode("utf-8", "surrogatepass")
            else:
                raise ParseError(ESCAPE_INVALID, escape_offset)
        elif c == 0x22:
            return bytes(out), pos + 1
        elif c < 0x20:
            raise ParseError(MISS_QUOTATION_MARK if c == 0 else ESCAPE_INVALID, pos)
        else:
            out.append(c)  # copied byte for byte, never validated
            pos += 1


# The iterative parser's states and tokens (reader.h, IterativeParsingState and Token).
(_START, _FINISH, _ERROR, _OBJECT_INITIAL, _MEMBER_KEY, _KEY_VALUE_DELIMITER, _MEMBER_VALUE,
 _MEMBER_DELIMITER, _OBJECT_FINISH, _ARRAY_INITIAL, _ELEMENT, _ELEMENT_DELIMITER, _ARRAY_FINISH,
 _VALUE) = range(14)
_WHITESPACE = b" \n\r\t"


# Tokenize: the structural characters and '"'; every other byte starts a value (null, true, false
# or, for anything else, a number, which ParseNumber then accepts or refuses).
_TOKENS = {0x5B: "[", 0x5D: "]", 0x7B: "{", 0x7D: "}", 0x2C: ",", 0x3A: ":", 0x22: "string"}


def _parse_scalar(data, pos, end):
    """ParseValue for anything but an object or array: (value, position)."""
    c = data[pos] if pos < end else 0
    for word, value in ((b"null", None), (b"true", True), (b"false", False)):
        if c == word[0]:
            pos += 1
            for expected in word[1:]:
                if (data[pos] if pos < end else 0) != expected:
                    raise ParseError(VALUE_INVALID, pos)
                pos += 1
            return value, pos
    if c == 0x22:
        raw, pos = _parse_string(data, pos, end)
        return _string_value(raw), pos
    return _parse_number(data, pos, end)


def _parse_exactly(data, start):
    """GenericReader::IterativeParse with kParseStopWhenDoneFlag, ported state for state.

    Long on purpose: one state machine, kept in reader.h's order for side-by-side reading."""
    nul = data.find(b"\0", start)
    end = len(data) if nul < 0 else nul

    def skip(at):
        while at < end and data[at] in _WHITESPACE:
            at += 1
        return at

    def error_for(state, at):
        if state == _START:
            return ParseError(DOCUMENT_EMPTY, at)
        if state == _FINISH:
            return ParseError(ROOT_NOT_SINGULAR, at)
        if state in (_OBJECT_INITIAL, _MEMBER_DELIMITER):
            return ParseError(OBJECT_MISS_NAME, at)
        if state == _MEMBER_KEY:
            return ParseError(OBJECT_MISS_COLON, at)
        if state == _MEMBER_VALUE:
            return ParseError(OBJECT_MISS_COMMA, at)
        if state in (_KEY_VALUE_DELIMITER, _ARRAY_INITIAL, _ELEMENT_DELIMITER):
            return ParseError(VALUE_INVALID, at)
        return ParseError(ARRAY_MISS_COMMA, at)

    stack = []  # [container, state to return to, key of the member being read]
    state, root = _START, None
    pos = skip(start)

    def add(value):
        nonlocal root
        if not stack:
            root = value
        elif isinstance(stack[-1][0], Object):
            stack[-1][0].append((stack[-1][2], value))
        else:
            stack[-1][0].append(value)

    while pos < end:
        token = _TOKENS.get(data[pos], "value")
        if token in ("[", "{") and state in (_START, _KEY_VALUE_DELIMITER, _ARRAY_INITIAL, _ELEMENT_DELIMITER):
            resume = _ELEMENT if state in (_ARRAY_INITIAL, _ELEMENT_DELIMITER) else (
                _MEMBER_VALUE if state == _KEY_VALUE_DELIMITER else state)
            container = Object() if token == "{" else []
            stack.append([container, resume, None])
            state = _OBJECT_INITIAL if token == "{" else _ARRAY_INITIAL
            pos += 1
        elif token == "string" and state in (_OBJECT_INITIAL, _MEMBER_DELIMITER):
            raw, pos = _parse_string(data, pos, end)
            stack[-1][2] = _string_value(raw)
            state = _MEMBER_KEY
        elif token == ":" and state == _MEMBER_KEY:
            pos += 1
            state = _KEY_VALUE_DELIMITER
        elif token in ("string", "value") and state in (_START, _KEY_VALUE_DELIMITER, _ARRAY_INITIAL,
                                                          _ELEMENT_DELIMITER):
            value, pos = _parse_scalar(data, pos, end)
            add(value)
            state = {_START: _FINISH, _KEY_VALUE_DELIMITER: _MEMBER_VALUE}.get(state, _ELEMENT)
        elif token == "," and state in (_MEMBER_VALUE, _ELEMENT):
            pos += 1
            state = _MEMBER_DELIMITER if state == _MEMBER_VALUE else _ELEMENT_DELIMITER
        elif (token == "}" and state in (_OBJECT_INITIAL, _MEMBER_VALUE, _MEMBER_DELIMITER)) or (
                token == "]" and state in (_ARRAY_INITIAL, _ELEMENT, _ELEMENT_DELIMITER)):
            if state == _MEMBER_DELIMITER:  # no trailing commas
                raise ParseError(OBJECT_MISS_NAME, pos)
            if state == _ELEMENT_DELIMITER:
                raise ParseError(VALUE_INVALID, pos)
            container, resume, _ = stack.pop()
            add(container)
            state = _FINISH if resume == _START else resume
            pos += 1
        else:
            raise error_for(state, pos)
        if state == _FINISH:
            return root
        pos = skip(pos)
    raise error_for(state, pos)


# The fast path: Python's C JSON scanner, for bodies it reads exactly as RapidJSON does (UTF-8
# without a high-surrogate escape); numbers go through the port. Anything it refuses, the port
# decides (and words the error).
_HIGH_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")


def _number_hook(literal):
    data = literal.encode("ascii")
    try:
        value, _ = _parse_number(data, 0, len(data))
    except ParseError:
        raise _Fallback() from None
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=Object, parse_float=_number_hook, parse_int=_number_hook,
                            parse_constant={"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.__getitem__)


def parse(body):
    """Parses a request body (bytes) as TensorFlow Serving's ParseJson does; raises ParseError.

    An empty body is refused by ParseJson itself before RapidJSON runs (`json.empty()`), with
    no offset; the caller words that case.
    """
    start = 0
    for bom_byte in (0xEF, 0xBB, 0xBF):  # EncodedInputStream<UTF8<>, MemoryStream> skips each
        if start < len(body) and body[start] == bom_byte:
            start += 1
    nul = body.find(b"\0", start)
    end = len(body) if nul < 0 else nul
    if not _HIGH_SURROGATE_ESCAPE.search(body, start, end):
        try:
            text = body[start:end].decode("utf-8")
            at = len(text) - len(text.lstrip(" \t\n\r"))
            if at < len(text) and text[at] in "[{":  # a bare number's end is RapidJSON's to find
                return _DECODER.raw_decode(text, at)[0]
        except (UnicodeDecodeError, ValueError, RecursionError, _Fallback):
            pass
    return _parse_exactly(body, start)


# --- dtoa (rapidjson/internal/dtoa.h, diyfp.h) ---------------------------------------------------

_MASK64 = (1 << 64) - 1
_HIDDEN_BIT = 1 << 52
_CACHED_POWERS_F = [
    0xfa8fd5a0081c0288, 0xbaaee17fa23ebf76, 0x8b16fb203055ac76, 0xcf42894a5dce35ea, 0x9a6bb0aa55653b2d,
    0xe61acf033d1a45df, 0xab70fe17c79ac6ca, 0xff77b1fcbebcdc4f, 0xbe5691ef416bd60c, 0x8dd01fad907ffc3c,
    0xd3515c2831559a83, 0x9d71ac8fada6c9b5, 0xea9c227723ee8bcb, 0xaecc49914078536d, 0x823c12795db6ce57,
    0xc21094364dfb5637, 0x9096ea6f3848984f, 0xd77485cb25823ac7, 0xa086cfcd97bf97f4, 0xef340a98172aace5,
    0xb23867fb2a35b28e, 0x84c8d4dfd2c63f3b, 0xc5dd44271ad3cdba, 0x936b9fcebb25c996, 0xdbac6c247d62a584,
    0xa3ab66580d5fdaf6, 0xf3e2f893dec3f126, 0xb5b5ada8aaff80b8, 0x87625f056c7c4a8b, 0xc9bcff6034c13053,
    0x964e858c91ba2655, 0xdff9772470297ebd, 0xa6dfbd9fb8e5b88f, 0xf8a95fcf88747d94, 0xb94470938fa89bcf,
    0x8a08f0f8bf0f156b, 0xcdb02555653131b6, 0x993fe2c6d07b7fac, 0xe45c10c42a2b3b06, 0xaa242499697392d3,
    0xfd87b5f28300ca0e, 0xbce5086492111aeb, 0x8cbccc096f5088cc, 0xd1b71758e219652c, 0x9c40000000000000,
    0xe8d4a51000000000, 0xad78ebc5ac620000, 0x813f3978f8940984, 0xc097ce7bc90715b3, 0x8f7e32ce7bea5c70,
    0xd5d238a4abe98068, 0x9f4f2726179a2245, 0xed63a231d4c4fb27, 0xb0de65388cc8ada8, 0x83c7088e1aab65db,
    0xc45d1df942711d9a, 0x924d692ca61be758, 0xda01ee641a708dea, 0xa26da3999aef774a, 0xf209787bb47d6b85,
    0xb454e4a179dd1877, 0x865b86925b9bc5c2, 0xc83553c5c8965d3d, 0x952ab45cfa97a0b3, 0xde469fbd99a05fe3,
    0xa59bc234db398c25, 0xf6c69a72a3989f5c, 0xb7dcbf5354e9bece, 0x88fcf317f22241e2, 0xcc20ce9bd35c78a5,
    0x98165af37b2153df, 0xe2a0b5dc971f303a, 0xa8d9d1535ce3b396, 0xfb9b7cd9a4a7443c, 0xbb764c4ca7a44410,
    0x8bab8eefb6409c1a, 0xd01fef10a657842c, 0x9b10a4e5e9913129, 0xe7109bfba19c0c9d, 0xac2820d9623bf429,
    0x80444b5e7aa7cf85, 0xbf21e44003acdd2d, 0x8e679c2f5e44ff8f, 0xd433179d9c8cb841, 0x9e19db92b4e31ba9,
    0xeb96bf6ebadf77d9, 0xaf87023b9bf0ee6b,
]
_CACHED_POWERS_E = [
    -1220, -1193, -1166, -1140, -1113, -1087, -1060, -1034, -1007, -980, -954, -927, -901, -874, -847, -821,
    -794, -768, -741, -715, -688, -661, -635, -608, -582, -555, -529, -502, -475, -449, -422, -396, -369, -343,
    -316, -289, -263, -236, -210, -183, -157, -130, -103, -77, -50, -24, 3, 30, 56, 83, 109, 136, 162, 189, 216,
    242, 269, 295, 322, 348, 375, 402, 428, 455, 481, 508, 534, 561, 588, 614, 641, 667, 694, 720, 747, 774, 800,
    827, 853, 880, 907, 933, 960, 986, 1013, 1039, 1066,
]
_POW10_32 = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000]


def _diyfp(value):
    u64 = struct.unpack("<Q", struct.pack("<d", value))[0]
    biased_e = (u64 >> 52) & 0x7FF
    significand = u64 & (_HIDDEN_BIT - 1)
    if biased_e != 0:
        return significand + _HIDDEN_BIT, biased_e - 1075
    return significand, -1074


def _multiply(a, b):
    """DiyFp::operator*: the upper 64 bits of the 128-bit product, rounded."""
    product = a[0] * b[0]
    high, low = product >> 64, product & _MASK64
    if low & (1 << 63):
        high += 1
    return high & _MASK64, a[1] + b[1] + 64


def _normalize(f, e):
    shift = 64 - f.bit_length()
    return (f << shift) & _MASK64, e - shift


def _normalize_boundary(f, e):
    while not f & (_HIDDEN_BIT << 1):
        f <<= 1
        e -= 1
    return (f << 10) & _MASK64, e - 10  # kDiySignificandSize - kDpSignificandSize - 2


def _grisu2(value):
    f, e = _diyfp(value)
    plus = _normalize_boundary((f << 1) + 1, e - 1)
    minus_f, minus_e = ((f << 2) - 1, e - 2) if f == _HIDDEN_BIT else ((f << 1) - 1, e - 1)
    minus = ((minus_f << (minus_e - plus[1])) & _MASK64, plus[1])
    dk = (-61 - plus[1]) * 0.30102999566398114 + 347
    k = int(dk)
    if dk - k > 0.0:
        k += 1
    index = (k >> 3) + 1
    big_k = -(-348 + (index << 3))
    cached = (_CACHED_POWERS_F[index], _CACHED_POWERS_E[index])
    w = _multiply(_normalize(f, e), cached)
    wp = _multiply(plus, cached)
    wm = _multiply(minus, cached)
    wp = ((wp[0] - 1) & _MASK64, wp[1])
    wm = ((wm[0] + 1) & _MASK64, wm[1])
    return _digit_gen(w, wp, (wp[0] - wm[0]) & _MASK64, big_k)


def _grisu_round(digits, delta, rest, ten_kappa, wp_w):
    while rest < wp_w and delta - rest >= ten_kappa and (
            rest + ten_kappa < wp_w or wp_w - rest > rest + ten_kappa - wp_w):
        digits[-1] -= 1
        rest += ten_kappa


def _digit_gen(w, mp, delta, big_k):
    one_e = mp[1]
    one_f = 1 << -one_e
    wp_w = (mp[0] - w[0]) & _MASK64
    p1 = (mp[0] >> -one_e) & 0xFFFFFFFF
    p2 = mp[0] & (one_f - 1)
    kappa = next((n for n in range(1, 9) if p1 < _POW10_32[n]), 9)  # CountDecimalDigit32
    digits = []
    while kappa > 0:
        if kappa == 1:
            d, p1 = p1, 0
        else:
            d, p1 = divmod(p1, _POW10_32[kappa - 1])
        if d or digits:
            digits.append(d)
        kappa -= 1
        tmp = (p1 << -one_e) + p2
        if tmp <= delta:
            big_k += kappa
            _grisu_round(digits, delta, tmp, _POW10_32[kappa] << -one_e, wp_w)
            return digits, big_k
    while True:  # kappa = 0
        p2 = (p2 * 10) & _MASK64
        delta = (delta * 10) & _MASK64
        d = p2 >> -one_e
        if d or digits:
            digits.append(d)
        p2 &= one_f - 1
        kappa -= 1
        if p2 < delta:
            big_k += kappa
            index = -kappa
            _grisu_round(digits, delta, p2, one_f, (wp_w * (_POW10_32[index] if index < 9 else 0)) & _MASK64)
            return digits, big_k


def _write_exponent(k):
    return ("-" if k < 0 else "") + str(abs(k))


def dtoa(value, max_decimal_places=324):
    """Writer::WriteDouble's text of a finite double (rapidjson/internal/dtoa.h)."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = ""
    if value < 0:
        sign, value = "-", -value
    digits, k = _grisu2(value)
    buffer = "".join(_DIGITS[d:d + 1].decode() for d in digits)
    length = len(buffer)
    kk = length + k  # 10^(kk-1) <= v < 10^kk
    if 0 <= k and kk <= 21:
        text = buffer + "0" * (kk - length) + ".0"
    elif 0 < kk <= 21:
        text = buffer[:kk] + "." + buffer[kk:]
        if 0 > k + max_decimal_places:
            text = text[:kk + 1 + max_decimal_places].rstrip("0") or text
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + buffer
        if length - kk > max_decimal_places:
            text = text[:max_decimal_places + 2].rstrip("0")
            text = text if not text.endswith(".") else text + "0"
    elif kk < -max_decimal_places:
        text = "0.0"
    elif length == 1:
        text = buffer + "e" + _write_exponent(kk - 1)
    else:
        text = buffer[0] + "." + buffer[1:] + "e" + _write_exponent(kk - 1)
    return sign + text


# --- writer (rapidjson/writer.h, prettywriter.h) ---------------------------------------------

_WRITE_ESCAPES = {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r", 0x22: b'\\"', 0x5C: b"\\\\"}
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')


def write_string(raw):
    """Writer::WriteString: quotes, escapes control characters, `"` and `\\`, copies every
    other byte (UTF-8 or not) unchanged."""
    escaped = _NEEDS_ESCAPE.sub(lambda m: _WRITE_ESCAPES.get(m[0][0], b"\\u00%02X" % m[0][0]), raw)
    return b'"' + escaped + b'"'


class PrettyWriter:
    """rapidjson::PrettyWriter<StringBuffer> (4-space indent) writing into `buffer` (bytearray).

    `single_line_arrays` is kFormatSingleLineArray; callers may switch it between events, as
    json_tensor.cc does, and each event is laid out by the setting at its time.
    """

    def __init__(self, single_line_arrays=False):
        self.buffer = bytearray()
        self.single_line_arrays = single_line_arrays
        self._levels = []  # [in_array, value_count]

    def _indent(self):
        self.buffer += b" " * (4 * len(self._levels))

    def _prefix(self):
        if not self._levels:
            return
        level = self._levels[-1]
        if level[0]:
            if level[1] > 0:
                self.buffer += b", " if self.single_line_arrays else b","
            if not self.single_line_arrays:
                self.buffer += b"\n"
                self._indent()
        else:
            if level[1] > 0:
                self.buffer += b",\n" if level[1] % 2 == 0 else b": "
            else:
                self.buffer += b"\n"
            if level[1] % 2 == 0:
                self._indent()
        level[1] += 1

    def null(self):
        self._prefix()
        self.buffer += b"null"
        return True

    def bool(self, value):
        self._prefix()
        self.buffer += b"true" if value else b"false"
        return True

    def int(self, value):
        """Int, Uint, Int64 or Uint64: the integer in decimal."""
        self._prefix()
        self.buffer += str(value).encode()
        return True

    def double(self, value):
        """Writer::WriteDouble without kWriteNanAndInfFlag: False (nothing but the prefix
        written) for NaN and infinities."""
        self._prefix()
        if math.isnan(value) or math.isinf(value):
            return False
        self.buffer += dtoa(value).encode()
        return True

    def raw_value(self, text):
        self._prefix()
        self.buffer += text
        return True

    def string(self, raw):
        self._prefix()
        self.buffer += write_string(raw)
        return True

    key = string

    def start_object(self):
        self._prefix()
        self._levels.append([False, 0])
        self.buffer += b"{"
        return True

    def end_object(self):
        if self._levels.pop()[1]:
            self.buffer += b"\n"
            self._indent()
        self.buffer += b"}"
        return True

    def start_array(self):
        self._prefix()
        self._levels.append([True, 0])
        self.buffer += b"["
        return True

    def end_array(self):
        if self._levels.pop()[1] and not self.single_line_arrays:
            self.buffer += b"\n"
            self._indent()
        self.buffer += b"]"
        return True


DEBUG_STRING_LIMIT = 256  # json_tensor.cc kMaxJsonDebugStringBytes


def debug_string(value, limit=DEBUG_STRING_LIMIT):
    """json_tensor.cc JsonValueToDebugString: `value` written by a PrettyWriter with single-line
    arrays through JsonWriterWithLimit, which writes nothing more once the text has reached
    `limit` bytes (so the last event written may end past it). Returns bytes."""
    writer = PrettyWriter(single_line_arrays=True)

    def room():
        return len(writer.buffer) < limit

    def accept(item):  # GenericValue::Accept: stops at the first event refused
        if isinstance(item, Object):
            if not (room() and writer.start_object()):
                return False
            for name, member in item:
                if not (room() and writer.key(utf8(name))) or not accept(member):
                    return False
            return room() and writer.end_object()
        if isinstance(item, list):
            if not (room() and writer.start_array()):
                return False
            if not all(accept(element) for element in item):
                return False
            return room() and writer.end_array()
        if not room():
            return False
        if item is None:
            return writer.null()
        if isinstance(item, bool):
            return writer.bool(item)
        if isinstance(item, int):
            return writer.int(item)
        if isinstance(item, float):
            return writer.double(item)
        return writer.string(utf8(item))

    accept(value)
    return bytes(writer.buffer)


def type_name(value):
    """json_tensor.cc JsonTypeString."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, Object):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, (str, bytes)):
        return "String"
    return "Number"
