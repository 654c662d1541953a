"""Serving under load: requests/s and latency of `kerasformer-serve` with N concurrent
clients on loopback, without and with request batching, and the server's resident memory.

    pip install -e ".[bench]"          # aiohttp, the load generator's HTTP client
    python -m benchmarks.serving_load [--quick] [--run-dir runs/small-en-es] [--clients 1,8,32]

What it does, in order:
  1. Exports `--run-dir` with the real exporter (`python -m kerasformer.export.exporter`) into
     `--base-dir` (default build/bench/saved_models), or reuses the newest version there when
     it is newer than the run's best.keras. Without a run folder it first trains a tiny run
     (`python -m kerasformer.training.train --preset tiny --epochs 1 --max-train-pairs 200`).
  2. Starts `python -m kerasformer.export.serving.server` on a free loopback port, once without batching and once
     with `--enable_batching --batching_parameters_file export/serving/config/batching_parameters.txt`
     (the file the README gives TensorFlow Serving).
  3. For each client count N, N asyncio clients (one keep-alive connection each) post
     `{"instances": [sentence]}` back to back, a sentence at a time from the English side of
     training/corpus/en-es/test.tsv.gz, in the same order for both servers: `--warmup` seconds
     that are not counted, then `--duration` seconds that are. Every answer must be 200 with a
     non-empty translation string; anything else is counted as an error and fails the run.
  4. Reads `/kerasformer/stats` before and after each measured phase (graph calls per request
     show how much batching merged) and the server's VmRSS / VmHWM from /proc/PID/status.

Writes benchmarks/results/serving_load.{json,md} (`--quick`: serving_load_quick), with the
raw latencies' summary per row in the JSON. Timings only; never a test. The load generator
runs on the same machine as the server and takes CPU from it: on a 2-core machine the numbers
are a floor, not TensorFlow Serving's numbers.
"""

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):  # also runnable as `python benchmarks/serving_load.py`
    if path not in sys.path:
        sys.path.insert(0, path)

from benchmarks.results import write_table  # noqa: E402
from serving_helpers import ServerProcess, http  # noqa: E402
from soak_helpers import BATCHING_FILE, TEST_CORPUS, memory_mb, percentile  # noqa: E402
from kerasformer.training.corpus_reader import read_corpus  # noqa: E402

BENCH_DIR = os.path.join(ROOT, "build", "bench")


def subprocess_env():
    return dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def train_tiny_run(run_dir):
    """A one-epoch tiny run, so the benchmark works in a fresh clone without a trained model."""
    print(f"no run folder given or found: training a tiny run into {run_dir}", flush=True)
    subprocess.run([sys.executable, "-m", "kerasformer.training.train", "--run-dir", run_dir, "--preset", "tiny",
                    "--epochs", "1", "--max-train-pairs", "200"], cwd=ROOT, env=subprocess_env(), check=True)


def export_model(run_dir, base_dir, name, fresh):
    """Returns the version folder to serve: the newest under base_dir/name if it is newer than
    the run's best.keras (and not `fresh`), else a new export of the run."""
    model_dir = os.path.join(base_dir, name)
    versions = sorted(int(v) for v in os.listdir(model_dir) if v.isdigit()) if os.path.isdir(model_dir) else []
    if versions and not fresh:
        newest = os.path.join(model_dir, str(versions[-1]))
        exported, trained = (os.path.getmtime(os.path.join(newest, "saved_model.pb")),
                             os.path.getmtime(os.path.join(run_dir, "best.keras")))
        if exported > trained:
            print(f"reusing {newest} (newer than {run_dir}/best.keras; --fresh-export to export again)", flush=True)
            return newest
    if fresh:
        # One version only, so the server serves exactly this export.
        shutil.rmtree(model_dir, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "kerasformer.export.exporter", run_dir, "--name", name, "--base-dir", base_dir,
                             "--print-json"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"export failed:\n{result.stderr[-4000:]}")
    path = json.loads(result.stdout.strip().splitlines()[-1])["path"]
    print(f"exported {run_dir} to {path}", flush=True)
    return path


def model_to_serve(run_dir, base_dir, name, fresh=False):
    """(run folder, version folder): `run_dir` exported (or its export reused); a tiny run
    trained and exported instead when `run_dir` has no best.keras."""
    if not os.path.exists(os.path.join(run_dir, "best.keras")):
        run_dir = os.path.join(BENCH_DIR, "tiny-run")
        if not os.path.exists(os.path.join(run_dir, "best.keras")):
            train_tiny_run(run_dir)
    return run_dir, export_model(run_dir, base_dir, name, fresh)


def cpu_seconds(pid):
    """User + system CPU seconds a process has used (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(url, sentences, clients, seconds):
    """`clients` closed-loop clients posting one sentence each, back to back, for `seconds`.

    Returns (latencies in seconds, tokens translated, errors, wall seconds). A request started
    before the deadline is waited for and counted, so wall seconds run a little past `seconds`.
    """
    import aiohttp

    next_sentence = itertools.cycle(sentences).__next__  # shared: clients take turns through the corpus
    latencies, errors, tokens = [], [], [0]
    deadline = time.perf_counter() + seconds

    async def client(session):
        while time.perf_counter() < deadline:
            body = {"instances": [next_sentence()]}
            start = time.perf_counter()
            try:
                async with session.post(url, json=body) as response:
                    answer = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, ValueError, asyncio.TimeoutError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append(time.perf_counter() - start)
            try:
                (prediction,) = answer["predictions"]
                ok = status == 200 and isinstance(prediction["translation"], str) and prediction["translation"]
            except (KeyError, TypeError, ValueError):
                ok = False
            if ok:
                tokens[0] += int(prediction["length"])
            else:
                errors.append(f"HTTP {status}: {str(answer)[:200]}")

    # One connection per client, kept alive, as a pool of N real clients would hold.
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    return sorted(latencies), tokens[0], errors, wall


def stats(server):
    status, answer = http("GET", f"{server.url}/kerasformer/stats")
    if status != 200:
        raise RuntimeError(f"/kerasformer/stats answered {status}: {answer}")
    return answer


def measure_server(mode, extra_args, args, sentences, version_path):
    """Starts one server, runs every client count against it; returns table rows and raw records."""
    base_dir = os.path.dirname(os.path.dirname(version_path))
    name = os.path.basename(os.path.dirname(version_path))
    rows, records = [], []
    with tempfile.TemporaryDirectory() as logs:
        server = ServerProcess(logs, base_dir, *extra_args, model=name)
        try:
            server.wait_until_ready(timeout=300)
            pid = server.process.pid
            at_start = memory_mb(pid)
            url = f"{server.url}/v1/models/{name}:predict"
            for clients in args.clients:
                asyncio.run(drive(url, sentences, clients, args.warmup))  # not counted: fills queues, threads
                before, cpu_before = stats(server), cpu_seconds(pid)
                latencies, tokens, errors, wall = asyncio.run(drive(url, sentences, clients, args.duration))
                after, cpu_after = stats(server), cpu_seconds(pid)
                memory = memory_mb(pid)
                requests = after["predict_requests"] - before["predict_requests"]
                graph_calls = after["graph_calls"] - before["graph_calls"]
                record = {
                    "mode": mode, "clients": clients, "requests": len(latencies), "errors": len(errors),
                    "first_errors": errors[:5], "wall_seconds": round(wall, 3),
                    "requests_per_second": round(len(latencies) / wall, 2),
                    "tokens_per_second": round(tokens / wall, 1),
                    "latency_ms": {k: round(1000 * percentile(latencies, q), 1)
                                   for k, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
                    "server_predict_requests": requests, "server_graph_calls": graph_calls,
                    "server_cpu_seconds": round(cpu_after - cpu_before, 2),
                    "server_rss_mb": round(memory["rss"]), "server_peak_rss_mb": round(memory["hwm"]),
                }
                records.append(record)
                latency = record["latency_ms"]
                rows.append([mode, clients, record["requests"], f"{record['requests_per_second']:.1f}",
                             f"{record['tokens_per_second']:.0f}", latency["p50"], latency["p99"], latency["max"],
                             len(errors), graph_calls, f"{requests / max(graph_calls, 1):.1f}",
                             round(1000 * record["server_cpu_seconds"] / max(len(latencies), 1)),
                             record["server_rss_mb"]])
                print(f"{mode}, {clients} clients: {record['requests_per_second']} req/s, p50 {latency['p50']} ms, "
                      f"p99 {latency['p99']} ms, {len(errors)} errors, {graph_calls} graph calls", flush=True)
            at_end = memory_mb(pid)
        except BaseException:
            print(server.log()[-4000:], file=sys.stderr)
            raise
        finally:
            server.stop()
    memory = {"mode": mode, "rss_at_start_mb": round(at_start["rss"]), "rss_at_end_mb": round(at_end["rss"]),
              "peak_rss_mb": round(at_end["hwm"])}
    return rows, records, memory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "small-en-es"),
                        help="training run to export (default: runs/small-en-es; a tiny run is trained if missing)")
    parser.add_argument("--base-dir", default=os.path.join(BENCH_DIR, "saved_models"),
                        help="where the export goes (default: build/bench/saved_models)")
    parser.add_argument("--name", default="kerasformer_en_es", help="model name")
    parser.add_argument("--fresh-export", action="store_true", help="export again even if a newer export exists")
    parser.add_argument("--clients", help="concurrent client counts (default: 1,8,32; --quick: 1,8)")
    parser.add_argument("--duration", type=float, help="measured seconds per client count (default: 30; --quick: 4)")
    parser.add_argument("--warmup", type=float,
                        help="uncounted seconds before each measurement (default: 3; --quick: 1)")
    parser.add_argument("--modes", default="no batching,batching", help="which servers to run")
    parser.add_argument("--batching-parameters-file", default=BATCHING_FILE)
    parser.add_argument("--quick", action="store_true", help="shorter defaults (above); writes serving_load_quick")
    parser.add_argument("--output", help="results file stem (default: serving_load, or serving_load_quick)")
    args = parser.parse_args(argv)
    defaults = ("1,8", 4.0, 1.0) if args.quick else ("1,8,32", 30.0, 3.0)
    for name, default in zip(("clients", "duration", "warmup"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    unknown = set(args.modes) - {"no batching", "batching"}
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from 'no batching', 'batching'")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise SystemExit('the load generator needs aiohttp: pip install -e ".[bench]"') from None
    run_dir, version_path = model_to_serve(args.run_dir, args.base_dir, args.name, args.fresh_export)
    sentences = read_corpus(TEST_CORPUS).sources
    load = os.getloadavg()

    rows, records, memories = [], [], []
    servers = {"no batching": [], "batching": ["--enable_batching", "--batching_parameters_file",
                                               args.batching_parameters_file]}
    for mode in args.modes:
        mode_rows, mode_records, memory = measure_server(mode, servers[mode], args, sentences, version_path)
        rows += mode_rows
        records += mode_records
        memories.append(memory)

    with open(args.batching_parameters_file, encoding="utf-8") as file:
        batching = " ".join(line.strip() for line in file if line.strip() and not line.startswith("#"))
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as file:
        config = json.load(file)["model"]
    memory_note = "; ".join(f"{m['mode']}: {m['rss_at_start_mb']} MB ready, {m['rss_at_end_mb']} MB after load, "
                            f"peak {m['peak_rss_mb']} MB" for m in memories)
    notes = [
        f"kerasformer-serve (Starlette + Uvicorn, one process) serving {os.path.relpath(run_dir, ROOT)} exported by "
        f"kerasformer.export.exporter: d_model {config['d_model']}, {config['num_layers']} layers, vocabularies "
        f"{config['source_vocab_size']}/{config['target_vocab_size']}; greedy decoding inside the graph, no XLA.",
        f"Load: N asyncio clients (aiohttp, one keep-alive connection each) on loopback, closed loop, one English "
        f"sentence per request from the test split ({len(sentences)} sentences, in order), {args.warmup:g} s warm-up "
        f"then {args.duration:g} s measured per row.",
        "Every answer was checked: HTTP 200 with a non-empty translation; errors must be 0.",
        f"batching: --enable_batching --batching_parameters_file export/serving/config/batching_parameters.txt "
        f"({batching}).",
        "req/graph call: predict requests per graph call, from /kerasformer/stats (1.0 = nothing merged); "
        "tokens/s: target tokens generated per second.",
        f"Server resident memory (VmRSS / VmHWM): {memory_note}.",
        f"The load generator shares the machine's CPUs with the server, and so does anything else running: "
        f"1-minute load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on "
        f"{os.cpu_count()} CPUs. Server CPU ms/req (its user + system CPU time per answered request) is the "
        f"figure least disturbed by other work.",
    ]
    columns = ["server", "clients", "requests", "req/s", "tokens/s", "p50 ms", "p99 ms", "max ms", "errors",
               "graph calls", "req/graph call", "server CPU ms/req", "server RSS MB"]
    write_table(args.output or ("serving_load_quick" if args.quick else "serving_load"), "kerasformer-serve under load",
                columns, rows, notes, extra={"records": records, "server_memory": memories,
                                             "duration_seconds": args.duration, "warmup_seconds": args.warmup})
    failed = [r for r in records if r["errors"]]
    if failed:
        raise SystemExit("errors under load: " + "; ".join(f"{r['mode']}, {r['clients']} clients: {r['first_errors']}"
                                                          for r in failed))


if __name__ == "__main__":
    main()
