"""The training run's settings: one flat dataclass of plain values, read from a
TOML or YAML file and overridden by command-line flags (`parse_args`: one flag per
field, `--epochs 3`, `--jit-compile`/`--no-jit-compile`); the resolved config is
written into every run folder.

Model hyperparameters are a preset name plus `model` overrides (any field of
`kerasformer.TransformerConfig` except the vocabulary sizes, which come from
the tokenizers).
"""

import argparse
import dataclasses
import json
import math
import os
import tomllib

import keras


from kerasformer.config import PRESETS, TransformerConfig
from kerasformer.training.cli import BooleanFlag, command_line
from kerasformer.training.distribute import DISTRIBUTIONS
from kerasformer.training.schedule import SCHEDULES

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
    # One SentencePiece vocabulary for both languages, and one embedding matrix for the
    # encoder, the decoder and the output projection (the paper's section 3.4).
    shared_vocabulary: bool = False
    # Optimisation (paper, section 5).
    batch_tokens: int = 4096
    epochs: int = 30
    time_budget_minutes: float = 0.0  # 0 = no limit
    warmup_steps: int = 4000
    # "auto": "budget" with a time budget, else "paper" (training/schedule.py).
    learning_rate_schedule: str = "auto"
    peak_learning_rate: float = 0.0  # 0 = the paper's peak, d_model^-0.5 * warmup_steps^-0.5
    label_smoothing: float = 0.1
    patience: int = 5
    backup_every_steps: int = 0  # 0 = back up at epoch ends only
    clip_norm: float = 0.0  # > 0: scale the gradients down to this global norm
    precision: str = "float32"
    # mixed_float16 only: dynamic loss scaling starts here and doubles after this many finite steps.
    initial_loss_scale: float = 32768.0
    loss_scale_growth_steps: int = 2000
    # True, False, or "auto": compiled under JAX (op by op it is several times slower) and under
    # TensorFlow (XLA: 1.07x the plain graph's steps in the main job's 12 minutes, 1.10x its
    # tokens/s, benchmarks/results/trainer_jit_tf12.md) unless the step is data-parallel there
    # (XLA cannot compile a MirroredStrategy step, training/distribute.py); torch refuses True
    # (`check_jit_compile`).
    jit_compile: object = "auto"
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
        if self.distribution not in DISTRIBUTIONS:  # whether this machine can run it: checked where training starts
            raise ValueError(f"distribution={self.distribution!r} must be one of {DISTRIBUTIONS}")
        if self.jit_compile not in (True, False, "auto") or isinstance(self.jit_compile, int) and \
                not isinstance(self.jit_compile, bool):
            raise ValueError(f"jit_compile={self.jit_compile!r} must be true, false or \"auto\"")
        if self.learning_rate_schedule not in SCHEDULES:
            raise ValueError(f"learning_rate_schedule={self.learning_rate_schedule!r} must be one of {SCHEDULES}")
        if self.learning_rate_schedule == "budget" and not self.time_budget_minutes:
            raise ValueError("learning_rate_schedule='budget' decays to zero at the end of the time budget: "
                             "set time_budget_minutes, or use 'paper'")
        if not 0 <= self.peak_learning_rate < math.inf:
            raise ValueError(f"peak_learning_rate={self.peak_learning_rate!r} must be finite and >= 0 "
                             "(0 = the paper's peak)")
        if not self.clip_norm >= 0:
            raise ValueError(f"clip_norm={self.clip_norm!r} must be >= 0 (0 = no clipping)")
        if not self.initial_loss_scale >= 1:
            raise ValueError(f"initial_loss_scale={self.initial_loss_scale!r} must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        self.model_config(8000, 8000)  # refuse bad model overrides before any work

    @property
    def compiled(self):
        """Whether the training step is compiled on this backend (`jit_compile` resolved)."""
        if self.jit_compile == "auto":
            backend = keras.backend.backend()
            return backend == "jax" or backend == "tensorflow" and self.distribution == "none"
        return self.jit_compile

    @property
    def schedule(self):
        """The learning-rate schedule this run uses: "budget" or "paper"."""
        if self.learning_rate_schedule == "auto":
            return "budget" if self.time_budget_minutes else "paper"
        return self.learning_rate_schedule

    def model_config(self, source_vocab_size, target_vocab_size):
        for key, instead in (("source_vocab_size", "vocabulary_size"), ("target_vocab_size", "vocabulary_size"),
                             ("share_embeddings", "shared_vocabulary")):
            if key in self.model:
                raise ValueError(f"model.{key}={self.model[key]!r}: the tokenizers decide it; set {instead} instead")
        return TransformerConfig.from_dict(
            {**PRESETS[self.preset], **self.model, "share_embeddings": self.shared_vocabulary,
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


def check_jit_compile(backend, compiled):
    """Raises ValueError if the trainer cannot run a compiled step (`compiled`) under `backend`.

    Under torch, Keras's `jit_compile` is `torch.compile` of the training step, which compiles
    again for each batch shape, and the length buckets make a dozen: on 2026-12-04 (torch
    2.13.0, Keras 3.15.1, the main job's config, 2-core CPU) the first step took 2:09 and each
    later one about a minute (4 steps in 5 minutes; eagerly the main job makes about 500 a
    minute); past torch's recompile limit (8 per frame) the frames run eagerly anyway; with
    every shape dynamic (`assume_static_by_default=False`) Dynamo failed with a KeyError in
    its guards. README, "Precision and XLA".
    """
    if backend == "torch" and compiled:
        raise ValueError(
            "jit_compile=true is not supported under KERAS_BACKEND=torch: torch.compile compiles the "
            "training step again for every batch shape the length buckets make (about a minute each on a "
            "2-core CPU) and runs it eagerly past torch's recompile limit; set jit_compile=false "
            "(--no-jit-compile; the default under torch), or use KERAS_BACKEND=jax, where the step is "
            "compiled by default"
        )


# The help of each field's flag (`kerasformer-train --help` adds the default).
HELP = {
    "run_dir": "the run folder (config, tokenizers, checkpoints, logs, metrics); running the same command "
               "again resumes an unfinished run there",
    "preset": f"model size, one of {', '.join(PRESETS)} (python -m kerasformer PRESET shows one)",
    "model": "model overrides as a JSON object, e.g. '{\"num_layers\": 2}': any TransformerConfig field "
             "but the vocabulary sizes; they change the --config file's model table setting by setting",
    "train_file": "training pairs, a .tsv or .csv file, optionally .gz ('': the embedded English->Spanish corpus)",
    "validation_file": "validation pairs, as --train-file ('': the embedded corpus's)",
    "test_file": "test pairs for kerasformer-evaluate, as --train-file ('': the embedded corpus's)",
    "source_column": "CSV files: the header of the source column",
    "target_column": "CSV files: the header of the target column",
    "skip_malformed": "skip and count malformed corpus lines instead of stopping at the first",
    "max_train_pairs": "train on the first N pairs only (0: all)",
    "vocabulary_size": "SentencePiece vocabulary of each side (a soft limit: a small corpus gets fewer)",
    "shared_vocabulary": "one SentencePiece vocabulary for both languages, and one embedding matrix for the "
                         "encoder, the decoder and the output projection (the paper's section 3.4)",
    "batch_tokens": "padded tokens per batch and side (the paper: about 25000)",
    "epochs": "passes over the training pairs",
    "time_budget_minutes": "stop training after this many minutes (0: no limit)",
    "warmup_steps": "steps of the learning rate's linear warmup (the paper, section 5.3: 4000)",
    "learning_rate_schedule": "paper (warmup, then inverse square root decay), budget (warmup, then a linear "
                              "decay to zero when the time budget ends, by elapsed time), or auto (budget with "
                              "a time budget, else paper)",
    "peak_learning_rate": "the learning rate at the end of the warmup (0: the paper's, "
                          "d_model^-0.5 * warmup_steps^-0.5)",
    "label_smoothing": "label smoothing epsilon_ls (the paper, section 5.4: 0.1)",
    "patience": "stop after this many epochs without a lower validation perplexity (the figure best.keras goes by)",
    "backup_every_steps": "save the resumable state every N steps too (0: at epoch ends only)",
    "clip_norm": "scale the gradients down to this global norm (0: no clipping)",
    "precision": f"one of {', '.join(PRECISIONS)}",
    "initial_loss_scale": "mixed_float16: the dynamic loss scale to start from",
    "loss_scale_growth_steps": "mixed_float16: double the loss scale after this many finite steps",
    "jit_compile": "compile the training step: XLA under TensorFlow, jax.jit under JAX "
                   "('auto': under JAX, and under TensorFlow unless data-parallel; refused under torch)",
    "distribution": "none, or data_parallel (every GPU of the host shares each batch)",
    "seed": "seed of the weights, dropout and the data order",
}


def parse_json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} reads as {value!r}, not a JSON object of model settings")
    return value


METAVARS = {int: "N", float: "NUMBER", str: "TEXT"}


def make_parser(prog="kerasformer-train", description=None):
    """kerasformer-train's flags: `--config FILE` and one flag per TrainConfig field, plus
    the shared `--version`, `--log-level` and `--progress-seconds` (training/cli.py).

    A field's flag defaults to None, "not given", so that only the flags given override the
    config file; its help shows the TrainConfig default instead."""
    parser = command_line(prog, description, progress=True)
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file of the settings below (flags override it; "
                                         "default: none, the defaults shown)")
    settings = parser.add_argument_group("settings (TrainConfig; each may also be a key of --config)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        shown = json.dumps(default) if field.type is dict else repr(default) if field.type is str else default
        text = f"{HELP[field.name]} (default: {shown})"
        if field.type is bool or field.name == "jit_compile":
            settings.add_argument(flag, action=BooleanFlag, help=text)
        elif field.type is dict:
            settings.add_argument(flag, type=parse_json_object, metavar="JSON", help=text)
        else:
            settings.add_argument(flag, type=field.type, metavar=METAVARS[field.type], help=text)
    return parser


def config_from_args(args):
    """The TrainConfig of parsed flags: the --config file's values, overridden by the flags
    given. ValueError names the wrong setting and its value."""
    values = load_config_file(args.config) if args.config else {}
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    overrides = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    if isinstance(values.get("model"), dict) and isinstance(overrides.get("model"), dict):
        # --model changes the file's model table setting by setting: '{"dropout": 0.1}' over a
        # config with `num_decoder_layers = 1` keeps its one decoder block.
        overrides["model"] = {**values["model"], **overrides["model"]}
    return TrainConfig.from_dict({**values, **overrides}, source=args.config or "config")


def parse_args(argv=None):
    """The TrainConfig of a kerasformer-train command line."""
    return config_from_args(make_parser().parse_args(argv))


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
