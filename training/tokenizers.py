"""Subword tokenizers: SentencePiece models trained on the training split, used
through keras-hub's `SentencePieceTokenizer` (tensorflow-text ops), so training,
evaluation and the exported SavedModel tokenize identically.

SentencePiece treats text as a raw character stream, so it needs no word
splitting: Chinese, which has no spaces, is cut into characters and subwords,
and detokenization restores the text exactly (no spaces inserted between CJK
characters, none before punctuation) up to SentencePiece's NFKC normalization
(full-width ？ becomes ?).

Reserved ids, the same in every tokenizer of a run:
    0 [PAD] padding, 1 [UNK] unknown, 2 [START] (bos), 3 [END] (eos).
"""

import io
import os

import keras_hub
import sentencepiece

from kerasformer.training.files import atomic_write

PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
SPECIAL_PIECES = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[START]", "eos": "[END]"}


def train_sentencepiece(sentences, vocabulary_size, model_type="unigram", character_coverage=0.9995):
    """Trains a SentencePiece model on `sentences` and returns its serialized proto.

    Args:
        sentences: iterable of str (one training sentence each).
        vocabulary_size: target size; a soft limit, so a tiny corpus gives a
            smaller vocabulary instead of an error.
        model_type: "unigram" (Kudo 2018) or "bpe".
        character_coverage: fraction of characters kept as symbols; the rest map
            to [UNK]. 0.9995 is SentencePiece's recommendation for CJK.

    Returns:
        bytes: the model proto, loadable by `load_tokenizer`.
    """
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type=model_type,
        character_coverage=character_coverage,
        hard_vocab_limit=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=START_ID, eos_id=END_ID,
        pad_piece=SPECIAL_PIECES["pad"], unk_piece=SPECIAL_PIECES["unk"],
        bos_piece=SPECIAL_PIECES["bos"], eos_piece=SPECIAL_PIECES["eos"],
        # One thread and no sampling: the same corpus gives the same model.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def load_tokenizer(proto):
    """A keras-hub `SentencePieceTokenizer` from proto bytes or a `.model` path."""
    if isinstance(proto, (str, os.PathLike)):
        with open(proto, "rb") as file:
            proto = file.read()
    return keras_hub.tokenizers.SentencePieceTokenizer(proto=proto)


def save_tokenizer(proto, path):
    """Writes the model proto (`.model`) and a human-readable `.vocab` beside it."""
    atomic_write(path, proto)
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    listing = "".join(f"{i}\t{processor.id_to_piece(i)}\n" for i in range(processor.get_piece_size()))
    atomic_write(os.path.splitext(path)[0] + ".vocab", listing.encode("utf-8"))
