"""One reading of a species name a person typed: exact spelling first, any case only when unique.

Serve's ``/v1/feedback`` and explain target, ``ingest --feedback`` and ``feedback report`` all
accept a class's full name (``001.Black_footed_Albatross``) or the part after the number
(``Black_footed_Albatross``), in any case. An own-photos dataset may have classes whose names
differ only by case (``Robin`` and ``robin``): folding case there picked whichever came last (or
first), silently the wrong class. Here an exact spelling always names its own class, and a
case-folded one is accepted only when it names exactly one class; otherwise it is ambiguous.

Spellings are compared after Unicode NFC normalisation: a folder name from macOS (NFD: ``e``
then U+0301) and the same name typed elsewhere (NFC: U+00E9) look identical and name the same
class; the answer is always the model's own spelling (``names[label]``). Two classes that differ
only in normalisation form are matched exactly, as case is.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass


def _tail(name: str) -> str:
    return name.split(".", 1)[-1]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _fold(text: str) -> str:
    return _nfc(_nfc(text).lower())


@dataclass(frozen=True)
class ClassIndex:
    """Spellings -> class labels (``index.get(answer)``; ``answer in index``)."""

    names: tuple[str, ...]
    exact: dict[str, int]  # the spellings as the classes have them
    normal: dict[str, int]  # their NFC forms, where one names a single class
    folded: dict[str, int]  # NFC, any case, where that names a single class
    ambiguous: dict[str, tuple[int, ...]]  # a folded spelling -> the classes it could mean
    ambiguous_normal: dict[str, tuple[int, ...]]  # an NFC spelling -> the classes it could mean

    @classmethod
    def of(cls, class_names: list[str] | tuple[str, ...]) -> ClassIndex:
        """Built once per distinct list (a feedback request reads it three times, for 200
        classes); the index is never changed after it is built, so sharing it is safe."""
        return _index_of(tuple(class_names))

    @classmethod
    def _build(cls, class_names: tuple[str, ...]) -> ClassIndex:
        tails = Counter(_tail(name) for name in class_names)
        exact = {name: label for label, name in enumerate(class_names)}
        for label, name in enumerate(class_names):  # a short name when no other class has it
            if tails[_tail(name)] == 1:
                exact.setdefault(_tail(name), label)
        spellings: dict[str, set[int]] = defaultdict(set)
        for spelling, label in exact.items():
            spellings[_nfc(spelling)].add(label)
        meanings: dict[str, set[int]] = defaultdict(set)
        for label, name in enumerate(class_names):
            meanings[_fold(name)].add(label)
            meanings[_fold(_tail(name))].add(label)
        return cls(
            tuple(class_names),
            exact,
            {k: next(iter(v)) for k, v in spellings.items() if len(v) == 1},
            {k: next(iter(v)) for k, v in meanings.items() if len(v) == 1},
            {k: tuple(sorted(v)) for k, v in meanings.items() if len(v) > 1},
            {k: tuple(sorted(v)) for k, v in spellings.items() if len(v) > 1},
        )

    def get(self, answer: str) -> int | None:
        """The class ``answer`` names (None: none, or several: see ``could_mean``)."""
        text = answer.strip()
        if text in self.exact:
            return self.exact[text]
        normal = _nfc(text)
        if normal in self.normal:
            return self.normal[normal]
        if normal in self.ambiguous_normal:  # several classes spell it so, in other forms
            return None
        return self.folded.get(_fold(normal))

    def could_mean(self, answer: str) -> list[str]:
        """The classes an ambiguous ``answer`` could name (empty: it is not ambiguous)."""
        text = answer.strip()
        normal = _nfc(text)
        if text in self.exact or normal in self.normal:
            return []
        labels = self.ambiguous_normal.get(normal) or self.ambiguous.get(_fold(normal), ())
        return [self.names[i] for i in labels]

    def __getitem__(self, answer: str) -> int:
        label = self.get(answer)
        if label is None:
            raise KeyError(answer)
        return label

    def __contains__(self, answer: object) -> bool:
        return isinstance(answer, str) and self.get(answer) is not None


@functools.lru_cache(maxsize=16)  # the served models' lists, a dataset's: a handful
def _index_of(class_names: tuple[str, ...]) -> ClassIndex:
    return ClassIndex._build(class_names)
