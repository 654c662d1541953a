"""The training run's settings: one flat dataclass of plain values, read from a
TOML or YAML file and overridden by command-line flags; the resolved config is
written into every run folder.

Model hyperparameters are a preset name plus `model` overrides (any field of
`kerasformer.TransformerConfig` except the vocabulary sizes, which come from
the tokenizers).
"""

import dataclasses
import math
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
    clip_norm: float = 0.0  # > 0: scale the gradients down to this global norm
    precision: str = "float32"
    # mixed_float16 only: dynamic loss scaling starts here and doubles after this many finite steps.
    initial_loss_scale: float = 32768.0
    loss_scale_growth_steps: int = 2000
    jit_compile: bool = False
    # "data_parallel": every GPU of the host shares each batch (see training/distribute.py).
    distribution: str = "none"
    seed: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} must be one of {sorted(PRESETS)}")
        for name in ("vocabulary_size", "batch_tokens", "epochs", "warmup_steps", "loss_scale_growth_steps"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("max_train_pairs", "patience", "backup_every_steps", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        if self.seed >= 2**32:
            raise ValueError(f"seed={self.seed} must be below 2**32 (NumPy's seed range)")
        if not 0 <= self.time_budget_minutes < math.inf:
            raise ValueError(f"time_budget_minutes={self.time_budget_minutes!r} must be finite and >= 0 (0 = no limit)")
        if not self.run_dir:
            raise ValueError("run_dir='' must name a folder")
        if not isinstance(self.model, dict):
            raise ValueError(f"model={self.model!r} must be a table of model overrides, e.g. {{num_layers = 2}}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {PRECISIONS}")
        check_distribution(self.distribution, keras.backend.backend(), self.jit_compile)
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm={self.clip_norm!r} must be >= 0 (0 = no clipping)")
        if not self.initial_loss_scale >= 1:
            raise ValueError(f"initial_loss_scale={self.initial_loss_scale!r} must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        self.model_config(8000, 8000)  # refuse bad model overrides before any work

    def model_config(self, source_vocab_size, target_vocab_size):
        given = sorted({"source_vocab_size", "target_vocab_size"} & set(self.model))
        if given:
            raise ValueError(f"model.{given[0]}={self.model[given[0]]!r}: the vocabulary sizes come from the "
                             "tokenizers; set vocabulary_size instead")
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
        unknown = sorted(set(values) - known, key=str)  # a YAML key may be a number
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
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"{path}: not a valid TOML file: {error}") from error
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            # safe_load builds plain data only: a tag such as !!python/object/apply is an error here.
            values = yaml.safe_load(data)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not a valid YAML config file: {error}") from error
        if values is None:
            return {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config is a table of key: value settings, not a {type(values).__name__}")
        return values
    raise ValueError(f"{path}: config files must end in .toml, .yaml or .yml")
