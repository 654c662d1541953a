"""Soak test of `kerasformer-serve`: concurrent clients send a mix of valid and invalid requests
on loopback for a fixed time; every answer is checked, and the server's memory is watched.

    python -m benchmarks.soak [--seconds 120] [--clients 16] [--warmup 5]
        [--model-base-path DIR --model-name NAME] [--enable-batching]

The soak itself (the request kinds and the answers each must get, the load, the memory
sampling) is tests/soak_helpers.py, which tests/test_soak.py runs for a short time and asserts;
this command runs it as long as asked and writes the table. Without `--model-base-path` it serves
the fake SavedModel of tests/serving_helpers.py; with one, NAME's newest version under DIR.
`--enable-batching` serves with `--enable_batching` and
export/serving/config/batching_parameters.txt.

Writes benchmarks/results/soak.{json,md} and exits non-zero when a valid request failed, any
answer was not the expected one, or the server died. Timings are reported, never asserted.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # also runnable as `python benchmarks/soak.py`
    if path not in sys.path:
        sys.path.insert(0, path)

from benchmarks.results import write_table  # noqa: E402
from soak_helpers import GRAPH_ERROR_KINDS, GRAPH_ERROR_LEAK_KB, failures, soak, tensorflow_leak_mb  # noqa: E402


def write_results(record, name="soak"):
    """Writes benchmarks/results/NAME.{json,md}: one row per request kind, the figures in notes."""
    rows = []
    for kind_name, kind in record["per_kind"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in kind["statuses"].items())
        rows.append([kind_name, "valid" if kind["valid"] else "invalid", kind["expected_status"], kind["requests"],
                     statuses, kind["failures"], kind["latency_ms"]["p50"], kind["latency_ms"]["p99"]])
    rss = record["rss_mb"]
    graph_errors, leak_mb = tensorflow_leak_mb(record)
    load = os.getloadavg()
    latency = record["valid_latency_ms"]
    notes = [
        f"kerasformer-serve (one process, {'with' if record['batching'] else 'without'} batching"
        f"{': export/serving/config/batching_parameters.txt' if record['batching'] else ''}, --max-request-bytes "
        f"{record['max_request_bytes']}) serving {record['model']}" + (
            ": the fake SavedModel with the real export's signatures and arithmetic answers, not a Transformer; "
            "latencies are the server's overhead, not translation time." if record["fake_model"] else "."),
        f"Load: {record['clients']} threads, one keep-alive http.client connection each (opened in all: "
        f"{record['connections_opened']}), on loopback, closed loop through a weighted, shuffled mix of the kinds "
        f"below; {record['warmup_seconds']:g} s warm-up ({record['warmup_requests']} requests, checked, not counted) "
        f"then {record['seconds']:g} s counted ({record['wall_seconds']} s wall).",
        f"{record['requests']} requests, {record['requests_per_second']} req/s; {record['valid_requests']} valid "
        f"({record['valid_requests_per_second']} req/s), p50 {latency['p50']} ms, p99 {latency['p99']} ms; "
        f"{record['failed_valid']} valid requests failed, {record['unexpected_invalid']} invalid requests answered "
        f"other than expected; server graph calls {record['server_graph_calls']}.",
        f"{record['valid_failed_by_merge']} valid requests were merged into one batch with a graph failure or crash "
        f"and got its error, as TensorFlow Serving answers (batching_session.cc, ProcessBatch: one status per "
        f"batch); not counted as failures." if record["batching"] else
        "Without batching no request shares a graph call with another.",
        "Each answer was checked: the kind's status, JSON body of its documented shape (predictions / outputs with "
        "one translation per sentence" + (", each exactly the fake's" if record["fake_model"] else "")
        + "; {'error': ...} naming the error); failures = answers that were not.",
        f"Server after the soak: {'alive and answering' if record['server_alive'] else 'DEAD or not answering'}; "
        f"tracebacks in its log: {record['server_log_tracebacks']}.",
        f"{graph_errors} requests failed inside the graph ({', '.join(GRAPH_ERROR_KINDS)}); TensorFlow leaks about "
        f"{GRAPH_ERROR_LEAK_KB} KB per failing signature call (its eager call wrapper drops the output list it built "
        f"before raising): at most {leak_mb:.0f} MB of RSS growth to expect here.",
        f"Server VmRSS: {rss['start']} MB after warm-up, {rss['end']} MB at the end, max {rss['max']} MB "
        f"(sampled every second; VmHWM {rss['peak_hwm']} MB), slope over the second half "
        f"{rss['second_half_slope_mb_per_min']} MB/min.",
        f"The clients share the machine's CPUs with the server: 1-minute load average {load[0]:.1f} at the end on "
        f"{os.cpu_count()} CPUs. Timings are reported, never asserted.",
    ]
    columns = ["kind", "", "expected", "requests", "answers (status: count)", "failures", "p50 ms", "p99 ms"]
    return write_table(name, "kerasformer-serve soak", columns, rows, notes, extra={"record": record})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="counted seconds of load (default: 120)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (default: 16)")
    parser.add_argument("--warmup", type=float, default=5, help="uncounted seconds before (default: 5)")
    parser.add_argument("--model-base-path", help="serve a real export from this folder of model folders "
                                                  "(default: the fake model)")
    parser.add_argument("--model-name", help="the model under --model-base-path")
    parser.add_argument("--enable-batching", action="store_true",
                        help="serve with --enable_batching and export/serving/config/batching_parameters.txt")
    parser.add_argument("--output", default="soak", help="results file stem (default: soak)")
    args = parser.parse_args(argv)
    if (args.model_base_path is None) != (args.model_name is None):
        parser.error("--model-base-path and --model-name go together")
    return args


def main(argv=None):
    args = parse_args(argv)
    record = soak(args.seconds, args.clients, args.warmup, args.model_base_path, args.model_name, args.enable_batching)
    write_results(record, args.output)
    problems = failures(record)
    if problems:
        raise SystemExit("soak failed: " + "; ".join(problems))


if __name__ == "__main__":
    main()
