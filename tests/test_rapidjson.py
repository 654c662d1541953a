"""kerasformer.export.serving.rapidjson and the number writing of kerasformer.export.serving.rest_codec: RapidJSON 1.1.0
and absl as TensorFlow Serving uses them.

The expectations come from their sources (reader.h, dtoa.h, absl/strings/numbers.cc) and from
properties that must hold whatever the input: the fast path (Python's JSON scanner) and the
line-by-line port agree; absl's six-digit text is printf's "%g"; every float32 written reads
back as itself. (During development the port was also compared with the real RapidJSON 1.1.0 and
absl compiled from source, on ~150,000 inputs, with no difference.)
"""

import math
import random
import struct

import numpy as np
import pytest

from kerasformer.export.serving import rapidjson
from kerasformer.export.serving.rest_codec import base64_unescape, six_digits, write_decimal

pytestmark = pytest.mark.backend_independent  # see tests/run.sh


def dump(value):
    """A canonical, type-exact form of a parsed value."""
    if isinstance(value, rapidjson.Object):
        return ("object", [(rapidjson.utf8(key), dump(item)) for key, item in value])
    if isinstance(value, list):
        return ("array", [dump(item) for item in value])
    if isinstance(value, float):
        return ("double", struct.pack("<d", value))
    if isinstance(value, (str, bytes)):
        return ("string", rapidjson.utf8(value))
    return (type(value).__name__, value)


def parse_both(body):
    """(fast path result, exact port result); a ParseError is a result."""
    results = []
    for parse in (rapidjson.parse, lambda data: rapidjson._parse_exactly(data, 0)):
        try:
            results.append(dump(parse(body)))
        except rapidjson.ParseError as error:
            results.append((error.message, error.offset))
    return results


def test_fast_path_and_port_agree_on_mutated_requests():
    rng = random.Random(0)
    seeds = [b'{"signature_name": "s", "instances": [{"a": [1, 2.5, -3e4, 0.1], "b": "caf\\u00e9\\n", '
             b'"c": {"b64": "AA=="}}, {"a": [NaN, Infinity, -Infinity, 1e-300], "b": "\xc3\xa9", "c": null}]}',
             b'{"inputs": {"text": ["a", "b"], "n": [18446744073709551615, -9223372036854775808, 1e308]}}']
    for _ in range(3000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(body))
            if rng.random() < 0.5:
                del body[at]
            else:
                body.insert(at, rng.choice(b'{}[],:"\\ -.eE019nNIa\x00\xff'))
        fast, exact = parse_both(bytes(body))
        assert fast == exact, bytes(body)


@pytest.mark.parametrize("body, expected", [
    (b"", (rapidjson.DOCUMENT_EMPTY, 0)),
    (b"[1,]", (rapidjson.VALUE_INVALID, 3)),  # no trailing commas: ArrayFinish from ElementDelimiter
    (b'{"a":1,}', (rapidjson.OBJECT_MISS_NAME, 7)),
    (b"[1 2]", (rapidjson.ARRAY_MISS_COMMA, 3)),
    (b"]", (rapidjson.DOCUMENT_EMPTY, 0)),  # HandleError(Start)
    (b"[1.]", (rapidjson.NUMBER_MISS_FRACTION, 3)),
    (b"[1e+]", (rapidjson.NUMBER_MISS_EXPONENT, 4)),
    (b"[1e309]", (rapidjson.NUMBER_TOO_BIG, 1)),  # the number's start
    (b'["\\ud800x"]', (rapidjson.UNICODE_SURROGATE_INVALID, 2)),  # the escape's backslash
    (b'["\\q"]', (rapidjson.ESCAPE_INVALID, 2)),
    (b'["a\x01"]', (rapidjson.ESCAPE_INVALID, 3)),
    (b'["a\x00"]', (rapidjson.MISS_QUOTATION_MARK, 3)),  # a NUL byte ends the input
    (b"[Infinit]", (rapidjson.VALUE_INVALID, 8)),  # where "Infinity" stops matching
])
def test_parse_errors_and_offsets(body, expected):
    with pytest.raises(rapidjson.ParseError) as error:
        rapidjson.parse(body)
    assert (error.value.message, error.value.offset) == expected


def test_what_rapidjson_accepts_beyond_json():
    assert rapidjson.parse(b'{"a": 1} trailing') == rapidjson.Object([("a", 1)])  # kParseStopWhenDoneFlag
    assert rapidjson.parse(b'\xef\xbb\xbf[1]') == [1]  # byte order mark
    values = rapidjson.parse(b"[NaN, -NaN, Inf, -Inf, Infinity, -Infinity, NaN.5, -0, 18446744073709551616]")
    assert math.isnan(values[0]) and math.isnan(values[1])
    assert values[2:6] == [math.inf, -math.inf, math.inf, -math.inf]
    assert values[6] == 0.5  # after NaN, ParseNumber goes on to read ".5" as the number
    assert values[7] == 0 and isinstance(values[7], int)  # Int(0)
    assert values[8] == 2.0**64 and isinstance(values[8], float)  # past uint64: a double
    assert rapidjson.parse(b'["\xff"]') == [b"\xff"]  # not validated
    assert rapidjson.parse(b'{"a": 1, "a": 2}') == rapidjson.Object([("a", 1), ("a", 2)])


def test_normal_precision_strtod_is_not_always_correctly_rounded():
    """StrtodNormalPrecision: the significand's first 17 digits times a power of ten."""
    text = "2.2250738585072011e-308"
    value = rapidjson.parse(f"[{text}]".encode())[0]
    assert value == 22250738585072011 / 1e308 / 1e16 and value != float(text)  # Python's is correctly rounded
    assert rapidjson.parse(b"[0.1, 1e22, 123.456]") == [0.1, 1e22, 123.456]


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (1.0, "1.0"), (-0.0, "-0.0"), (1e20, "100000000000000000000.0"), (1e21, "1e21"),
    (1.5e300, "1.5e300"), (0.0001, "0.0001"), (1e-6, "0.000001"), (1e-7, "1e-7"), (5e-324, "5e-324"),
    (123.456, "123.456"), (1 / 3, "0.3333333333333333"),
])
def test_dtoa_prettify(value, text):
    assert rapidjson.dtoa(value) == text


def test_debug_string_layout_and_limit():
    value = rapidjson.parse(b'{"a": [1, 2.5, "x\\u0001\\"y"], "b": {"c": null}}')
    assert rapidjson.debug_string(value) == (
        b'{\n    "a": [1, 2.5, "x\\u0001\\"y"],\n    "b": {\n        "c": null\n    }\n}')
    assert rapidjson.debug_string(rapidjson.parse(b"[1.0, NaN, 2]")) == b"[1.0, "  # WriteDouble refuses NaN
    long = rapidjson.debug_string(list(range(1000)))
    assert len(long) == 257 and long.endswith(b", 66")  # the event that reaches 256 bytes is written whole


def test_six_digits_is_printf_g():
    rng = random.Random(1)
    for _ in range(20000):
        value = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(value):
            assert six_digits(value) == "%g" % value, repr(value)
    for value in (100000.5, 999999.5, 0.5, 1e-5, 123456.5, 2.5e-5):
        assert six_digits(value) == "%g" % value


def test_write_decimal_reads_back():
    """Six digits when they read back to the same float32, else nine: always the same float."""
    rng = random.Random(2)
    for _ in range(20000):
        value = np.frombuffer(struct.pack("<I", rng.getrandbits(32)), np.float32)[0]
        if np.isfinite(value):
            text = write_decimal(value, True)
            assert np.float32(float(text)) == value and ("." in text or "e" in text), (value, text)
    assert [write_decimal(np.float32(v), True) for v in (0.1, 9000000, 999999, 3e-05, 1435774380)] == [
        "0.1", "9e+06", "999999.0", "3e-05", "1.43577434e+09"]
    assert write_decimal(0.1 + 0.2, False) == "0.30000000000000004"
    assert [write_decimal(v, True) for v in (math.nan, math.inf, -math.inf)] == ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("text, expected", [
    (b"aGVsbG8=", b"hello"), (b"aGVsbG8", b"hello"), (b"aGVs bG8=\n", b"hello"), (b"aGk", b"hi"), (b"aGk.", b"hi"),
    (b"aGk==", None), (b"a", None), (b"aGVsbG8=x", None), (b"aGVsbG8*", None), (b"", b""), (b"QUJD=", None),
])
def test_base64_unescape_follows_absl(text, expected):
    assert base64_unescape(text) == expected
