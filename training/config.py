"""The training run's settings: one flat dataclass of plain values, read from a
TOML or YAML file and overridden by command-line flags; the resolved config is
written into every run folder.

Model hyperparameters are a preset name plus `model` overrides (any field of
`kerasformer.TransformerConfig` except the vocabulary sizes, which come from
the tokenizers).
"""

import dataclasses
import os
import tomllib

import keras

from kerasformer.config import PRESETS, TransformerConfig
from training.distribute import check_distribution

DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "en-es")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class TrainConfig:
    run_dir: str = "runs/en-es"
    preset: str = "small"
    model: dict = dataclasses.field(default_factory=dict)
    # Data: TSV or CSV files; empty means the embedded English->Spanish corpus.
    train_file: str = ""
    validation_file: str = ""
    test_file: str = ""
    source_column: str = "source"
    target_column: str = "target"
    skip_malformed: bool = False
    max_train_pairs: int = 0  # 0 = all
    vocabulary_size: int = 8000
    # Optimisation (paper, section 5).
    batch_tokens: int = 4096
    epochs: int = 30
    time_budget_minutes: float = 0.0  # 0 = no limit
    warmup_steps: int = 4000
    label_smoothing: float = 0.1
    patience: int = 5
    backup_every_steps: int = 0  # 0 = back up at epoch ends only
    precision: str = "float32"
    jit_compile: bool = False
    # "data_parallel": every GPU of the host shares each batch (see training/distribute.py).
    distribution: str = "none"
    seed: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} must be one of {sorted(PRESETS)}")
        for name in ("vocabulary_size", "batch_tokens", "epochs", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {PRECISIONS}")
        check_distribution(self.distribution, keras.backend.backend(), self.jit_compile)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        self.model_config(8000, 8000)  # refuse bad model overrides before any work

    def model_config(self, source_vocab_size, target_vocab_size):
        if {"source_vocab_size", "target_vocab_size"} & set(self.model):
            raise ValueError("model.*_vocab_size come from the tokenizers; set vocabulary_size instead")
        return TransformerConfig.from_dict(
            {**PRESETS[self.preset], **self.model,
             "source_vocab_size": source_vocab_size, "target_vocab_size": target_vocab_size}
        )

    def corpus_file(self, split):
        given = getattr(self, f"{split}_file")
        return given or os.path.join(DEFAULT_CORPUS, f"{split}.tsv.gz")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="config"):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for field in dataclasses.fields(cls):
            if field.name in values and field.type in (int, float, bool, str):
                value = values[field.name]
                ok = isinstance(value, field.type) and not (field.type is not bool and isinstance(value, bool))
                if field.type is float and isinstance(value, int) and not isinstance(value, bool):
                    ok = True
                if not ok:
                    raise ValueError(f"{source}: {field.name}={value!r} must be {field.type.__name__}")
        return cls(**values)


def load_config_file(path):
    """Reads a TOML (`.toml`) or YAML (`.yaml`/`.yml`) file into a dict, without code execution."""
    with open(path, "rb") as file:
        data = file.read()
    if path.endswith(".toml"):
        return tomllib.loads(data.decode("utf-8"))
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(data) or {}
    raise ValueError(f"{path}: config files must end in .toml, .yaml or .yml")
