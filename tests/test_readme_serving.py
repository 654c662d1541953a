"""Every request the README shows is answered as the README says, by a server as strict as
TensorFlow Serving: each `$ curl ...` line of the README is sent to kerasformer-serve serving a
real tiny export (tests/conformance.py), and the answer checked against the line after it.

An error line (ending in "(HTTP NNN)") must come back with that status and exactly that error
text; a success must come back 200 with the same keys and the same shapes (the README's model
is not the tiny one, so the translations differ)."""

import json
import os
import re
import shlex
import urllib.parse

import pytest
from conformance import REAL_EXPORT_MODEL, real_export_server  # noqa: F401  (a fixture)
from serving_helpers import http

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
README_MODEL = "kerasformer_en_es"


def readme_requests():
    """(curl line, answer text) pairs of the README's transcripts: the answer is every line up to
    the next command or the end of the block."""
    lines = open(README, encoding="utf-8").read().splitlines()
    pairs = []
    for index, line in enumerate(lines):
        if line.startswith("$ curl ") and ":8501/v1/" in line:
            answer = []
            for following in lines[index + 1:]:
                if following.startswith(("$ ", "```")):
                    break
                answer.append(following)
            pairs.append((line, "\n".join(answer)))
    return pairs


def parse_curl(line):
    """A README curl line -> (method, path, body or None). `| jq -c .` only reformats the answer."""
    command, _, pipe = line[2:].partition(" | ")
    assert pipe in ("", "jq -c ."), f"the README pipes an answer through something other than jq -c .: {line}"
    words = shlex.split(command)
    method, body, url = "GET", None, None
    iterator = iter(words[1:])
    for word in iterator:
        if word == "-X":
            method = next(iterator)
        elif word == "-d":
            body = next(iterator)
            method = "POST" if method == "GET" else method
        elif word == "-w":
            next(iterator)
        elif not word.startswith("-"):
            url = word
    path = urllib.parse.urlsplit(url if "://" in url else "http://" + url).path
    return method, path.replace(f"/models/{README_MODEL}", f"/models/{REAL_EXPORT_MODEL}"), body


def shape(value):
    """The structure of a JSON answer: keys and list lengths, with leaves reduced to their type."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value] if value and isinstance(value[0], (dict, list)) else len(value)
    return type(value).__name__


def numbered(answer):
    """An error answer with the numbers TensorFlow gives traced functions left out: a graph's
    error names its function (`__inference_translate_max_length_31747`), numbered per export."""
    return {key: re.sub(r"(__inference_\w+?)_\d+", r"\1_N", value) for key, value in answer.items()}


REQUESTS = readme_requests()


def test_the_readme_has_requests():
    assert len(REQUESTS) >= 8  # the transcript of the serving section


@pytest.mark.parametrize("line, answer", REQUESTS, ids=[str(i) for i in range(len(REQUESTS))])
def test_readme_request(real_export_server, line, answer):  # noqa: F811  (the fixture)
    method, path, body = parse_curl(line)
    status, got = http(method, real_export_server.url + path, None if body is None else body.encode("utf-8"))
    expected_status = re.search(r"\(HTTP (\d+)\)$", answer)
    if expected_status:
        expected = json.loads(answer[: expected_status.start()].replace(README_MODEL, REAL_EXPORT_MODEL))
        assert (status, numbered(got)) == (int(expected_status.group(1)), numbered(expected)), line
        return
    assert status == 200, (line, got)
    expected = json.loads(answer)
    if "model_version_status" in expected:
        assert [s["state"] for s in got["model_version_status"]] == ["AVAILABLE"]
        return
    # Token counts depend on the model; the keys and the rows do not.
    key = "predictions" if "predictions" in expected else "outputs"
    got_rows, expected_rows = got[key], expected[key]
    if isinstance(expected_rows, dict):
        assert set(got_rows) == set(expected_rows), line
        for name in expected_rows:
            assert len(got_rows[name]) == len(expected_rows[name]), (line, name)
    else:
        assert len(got_rows) == len(expected_rows), line
        for got_row, expected_row in zip(got_rows, expected_rows):
            assert type(got_row) is type(expected_row) and (not isinstance(got_row, dict) or set(got_row) == set(expected_row))
