"""Reading sentence pairs from TSV and CSV files: formats, encodings and every malformed line."""

import gzip
import os

import pytest

import kerasformer.training
from kerasformer.training.corpus_reader import CorpusError, read_corpus

DEFAULT_CORPUS = os.path.join(
    os.path.dirname(kerasformer.training.__file__), "corpus", "en-es", "train.tsv.gz"
)

pytestmark = pytest.mark.backend_independent  # see tests/run.sh


def write(tmp_path, name, data):
    """Writes `data` (bytes, or text as UTF-8) to tmp_path/name, gzipped when name ends in .gz."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def error_message(path, **kwargs):
    with pytest.raises(CorpusError) as caught:
        read_corpus(path, **kwargs)
    return str(caught.value)


def test_default_corpus_reads_cleanly():
    corpus = read_corpus(DEFAULT_CORPUS)
    assert len(corpus) > 29000
    assert len(corpus.sources) == len(corpus.targets) == len(corpus)
    assert all(corpus.sources) and all(corpus.targets)
    assert corpus.skipped == {} and corpus.skipped_summary() == ""
    assert corpus.sources[0] == "In the beginning, God created the heavens and the earth."


def test_tsv_keeps_order_and_collapses_whitespace(tmp_path):
    path = write(tmp_path, "pairs.tsv", "Hello.\tHola.\n  Good   night. \t Buenas\u00a0noches.\n")
    corpus = read_corpus(path)
    assert corpus.sources == ["Hello.", "Good night."]
    assert corpus.targets == ["Hola.", "Buenas noches."]
    assert corpus.path == str(path)


def test_last_line_without_newline_is_read(tmp_path):
    assert read_corpus(write(tmp_path, "pairs.tsv", "a\tb\nc\td")).targets == ["b", "d"]


@pytest.mark.parametrize("line, found", [("one\ttwo\tthree", 3), ("no tab here", 1), ("", 1)])
def test_wrong_column_count_names_file_line_and_counts(tmp_path, line, found):
    path = write(tmp_path, "bad_columns.tsv", f"a\tb\nc\td\n{line}\ne\tf\n")
    message = error_message(path)
    assert f"bad_columns.tsv, line 3: wrong column count: found {found}, expected 2" in message


def test_empty_source_names_file_and_line(tmp_path):
    path = write(tmp_path, "no_source.tsv", "a\tb\n \t target\n")
    assert "no_source.tsv, line 2: empty source side" in error_message(path)


def test_empty_target_names_file_and_line(tmp_path):
    path = write(tmp_path, "no_target.tsv", "a\tb\nc\td\nsource\t  \n")
    assert "no_target.tsv, line 3: empty target side" in error_message(path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    # Latin-1 "é" (0xe9) on line 4 of an otherwise UTF-8 file.
    path = write(tmp_path, "latin1.tsv", "a\tb\nc\td\né\tf\n".encode() + b"caf\xe9\tcafe\n")
    assert "latin1.tsv, line 4: invalid UTF-8: byte 0xe9 at byte 4" in error_message(path)


def test_nul_byte_names_file_and_line(tmp_path):
    path = write(tmp_path, "nul.tsv", b"a\tb\nc\x00\td\n")
    assert "nul.tsv, line 2: NUL byte" in error_message(path)


def test_utf8_bom_is_removed(tmp_path):
    tsv = write(tmp_path, "bom.tsv", b"\xef\xbb\xbfHello.\tHola.\n")
    assert read_corpus(tsv).sources == ["Hello."]
    # In a CSV the BOM would otherwise glue onto the first column's name.
    csv_path = write(tmp_path, "bom.csv", b"\xef\xbb\xbfsource,target\nHello.,Hola.\n")
    assert read_corpus(csv_path).sources == ["Hello."]


def test_crlf_line_ends(tmp_path):
    tsv = write(tmp_path, "crlf.tsv", "Hello.\tHola.\r\nBye.\tAdiós.\r\n")
    assert read_corpus(tsv).targets == ["Hola.", "Adiós."]
    csv_path = write(tmp_path, "crlf.csv", 'source,target\r\nHello.,"Hola,\r\namigo."\r\n')
    assert read_corpus(csv_path).targets == ["Hola, amigo."]


def test_gzip_files(tmp_path):
    assert read_corpus(write(tmp_path, "pairs.tsv.gz", "a\tb\n")).targets == ["b"]
    assert read_corpus(write(tmp_path, "pairs.csv.gz", "source,target\na,b\n")).targets == ["b"]


def test_gzip_suffix_on_a_plain_file_names_the_file(tmp_path):
    path = tmp_path / "plain.tsv.gz"
    path.write_bytes(b"a\tb\n")
    assert "plain.tsv.gz: not a readable gzip file" in error_message(path)


def test_line_numbers_in_gzip_files(tmp_path):
    path = write(tmp_path, "bad.tsv.gz", "a\tb\nc\td\ne\n")
    assert "bad.tsv.gz, line 3: wrong column count" in error_message(path)


def test_csv_quoted_fields_with_tabs_commas_quotes_and_newlines(tmp_path):
    text = (
        "source,target\n"
        '"Tab\there, comma.","He said ""hi""."\n'
        '"Two\nlines.",plain\n'
        "last,one\n"
    )
    corpus = read_corpus(write(tmp_path, "quoted.csv", text))
    assert corpus.sources == ["Tab here, comma.", "Two lines.", "last"]
    assert corpus.targets == ['He said "hi".', "plain", "one"]


def test_csv_error_after_multiline_record_names_the_record_start(tmp_path):
    text = 'source,target\n"one\ntwo\nthree",x\n"four\nfive",\n'
    path = write(tmp_path, "after.csv", text)
    assert "after.csv, line 5: empty target side" in error_message(path)


def test_csv_invalid_utf8_inside_a_record_names_its_own_line(tmp_path):
    data = b'source,target\nok,fine\n"first\nsecond \xff",x\n'
    assert "multi.csv, line 4: invalid UTF-8" in error_message(write(tmp_path, "multi.csv", data))


def test_csv_wrong_column_count(tmp_path):
    path = write(tmp_path, "short.csv", "id,source,target\n1,a,b\n2,c\n")
    assert "short.csv, line 3: wrong column count: found 2, expected 3" in error_message(path)


def test_csv_unclosed_quote_is_an_error_not_a_swallowed_file(tmp_path):
    path = write(tmp_path, "open_quote.csv", 'source,target\na,b\nc,"d\ne,f\ng,h\n')
    assert "open_quote.csv, line 3: malformed CSV" in error_message(path)


def test_csv_columns_chosen_by_name(tmp_path):
    path = write(tmp_path, "named.csv", "id,es,en\n1,Hola.,Hello.\n2,Adiós.,Bye.\n")
    corpus = read_corpus(path, source_column="en", target_column="es")
    assert corpus.sources == ["Hello.", "Bye."]
    assert corpus.targets == ["Hola.", "Adiós."]


def test_csv_missing_column_names_file_and_header(tmp_path):
    path = write(tmp_path, "named.csv", "id,es,en\n1,Hola.,Hello.\n")
    message = error_message(path)
    assert "named.csv" in message and "'source'" in message
    assert "['id', 'es', 'en']" in message


def test_header_only_csv_has_no_pairs(tmp_path):
    path = write(tmp_path, "header.csv", "source,target\n")
    assert error_message(path) == f"no sentence pairs in {path}"


@pytest.mark.parametrize("name", ["empty.tsv", "empty.csv", "empty.tsv.gz"])
def test_empty_file_has_no_pairs(tmp_path, name):
    path = write(tmp_path, name, b"")
    assert error_message(path) == f"no sentence pairs in {path}"


def test_unknown_suffix_names_file_and_accepted_suffixes(tmp_path):
    path = write(tmp_path, "pairs.txt", "a\tb\n")
    message = error_message(path)
    assert "pairs.txt" in message
    assert all(suffix in message for suffix in (".tsv", ".tsv.gz", ".csv", ".csv.gz"))


def test_skip_malformed_counts_each_kind_and_keeps_good_lines_in_order(tmp_path):
    data = (
        b"s1\tt1\n"
        b"too\tmany\tcolumns\n"
        b"s2\tt2\n"
        b" \tno source\n"
        b"no target\t\n"
        b"s3\tt3\n"
        b"caf\xe9\tlatin-1\n"
        b"nul\x00\tbyte\n"
        b"one column\n"
        b"s4\tt4\n"
    )
    corpus = read_corpus(write(tmp_path, "mixed.tsv", data), skip_malformed=True)
    assert corpus.sources == ["s1", "s2", "s3", "s4"]
    assert corpus.targets == ["t1", "t2", "t3", "t4"]
    assert corpus.skipped == {
        "wrong column count": 2,
        "empty source": 1,
        "empty target": 1,
        "invalid UTF-8": 1,
        "NUL byte": 1,
    }
    assert corpus.skipped_summary() == (
        "skipped 6 lines: 2 wrong column count, 1 empty source, 1 empty target, "
        "1 invalid UTF-8, 1 NUL byte"
    )


def test_skip_malformed_csv_skips_whole_records(tmp_path):
    data = b'source,target\na,b\n"bad\nbyte \xff",x\nc,\nd,e\n'
    corpus = read_corpus(write(tmp_path, "mixed.csv", data), skip_malformed=True)
    assert (corpus.sources, corpus.targets) == (["a", "d"], ["b", "e"])
    assert corpus.skipped == {"invalid UTF-8": 1, "empty target": 1}


def test_skip_malformed_with_nothing_left_is_still_an_error(tmp_path):
    path = write(tmp_path, "all_bad.tsv", "only one column\n")
    message = error_message(path, skip_malformed=True)
    assert message == f"no sentence pairs in {path} (skipped 1 line: 1 wrong column count)"


def test_chinese_to_english_reads_unchanged(tmp_path):
    pairs = [("我爱你。", "I love you."), ("今天天气很好，我们去公园吧！", "The weather is nice today.")]
    path = write(tmp_path, "zh-en.tsv", "".join(f"{zh}\t{en}\n" for zh, en in pairs))
    corpus = read_corpus(path)
    assert list(zip(corpus.sources, corpus.targets)) == pairs
