"""TensorFlow Serving's request metrics, kept with prometheus_client, written as its Prometheus page.

The real server counts every request and times every successful one in TensorFlow's monitoring
registry (`servables/tensorflow/util.cc`):

    /tensorflow/serving/request_count     Counter {model_name, status}        every request
    /tensorflow/serving/request_latency   Sampler {model_name, API, entrypoint}   OK requests, in
                                          microseconds, buckets 10 * 1.8**i (i < 33), then +Inf
    /tensorflow/serving/runtime_latency   Sampler {model_name, API, runtime}  the graph run alone
    /tensorflow/serving/request_example_counts, request_example_count_total
                                          tf.Examples per Classify/Regress request (never
                                          recorded here: those APIs refuse every kerasformer
                                          signature)

`status` is the absl code name ("OK", "INVALID_ARGUMENT", ...). REST requests are recorded by
`model_servers/http_server.cc` (API = the `:predict`/`:classify`/`:regress` verb as the path
wrote it, "" for GET status and metadata; entrypoint "REST"), gRPC ones by
`model_servers/prediction_service_impl.cc` (API "Predict", "Classify", "Regress"; entrypoint
"GRPC"), the graph run by `servables/tensorflow/predict_util.cc` (API "Predict", runtime "TF1").

`util/prometheus_exporter.cc` writes them at the monitoring config's path (default
`/monitoring/prometheus/metrics`): names with every character outside `[a-zA-Z0-9_]` turned into
":" (`:tensorflow:serving:request_count`), a `# TYPE` line per metric and no `# HELP`, labels in
their declared order with only `\\` and `"` escaped, counters without a `_total` suffix, bucket
bounds and sums as `absl::StrCat` writes a double (six significant digits). prometheus_client's
own writer differs in each of these, so the page is written here from its collected samples.
The real page also lists TensorFlow's own metrics (graph runs, SavedModel loads, ...); this one
lists the five above only.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


def exponential_buckets(scale, growth_factor, count):
    """`monitoring::Buckets::Exponential`: scale, scale * growth, ... (`count` bounds; the
    histogram adds +Inf), multiplied in that order so the doubles equal TensorFlow's."""
    bounds, bound = [], float(scale)
    for _ in range(count):
        bounds.append(bound)
        bound *= growth_factor
    return bounds


def prometheus_name(name):
    """`GetPrometheusMetricName`: "/tensorflow/serving/request_count" -> ":tensorflow:serving:request_count"."""
    name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else ":" for c in name)
    return "_" + name if name[:1].isdigit() else name


def _label_value(value):
    """`SanitizeLabelValue`: only backslash and double quote are escaped (a newline is not)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _double(value):
    """A double as `absl::StrCat` writes it: six significant digits, %g style."""
    return "%.6g" % value


class Metrics:
    """The real server's request metrics in a private prometheus_client registry.

    `record` and `record_runtime` may be called from any thread (the REST event loop, gRPC
    worker threads, the batcher).
    """

    # TensorFlow name -> (kind, prometheus_client name, label names in the real server's order,
    # help text, bucket bounds). Sorted by TensorFlow name, the order the real page lists them in.
    SPECS = {
        "/tensorflow/serving/request_count": (
            "counter", "request_count", ("model_name", "status"), "The total number of requests.", None),
        "/tensorflow/serving/request_example_count_total": (
            "counter", "request_example_count", ("model",), "The total number of tensorflow.Examples.", None),
        "/tensorflow/serving/request_example_counts": (
            "histogram", "request_example_counts", ("model",), "The number of tensorflow.Examples per request.",
            exponential_buckets(1, 2, 15)),
        "/tensorflow/serving/request_latency": (
            "histogram", "request_latency", ("model_name", "API", "entrypoint"),
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            exponential_buckets(10, 1.8, 33)),
        "/tensorflow/serving/runtime_latency": (
            "histogram", "runtime_latency", ("model_name", "API", "runtime"),
            "Distribution of wall time (in microseconds) for Tensorflow runtime.", exponential_buckets(10, 1.8, 33)),
    }

    def __init__(self):
        self.registry = CollectorRegistry()
        self._metrics = {}
        for name, (kind, client_name, labels, help_text, buckets) in self.SPECS.items():
            if kind == "counter":
                metric = Counter(client_name, help_text, labels, registry=self.registry)
            else:
                metric = Histogram(client_name, help_text, labels, buckets=buckets, registry=self.registry)
            self._metrics[name] = metric

    def record(self, model_name, api, entrypoint, status_code_name, seconds):
        """One answered request: `RecordModelRequestCount` always, `RecordRequestLatency` when
        it succeeded (http_server.cc, prediction_service_impl.cc).

        Args:
            model_name: the model the request named ("" when its path did not parse).
            api: REST: "predict", "classify", "regress" as the path spelled it, "" for GET;
                gRPC: "Predict", "Classify", "Regress".
            entrypoint: "REST" or "GRPC".
            status_code_name: the answer's absl code name, "OK" for success.
            seconds: wall time from the request's arrival to its answer.
        """
        self._metrics["/tensorflow/serving/request_count"].labels(model_name, status_code_name).inc()
        if status_code_name == "OK":
            self._metrics["/tensorflow/serving/request_latency"].labels(model_name, api, entrypoint).observe(
                int(seconds * 1e6))

    def record_runtime(self, model_name, api, runtime, seconds):
        """`RecordRuntimeLatency` (predict_util.cc): the graph run of a successful Predict."""
        self._metrics["/tensorflow/serving/runtime_latency"].labels(model_name, api, runtime).observe(
            int(seconds * 1e6))

    def page(self):
        """The text `PrometheusExporter::GeneratePage` answers: metrics sorted by their
        TensorFlow name, one `# TYPE` line each, then one line per label set (sorted by value)."""
        collected = {family.name: family for family in self.registry.collect()}
        lines = []
        for name, (_, client_name, label_names, _, _) in sorted(self.SPECS.items()):
            family = collected[client_name]
            exported = prometheus_name(name)
            points = {}  # label values -> {sample suffix: [(labels, value)]}
            for sample in family.samples:
                key = tuple(sample.labels[label] for label in label_names)
                suffix = sample.name[len(family.name):]
                points.setdefault(key, {}).setdefault(suffix, []).append((sample.labels, sample.value))
            if family.type == "counter":
                lines.append(f"# TYPE {exported} counter")
                for key in sorted(points):
                    labels = ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(label_names, key))
                    lines.append(f"{exported}{{{labels}}} {int(points[key]['_total'][0][1])}")
                continue
            lines.append(f"# TYPE {exported} histogram")
            for key in sorted(points):
                labels = ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(label_names, key))
                prefix = f"{exported}_bucket{{{labels}{',' if labels else ''}"
                for sample_labels, value in points[key]["_bucket"]:
                    bound = sample_labels["le"]
                    bound = "+Inf" if bound == "+Inf" else _double(float(bound))
                    lines.append(f'{prefix}le="{bound}"}} {int(value)}')
                lines.append(f"{exported}_sum{{{labels}}} {_double(points[key]['_sum'][0][1])}")
                lines.append(f"{exported}_count{{{labels}}} {int(points[key]['_count'][0][1])}")
        return "\n".join(lines) + "\n"
