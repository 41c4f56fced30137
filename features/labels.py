"""Label sets, presets and cross-dataset mappings, as data.

Each dataset keeps its own class names and order (the order its files number them in), and
every name has a *canonical* emotion (CK+ 'anger' is canonical 'angry'). Presets (AffectFusion's
7/5/4/2) and cross-dataset mappings are written once, in canonical names, and work on any set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

BASIC7 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# Dataset-specific spellings -> canonical emotion.
_ALIASES = {
    "anger": "angry", "angry": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "neutral": "neutral",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "contempt": "contempt",
}


@dataclass(frozen=True)
class LabelSet:
    name: str
    names: tuple[str, ...]
    doc: str = field(default="", compare=False)
    canonical: tuple[str | None, ...] = field(default=())

    def __post_init__(self):
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label set {self.name!r} repeats a class name: {self.names}")
        if not self.canonical:
            object.__setattr__(self, "canonical", tuple(_ALIASES.get(n.lower()) for n in self.names))

    def __len__(self) -> int:
        return len(self.names)

    def index(self, label: str) -> int:
        try:
            return self.names.index(label)
        except ValueError:
            raise KeyError(
                f"{label!r} is not a class of label set {self.name!r}; known: {', '.join(self.names)}"
            ) from None

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "names": list(self.names)})

    @staticmethod
    def from_json(text: str | bytes) -> "LabelSet":
        d = json.loads(text)
        known = LABEL_SETS.get(d["name"])
        if known is not None and list(known.names) == d["names"]:
            return known
        return LabelSet(d["name"], tuple(d["names"]))


LABEL_SETS: dict[str, LabelSet] = {}


def register_label_set(ls: LabelSet) -> LabelSet:
    if ls.name in LABEL_SETS and LABEL_SETS[ls.name] != ls:
        raise ValueError(f"label set {ls.name!r} already registered with other names")
    LABEL_SETS[ls.name] = ls
    return ls


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {', '.join(sorted(LABEL_SETS))}") from None


def custom_label_set(names: list[str] | tuple[str, ...], name: str = "custom") -> LabelSet:
    """A user-supplied list (e.g. the 14-class RAF compound variant one seed used)."""
    return LabelSet(name, tuple(names), doc="user-supplied")


register_label_set(LabelSet("fer2013", BASIC7, "FER2013: Kaggle folder names, alphabetical (label_id of the shared parquet)."))
# The original fer2013.csv numbers classes 0..6 in this order; ingest maps it onto the set above.
FER2013_CSV_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
register_label_set(LabelSet(
    "ferplus", ("angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
    "FER+ majority labels: the 7 basic classes plus contempt, alphabetical."))
# fer2013new.csv vote columns, in file order.
FERPLUS_VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                        "contempt", "unknown", "NF")


def vote_columns_in(ls: LabelSet) -> list[int | None]:
    """For each FER+ vote column (FERPLUS_VOTE_COLUMNS order), the index of its class in `ls`,
    or None where `ls` has no such class ('unknown' and 'NF' never map: they are not emotions).
    FER+ (Barsoum et al. 2016) builds its probability targets from exactly these columns."""
    out: list[int | None] = []
    for name in FERPLUS_VOTE_COLUMNS:
        canon = _ALIASES.get(name.lower())
        out.append(ls.canonical.index(canon) if canon is not None and canon in ls.canonical else None)
    return out


register_label_set(LabelSet(
    "ckplus", ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"),
    "CK+ (CK+48 folder names); no neutral."))
register_label_set(LabelSet(
    "rafdb", ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"),
    "RAF-DB basic, in the order of its 1..7 label ids."))
register_label_set(LabelSet(
    "rafdb-compound", (
        "happily_surprised", "happily_disgusted", "sadly_fearful", "sadly_angry", "sadly_surprised",
        "sadly_disgusted", "fearfully_angry", "fearfully_surprised", "angrily_surprised",
        "angrily_disgusted", "disgustedly_surprised"),
    "RAF-DB compound, the official 11 classes in the order of their 1..11 ids.",
    canonical=(None,) * 11))
register_label_set(LabelSet(
    "dfew", ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"),
    "DFEW, in the order of its 1..7 label ids."))
register_label_set(LabelSet("synth", BASIC7, "The embedded synthetic faces (pipeline synth): not a benchmark."))


@dataclass(frozen=True)
class Preset:
    """Merges a 7-class set into fewer classes, written in canonical names."""

    name: str
    # canonical source class -> output class name; classes not listed keep their own name
    merge: tuple[tuple[str, str], ...]
    # output class order; None = the source set's order with merged-away classes removed
    order: tuple[str, ...] | None
    doc: str

    def apply(self, ls: LabelSet) -> tuple[tuple[str, ...], list[int]]:
        """Output class names and, for every class of `ls`, its output index."""
        if self.name == "7":
            return ls.names, list(range(len(ls)))
        have = {c for c in ls.canonical if c}
        missing = set(BASIC7) - have
        if missing or len(ls) != 7:
            raise ValueError(
                f"preset {self.name} works on a 7-class set with the basic emotions; "
                f"{ls.name!r} lacks {sorted(missing) or 'nothing but has ' + str(len(ls)) + ' classes'}")
        merge = dict(self.merge)
        targets = [merge.get(c, name_for(ls, c)) for c in ls.canonical]
        out = self.order or tuple(dict.fromkeys(t for c, t in zip(ls.canonical, targets) if c not in merge))
        if self.order is None:
            # merged classes map onto the source set's own spelling of their target
            targets = [name_for(ls, merge[c]) if c in merge else t for c, t in zip(ls.canonical, targets)]
        return tuple(out), [out.index(t) for t in targets]


def name_for(ls: LabelSet, canonical: str) -> str:
    return ls.names[ls.canonical.index(canonical)]


PRESETS: dict[str, Preset] = {
    "7": Preset("7", (), None, "all seven classes"),
    "5": Preset("5", (("disgust", "angry"), ("fear", "sad")), None, "disgust->angry, fear->sad"),
    "4": Preset("4", (("happy", "positive"), ("sad", "negative"), ("angry", "negative"),
                      ("disgust", "negative"), ("fear", "negative"), ("neutral", "neutral"),
                      ("surprise", "surprise")),
                ("positive", "negative", "neutral", "surprise"),
                "positive = happy; negative = sad, angry, disgust, fear; neutral; surprise"),
    "2": Preset("2", (("happy", "positive"), ("neutral", "positive"), ("surprise", "positive"),
                      ("sad", "negative"), ("angry", "negative"), ("disgust", "negative"),
                      ("fear", "negative")),
                ("positive", "negative"),
                "positive = happy, neutral, surprise; negative = the rest"),
}


def get_preset(name: str | int) -> Preset:
    try:
        return PRESETS[str(name)]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def cross_map(src: LabelSet, dst: LabelSet) -> list[int | None]:
    """For zero-shot evaluation: each class of `src` -> index in `dst`, or None when `dst` has
    no such class (CK+ contempt on a FER2013 model is excluded, not forced into a wrong class)."""
    out: list[int | None] = []
    for c in src.canonical:
        out.append(dst.canonical.index(c) if c is not None and c in dst.canonical else None)
    return out
