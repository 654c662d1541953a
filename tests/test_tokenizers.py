import unicodedata

import pytest

from kerasformer.training.tokenizers import END_ID, PAD_ID, START_ID, UNK_ID, load_tokenizer, save_tokenizer, train_sentencepiece

CHINESE = ["我爱你。", "你好吗？", "我很好，谢谢。", "他是学生。", "我们是朋友。", "今天天气很好。"] * 5


def test_reserved_ids():
    tokenizer = load_tokenizer(train_sentencepiece(["a b c", "d e f"] * 10, 40))
    assert [tokenizer.id_to_token(i) for i in (PAD_ID, UNK_ID, START_ID, END_ID)] == ["[PAD]", "[UNK]", "[START]", "[END]"]


def test_chinese_is_split_into_characters_or_subwords_and_joined_without_spaces():
    tokenizer = load_tokenizer(train_sentencepiece(CHINESE, 60))
    for sentence in CHINESE[:6]:
        ids = list(tokenizer(sentence))
        assert len(ids) >= 2  # never one whole-sentence "word"
        # SentencePiece normalizes with NFKC: the full-width ？ comes back as ?.
        assert tokenizer.detokenize([ids])[0] == unicodedata.normalize("NFKC", sentence)


def test_spanish_round_trips_exactly():
    sentences = ["¿Qué dijo Dios?", "En el principio crió Dios los cielos y la tierra."] * 10
    tokenizer = load_tokenizer(train_sentencepiece(sentences, 60))
    for sentence in sentences[:2]:
        assert tokenizer.detokenize([list(tokenizer(sentence))])[0] == sentence


def test_saved_tokenizer_loads_identically(tmp_path):
    proto = train_sentencepiece(CHINESE, 60)
    save_tokenizer(proto, str(tmp_path / "source.model"))
    assert (tmp_path / "source.vocab").read_text(encoding="utf-8").startswith("0\t[PAD]\n")
    assert list(load_tokenizer(str(tmp_path / "source.model"))("我爱你。")) == list(load_tokenizer(proto)("我爱你。"))


def test_training_is_deterministic():
    assert train_sentencepiece(CHINESE, 60) == train_sentencepiece(CHINESE, 60)


def corpus_sentences(split, column):
    import gzip
    import os

    import kerasformer.training

    path = os.path.join(os.path.dirname(kerasformer.training.__file__), "corpus", "en-es", f"{split}.tsv.gz")
    with gzip.open(path, "rt", encoding="utf-8") as file:
        next(file)
        return [line.rstrip("\n").split("\t")[column] for line in file]


@pytest.mark.backend_independent  # tensorflow-text ops under every backend
def test_no_character_of_the_corpus_is_lost():
    """Every character of the embedded corpus's Spanish side, the rare ones included (¡ ¿ — ’ é ñ
    ü, and Ú, Ñ, É, seen once to three times), survives tokenize -> detokenize: no [UNK]."""
    spanish = corpus_sentences("train", 1)
    tokenizer = load_tokenizer(train_sentencepiece(spanish, 4000))
    rare = [s for s in spanish if set(s) & set("¡¿—’éñüÚÑÉûÁ")]
    assert len(rare) > 1000
    ids = tokenizer(rare)
    assert not any(UNK_ID in list(row) for row in ids)
    assert tokenizer.detokenize(ids) == rare


@pytest.mark.backend_independent
def test_characters_never_seen_in_training_come_back_as_bytes():
    tokenizer = load_tokenizer(train_sentencepiece(corpus_sentences("train", 1)[:5000], 1000))
    unseen = ["今天吃什么好", "Ærø — «naïve» ß €5 😀"]  # (NFKC-stable: SentencePiece normalizes ½ to 1⁄2)
    ids = tokenizer(unseen)
    assert not any(UNK_ID in list(row) for row in ids)
    assert any(tokenizer.id_to_token(int(i)).startswith("<0x") for i in ids[0])
    assert tokenizer.detokenize(ids) == unseen


def test_chinese_with_a_small_vocabulary_keeps_every_character():
    sentences = ["今天吃什么好", "我们吃米饭和青菜", "明天吃面条好不好", "你今天想吃什么"] * 5
    tokenizer = load_tokenizer(train_sentencepiece(sentences, 60))
    assert tokenizer.detokenize(tokenizer(sentences[:4])) == sentences[:4]
    assert not any(UNK_ID in list(row) for row in tokenizer(sentences[:4]))
