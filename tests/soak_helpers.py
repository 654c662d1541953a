"""The soak of `kerasformer-serve`: concurrent clients send a mix of valid and invalid requests on
loopback for a fixed time; every answer is checked, and the server's memory is watched.

Used by tests/test_soak.py (a short soak, asserted) and benchmarks/soak.py (the command line and
the results table). What `soak()` does, in order:
  1. Without `model_base_path`, saves the fake SavedModel of tests/serving_helpers.py (the real
     export's signatures, arithmetic answers: it saves in seconds and answers exactly
     predictably) into a temporary folder; with one, serves NAME's newest version from it.
  2. Starts the server (`serving_helpers.ServerProcess`) on a free loopback port with
     `--max-request-bytes` 64 KiB (so a 413 costs 80 KB, not megabytes), and with batching:
     `--enable_batching --batching_parameters_file export/serving/config/batching_parameters.txt`.
  3. `clients` threads, one keep-alive `http.client` connection each, send requests back to
     back, each thread walking the same weighted, shuffled schedule of request kinds from its
     own offset: `warmup` seconds not counted, then `seconds` counted. Every answer must have
     its kind's status and body: `{"predictions"}` / `{"outputs"}` with one translation per
     sentence sent (with the fake model: exactly the translation it computes), status and
     metadata bodies, or `{"error": message}` naming the error, in the real server's words. A
     transport error (no answer) counts as a failed request.
  4. Samples the server's VmRSS every second from /proc/PID/status; reports it after warm-up,
     at the end, its maximum, and its slope over the second half. At the end the server must
     still run and answer, and its log must hold no traceback. (Requests that fail inside the
     graph leak a little in TensorFlow itself: see GRAPH_ERROR_LEAK_KB.)

The kinds (`request_kinds`) and their expected status, on the signature table of the export
(every input batched, `serving_default` takes `text` alone):
  valid (200)  rows and columns (serving_default), max_length (translate_max_length, a limit per
               row), beam (translate_beam, when the model has it), status, metadata
  invalid      malformed JSON, unknown signature, wrong input dtype (400); unknown model,
               unknown version (404); oversized body (413, kerasformer-serve's body limit); a
               graph failure (400: the fake's "__fail__" text, a real export's negative token id
               for `translate_tokens`); a graph crash (500: the fake's "__crash__" text)
With batching, a request merged with a graph failure or crash gets that request's error, as the
real server answers (batching/batching_session.cc, ProcessBatch: one status for the whole
batch): such an answer to a valid request is counted as `failed_by_merge`, not as a failure.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from http.client import HTTPConnection, HTTPException

from serving_helpers import DEFAULT_MAX_LENGTH, REPOSITORY_ROOT, ServerProcess, expected_translation, http, \
    save_fake_model

from kerasformer.training.corpus_reader import read_corpus

BATCHING_FILE = os.path.join(REPOSITORY_ROOT, "export", "serving", "config", "batching_parameters.txt")
TEST_CORPUS = os.path.join(REPOSITORY_ROOT, "training", "corpus", "en-es", "test.tsv.gz")
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT = 120  # seconds; a request that takes longer counts as failed
HEADERS = {"Content-Type": "application/json"}
# Measured with TensorFlow 2.21: a signature call that fails inside the graph leaks about 0.9 KB
# (tfe_wrapper.cc builds the Python list of outputs, then raises the error and never frees it;
# a bare tf.function with a failing assert leaks the same). Used to explain RSS growth.
GRAPH_ERROR_LEAK_KB = 0.9
GRAPH_ERROR_KINDS = ("graph failure", "graph crash")


def memory_mb(pid="self"):
    """{"rss": current resident MB, "hwm": peak resident MB} from /proc/PID/status."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key[2:].lower()] = round(int(rest.split()[0]) / 1024)  # kB -> MB
    return values


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclasses.dataclass(frozen=True)
class RequestKind:
    """One kind of request of the mix and the answer it must get.

    `body(rng, texts)` returns what to send (JSON-able, bytes, or None for a GET) and what the
    answer is checked against (the sentences, with their limits); `check(answer, sent)` returns
    what is wrong with a 200 answer, or None. An error kind's answer must be `{"error": message}`
    with `error` in the message.
    """

    name: str
    method: str
    path: str
    status: int
    weight: int
    body: Callable | None = None
    check: Callable | None = None
    error: str = ""

    @property
    def valid(self):
        return self.status == 200

    def problem(self, status, raw, sent):
        """What is wrong with an answer (HTTP status, raw body), or None."""
        try:
            answer = json.loads(raw)
        except ValueError:
            return f"HTTP {status}, body is not JSON: {raw[:120]!r}"
        if status != self.status:
            return f"HTTP {status} (expected {self.status}): {str(answer)[:200]}"
        if self.valid:
            return self.check(answer, sent)
        if not error_answer(answer, self.error):
            return f"error body {str(answer)[:200]} is not {{'error': '...{self.error}...'}}"
        return None


def error_answer(answer, text):
    """Whether `answer` is `{"error": message}` with `text` in the message."""
    return (isinstance(answer, dict) and set(answer) == {"error"} and isinstance(answer["error"], str)
            and bool(answer["error"]) and text in answer["error"])


def _translations_problem(translations, lengths, sent, fake):
    """One translation (a string) and length (0..limit) per sentence; the fake's exactly.
    `sent`: [(sentence, limit or None)]."""
    if not (isinstance(translations, list) and isinstance(lengths, list)
            and len(translations) == len(lengths) == len(sent)):
        return f"{str(translations)[:100]} / {str(lengths)[:100]} for {len(sent)} sentences"
    for (sentence, limit), translation, length in zip(sent, translations, lengths):
        if not isinstance(translation, str) or isinstance(length, bool) or not isinstance(length, int) \
                or length < 0 or (limit is not None and length > limit):
            return f"translation {translation!r}, length {length!r} for {sentence!r} (limit {limit})"
        if fake and (translation, length) != (expected_translation(sentence), min(len(sentence), limit)):
            return (f"translation {translation!r}, length {length} for {sentence!r}: expected "
                    f"{expected_translation(sentence)!r}, {min(len(sentence), limit)}")
    return None


def _rows_check(fake):
    def check(answer, sent):
        if not (isinstance(answer, dict) and set(answer) == {"predictions"} and isinstance(answer["predictions"], list)
                and all(isinstance(p, dict) for p in answer["predictions"])):
            return f"row answer {str(answer)[:200]} is not {{'predictions': [{{...}}, ...]}}"
        predictions = answer["predictions"]
        translations, lengths = [p.get("translation") for p in predictions], [p.get("length") for p in predictions]
        return _translations_problem(translations, lengths, sent, fake)
    return check


def _columns_check(fake):
    def check(answer, sent):
        if not (isinstance(answer, dict) and set(answer) == {"outputs"} and isinstance(answer["outputs"], dict)):
            return f"columnar answer {str(answer)[:200]} is not {{'outputs': {{...}}}}"
        outputs = answer["outputs"]
        return _translations_problem(outputs.get("translation"), outputs.get("length"), sent, fake)
    return check


def _status_check(answer, _):
    statuses = answer.get("model_version_status") if isinstance(answer, dict) else None
    if not (isinstance(answer, dict) and set(answer) == {"model_version_status"} and isinstance(statuses, list)
            and statuses and isinstance(statuses[0], dict) and statuses[0].get("state") == "AVAILABLE"):
        return f"status answer {str(answer)[:200]} is not {{'model_version_status': [{{'state': 'AVAILABLE', ...}}]}}"
    return None


def _metadata_check(name):
    def check(answer, _):
        if not (isinstance(answer, dict) and set(answer) == {"model_spec", "metadata"}
                and isinstance(answer["model_spec"], dict) and answer["model_spec"].get("name") == name
                and isinstance(answer["metadata"], dict) and "signature_def" in answer["metadata"]):
            return f"metadata answer {str(answer)[:200]} lacks model_spec {name!r} or metadata.signature_def"
        return None
    return check


def _some(rng, texts, most=3):
    return [rng.choice(texts) for _ in range(rng.randint(1, most))]


def request_kinds(name, signatures, fake):
    """The mix: `RequestKind`s for model `name` with signature names `signatures`; `fake`: the
    model is tests/serving_helpers.py's, whose answers are known exactly."""
    model = f"/v1/models/{name}"
    rows, columns = _rows_check(fake), _columns_check(fake)
    default_limit = DEFAULT_MAX_LENGTH if fake else None  # a real export's own limit is not asserted

    def rows_body(rng, texts):
        sentences = _some(rng, texts)
        return {"instances": sentences}, [(s, default_limit) for s in sentences]

    def columns_body(rng, texts):
        sentences = _some(rng, texts)
        return {"inputs": {"text": sentences}}, [(s, default_limit) for s in sentences]

    def max_length_body(rng, texts):
        sent = [(s, rng.randint(1, 4)) for s in _some(rng, texts)]
        return {"signature_name": "translate_max_length",
                "instances": [{"text": s, "max_length": limit} for s, limit in sent]}, sent

    def beam_body(rng, texts):
        sentences = _some(rng, texts, most=2)
        return {"signature_name": "translate_beam", "instances": sentences}, [(s, None) for s in sentences]

    def fixed(body):
        return lambda rng, texts: (body, None)

    kinds = [
        RequestKind("rows", "POST", f"{model}:predict", 200, 4, rows_body, rows),
        RequestKind("columns", "POST", f"{model}:predict", 200, 3, columns_body, columns),
        RequestKind("max_length", "POST", f"{model}:predict", 200, 3, max_length_body, rows),
    ]
    if "translate_beam" in signatures:
        kinds.append(RequestKind("beam", "POST", f"{model}:predict", 200, 1, beam_body, _rows_check(False)))
    kinds += [
        RequestKind("status", "GET", model, 200, 1, None, _status_check),
        RequestKind("metadata", "GET", f"{model}/metadata", 200, 1, None, _metadata_check(name)),
        # The texts are the real server's: util/json_tensor.cc (ParseJson, FormatTypeError),
        # model_servers/http_rest_api_handler.cc (GetInfoMap), model_servers/server_core.cc.
        RequestKind("malformed JSON", "POST", f"{model}:predict", 400, 1, fixed(b'{"instances": ["a", '),
                    error="JSON Parse error"),
        RequestKind("unknown signature", "POST", f"{model}:predict", 400, 1,
                    fixed({"signature_name": "nope", "instances": ["a"]}),
                    error='"nope" not found in signature def'),
        RequestKind("wrong dtype", "POST", f"{model}:predict", 400, 1, fixed({"instances": [1]}),
                    error="is not of expected type: string"),
        RequestKind("unknown model", "POST", "/v1/models/no-such-model:predict", 404, 1,
                    fixed({"instances": ["a"]}), error="Servable not found for request: Latest(no-such-model)"),
        RequestKind("unknown version", "POST", f"{model}/versions/999999:predict", 404, 1,
                    fixed({"instances": ["a"]}), error=f"Servable not found for request: Specific({name}, 999999)"),
        RequestKind("oversized body", "POST", f"{model}:predict", 413, 1,
                    fixed({"instances": ["x" * (MAX_REQUEST_BYTES + 16 * 1024)]}), error="exceeds"),
    ]
    if fake:
        kinds += [
            RequestKind("graph failure", "POST", f"{model}:predict", 400, 1,
                        fixed({"instances": ["a", "__fail__"]}), error="asked to fail"),
            RequestKind("graph crash", "POST", f"{model}:predict", 500, 1,
                        fixed({"instances": ["__crash__"]}), error="inflate"),
        ]
    elif "translate_tokens" in signatures:
        kinds.append(RequestKind("graph failure", "POST", f"{model}:predict", 400, 1,
                                 fixed({"signature_name": "translate_tokens", "instances": [[-1, 5]]}),
                                 error="negative source id"))
    return kinds


@dataclasses.dataclass
class Outcome:
    kind: str
    status: int | None  # None: no answer (transport error)
    seconds: float
    problem: str | None
    failed_by_merge: bool = False  # batching: answered with a merged request's graph error


def merged_graph_error(kinds, status, raw):
    """Whether an answer is the error of one of `kinds`' graph failures (what a request merged
    into one batch with such a request gets from the real server's batching)."""
    try:
        answer = json.loads(raw)
    except ValueError:
        return False
    return any(kind.name in GRAPH_ERROR_KINDS and status == kind.status and error_answer(answer, kind.error)
               for kind in kinds)


def _client(host, port, schedule, offset, deadline, texts, seed, outcomes, connections, merged_errors):
    """Sends `schedule[offset:]` round and round until `deadline`, on one kept-alive connection.
    `merged_errors`: the kinds whose graph errors may reach a merged request (batching), or []."""
    rng = random.Random(seed)
    connection, index = None, offset
    while time.perf_counter() < deadline:
        kind = schedule[index % len(schedule)]
        index += 1
        body, sent = kind.body(rng, texts) if kind.body else (None, None)
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        start = time.perf_counter()
        try:
            if connection is None:
                connection = HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
                connections.append(1)
            connection.request(kind.method, kind.path, body=body, headers=HEADERS if body is not None else {})
            response = connection.getresponse()
            raw = response.read()
            if response.will_close:
                connection.close()
                connection = None
        except (OSError, HTTPException) as error:
            outcomes.append(Outcome(kind.name, None, time.perf_counter() - start,
                                    f"no answer: {type(error).__name__}: {error}"))
            if connection is not None:
                connection.close()
            connection = None
            continue
        seconds = time.perf_counter() - start
        problem = kind.problem(response.status, raw, sent)
        if problem is not None and kind.method == "POST" and merged_graph_error(merged_errors, response.status, raw):
            outcomes.append(Outcome(kind.name, response.status, seconds, None, failed_by_merge=True))
        else:
            outcomes.append(Outcome(kind.name, response.status, seconds, problem))
    if connection is not None:
        connection.close()


def run_load(url, kinds, clients, seconds, texts, seed=0, batching=False):
    """`clients` threads send the mix for `seconds` (a request started in time is waited for).

    Returns (outcomes, wall seconds, connections opened).
    """
    schedule = [kind for kind in kinds for _ in range(kind.weight)]
    random.Random(seed).shuffle(schedule)
    address = urllib.parse.urlsplit(url)
    outcomes, connections, crashes = [], [], []  # list.append is atomic: the threads share them
    merged_errors = [kind for kind in kinds if kind.name in GRAPH_ERROR_KINDS] if batching else []
    deadline = time.perf_counter() + seconds

    def client(index):
        try:
            _client(address.hostname, address.port, schedule, index * 5, deadline, texts, seed * 1000 + index,
                    outcomes, connections, merged_errors)
        except Exception:  # noqa: BLE001  (a bug of the soak itself: raised below, not counted as the server's)
            crashes.append(traceback.format_exc())

    threads = [threading.Thread(target=client, args=(i,), name=f"soak-client-{i}", daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if crashes:
        raise RuntimeError(f"{len(crashes)} soak clients crashed; the first:\n{crashes[0]}")
    return outcomes, time.perf_counter() - started, len(connections)


@contextlib.contextmanager
def memory_sampler(pid, every=1.0):
    """Samples the process's VmRSS every `every` seconds: yields the list of (seconds, MB)."""
    samples, stop = [], threading.Event()
    start = time.perf_counter()

    def sample():
        while True:
            with contextlib.suppress(OSError):  # the process is gone: no sample
                samples.append((time.perf_counter() - start, memory_mb(pid)["rss"]))
            if stop.wait(every):
                return

    thread = threading.Thread(target=sample, name="soak-rss", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def slope_mb_per_minute(samples):
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_m = sum(m for _, m in samples) / len(samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in samples) / spread if spread else 0.0


def summarize(kinds, outcomes, wall):
    """Per kind: requests, statuses, failures, latency percentiles; and totals of valid ones."""
    by_kind = collections.defaultdict(list)
    for outcome in outcomes:
        by_kind[outcome.kind].append(outcome)
    per_kind = {}
    for kind in kinds:
        done = by_kind[kind.name]
        latencies = sorted(o.seconds for o in done)
        per_kind[kind.name] = {
            "valid": kind.valid, "expected_status": kind.status, "requests": len(done),
            "statuses": dict(sorted(collections.Counter(str(o.status) for o in done).items())),
            "failures": sum(o.problem is not None for o in done),
            "failed_by_merge": sum(o.failed_by_merge for o in done),
            "latency_ms": {k: round(1000 * percentile(latencies, q), 1) for k, q in (("p50", 0.5), ("p99", 0.99))},
        }
    valid = [o for o in outcomes if per_kind[o.kind]["valid"]]
    latencies = sorted(o.seconds for o in valid)
    return {
        "requests": len(outcomes), "valid_requests": len(valid),
        "failed_valid": sum(o.problem is not None for o in valid),
        "valid_failed_by_merge": sum(o.failed_by_merge for o in valid),
        "unexpected_invalid": sum(o.problem is not None for o in outcomes if not per_kind[o.kind]["valid"]),
        "requests_per_second": round(len(outcomes) / wall, 1),
        "valid_requests_per_second": round(len(valid) / wall, 1),
        "valid_latency_ms": {k: round(1000 * percentile(latencies, q), 1) for k, q in (("p50", 0.5), ("p99", 0.99))},
        "per_kind": per_kind,
        "first_problems": [f"{o.kind}: {o.problem}" for o in outcomes if o.problem][:20],
    }


def _still_serving(server, name, kinds):
    """Whether the server process runs and answers status and a valid predict as expected."""
    if server.process.poll() is not None:
        return False
    rows = next(kind for kind in kinds if kind.name == "rows")
    body, sent = rows.body(random.Random(0), ["still serving?"])
    try:
        status, answer = http("GET", f"{server.url}/v1/models/{name}", timeout=REQUEST_TIMEOUT)
        if status != 200:
            return False
        status, answer = http("POST", f"{server.url}{rows.path}", body, timeout=REQUEST_TIMEOUT)
    except OSError:
        return False
    return rows.problem(status, json.dumps(answer).encode(), sent) is None


def soak(seconds=120, clients=16, warmup=5.0, model_base_path=None, model_name=None, enable_batching=False,
         batching_parameters_file=BATCHING_FILE):
    """Runs one soak against a fresh server (the fake model without `model_base_path`, a folder of
    model folders); returns its record (see `failures`)."""
    texts = read_corpus(TEST_CORPUS).sources
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        fake = model_base_path is None
        if fake:
            model_base_path, model_name = os.path.join(tmp, "saved_models"), "fake"
            save_fake_model(os.path.join(model_base_path, model_name, "1"))
        elif model_name is None:
            raise ValueError(f"--model-base-path {model_base_path} needs --model-name")
        extra = ["--enable_batching", "--batching_parameters_file", batching_parameters_file] if enable_batching else []
        server = ServerProcess(tmp, model_base_path, "--max-request-bytes", str(MAX_REQUEST_BYTES), *extra,
                               model=model_name)
        try:
            server.wait_until_ready(timeout=300)
            pid = server.process.pid
            status, metadata = http("GET", f"{server.url}/v1/models/{model_name}/metadata")
            if status != 200:
                raise RuntimeError(f"metadata answered {status}: {metadata}")
            signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
            kinds = request_kinds(model_name, set(signature_defs), fake)

            warmup_outcomes, _, _ = run_load(server.url, kinds, clients, warmup, texts, seed=1,
                                             batching=enable_batching)
            rss_start = memory_mb(pid)["rss"]
            stats_before = http("GET", f"{server.url}/kerasformer/stats")[1]
            with memory_sampler(pid) as samples:
                outcomes, wall, connections = run_load(server.url, kinds, clients, seconds, texts, seed=2,
                                                       batching=enable_batching)
            alive = _still_serving(server, model_name, kinds)
            memory = memory_mb(pid) if alive else {"rss": None, "hwm": None}
            stats_after = http("GET", f"{server.url}/kerasformer/stats")[1] if alive else {}
        finally:
            server.stop()
            log = server.log()
    second_half = [(t, m) for t, m in samples if t >= seconds / 2]
    return {
        "model": "fake (tests/serving_helpers.py)" if fake else os.path.join(model_base_path, model_name),
        "fake_model": fake, "batching": enable_batching, "clients": clients, "seconds": seconds,
        "warmup_seconds": warmup, "wall_seconds": round(wall, 2), "connections_opened": connections,
        "max_request_bytes": MAX_REQUEST_BYTES, "kinds": [k.name for k in kinds],
        **summarize(kinds, outcomes, wall),
        "warmup_requests": len(warmup_outcomes),
        "warmup_problems": [f"{o.kind}: {o.problem}" for o in warmup_outcomes if o.problem][:20],
        "server_alive": alive,
        "server_log_tracebacks": log.count("Traceback"),
        "server_log_tail": log[-3000:] if "Traceback" in log or not alive else "",
        "server_graph_calls": stats_after.get("graph_calls", 0) - stats_before.get("graph_calls", 0),
        "rss_mb": {
            "start": rss_start, "end": memory["rss"],
            "max": max([rss_start] + [m for _, m in samples] + ([memory["rss"]] if alive else [])),
            "peak_hwm": memory["hwm"], "second_half_slope_mb_per_min": round(slope_mb_per_minute(second_half), 2),
        },
        "rss_samples": [[round(t, 1), m] for t, m in samples],
    }


def tensorflow_leak_mb(record):
    """The RSS growth TensorFlow's leak on failing signature calls explains: (requests that fail
    inside the graph, MB). Each costs at most one failing call: with batching its batch's, which
    fails once for every request in it."""
    requests = sum(record["per_kind"].get(name, {}).get("requests", 0) for name in GRAPH_ERROR_KINDS)
    return requests, requests * GRAPH_ERROR_LEAK_KB / 1024


def failures(record):
    """Why a soak failed: an empty list when every answer was the expected one and the server lived."""
    problems = []
    if not record["valid_requests"]:
        problems.append("no valid request was answered")
    if record["failed_valid"]:
        problems.append(f"{record['failed_valid']} valid requests failed")
    if record["unexpected_invalid"]:
        problems.append(f"{record['unexpected_invalid']} invalid requests got an unexpected answer")
    if record["warmup_problems"]:
        problems.append(f"unexpected answers during warm-up: {record['warmup_problems'][:3]}")
    if not record["server_alive"]:
        problems.append("the server died or stopped answering")
    if record["server_log_tracebacks"]:
        problems.append(f"{record['server_log_tracebacks']} tracebacks in the server log")
    if record["first_problems"]:
        problems.append(f"first problems: {record['first_problems'][:5]}")
    return problems
