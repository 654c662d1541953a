"""One place that records a benchmark table: printed as Markdown and written to
`benchmarks/results/<name>.json` and `.md` with the date, machine and versions.

    from benchmarks.results import environment, write_table
    write_table("decode", "Greedy decoding", ["loop", "seconds"], rows, notes=["median of 5"])
"""

import datetime
import importlib.metadata
import json
import os
import platform

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PACKAGES = ("keras", "tensorflow", "jax", "torch", "keras-hub", "tensorflow-text", "numpy")


def machine():
    """`"x86_64, 2 CPUs, 24 GB"` plus the CPU model where Linux names it."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    memory = ""
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{model or platform.machine()}, {os.cpu_count()} CPUs{memory}"


def environment():
    """Date (UTC), machine, Python and the versions of the packages that matter."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": platform.python_version(),
        "versions": versions,
    }


def markdown(title, columns, rows, notes=(), env=None):
    env = env or environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [f"### {title}", "", f"{env['date']}; {env['machine']}; Python {env['python']}; {versions}", ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(name, title, columns, rows, notes=(), extra=None, env=None):
    """Prints the table and writes `results/<name>.json` and `results/<name>.md`.

    Args:
        name: file stem, e.g. "train_throughput_tensorflow".
        title: the table's heading.
        columns: column names.
        rows: lists of cells (already formatted strings or numbers).
        notes: sentences printed above the table (settings, what was asserted).
        extra: more JSON-able data for the .json file (raw timings).
        env: the date, machine, Python and versions the figures were measured with; this
            process's `environment()` when not given (a table written again from an earlier
            record passes that record's, so it keeps the day and machine it ran on).
    """
    env = env or environment()
    text = markdown(title, columns, rows, notes, env)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    record = {"title": title, **env, "notes": list(notes), "columns": list(columns),
              "rows": [list(row) for row in rows], **(extra or {})}
    for suffix, content in ((".json", json.dumps(record, indent=2, ensure_ascii=False) + "\n"), (".md", text)):
        path = os.path.join(RESULTS, name + suffix)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(path + ".tmp", path)
    return record
