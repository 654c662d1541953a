"""Reads a parallel corpus of (source, target) sentence pairs from a TSV or CSV file.

Formats, chosen by file name:
  * ``.tsv`` / ``.tsv.gz``: no header, one pair a line, ``source<TAB>target``.
  * ``.csv`` / ``.csv.gz``: RFC 4180 with a header row; the two columns are chosen by name.

Files are strict UTF-8 (a leading BOM and CRLF line ends are accepted; a UTF-16 file is
refused whole). Each side has its whitespace stripped and internal runs of it (a lone CR
inside a TSV line included) collapsed to one space. A malformed line is an error that names
file and line, or, with ``skip_malformed=True``, is skipped and counted by kind of problem:
a corpus never loses a line silently. Blank lines are malformed too. In a CSV file a CR
outside quotes is malformed (RFC 4180), and so is a field longer than the csv module's
limit (131072 characters): such a field is nearly always an unclosed quote.

A file that cannot be read whole (missing, a folder, a truncated or corrupt gzip file) is
an error even with ``skip_malformed=True``.
"""

import csv
import dataclasses
import gzip
import os
import zlib

SUFFIXES = (".tsv", ".tsv.gz", ".csv", ".csv.gz")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # little-endian, big-endian

# Kinds of problem: the keys of Corpus.skipped.
WRONG_COLUMN_COUNT = "wrong column count"
EMPTY_SOURCE = "empty source"
EMPTY_TARGET = "empty target"
INVALID_UTF8 = "invalid UTF-8"
NUL_BYTE = "NUL byte"
MALFORMED_CSV = "malformed CSV"


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file and, where known, the line."""


@dataclasses.dataclass
class Corpus:
    """Sentence pairs read from `path`: `sources[i]` translates to `targets[i]`.

    `skipped` maps a kind of problem (e.g. "empty target") to the number of lines skipped
    for it; it is empty unless `read_corpus` ran with `skip_malformed=True`.
    """

    sources: list[str]
    targets: list[str]
    skipped: dict[str, int]
    path: str

    def __len__(self):
        return len(self.sources)

    def skipped_summary(self) -> str:
        """E.g. "skipped 3 lines: 2 wrong column count, 1 empty target"; "" when none."""
        total = sum(self.skipped.values())
        if not total:
            return ""
        # Most frequent first; ties keep the order in which the file first showed them.
        kinds = sorted(self.skipped.items(), key=lambda item: -item[1])
        counts = ", ".join(f"{count} {kind}" for kind, count in kinds)
        return f"skipped {total} line{'s' if total > 1 else ''}: {counts}"


def read_corpus(
    path, *, source_column="source", target_column="target", skip_malformed=False
) -> Corpus:
    """Reads the sentence pairs of a `.tsv`, `.tsv.gz`, `.csv` or `.csv.gz` file.

    Args:
        path: the file; its suffix chooses the format.
        source_column, target_column: CSV header names of the two sides (ignored for TSV).
        skip_malformed: skip and count malformed lines instead of raising on the first.

    Returns:
        a `Corpus`.

    Raises:
        CorpusError: an unknown suffix, a file that cannot be opened or read whole (missing,
            a folder, a truncated or corrupt gzip file, UTF-16), a missing or repeated CSV
            column, a malformed line (unless skipped), or a file with no sentence pairs.

    Example:
        >>> corpus = read_corpus("pairs.csv", source_column="en", target_column="es",
        ...                      skip_malformed=True)
        >>> len(corpus), corpus.sources[0], corpus.targets[0]
        (2, 'Good morning.', 'Buenos días.')
        >>> corpus.skipped_summary()
        'skipped 1 line: 1 empty target'
    """
    path = os.fspath(path)
    name = path.lower()
    if not name.endswith(SUFFIXES):
        raise CorpusError(f"{path}: unknown corpus format; expected one of {', '.join(SUFFIXES)}")
    opener = gzip.open if name.endswith(".gz") else open
    corpus = Corpus(sources=[], targets=[], skipped={}, path=path)
    try:
        file = opener(path, "rb")
    except OSError as error:
        raise CorpusError(f"{path}: cannot open the file: {error.strerror or error}") from error
    with file:
        lines = _decoded_lines(path, file)
        if name.endswith((".csv", ".csv.gz")):
            rows = _csv_rows(path, lines, source_column, target_column)
        else:
            rows = _tsv_rows(lines)
        for line_number, source, target, problem in rows:
            source, target = _collapse_whitespace(source), _collapse_whitespace(target)
            if problem is None and not source:
                problem = (EMPTY_SOURCE, "empty source side")
            if problem is None and not target:
                problem = (EMPTY_TARGET, "empty target side")
            if problem is None:
                corpus.sources.append(source)
                corpus.targets.append(target)
            elif skip_malformed:
                corpus.skipped[problem[0]] = corpus.skipped.get(problem[0], 0) + 1
            else:
                if name.endswith(".gz"):
                    # A corrupt stream decodes to garbage lines before its checksum fails at the
                    # end: read on, so that the corruption, not its first garbage line, is reported.
                    for _ in lines:
                        pass
                raise CorpusError(f"{path}, line {line_number}: {problem[1]}")
    if not corpus.sources:
        summary = corpus.skipped_summary()
        raise CorpusError(f"no sentence pairs in {path}" + (f" ({summary})" if summary else ""))
    return corpus


def _collapse_whitespace(text):
    """Strips `text` and turns each run of whitespace inside it (tabs, newlines) into one space."""
    return " ".join(text.split())


def _decoded_lines(path, file):
    """Yields `(line_number, text, problem)` for each physical line of a binary file.

    `problem` is None or `(kind, message)`. Decoding line by line is what lets an invalid
    byte be reported at its own line; a bad line's text still comes (with the bad bytes
    replaced) so that a CSV record spanning it keeps its shape and can be skipped whole.
    A file that cannot be read to its end raises CorpusError: its lost lines cannot be counted.
    """
    line_number = 0
    try:
        for line_number, raw in enumerate(file, start=1):
            if line_number == 1:
                if raw.startswith(UTF16_BOMS):
                    # Every line would be "invalid UTF-8" or "NUL byte": name the real problem once.
                    raise CorpusError(
                        f"{path}, line 1: the file starts with a UTF-16 byte order mark "
                        f"(0x{raw[0]:02x} 0x{raw[1]:02x}); corpus files must be UTF-8"
                    )
                raw = raw.removeprefix(UTF8_BOM)
                if not raw:
                    return  # the whole file was a BOM: no line at all
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            problem = None
            nul = raw.find(b"\0")
            if nul >= 0:
                problem = (NUL_BYTE, f"NUL byte at byte {nul + 1}")
                raw = raw.replace(b"\0", b"")
            try:
                text = raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as error:
                message = f"invalid UTF-8: byte 0x{raw[error.start]:02x} at byte {error.start + 1}"
                problem = problem or (INVALID_UTF8, message)
                text = raw.decode("utf-8", errors="replace")
            yield line_number, text, problem
    except EOFError as error:
        raise CorpusError(
            f"{path}, line {line_number + 1}: the gzip data ends early (a truncated file?)"
        ) from error
    except (gzip.BadGzipFile, zlib.error) as error:
        raise CorpusError(f"{path}: not a readable gzip file ({error})") from error
    except OSError as error:
        raise CorpusError(f"{path}, line {line_number + 1}: cannot read the file: {error}") from error


def _tsv_rows(lines):
    """Yields `(line_number, source, target, problem)` from `source<TAB>target` lines."""
    for line_number, text, problem in lines:
        columns = text.split("\t")
        if problem is None and len(columns) != 2:
            message = f"wrong column count: found {len(columns)}, expected 2"
            if "\r" in text:
                message += " (the line holds a CR: lines must end with LF or CRLF, not a CR alone)"
            problem = (WRONG_COLUMN_COUNT, message)
        yield line_number, columns[0], columns[-1], problem


def _csv_rows(path, lines, source_column, target_column):
    """Yields `(line_number, source, target, problem)` per CSV record after the header.

    `line_number` is the physical line where the record starts; a quoted field may span lines.
    """
    problems = {}  # physical line -> problem, filled as the csv reader pulls lines

    def texts():
        for line_number, text, problem in lines:
            if problem is not None:
                problems[line_number] = problem
            yield text + "\n"  # the csv module needs the newline to keep it inside quotes

    # strict: an unclosed quote is an error, not a field that swallows the rest of the file.
    reader = csv.reader(texts(), strict=True)
    try:
        header = [_collapse_whitespace(name) for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as error:
        raise CorpusError(f"{path}, line 1: malformed CSV header: {_csv_error(error)}") from error
    if problems:
        line_number, (_, message) = min(problems.items())
        raise CorpusError(f"{path}, line {line_number}: header: {message}")
    for column in (source_column, target_column):
        if header.count(column) != 1:
            problem = "no column" if column not in header else "more than one column"
            raise CorpusError(f"{path}, line 1: {problem} {column!r} in the header {_shortened(header)}")
    source_index, target_index = header.index(source_column), header.index(target_column)
    start = reader.line_num + 1
    while True:
        line_number, problem = start, None
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            problem = (MALFORMED_CSV, f"malformed CSV: {_csv_error(error)}")
        # A bad byte is reported at its own line, even inside a record spanning several.
        lines_read = range(start, reader.line_num + 1)
        spanned = [(n, problems.pop(n)) for n in lines_read if n in problems]
        if spanned:
            line_number, problem = spanned[0]
        if problem is None and len(row) != len(header):
            message = f"wrong column count: found {len(row)}, expected {len(header)}"
            problem = (WRONG_COLUMN_COUNT, message)
        if problem is None:
            yield start, row[source_index], row[target_index], None
        else:
            yield line_number, "", "", problem
        start = reader.line_num + 1


def _csv_error(error):
    """The csv module's message, reworded where it would send a reader of corpus errors astray."""
    message = str(error)
    if message == "unexpected end of data":
        return "unclosed quote: the quoted field runs to the end of the file"
    if message.startswith("new-line character seen in unquoted field"):
        return "a CR inside an unquoted field: quote the field, or end lines with LF or CRLF"
    if message.startswith("field larger than field limit"):
        return f"a field longer than {csv.field_size_limit()} characters (an unclosed quote?)"
    return message


def _shortened(header, limit=200):
    """`repr(header)`, cut to about `limit` characters: a header can be a whole file's first line."""
    text = repr(header)
    return text if len(text) <= limit else text[:limit] + " ...]"
