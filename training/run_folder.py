"""A training run's folder: the one owner of its layout. `kerasformer-train` writes it;
`kerasformer-evaluate`, `Translator.from_run` and `kerasformer-export` read it, all
through `RunFolder`.

    config.json            {"train": TrainConfig, "model": TransformerConfig, "backend": ...,
                            "decoding": {"length_rule": [a, b]}}  (text_rules.length_limit)
    tokenizers/            source.model, target.model (+ .vocab listings)
    best.keras, last.keras best (lowest validation perplexity) and last model
    backup/                the resumable state (training/resume.py)
    logs/                  TensorBoard logs
    metrics.json           per-epoch history, tokens/s, wall time
    curves.png             train/validation loss and accuracy
    eval/                  <split>.hyp.txt, <split>.beam.hyp.txt, <split>.scores.json, attention.png

Every file is written atomically (`kerasformer.training.files`).
"""

import json
import os

import keras

from kerasformer.training.files import atomic_write

CHECKPOINTS = ("best", "last")


class RunFolder:
    """Paths of a run folder, and the reading and writing of its files."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.config_file = os.path.join(self.path, "config.json")
        self.tokenizers = os.path.join(self.path, "tokenizers")
        self.backup = os.path.join(self.path, "backup")
        self.logs = os.path.join(self.path, "logs")
        self.metrics_file = os.path.join(self.path, "metrics.json")
        self.curves = os.path.join(self.path, "curves.png")
        self.eval = os.path.join(self.path, "eval")

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    def model_file(self, checkpoint="best"):
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint={checkpoint!r} must be one of {CHECKPOINTS}")
        return os.path.join(self.path, f"{checkpoint}.keras")

    def tokenizer_file(self, side):
        """`tokenizers/{side}.model`, side "source" or "target"."""
        return os.path.join(self.tokenizers, f"{side}.model")

    def eval_file(self, name):
        return os.path.join(self.eval, name)

    # config.json

    def write_config(self, train_config, model_config, length_rule=None):
        values = {"train": train_config.to_dict(), "model": model_config.to_dict(), "backend": keras.backend.backend()}
        if length_rule is not None:
            values["decoding"] = {"length_rule": list(length_rule)}
        atomic_write(self.config_file, json.dumps(values, indent=2).encode())

    def length_rule(self):
        """The run's `(a, b)` of `text_rules.length_limit`, or None (a run written before
        the rule existed, or without config.json: decoding then stops at max_length)."""
        if not os.path.exists(self.config_file):
            return None
        rule = self._read_json(self.config_file).get("decoding", {}).get("length_rule")
        return tuple(rule) if rule else None

    def train_config(self):
        """The run's `TrainConfig`, as training resolved it (values only: settings that
        depend on the machine, such as `distribution`, are checked where training starts)."""
        from kerasformer.training.config import TrainConfig

        return TrainConfig.from_dict(self._read_json(self.config_file)["train"])

    # what a finished run holds

    def finished_files(self, checkpoint="best"):
        """`(model .keras, source .model, target .model)`; FileNotFoundError naming the first
        one missing."""
        paths = (self.model_file(checkpoint), self.tokenizer_file("source"), self.tokenizer_file("target"))
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} does not exist: is {self.path} a finished training run?")
        return paths

    def load_model(self, checkpoint="best"):
        """The model of `{checkpoint}.keras`, loaded in Keras's safe mode (the default: a file
        holding Python code, e.g. a Lambda layer, is refused, not run); errors name the file."""
        import kerasformer  # noqa: F401  (registers the layers the file names)

        path = self.finished_files(checkpoint)[0]
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as error:
            raise ValueError(f"{path}: cannot load the model: {error}") from error

    def load_tokenizers(self):
        """`(source, target)` keras-hub SentencePiece tokenizers."""
        from kerasformer.training.tokenizers import load_tokenizer

        return load_tokenizer(self.tokenizer_file("source")), load_tokenizer(self.tokenizer_file("target"))

    # metrics.json

    def write_metrics(self, metrics):
        atomic_write(self.metrics_file, json.dumps(metrics, indent=2).encode())

    def metrics(self):
        return self._read_json(self.metrics_file)

    @staticmethod
    def _read_json(path):
        try:
            with open(path, encoding="utf-8") as file:
                return json.load(file)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist: is {os.path.dirname(path)} a training run?") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from error
