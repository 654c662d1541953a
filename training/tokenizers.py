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


BYTE_FALLBACK_MIN_VOCABULARY = 1000  # the 256 byte pieces cost at most about a quarter of it


def train_sentencepiece(sentences, vocabulary_size, model_type="unigram", character_coverage=None):
    """Trains a SentencePiece model on `sentences` and returns its serialized proto.

    No character of the training data is lost (tokenize -> detokenize gives it back, never
    `[UNK]`, shown as ` ⁇ `):
    - full character coverage: every character of the sentences is a piece of its own,
      unless they have more distinct characters than half the vocabulary (a CJK corpus with
      a small vocabulary), where the rarest 0.05% are left out (SentencePiece's advice for CJK);
    - byte fallback (vocabularies of 1,000 and more): a character that is not a piece, left
      out or never seen in training, becomes its UTF-8 bytes, 256 pieces `<0x00>`..`<0xFF>`
      that detokenize back to it (the 256 pieces do not fit a smaller vocabulary).

    Args:
        sentences: iterable of str (one training sentence each).
        vocabulary_size: target size; a soft limit, so a tiny corpus gives a
            smaller vocabulary instead of an error.
        model_type: "unigram" (Kudo 2018) or "bpe".
        character_coverage: share of the characters kept as pieces (None: as above).

    Returns:
        bytes: the model proto, loadable by `load_tokenizer`.
    """
    sentences = list(sentences)
    if character_coverage is None:
        distinct = len(set().union(*map(set, sentences))) if sentences else 0
        character_coverage = 1.0 if distinct + len(SPECIAL_PIECES) <= vocabulary_size // 2 else 0.9995
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=vocabulary_size >= BYTE_FALLBACK_MIN_VOCABULARY,
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
