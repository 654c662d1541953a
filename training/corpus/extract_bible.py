"""Build the default English->Spanish corpus from two public-domain Bibles.

English: World English Bible, SWORD module engWEB2015eb (Debian package sword-text-web).
Spanish: Reina-Valera 1909, SWORD module spaRV1909eb (Debian package sword-text-sparv).
Both are read with pysword (run with pysword==0.2.8) and paired verse by verse.

    python -m kerasformer.training.corpus.extract_bible [--sword-path /usr/share/sword] [--out DIR] [--check]

The WEB uses NRSVA versification and the RV1909 KJV versification, so the same
book/chapter/verse key does not always name the same verse; and the RV1909 module keeps the
Hebrew verse division in some chapters while declaring KJV. We keep a chapter only when both
modules give it the same number of verses and the verse lengths line up, then drop verses that
are empty on either side or far apart in length (see `pair_verses`).
The corpus is split by whole books so that no chapter leaks between train and evaluation.
Output: train/validation/test.tsv.gz, one `english<TAB>spanish` pair a line, byte-for-byte
reproducible (gzip with mtime 0, no file name, fixed level).
"""

import argparse
import functools
import gzip
import html
import math
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path

from pysword.modules import SwordModules

ENGLISH_MODULE = "engWEB2015eb"
SPANISH_MODULE = "spaRV1909eb"
DEFAULT_OUT = Path(__file__).resolve().parent / "en-es"
SPLITS = ("train", "validation", "test")

# Small whole books from both testaments, about 600-750 pairs each; every other book is train.
# Names are pysword's.
VALIDATION_BOOKS = ("Ruth", "Jonah", "Micah", "Habakkuk", "Philippians", "James", "I John", "Jude")
TEST_BOOKS = ("Lamentations", "Joel", "Nahum", "Zephaniah", "Haggai",
              "Colossians", "I Thessalonians", "Titus", "Philemon", "I Peter")

# A verse and its translation rarely differ in length by more than this factor (98% of pairs
# lie within 0.68-1.37); chapters whose boundaries are shifted average far above this misfit
# (0.29-0.53 against at most 0.21 for the others).
MAX_LENGTH_RATIO = 2.0
MAX_MEAN_MISFIT = 0.25

GZIP_LEVEL = 9

# Where a tag or a footnote is removed we leave this mark, and decide afterwards whether it
# separated two words. Neither module is consistent: the WEB puts footnotes between words
# ("God<note>...</note>created") and the RV1909 drops the spaces around the words its
# translators supplied ("desolado<transChange>nos pedían</transChange>alegría").
MARK = "\x00"
NOTE = re.compile(r"<note\b.*?</note>", re.S)
# Song of Songs speaker labels ("Beloved") are headings, not verse text.
SPEAKER = re.compile(r"<speaker\b.*?</speaker>", re.S)
# A supplied object pronoun after a verb is enclitic and joins it ("sáca" + "lo" = "sácalo").
# RV1909 verbs that take one carry an accent, end in -r, -d or -z (infinitive, imperative), or
# are "di" / "da"; a few nouns match too ("Jehová" + "los"), a small price.
SUPPLIED_PRONOUN = re.compile(r"\b(\w+)(?:</w>)?<transChange[^>]*>"
                              r"(lo|la|los|las|le|les|me|te|se|nos|os)</transChange>")
VERB = re.compile(r"\w*[áéíóú]\w*|\w*[rdz]|di|da")
# Tags wrapping words in running text; canonical psalm titles are kept, as the RV1909 has them
# as plain text in verse 1.
INLINE_TAG = re.compile(r"</?(?:w|q|transChange|name|title)\b[^>]*>")
# Every other tag marks a line, paragraph or list boundary: it separates words.
BLOCK_TAG = re.compile(r"<[^>]*>")
# Marks and the spaces around them form one gap. Between the end of a word (or sentence) and
# the start of the next it is a space; elsewhere ("God" + gap + ",") it is nothing, even where
# the source had spaces around a footnote ("coins <note>...</note> ?").
GAP = f"[\\s{MARK}]*{MARK}[\\s{MARK}]*"
WORD_GAP = re.compile(r"(?<=[\w.,;:!?’”)\]])" + GAP + r"(?=[\w“‘(\[¿¡])")
NO_GAP = re.compile(GAP)
# The RV1909 prints the first word or two of each chapter in capitals, as a drop cap ("EN el
# principio", "Y ACONTECIÓ que", "LA SEGUNDA suerte", after a psalm's title "¡OH Jehová").
# In Psalm 119 it is the word after the heading letter ("ALEPH. BIENAVENTURADOS").
CAPITALS = "A-ZÁÉÍÓÚÑÂÊÎÔÛÜ"
DROP_CAP = re.compile(rf"\b[{CAPITALS}]{{2,}}(?: [{CAPITALS}]+)*\b(?!\. [{CAPITALS}]{{2}})")


def join_enclitic(match):
    """Replacement for SUPPLIED_PRONOUN: the verb and its pronoun as one word."""
    host, pronoun = match.groups()
    return host + pronoun if VERB.fullmatch(host) else match[0]


def osis_to_text(osis):
    """Plain verse text from one verse of OSIS markup: no notes, tags, entities or line breaks."""
    # What follows the chapter's end marker is not this verse: the WEB appends its whole
    # glossary to Revelation 22:21.
    text = osis.split("<chapter eID", 1)[0]
    text = NOTE.sub(MARK, text)
    text = SPEAKER.sub(" ", text)
    text = SUPPLIED_PRONOUN.sub(join_enclitic, text)
    text = INLINE_TAG.sub(MARK, text)
    text = BLOCK_TAG.sub(" ", text)
    text = NO_GAP.sub("", WORD_GAP.sub(" ", html.unescape(text)))
    # str.split() with no argument splits on every Unicode whitespace, TAB and newline included.
    return " ".join(text.split())


def undo_drop_cap(first_verse, lowercase_words):
    """A chapter's first verse with its drop-cap words written as the text writes them elsewhere.

    A word the module also writes in lower case is a common word ("Y ACONTECIÓ" becomes
    "Y aconteció"), any other a name ("Y ABRAHAM" becomes "Y Abraham"); a sentence's first
    word keeps its capital.
    """
    def recase(match):
        words = [word.lower() if word.lower() in lowercase_words else word.capitalize()
                 for word in match[0].split(" ")]
        prefix = first_verse[:match.start()].rstrip(" ¡¿(")
        if not prefix or prefix[-1] in ".!?:":
            words[0] = words[0].capitalize()
        return " ".join(words)

    return DROP_CAP.sub(recase, first_verse, count=1)


def read_chapters(bible):
    """{(book, chapter): [verse text, ...]} for every book of a pysword bible, in order."""
    # pysword decompresses a whole book's block again for every verse; caching the blocks
    # turns minutes into seconds (private method of the pinned pysword 0.2.8).
    bible._decompressed_text = functools.lru_cache(maxsize=None)(bible._decompressed_text)
    chapters = {}
    for books in bible.get_structure().get_books().values():
        for book in books:
            verses = [osis_to_text(v) for v in bible.get_iter(books=book.name, clean=False)]
            start = 0
            for number, length in enumerate(book.chapter_lengths, 1):
                chapters[(book.name, number)] = verses[start:start + length]
                start += length
            if start != len(verses):
                raise ValueError(f"{book.name}: {len(verses)} verses read, {start} expected")
    return chapters


def verse_count(verses):
    """Number of verses up to the last non-empty one.

    Where a module's own verse division has fewer verses than its declared versification, it
    leaves the last slots of the chapter empty (the RV1909 follows the Hebrew division in
    places: its Numbers 12 has 15 verses, the 16th opens its chapter 13).
    """
    return max((number for number, text in enumerate(verses, 1) if text), default=0)


def length_misfit(english, spanish):
    """|log(len(spanish) / len(english))|: near 0 for a verse and its translation."""
    return abs(math.log(len(spanish) / len(english)))


def pair_verses(english, spanish):
    """Aligned verse pairs per book, and report lines saying what was dropped and why.

    Only books present in both modules are used (the 66 of the Spanish, KJV-versified one).
    A chapter is kept when both modules count the same verses in it and its verse lengths
    line up; in a kept chapter, verses empty on one side or far apart in length are dropped.
    Returns ({book: [(english, spanish), ...]}, report lines).
    """
    pairs, miscounted, shifted, lopsided = {}, [], [], []
    empty = {"English": 0, "Spanish": 0}
    for (book, chapter), spanish_verses in spanish.items():
        if (book, chapter) not in english:
            raise KeyError(f"{book} {chapter} is in {SPANISH_MODULE} but not in {ENGLISH_MODULE}")
        english_verses = english[(book, chapter)]
        count, spanish_count = verse_count(english_verses), verse_count(spanish_verses)
        if count != spanish_count:
            miscounted.append(f"{book} {chapter} ({count} / {spanish_count} verses)")
            continue
        english_verses, spanish_verses = english_verses[:count], spanish_verses[:count]
        numbered = [(number, en, es) for number, (en, es)
                    in enumerate(zip(english_verses, spanish_verses, strict=True), 1) if en and es]
        misfits = [length_misfit(en, es) for _, en, es in numbered]
        out_of_line = [misfit > math.log(MAX_LENGTH_RATIO) for misfit in misfits]
        # Same count, different boundaries: one verse moved or split shifts its neighbours,
        # which shows as several pairs out of line or as lengths that fit badly on average.
        if sum(out_of_line) >= 2 or sum(misfits) / len(misfits) > MAX_MEAN_MISFIT:
            shifted.append(f"{book} {chapter} ({len(numbered)} pairs)")
            continue
        for en, es in zip(english_verses, spanish_verses, strict=True):
            empty["English"] += not en and bool(es)
            empty["Spanish"] += not es and bool(en)
        # A lone pair out of line holds text one side lacks (the RV1909's closing notes on the
        # epistles, a textual variant); the rest of the chapter is fine.
        for (number, en, es), out in zip(numbered, out_of_line, strict=True):
            if out:
                lopsided.append(f"{book} {chapter}:{number}")
            else:
                pairs.setdefault(book, []).append((en, es))

    kept = sum(map(len, pairs.values()))
    return pairs, [
        f"Kept {kept} verse pairs from {len(pairs)} books. Dropped:",
        f"- {len(miscounted)} chapters whose verse counts differ ({ENGLISH_MODULE} / "
        f"{SPANISH_MODULE}): " + ", ".join(miscounted),
        f"- {len(shifted)} chapters with equal counts whose verse lengths do not line up "
        f"(verse boundaries differ): " + ", ".join(shifted),
        f"- verses empty on one side in the other chapters: {empty['English']} English "
        f"(verses the WEB leaves out), {empty['Spanish']} Spanish",
        f"- {len(lopsided)} verse pairs whose lengths differ more than {MAX_LENGTH_RATIO:g}x: "
        + ", ".join(lopsided),
    ]


def split_of(book):
    """The split a whole book belongs to."""
    return "validation" if book in VALIDATION_BOOKS else "test" if book in TEST_BOOKS else "train"


def split_books(pairs):
    """{split: [(english, spanish), ...]} in canonical order, and one report line per split."""
    for book in VALIDATION_BOOKS + TEST_BOOKS:
        if book not in pairs:
            raise KeyError(f"split book {book!r} has no verse pairs; known books: {list(pairs)}")
    splits, report = {split: [] for split in SPLITS}, []
    for book, book_pairs in pairs.items():
        splits[split_of(book)].extend(book_pairs)
    for split in SPLITS:
        books = [book for book in pairs if split_of(book) == split]
        detail = f"{len(books)} books" if split == "train" else \
            ", ".join(f"{book} {len(pairs[book])}" for book in books)
        report.append(f"{split}: {len(splits[split])} pairs ({detail})")
    return splits, report


def write_tsv_gz(path, pairs):
    """Write pairs as gzip'd TSV, reproducibly and atomically (temp file, then os.replace)."""
    data = "".join(f"{en}\t{es}\n" for en, es in pairs).encode("utf-8")
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, delete=False) as f:
        try:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                               compresslevel=GZIP_LEVEL) as gz:
                gz.write(data)
        except BaseException:
            os.unlink(f.name)
            raise
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600
    os.replace(f.name, path)


def build(sword_path, out):
    """Read both modules, pair, split and write the three files into `out`."""
    modules = SwordModules(sword_path)
    modules.parse_modules()
    english = read_chapters(modules.get_bible_from_module(ENGLISH_MODULE))
    spanish = read_chapters(modules.get_bible_from_module(SPANISH_MODULE))
    lowercase_words = {word for verses in spanish.values() for verse in verses
                       for word in verse.split() if word.isalpha() and word.islower()}
    for verses in spanish.values():
        verses[0] = undo_drop_cap(verses[0], lowercase_words)
    pairs, report = pair_verses(english, spanish)
    splits, split_report = split_books(pairs)
    out.mkdir(parents=True, exist_ok=True)
    for split, split_pairs in splits.items():
        write_tsv_gz(out / f"{split}.tsv.gz", split_pairs)
    print("\n".join(report + split_report), file=sys.stderr)


def describe_difference(committed, regenerated):
    """Why two versions of a file differ: text, or only compression (another zlib build)."""
    if not committed.exists():
        return "missing"
    try:
        same_text = gzip.decompress(committed.read_bytes()) == \
            gzip.decompress(regenerated.read_bytes())
    except (OSError, EOFError, zlib.error):
        return "not a readable gzip file"
    return "same text, different compressed bytes" if same_text else "different text"


def check(sword_path, out):
    """Regenerate into a temporary folder; return 0 if every file equals the one in `out`."""
    differences = 0
    with tempfile.TemporaryDirectory() as fresh:
        build(sword_path, Path(fresh))
        for split in SPLITS:
            committed, regenerated = out / f"{split}.tsv.gz", Path(fresh) / f"{split}.tsv.gz"
            if not committed.exists() or committed.read_bytes() != regenerated.read_bytes():
                print(f"{committed}: {describe_difference(committed, regenerated)}",
                      file=sys.stderr)
                differences += 1
    print("check: " + (f"{differences} file(s) differ" if differences else "identical"),
          file=sys.stderr)
    return 1 if differences else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sword-path", default="/usr/share/sword",
                        help="SWORD data folder holding mods.d/ and modules/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and compare with --out")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.sword_path, args.out)
    build(args.sword_path, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
