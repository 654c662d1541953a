"""A run folder back from an export, so that an export can be made again (with the signatures
of this version of kerasformer-export) when its training run is gone:

    python -m kerasformer.export.recover saved_models/kerasformer_en_es/1 runs/reference-en-es \\
        [--config benchmarks/results/reference_model/config.json]
    kerasformer-export runs/reference-en-es --name kerasformer_en_es ...

writes RUN_DIR/best.keras (the model built from the run's config, with the export's weights),
RUN_DIR/tokenizers/ (the export's SentencePiece models) and RUN_DIR/config.json. The config is
the export's own `assets/config.json` (exports written since 2026-12-02 carry it), or `--config`
for an older export. The weights are the variables the export's module tracks
(`TranslationModule.model_variables`, in the order of `model.variables`); each is checked
against the model's shape, and the recovered model is checked to decode what the export
decodes before anything is written.
"""

import json
import os
import shutil

import numpy as np

from kerasformer.training.cli import command_line, configure
from kerasformer.training.files import atomic_save, atomic_write

CONFIG_ASSET = "config.json"


def recover_run(export_dir, run_dir, config_path=None, check_texts=("In the beginning.", "Jesus wept.")):
    """Writes a run folder (best.keras, tokenizers/, config.json) from a SavedModel written by
    kerasformer-export; returns `run_dir`. TensorFlow backend only."""
    import keras
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the export's SentencePiece ops)

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("recovering a run from an export needs KERAS_BACKEND=tensorflow "
                           f"(this process runs {keras.backend.backend()}); the .keras file it writes loads under any")

    from kerasformer import build_seq2seq
    from kerasformer.config import TransformerConfig

    assets = os.path.join(export_dir, "assets")
    config_path = config_path or os.path.join(assets, CONFIG_ASSET)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{export_dir} has no assets/{CONFIG_ASSET} (an export older than that file): "
                                "give the run's config.json with --config")
    config = json.load(open(config_path, encoding="utf-8"))
    model = build_seq2seq(TransformerConfig.from_dict(config["model"]))
    loaded = tf.saved_model.load(export_dir)
    values = list(getattr(loaded, "model_variables", []))
    if len(values) != len(model.variables):
        raise ValueError(f"{export_dir} holds {len(values)} model variables; the config's model has "
                         f"{len(model.variables)}: is {config_path} the config of this export's run?")
    for variable, value in zip(model.variables, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"{variable.path}: shape {tuple(variable.shape)} in the config's model, "
                             f"{tuple(value.shape)} in {export_dir}")
        variable.assign(value.numpy())
    _check_same_translations(model, loaded, assets, check_texts)

    os.makedirs(os.path.join(run_dir, "tokenizers"), exist_ok=True)
    for side in ("source", "target"):
        for suffix in (".model", ".vocab"):
            path = os.path.join(assets, side + suffix)
            if os.path.exists(path):
                shutil.copyfile(path, os.path.join(run_dir, "tokenizers", side + suffix))
    atomic_save(os.path.join(run_dir, "best.keras"), model.save)
    atomic_write(os.path.join(run_dir, "config.json"),
                 json.dumps({**config, "recovered_from": os.path.abspath(export_dir)}, indent=2).encode("utf-8"))
    return run_dir


def _check_same_translations(model, loaded, assets, texts):
    """The recovered model's greedy tokens equal the export's own (serving_default)."""
    from kerasformer.decoding import greedy_decode
    from kerasformer.training.text_rules import strip_end
    from kerasformer.training.tokenizers import END_ID, START_ID, load_tokenizer

    answer = loaded.signatures["serving_default"](text=np.array(list(texts), dtype=object))
    tokenizer = load_tokenizer(os.path.join(assets, "source.model"))
    decoder_max_length = model.get_layer("decoder").max_length
    for row, text in enumerate(texts):
        ids = np.array([tokenizer.tokenize(text)], "int32")
        length = int(answer["length"][row])
        limit = min(length + 1, decoder_max_length)  # greedy: a prefix of the export's tokens
        tokens, _ = strip_end(greedy_decode(model, ids, START_ID, END_ID, max_length=limit))
        tokens = np.asarray(tokens)[0][:length].tolist()
        if tokens != answer["tokens"][row][:length].numpy().tolist():
            raise ValueError(f"the recovered model translates {text!r} to ids {tokens}, the export to "
                             f"{answer['tokens'][row][:length].numpy().tolist()}: the weights do not belong to the config")


def main(argv=None):
    parser = command_line("kerasformer-recover", __doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="a version folder written by kerasformer-export")
    parser.add_argument("run_dir", help="the run folder to write")
    parser.add_argument("--config", help="the run's config.json (for exports without assets/config.json)")
    args = parser.parse_args(argv)
    configure(args)
    print(recover_run(args.export_dir, args.run_dir, args.config))


if __name__ == "__main__":
    main()
