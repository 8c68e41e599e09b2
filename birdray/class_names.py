"""One reading of a species name a person typed: exact spelling first, any case only when unique.

Serve's ``/v1/feedback`` and explain target, ``ingest --feedback`` and ``feedback report`` all
accept a class's full name (``001.Black_footed_Albatross``) or the part after the number
(``Black_footed_Albatross``), in any case. An own-photos dataset may have classes whose names
differ only by case (``Robin`` and ``robin``): folding case there picked whichever came last (or
first), silently the wrong class. Here an exact spelling always names its own class, and a
case-folded one is accepted only when it names exactly one class; otherwise it is ambiguous.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass


def _tail(name: str) -> str:
    return name.split(".", 1)[-1]


@dataclass(frozen=True)
class ClassIndex:
    """Spellings -> class labels (``index.get(answer)``; ``answer in index``)."""

    names: tuple[str, ...]
    exact: dict[str, int]
    folded: dict[str, int]
    ambiguous: dict[str, tuple[int, ...]]  # a folded spelling -> the classes it could mean

    @classmethod
    def of(cls, class_names: list[str]) -> ClassIndex:
        tails = Counter(_tail(name) for name in class_names)
        exact = {name: label for label, name in enumerate(class_names)}
        for label, name in enumerate(class_names):  # a short name when no other class has it
            if tails[_tail(name)] == 1:
                exact.setdefault(_tail(name), label)
        meanings: dict[str, set[int]] = defaultdict(set)
        for label, name in enumerate(class_names):
            meanings[name.lower()].add(label)
            meanings[_tail(name).lower()].add(label)
        folded = {k: next(iter(v)) for k, v in meanings.items() if len(v) == 1}
        ambiguous = {k: tuple(sorted(v)) for k, v in meanings.items() if len(v) > 1}
        return cls(tuple(class_names), exact, folded, ambiguous)

    def get(self, answer: str) -> int | None:
        """The class ``answer`` names (None: none, or several: see ``could_mean``)."""
        text = answer.strip()
        if text in self.exact:
            return self.exact[text]
        return self.folded.get(text.lower())

    def could_mean(self, answer: str) -> list[str]:
        """The classes an ambiguous ``answer`` could name (empty: it is not ambiguous)."""
        text = answer.strip()
        if text in self.exact:
            return []
        return [self.names[i] for i in self.ambiguous.get(text.lower(), ())]

    def __getitem__(self, answer: str) -> int:
        label = self.get(answer)
        if label is None:
            raise KeyError(answer)
        return label

    def __contains__(self, answer: object) -> bool:
        return isinstance(answer, str) and self.get(answer) is not None
