"""Expertise tags: the one normal form of a tag, and the tags derived from an agent's name and description.

Registry, matching and agent files all compare tags in this form, so the rules live apart from the file
format (coord.agentfiles) and import nothing beyond the standard library.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# A cap keeps a rambling description from flooding the registry's tag table.
MAX_DERIVED_TAGS = 40


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _wordset("""
a about above across after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either etc e.g i.e few for from
further had has have having he her here hers him his how i if in into is it its itself just like may me
might more most must my no nor not now of off on once one only or other our ours out over own per same
she should so some such than that the their them then there these they this those through to too two
under until up upon very via vs was we were what when where which while who whom why will with within
without would you your yours
""")
# Words that describe every agent and so tell the registry nothing about this one.
_GENERIC = _wordset("""
agent agents subagent subagents assistant assistants helper expert experts expertise specialist
specialists specializing specialized specialize specializes specialising specialised focused focusing
focus use uses used using usage proactively proactive elite senior master masters mastering mastery
comprehensive advanced modern rigorous intelligent professional powerful best deep various complex
need needs needed help helps handle handles handling include includes including ensure ensures provide
provides task tasks work works working skilled experienced knowledge invoke invoked call called
immediately whenever always automatically should must builds creates implements generates based want
wants thorough thoroughly recently significant appropriate specific relevant existing new
""")
# Unicode dashes (hyphen, figure/en/em dash, horizontal bar, minus, two- and three-em dashes) after NFKC.
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2e3a\u2e3b"
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
# Clause breaks, which no tag or pair spans: punctuation, an em dash or bar ("management\u2014especially"),
# a spaced hyphen or en dash ("X - Y", "X \u2013 Y"), a double hyphen between words ("X--Y", not
# "bash --posix"), an ellipsis, a sentence-ending dot.
# An unspaced hyphen or en dash joins a compound ("client\u2013server") and is left to normalize_tag.
_SEGMENT_RE = re.compile(r"[,;:!?()\[\]{}\"'`<>|*\u2014\u2015\u2e3a\u2e3b\u2026]+|\.{2,}|\.(?:\s|$)"
                         r"|(?:^|\s)[-\u2013]+(?=\s|$)|(?<=\w)--+(?=\w)")
_HYPHENS_RE = re.compile(rf"[\s_/\\{_DASHES}-]+")
_EXAMPLES_RE = re.compile(r"<example|\bexamples?\s*:", re.IGNORECASE)


@functools.lru_cache(maxsize=1 << 16)  # pure, and called once per word of every description
def normalize_tag(s: str) -> str:
    """Canonical form of an expertise tag; "" when nothing is left.

    NFKC, lowercase, whitespace/underscores/slashes and any dash (en, em, minus) -> hyphens, runs of hyphens
    collapsed. Within each hyphen-separated token only letters, digits and `+ # .` survive; dots are stripped
    at either end and `+`/`#` at the start, so "C++" -> "c++", "C#" -> "c#", "Node.js." -> "node.js",
    "CI/CD" -> "ci-cd", "Machine_Learning" -> "machine-learning", ".NET" -> "net". The same rules apply to
    queries.
    """
    text = unicodedata.normalize("NFKC", s).lower().strip()
    text = _HYPHENS_RE.sub("-", text)
    tokens = []
    for raw in text.split("-"):
        token = "".join(ch for ch in raw if ch.isalnum() or ch in "+#.").strip(".").lstrip("+#")
        if token:
            tokens.append(token)
    return "-".join(tokens)


def _unique(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(t for t in tags if t))


def _salient(tag: str) -> bool:
    return (len(tag) > 1 or tag in {"c", "r"}) and tag not in _STOPWORDS and tag not in _GENERIC \
        and not tag.replace(".", "").isdigit()


def derive_expertise(name: str, description: str, declared: list[str] | None) -> list[str]:
    """Expertise tags for an agent, normalized with `normalize_tag`.

    A non-empty declared list wins. Otherwise: the name's salient parts, then the salient words of the
    description, then pairs of adjacent salient words ("visual-regression"), each in order of appearance,
    capped at MAX_DERIVED_TAGS. The description is read up to its first example block; words of the
    "use this agent when you need..." kind are in the stopword and generic lists.
    """
    if declared:
        tags = _unique([normalize_tag(t) for t in declared])
        if tags:
            return tags
    words = [t for t in (normalize_tag(p) for p in name.split("-")) if _salient(t)]
    text = _EXAMPLES_RE.split(description, maxsplit=1)[0].replace("\\n", " ")
    pairs = []
    for sentence in _SENTENCE_RE.split(text):
        for segment in _SEGMENT_RE.split(sentence):
            run: list[str] = []
            for word in segment.replace("/", " ").split():  # "CI/CD" -> ci, cd and the pair ci-cd
                tag = normalize_tag(word)
                if _salient(tag):
                    words.append(tag)
                    if run:
                        pairs.append(f"{run[-1]}-{tag}")
                    run.append(tag)
                else:
                    run = []
    return _unique(words + pairs)[:MAX_DERIVED_TAGS]
