"""The vocabulary of the generated dataset: CUB's 15 parts and 312 attributes, and species.

A synthetic species is a combination of discrete traits (crown colour, bill shape, ...), each
named after the CUB attribute group it sets, so the generated ``attributes.txt`` and per-class
attribute tables mean what they mean in the real dataset. About half the species come in
sibling pairs that differ in exactly one trait, and therefore in one part of the bird: the
fine-grained case an explanation method should point at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PART_NAMES = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
    "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat",
)  # fmt: skip
PART_ID = {name: i + 1 for i, name in enumerate(PART_NAMES)}

COLORS: dict[str, tuple[int, int, int]] = {
    "blue": (45, 95, 210),
    "brown": (115, 72, 38),
    "iridescent": (25, 150, 150),
    "purple": (115, 45, 150),
    "rufous": (185, 80, 35),
    "grey": (135, 135, 140),
    "yellow": (245, 215, 45),
    "olive": (128, 128, 38),
    "green": (45, 150, 65),
    "pink": (240, 150, 185),
    "orange": (250, 145, 20),
    "black": (22, 22, 24),
    "white": (242, 242, 236),
    "red": (205, 28, 35),
    "buff": (222, 190, 140),
}
COLOR_NAMES = tuple(COLORS)
EYE_COLORS = tuple(c for c in COLOR_NAMES if c != "iridescent")
PATTERNS = ("solid", "spotted", "striped", "multi-colored")
SIZES = ("large_(16_-_32_in)", "small_(5_-_9_in)", "very_large_(32_-_72_in)",
         "medium_(9_-_16_in)", "very_small_(3_-_5_in)")  # fmt: skip

# CUB's attribute groups in attributes.txt order; together exactly 312 attributes.
ATTRIBUTE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bill_shape", ("curved_(up_or_down)", "dagger", "hooked", "needle", "hooked_seabird",
                    "spatulate", "all-purpose", "cone", "specialized")),
    ("wing_color", COLOR_NAMES),
    ("upperparts_color", COLOR_NAMES),
    ("underparts_color", COLOR_NAMES),
    ("breast_pattern", PATTERNS),
    ("back_color", COLOR_NAMES),
    ("tail_shape", ("forked_tail", "rounded_tail", "notched_tail", "fan-shaped_tail",
                    "pointed_tail", "squared_tail")),
    ("upper_tail_color", COLOR_NAMES),
    ("head_pattern", ("spotted", "malar", "crested", "masked", "unique_pattern", "eyebrow",
                      "eyering", "plain", "eyeline", "striped", "capped")),
    ("breast_color", COLOR_NAMES),
    ("throat_color", COLOR_NAMES),
    ("eye_color", EYE_COLORS),
    ("bill_length", ("about_the_same_as_head", "longer_than_head", "shorter_than_head")),
    ("forehead_color", COLOR_NAMES),
    ("under_tail_color", COLOR_NAMES),
    ("nape_color", COLOR_NAMES),
    ("belly_color", COLOR_NAMES),
    ("wing_shape", ("rounded-wings", "pointed-wings", "broad-wings", "tapered-wings",
                    "long-wings")),
    ("size", SIZES),
    ("shape", ("upright-perching_water-like", "chicken-like-marsh", "long-legged-like",
               "duck-like", "owl-like", "gull-like", "hummingbird-like", "pigeon-like",
               "tree-clinging-like", "hawk-like", "sandpiper-like", "upland-ground-like",
               "swallow-like", "perching-like")),
    ("back_pattern", PATTERNS),
    ("tail_pattern", PATTERNS),
    ("belly_pattern", PATTERNS),
    ("primary_color", COLOR_NAMES),
    ("leg_color", COLOR_NAMES),
    ("bill_color", COLOR_NAMES),
    ("crown_color", COLOR_NAMES),
    ("wing_pattern", PATTERNS),
)  # fmt: skip
ATTRIBUTE_NAMES = tuple(f"has_{g}::{v}" for g, values in ATTRIBUTE_GROUPS for v in values)
ATTRIBUTE_ID = {name: i + 1 for i, name in enumerate(ATTRIBUTE_NAMES)}
_GROUP = dict(ATTRIBUTE_GROUPS)

_WINGS, _EYES, _LEGS = (
    ["left wing", "right wing"],
    ["left eye", "right eye"],
    ["left leg", "right leg"],
)
# Each trait, the values the drawing can show, and the CUB parts whose look it changes.
TRAITS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "shape": (("perching-like", "duck-like", "gull-like", "long-legged-like", "owl-like",
               "pigeon-like", "swallow-like", "sandpiper-like"),
              ["back", "belly", "breast", "tail", *_LEGS]),
    "size": (SIZES, []),
    "crown_color": (COLOR_NAMES, ["crown"]),
    "nape_color": (COLOR_NAMES, ["forehead", "nape"]),
    "back_color": (COLOR_NAMES, ["back"]),
    "wing_color": (COLOR_NAMES, _WINGS),
    "wing_pattern": (PATTERNS, _WINGS),
    "wing_shape": (_GROUP["wing_shape"], _WINGS),
    "throat_color": (COLOR_NAMES, ["throat"]),
    "breast_color": (COLOR_NAMES, ["breast"]),
    "breast_pattern": (PATTERNS, ["breast"]),
    "belly_color": (COLOR_NAMES, ["belly"]),
    "upper_tail_color": (COLOR_NAMES, ["tail"]),
    "tail_shape": (_GROUP["tail_shape"], ["tail"]),
    "tail_pattern": (PATTERNS, ["tail"]),
    "bill_shape": (_GROUP["bill_shape"], ["beak"]),
    "bill_length": (_GROUP["bill_length"], ["beak"]),
    "bill_color": (COLOR_NAMES, ["beak"]),
    "eye_color": (EYE_COLORS, _EYES),
    "leg_color": (COLOR_NAMES, _LEGS),
    "head_pattern": (("plain", "eyebrow", "eyering", "eyeline", "masked", "crested", "malar",
                      "capped"), ["crown", "forehead", *_EYES, "throat"]),
}  # fmt: skip
# Traits a sibling pair may differ in: one part each, and big enough to see at 224 px.
PAIR_TRAITS = ("crown_color", "breast_color", "breast_pattern", "throat_color", "belly_color",
               "back_color", "wing_color", "wing_pattern", "upper_tail_color", "tail_shape",
               "bill_shape", "bill_length", "bill_color")  # fmt: skip

_COLOR_WEIGHTS = dict(zip(COLOR_NAMES, (5, 9, 1, 1, 5, 8, 6, 4, 3, 1, 3, 9, 8, 3, 6), strict=True))
_NOUNS = {
    "perching-like": ("Warbler", "Sparrow", "Finch", "Vireo", "Tanager", "Bunting", "Wren"),
    "duck-like": ("Duck", "Teal", "Merganser"), "gull-like": ("Gull", "Tern"),
    "long-legged-like": ("Heron", "Egret"), "owl-like": ("Owl",), "pigeon-like": ("Dove",),
    "swallow-like": ("Swallow", "Swift", "Martin"), "sandpiper-like": ("Sandpiper", "Plover"),
}  # fmt: skip
_QUALIFIERS = ("Northern", "Southern", "Eastern", "Western", "Lesser", "Greater", "Little",
               "Common", "Mountain", "Coastal", "Desert", "Forest", "Island", "Marsh", "Meadow",
               "River", "Tropical", "Arctic", "Pacific", "Highland", "Dusky", "Pale")  # fmt: skip
_SHAPE_WORDS = {
    "forked_tail": "Fork", "rounded_tail": "Round", "notched_tail": "Notch",
    "fan-shaped_tail": "Fan", "pointed_tail": "Wedge", "squared_tail": "Square",
    "curved_(up_or_down)": "Curve", "dagger": "Dagger", "hooked": "Hook", "needle": "Needle",
    "hooked_seabird": "Hooktip", "spatulate": "Spoon", "all-purpose": "Plain", "cone": "Cone",
    "specialized": "Cross", "about_the_same_as_head": "Mid", "longer_than_head": "Long",
    "shorter_than_head": "Short", "solid": "Plain", "spotted": "Spot", "striped": "Streak",
    "multi-colored": "Pied",
}  # fmt: skip
_PART_WORDS = {
    "crown_color": "crowned", "back_color": "backed", "wing_color": "winged",
    "wing_pattern": "winged", "throat_color": "throated", "breast_color": "breasted",
    "breast_pattern": "breasted", "belly_color": "bellied", "upper_tail_color": "tailed",
    "tail_shape": "tailed", "bill_shape": "billed", "bill_length": "billed", "bill_color": "billed",
}  # fmt: skip
_PART_WORDS_KEYS = tuple(_PART_WORDS)


@dataclass
class Species:
    """One class: its traits, and how it relates to its most similar class."""

    class_id: int
    name: str
    traits: dict[str, str]
    sibling: int = 0
    paired: bool = False
    differing_traits: list[str] = field(default_factory=list)
    discriminative_parts: list[str] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return f"{self.class_id:03d}.{self.name}"


def mark_color(base: str) -> str:
    """The colour of spots, bars and bands drawn on a region of colour ``base``."""
    r, g, b = COLORS[base]
    return "black" if 0.3 * r + 0.59 * g + 0.11 * b > 100 else "white"


def class_attribute_ids(traits: dict[str, str]) -> list[int]:
    """The CUB attributes (1-based ids) a species with these traits has."""
    t = traits

    def marked(color_trait: str, pattern: str) -> set[str]:
        base = t[color_trait]
        return {base} if pattern == "solid" else {base, mark_color(base)}

    groups: dict[str, set[str]] = {
        "bill_shape": {t["bill_shape"]}, "bill_length": {t["bill_length"]},
        "bill_color": {t["bill_color"]}, "crown_color": {t["crown_color"]},
        "wing_color": marked("wing_color", t["wing_pattern"]),
        "upperparts_color": {t["back_color"], t["nape_color"], t["wing_color"]},
        "underparts_color": {t["throat_color"], t["breast_color"], t["belly_color"]},
        "breast_pattern": {t["breast_pattern"]}, "back_color": {t["back_color"]},
        "tail_shape": {t["tail_shape"]},
        "upper_tail_color": marked("upper_tail_color", t["tail_pattern"]),
        "head_pattern": {t["head_pattern"]},
        "breast_color": marked("breast_color", t["breast_pattern"]),
        "throat_color": {t["throat_color"]}, "eye_color": {t["eye_color"]},
        "forehead_color": {t["nape_color"]}, "under_tail_color": {t["upper_tail_color"]},
        "nape_color": {t["nape_color"]}, "belly_color": {t["belly_color"]},
        "wing_shape": {t["wing_shape"]}, "size": {t["size"]}, "shape": {t["shape"]},
        "back_pattern": {"solid"}, "tail_pattern": {t["tail_pattern"]},
        "belly_pattern": {"solid"}, "primary_color": {t["back_color"], t["breast_color"]},
        "leg_color": {t["leg_color"]}, "wing_pattern": {t["wing_pattern"]},
    }  # fmt: skip
    return sorted(ATTRIBUTE_ID[f"has_{g}::{v}"] for g, vals in groups.items() for v in vals)


def differing_traits(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Traits that change how the bird looks (size only changes framing, so it does not count)."""
    return [t for t, (_, parts) in TRAITS.items() if parts and a[t] != b[t]]


def parts_of(traits: list[str]) -> list[str]:
    """The CUB parts touched by these traits, in CUB's part order."""
    touched = {p for t in traits for p in TRAITS[t][1]}
    return [p for p in PART_NAMES if p in touched]


def _pick_color(rng: np.random.Generator, names: tuple[str, ...] = COLOR_NAMES) -> str:
    w = np.array([_COLOR_WEIGHTS[n] for n in names], dtype=float)
    return names[rng.choice(len(names), p=w / w.sum())]


def _random_traits(rng: np.random.Generator) -> dict[str, str]:
    """Independent traits, with plumage colours shared across regions as often as in real birds."""
    traits = {name: values[rng.integers(len(values))] for name, (values, _) in TRAITS.items()}
    upper, under = _pick_color(rng), _pick_color(rng)
    for name in ("crown_color", "nape_color", "back_color", "wing_color", "upper_tail_color"):
        traits[name] = upper if rng.random() < 0.45 else _pick_color(rng)
    for name in ("throat_color", "breast_color", "belly_color"):
        traits[name] = under if rng.random() < 0.45 else _pick_color(rng)
    for name in ("bill_color", "leg_color"):
        traits[name] = _pick_color(rng)
    traits["eye_color"] = _pick_color(rng, EYE_COLORS)
    traits["breast_pattern"] = PATTERNS[rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])]
    traits["wing_pattern"] = PATTERNS[rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])]
    return traits


def _color_distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(COLORS[a], COLORS[b])))


def _sibling_of(rng: np.random.Generator, traits: dict[str, str]) -> tuple[dict[str, str], str]:
    """A copy of ``traits`` with one pair trait changed clearly (colours far apart)."""
    trait = PAIR_TRAITS[rng.integers(len(PAIR_TRAITS))]
    values = TRAITS[trait][0]
    old = traits[trait]
    if values is COLOR_NAMES:
        choices = tuple(c for c in values if _color_distance(c, old) >= 100)
    else:
        choices = tuple(v for v in values if v != old)
    new = dict(traits)
    new[trait] = choices[rng.integers(len(choices))]
    return new, trait


def _visual_key(traits: dict[str, str]) -> tuple[str, ...]:
    return tuple(traits[t] for t, (_, parts) in TRAITS.items() if parts)


def _name(rng: np.random.Generator, traits: dict[str, str], trait: str, taken: set[str]) -> str:
    value = traits[trait]
    word = value.capitalize() if value in COLORS else _SHAPE_WORDS[value]
    nouns = _NOUNS[traits["shape"]]
    base = f"{word}_{_PART_WORDS[trait]}_{nouns[rng.integers(len(nouns))]}"
    for qualifier in ("", *_QUALIFIERS, *(f"{a}_{b}" for a in _QUALIFIERS for b in _QUALIFIERS)):
        name = f"{qualifier}_{base}" if qualifier else base
        if name not in taken:
            taken.add(name)
            return name
    raise RuntimeError("ran out of species names")  # pragma: no cover - 500+ qualifiers


def make_species(classes: int, seed: int) -> list[Species]:
    """``classes`` distinct species; ``classes // 4`` sibling pairs differing in one trait."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5BEC1E5]))
    seen: set[tuple[str, ...]] = set()
    drafts: list[tuple[dict[str, str], str, int]] = []  # traits, name trait, pair index or -1
    for pair in range(classes // 4):
        while True:
            base = _random_traits(rng)
            sib, trait = _sibling_of(rng, base)
            if _visual_key(base) not in seen and _visual_key(sib) not in seen:
                break
        seen.update((_visual_key(base), _visual_key(sib)))
        drafts += [(base, trait, pair), (sib, trait, pair)]
    while len(drafts) < classes:
        traits = _random_traits(rng)
        if _visual_key(traits) not in seen:
            seen.add(_visual_key(traits))
            name_trait = _PART_WORDS_KEYS[rng.integers(len(_PART_WORDS_KEYS))]
            drafts.append((traits, name_trait, -1))
    taken: set[str] = set()
    named = [(_name(rng, t, nt, taken), t, pair) for t, nt, pair in drafts]
    # Class ids in "taxonomic" order: same body shape together, like CUB's gulls or warblers.
    named.sort(key=lambda x: (TRAITS["shape"][0].index(x[1]["shape"]), x[0].split("_")[-1], x[0]))
    species = [Species(i + 1, name, traits) for i, (name, traits, _) in enumerate(named)]
    partner = {}
    for sp, (_, _, pair) in zip(species, named, strict=True):
        if pair >= 0:
            partner.setdefault(pair, []).append(sp)
    for a, b in partner.values():
        a.sibling, b.sibling, a.paired, b.paired = b.class_id, a.class_id, True, True
    for sp in species:
        if not sp.paired and len(species) > 1:
            others = [o for o in species if o is not sp]
            dists = [len(differing_traits(sp.traits, o.traits)) for o in others]
            sp.sibling = others[int(np.argmin(dists))].class_id
        if sp.sibling:
            sp.differing_traits = differing_traits(sp.traits, species[sp.sibling - 1].traits)
            sp.discriminative_parts = parts_of(sp.differing_traits)
    return species
