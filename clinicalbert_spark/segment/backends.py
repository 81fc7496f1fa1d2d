"""Segmenter backends behind one interface.

Every backend uses the rule-based section splitter (:mod:`.sections`) and differs only in where
it puts sentence boundaries *inside* sections; section starts, and the end of a header that is
alone on its line, are always boundaries. Sentences are then cut from the text with
:func:`.sentences.spans`, so all backends satisfy the same offset invariants (exact, trimmed,
ordered, non-overlapping, covering every non-space character) whatever their tokenizer does.

=====================  ====================================================================
``rules`` (default)    built-in regex rules (:mod:`.sentences`), no dependencies, fast
``scispacy``           scispaCy ``en_core_sci_md`` (or ``_sm``) dependency-parser sentences,
                       as the Bio_ClinicalBERT authors used; optional extra
``pysbd``              pySBD rule-based sentence boundaries (comparison only: slow)
``spacy_sentencizer``  spaCy ``blank("en")`` + ``sentencizer`` (punctuation rule; comparison)
=====================  ====================================================================

Segmenters are cheap to construct and picklable (models load lazily on first use and are not
pickled), so Spark can build one per Python worker. Nothing here logs or raises note text.
"""
from __future__ import annotations

import importlib.util
import re
from typing import Callable

from .sections import split_sections, split_sections_tree
from .sentences import sentence_cuts, spans
from .types import Section, Sentence, make_sentence

RULES_VERSION = "2.0.1"
SCISPACY_MODELS = ("en_core_sci_md", "en_core_sci_sm")
SCISPACY_INSTALL_HINT = (
    "the 'scispacy' segmenter needs a scispaCy model: pip install 'clinicalbert-spark[scispacy]' "
    "and then install the model from the scispaCy releases, e.g. pip install "
    "https://s3-us-west-2.amazonaws.com/ai2-s2-scispacy/releases/v0.5.4/en_core_sci_md-0.5.4.tar.gz "
    "(do NOT pip install 'en-core-sci-md' from PyPI: that name is a dependency-confusion stub)"
)
_MAX_CHUNK = 100_000  # characters per spaCy/pySBD call (spaCy's max_length guards memory)

_REST_OF_LINE_RE = re.compile(r"[ \t]*(?=[\r\n]|\Z)")
_NONSPACE_RE = re.compile(r"\S")


class BackendUnavailable(RuntimeError):
    """A segmenter backend's optional dependency is not installed."""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Segmenter:
    """Base class: sections by rules, sentences by :meth:`_sentence_cuts` of the subclass."""

    name = "base"
    version = RULES_VERSION

    def sections(self, text: str | None) -> list[Section]:
        """Top-level sections of ``text`` in order (``[]`` for None/empty/whitespace-only text)."""
        if not text or text.isspace():
            return []
        return split_sections(text)

    def subsections(self, text: str | None) -> list[Section]:
        """Sub-sections of ``text`` in order (inside container sections; ``parent`` is the
        index of the enclosing top-level section)."""
        if not text or text.isspace():
            return []
        return split_sections_tree(text)[1]

    def segment(self, text: str | None) -> list[Sentence]:
        """Sentences of ``text`` in order; ``sentence_index`` runs 0..n-1 over the whole note."""
        if not text or text.isspace():
            return []
        sections, subs = split_sections_tree(text)
        cuts = self._sentence_cuts(text, sections)
        for sec in (*sections, *subs):
            cuts.append(sec.start)
            if sec.header_end is not None and sec.header_end < sec.end:
                # A header alone on its line is a sentence of its own.
                if _REST_OF_LINE_RE.match(text, sec.header_end):
                    nm = _NONSPACE_RE.search(text, sec.header_end, sec.end)
                    if nm is not None:
                        cuts.append(nm.start())
        for sub in subs:
            # the text after a sub-section (back at the container's level) starts a sentence
            nm = _NONSPACE_RE.search(text, sub.end, sections[sub.parent].end)
            if nm is not None:
                cuts.append(nm.start())
        out: list[Sentence] = []
        si = 0
        n_sec = len(sections)
        ui = 0
        n_sub = len(subs)
        for a, b in spans(text, cuts):
            while si + 1 < n_sec and sections[si + 1].start <= a:
                si += 1
            sec = sections[si]
            while ui < n_sub and subs[ui].end <= a:
                ui += 1
            if ui < n_sub and subs[ui].start <= a:
                sub = subs[ui]
                out.append(make_sentence(sec.index, sec.title, sec.category, len(out), a, b,
                                         sub.title, sub.category, sub.index))
            else:
                out.append(make_sentence(sec.index, sec.title, sec.category, len(out), a, b))
        return out

    def _sentence_cuts(self, text: str, sections: list[Section]) -> list[int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


class RulesSegmenter(Segmenter):
    """Built-in rules (:mod:`.sections` + :mod:`.sentences`)."""

    name = "rules"
    version = RULES_VERSION

    def _sentence_cuts(self, text: str, sections: list[Section]) -> list[int]:
        return sentence_cuts(text)


def _chunks(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` split at line breaks into pieces of at most ~``_MAX_CHUNK`` characters."""
    out = []
    while end - start > _MAX_CHUNK:
        k = text.rfind("\n", start, start + _MAX_CHUNK)
        if k <= start:
            k = start + _MAX_CHUNK
        out.append((start, k))
        start = k
    out.append((start, end))
    return out


class _SpacyLike(Segmenter):
    """Sentence starts from a spaCy pipeline run on each section (chunked)."""

    def __init__(self) -> None:
        self._nlp = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_nlp"] = None  # reload lazily in the worker
        return state

    def _load(self):
        raise NotImplementedError

    def _sentence_cuts(self, text: str, sections: list[Section]) -> list[int]:
        if self._nlp is None:
            self._nlp = self._load()
        pieces = [c for s in sections for c in _chunks(text, s.start, s.end)]
        cuts: list[int] = []
        for (a, _b), doc in zip(pieces, self._nlp.pipe(text[a:b] for a, b in pieces)):
            for sent in doc.sents:
                cuts.append(a + sent.start_char)
        # spaCy may start a sentence on whitespace: move each cut to the next non-space char.
        fixed = []
        for c in cuts:
            nm = _NONSPACE_RE.search(text, c)
            if nm is not None:
                fixed.append(nm.start())
        return fixed


class SpacySentencizerSegmenter(_SpacyLike):
    """spaCy ``blank("en")`` tokenizer + rule-based ``sentencizer`` (punctuation only)."""

    name = "spacy_sentencizer"

    def __init__(self) -> None:
        super().__init__()
        if not _has_module("spacy"):
            raise BackendUnavailable("the 'spacy_sentencizer' segmenter needs spaCy: pip install spacy")
        from importlib.metadata import version

        self.version = f"spacy-{version('spacy')}"

    def _load(self):
        import spacy

        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        nlp.max_length = 2 * _MAX_CHUNK
        return nlp


class ScispacySegmenter(_SpacyLike):
    """scispaCy model sentences (dependency parse) within rule-based sections."""

    name = "scispacy"

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        candidates = (model,) if model else SCISPACY_MODELS
        found = [m for m in candidates if _has_module("spacy") and _has_module(m)]
        if not found:
            raise BackendUnavailable(SCISPACY_INSTALL_HINT)
        self.model = found[0]
        from importlib.metadata import PackageNotFoundError, version

        try:
            mv = version(self.model)
        except PackageNotFoundError:
            mv = "unknown"
        self.version = f"{self.model}-{mv}"

    def _load(self):
        import spacy

        # NER and lemmas are not needed for sentence boundaries (the parser sets them).
        nlp = spacy.load(self.model, exclude=["ner", "lemmatizer"])
        nlp.max_length = 2 * _MAX_CHUNK
        return nlp


class PysbdSegmenter(Segmenter):
    """pySBD sentences within rule-based sections (offsets re-aligned to the original text)."""

    name = "pysbd"

    def __init__(self) -> None:
        if not _has_module("pysbd"):
            raise BackendUnavailable("the 'pysbd' segmenter needs pySBD: pip install pysbd")
        from importlib.metadata import version

        self.version = f"pysbd-{version('pysbd')}"
        self._seg = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_seg"] = None
        return state

    def _sentence_cuts(self, text: str, sections: list[Section]) -> list[int]:
        if self._seg is None:
            import pysbd

            # char_span=True re-finds sentences with str.find and is unreliable; align ourselves.
            self._seg = pysbd.Segmenter(language="en", clean=False, char_span=False)
        cuts: list[int] = []
        for sec in sections:
            for a, b in _chunks(text, sec.start, sec.end):
                ptr = a
                for s in self._seg.segment(text[a:b]):
                    s = s.strip()
                    if not s:
                        continue
                    k = text.find(s, ptr, b)
                    if k < 0:  # pySBD changed the text: no cut for this one
                        continue
                    cuts.append(k)
                    ptr = k + len(s)
        return cuts


_BACKENDS: dict[str, Callable[..., Segmenter]] = {
    "rules": RulesSegmenter,
    "scispacy": ScispacySegmenter,
    "pysbd": PysbdSegmenter,
    "spacy_sentencizer": SpacySentencizerSegmenter,
}


def available_backends() -> list[str]:
    """Names of the backends whose dependencies are installed (``rules`` always)."""
    out = ["rules"]
    if _has_module("spacy") and any(_has_module(m) for m in SCISPACY_MODELS):
        out.append("scispacy")
    if _has_module("pysbd"):
        out.append("pysbd")
    if _has_module("spacy"):
        out.append("spacy_sentencizer")
    return out


def get_segmenter(name: str = "rules", **kwargs) -> Segmenter:
    """A segmenter by backend name; raises :class:`BackendUnavailable` (with install hints) when
    its optional dependency is missing and ``ValueError`` for an unknown name."""
    try:
        factory = _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown segmenter backend {name!r}; choose one of {sorted(_BACKENDS)}"
        ) from None
    return factory(**kwargs)


_CACHE: dict[str, Segmenter] = {}


def segment_note(text: str | None, backend: str = "rules") -> list[Sentence]:
    """Sentences of one note with a cached segmenter of ``backend``."""
    seg = _CACHE.get(backend)
    if seg is None:
        seg = _CACHE[backend] = get_segmenter(backend)
    return seg.segment(text)
