import unicodedata

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
