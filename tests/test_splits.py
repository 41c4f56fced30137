"""The split and leak logic of pipeline ingest on hand-built rows, with scikit-learn as the oracle.

`holdout`, `assign_splits` and `flag_duplicates` are called directly (no images): exact
group-disjointness, the exact held-out fraction, the seed-determined assignment (the same
scikit-learn splitter called here on the groups written out by hand), the recorded method
strings, and duplicate figures counted by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.model_selection import (GroupShuffleSplit, ShuffleSplit, StratifiedGroupKFold,
                                     StratifiedShuffleSplit)

from pipeline.ingest import assign_splits, flag_duplicates, holdout


def _held_groups(splitter, n: int, labels=None, groups=None) -> np.ndarray:
    """Indices held out by the first split of a scikit-learn splitter."""
    return next(splitter.split(np.zeros(n), labels, groups))[1]


def _groups_of(mask, groups) -> tuple[set, set]:
    held = {g for m, g in zip(mask, groups) if m}
    kept = {g for m, g in zip(mask, groups) if not m}
    return held, kept


def _expected_val(keys: list[str], labels: list[str], fraction: float, seed: int) -> list[str]:
    """The split of each row when every group has one label: StratifiedShuffleSplit over one
    entry per group, groups in sorted-key order (the oracle for assign_splits' val carve)."""
    glab = dict(zip(keys, labels))
    order = sorted(glab)
    held = {order[i] for i in _held_groups(StratifiedShuffleSplit(1, test_size=fraction, random_state=seed),
                                           len(order), np.array([glab[k] for k in order]))}
    return ["val" if k in held else "train" for k in keys]


# --------------------------------------------------------------------------- holdout

def test_holdout_single_row_groups_match_stratified_shuffle_split_exactly():
    labels = [c for c in "abcd" for _ in range(10)]  # 40 rows, 10 per class
    groups = [f"g{i:02d}" for i in range(40)]  # one row per group, keys already in sorted order
    for seed in (0, 1, 7):
        mask, how = holdout(labels, groups, 0.2, seed)
        assert mask.dtype == bool and mask.shape == (40,)
        assert how == "StratifiedShuffleSplit over groups"
        assert mask.sum() == 8  # 20 % of 40, exactly
        assert [int(sum(m for m, y in zip(mask, labels) if y == c)) for c in "abcd"] == [2, 2, 2, 2]
        want = _held_groups(StratifiedShuffleSplit(1, test_size=0.2, random_state=seed), 40, np.array(labels))
        assert sorted(np.flatnonzero(mask)) == sorted(want)
    assert not np.array_equal(holdout(labels, groups, 0.2, 0)[0], holdout(labels, groups, 0.2, 1)[0])
    assert np.array_equal(holdout(labels, groups, 0.2, 3)[0], holdout(labels, groups, 0.2, 3)[0])


def test_holdout_keeps_multi_row_groups_whole_and_orders_groups_by_key():
    # 12 clips of 3 frames, one label each; the rows are shuffled and the keys are not in sorted order
    rng = np.random.RandomState(0)
    clip_labels = ["x"] * 6 + ["y"] * 6
    clip_keys = [f"clip:{k}" for k in (10, 2, 33, 4, 5, 61, 7, 8, 9, 100, 11, 1)]
    rows = [(clip_keys[c], clip_labels[c]) for c in range(12) for _ in range(3)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    groups, labels = [g for g, _ in rows], [y for _, y in rows]
    mask, how = holdout(labels, groups, 1 / 3, seed=4)
    held, kept = _groups_of(mask, groups)
    assert not held & kept and len(held) == 4 and mask.sum() == 12
    # the oracle: one entry per group, groups in sorted-key order, each with its label
    keys = sorted(set(clip_keys))
    glab = np.array([clip_labels[clip_keys.index(k)] for k in keys])
    want = {keys[i] for i in _held_groups(StratifiedShuffleSplit(1, test_size=1 / 3, random_state=4), 12, glab)}
    assert held == want
    assert how == "StratifiedShuffleSplit over groups"
    assert sorted(clip_labels[clip_keys.index(k)] for k in held) == ["x", "x", "y", "y"]


def test_holdout_exact_duplicate_groups_are_stratified_by_their_majority_label():
    # pixel-hash groups ("px:" keys) may hold conflicting labels: the group counts as its most
    # common label, even when that label is not the first row's
    groups, labels, majority = [], [], {}
    for i in range(10):
        key = f"px:{i:02d}"
        if i < 5:
            rows = ["b", "a", "a"] if i % 2 == 0 else ["a"]
            majority[key] = "a"
        else:
            rows = ["a", "b", "b"] if i % 2 == 0 else ["b"]
            majority[key] = "b"
        groups += [key] * len(rows)
        labels += rows
    mask, how = holdout(labels, groups, 0.4, seed=2)
    assert how == "StratifiedShuffleSplit over groups"  # not StratifiedGroupKFold, despite mixed labels
    held, kept = _groups_of(mask, groups)
    assert not held & kept
    keys = sorted(majority)
    glab = np.array([majority[k] for k in keys])
    want = {keys[i] for i in _held_groups(StratifiedShuffleSplit(1, test_size=0.4, random_state=2), 10, glab)}
    assert held == want
    assert sorted(majority[k] for k in held) == ["a", "a", "b", "b"]


def test_holdout_mixed_label_groups_take_the_first_stratified_group_fold():
    # subjects with several labels each (CK+): StratifiedGroupKFold(round(1/fraction)), first fold
    groups = [f"subject:S{i // 6:02d}" for i in range(60)]
    labels = ["abc"[(i + i // 6) % 3] for i in range(60)]
    for fraction, k in ((0.2, 5), (0.6, 2), (0.9, 2), (0.3, 3)):
        mask, how = holdout(labels, groups, fraction, seed=1)
        assert how == f"StratifiedGroupKFold(n_splits={k}) first fold"
        held, kept = _groups_of(mask, groups)
        assert not held & kept
        want = _held_groups(StratifiedGroupKFold(k, shuffle=True, random_state=1), 60,
                            np.array(labels), np.unique(groups, return_inverse=True)[1])
        assert sorted(np.flatnonzero(mask)) == sorted(want)
    # one mixed group is enough to take this path, whatever the others are
    one_mixed = ["ab"[0]] * 54 + ["a", "b"] * 3
    assert holdout(one_mixed, groups, 0.2, seed=1)[1] == "StratifiedGroupKFold(n_splits=5) first fold"


def test_holdout_falls_back_unstratified_when_a_class_is_too_small():
    # class 'z' has one group: StratifiedShuffleSplit refuses, ShuffleSplit over groups is used
    labels = ["a"] * 9 + ["z"]
    groups = [f"g{i}" for i in range(10)]
    mask, how = holdout(labels, groups, 0.5, seed=3)
    assert how == "ShuffleSplit over groups (a class has too few groups to stratify)"
    want = _held_groups(ShuffleSplit(1, test_size=0.5, random_state=3), 10)
    assert sorted(np.flatnonzero(mask)) == sorted(want) and mask.sum() == 5
    # mixed-label groups, fewer groups than folds: GroupShuffleSplit over the groups
    g3 = ["s:1"] * 4 + ["s:2"] * 4 + ["s:3"] * 4
    l3 = ["a", "b"] * 6
    mask, how = holdout(l3, g3, 0.2, seed=3)  # 5 folds asked of 3 groups
    assert how == "GroupShuffleSplit (too few groups to stratify)"
    want = _held_groups(GroupShuffleSplit(1, test_size=0.2, random_state=3), 12, np.array(l3),
                        np.unique(g3, return_inverse=True)[1])
    assert sorted(np.flatnonzero(mask)) == sorted(want)
    held, kept = _groups_of(mask, g3)
    assert len(held) == 1 and not held & kept
    # the fraction is honoured there too: 15 % of 6 groups is one group (7 folds asked of 6)
    g6 = [f"s:{i // 4}" for i in range(24)]
    l6 = ["a", "b"] * 12
    for seed in (0, 1, 2):
        mask, how = holdout(l6, g6, 0.15, seed=seed)
        assert how == "GroupShuffleSplit (too few groups to stratify)"
        held, kept = _groups_of(mask, g6)
        assert len(held) == 1 and mask.sum() == 4 and not held & kept
        want = _held_groups(GroupShuffleSplit(1, test_size=0.15, random_state=seed), 24, np.array(l6),
                            np.unique(g6, return_inverse=True)[1])
        assert sorted(np.flatnonzero(mask)) == sorted(want)


def test_holdout_with_nothing_to_split():
    for labels, groups, fraction, how in (
        ([], [], 0.3, "none"),
        (["a", "b", "c"], ["1", "2", "3"], 0.0, "none"),
        (["a", "b", "c"], ["1", "2", "3"], -0.5, "none"),
        (["a"], ["1"], 0.5, "none"),
        (["a", "b", "a"], ["1", "1", "1"], 0.5, "none (a single group cannot be split)"),
    ):
        mask, got = holdout(labels, groups, fraction, seed=0)
        assert got == how and mask.dtype == bool and mask.shape == (len(labels),) and not mask.any()
    # two rows in two groups is enough to split (one each side)
    mask, how = holdout(["a", "b"], ["1", "2"], 0.5, seed=0)
    assert mask.sum() == 1 and how.startswith("ShuffleSplit")
    # and two groups of several rows
    mask, how = holdout(["a", "a", "a", "a"], ["1", "1", "2", "2"], 0.5, seed=0)
    assert how == "StratifiedShuffleSplit over groups" and mask.sum() == 2 and mask[0] == mask[1] and mask[2] == mask[3]


def test_holdout_is_quiet():
    # sklearn warns about a class smaller than n_splits; ingest's output is its own summary
    groups = [f"subject:{i // 4}" for i in range(40)]
    labels = ["a", "b", "a", "a"] * 9 + ["c", "a", "a", "a"]  # 'c' once: fewer members than 5 folds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, how = holdout(labels, groups, 0.2, seed=0)
    assert "StratifiedGroupKFold" in how
    assert [str(w.message) for w in caught] == []


def test_holdout_silences_only_user_warnings(monkeypatch):
    # a warning of another kind raised inside the split (here a splitter that announces a
    # deprecation) still reaches the caller: only sklearn's UserWarning notices are hushed
    import sklearn.model_selection as ms

    class Announcing(ms.StratifiedShuffleSplit):
        def split(self, X, y=None, groups=None):
            warnings.warn("this splitter will change", DeprecationWarning)
            warnings.warn("few members", UserWarning)
            return super().split(X, y, groups)

    monkeypatch.setattr(ms, "StratifiedShuffleSplit", Announcing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask, how = holdout(list("ab" * 10), [str(i) for i in range(20)], 0.2, seed=0)
    assert how == "StratifiedShuffleSplit over groups" and mask.sum() == 4
    assert [(w.category, str(w.message)) for w in caught] == [(DeprecationWarning, "this splitter will change")]


# --------------------------------------------------------------------------- assign_splits

def _row(label, split=None, pixel_hash="h", **groups):
    return {"label": label, "_split": split, "pixel_hash": pixel_hash, "subject": None, "clip_id": None,
            "sequence": None, **groups}


def test_assign_splits_carves_test_then_val_with_the_same_seed():
    rows = [_row("ab"[i % 2], pixel_hash=f"{i:03d}") for i in range(40)]
    info = assign_splits(rows, val_fraction=0.25, test_fraction=0.2, seed=9)
    keys = [f"px:{i:03d}" for i in range(40)]  # sorted already
    labels = np.array(["ab"[i % 2] for i in range(40)])
    test = set(_held_groups(StratifiedShuffleSplit(1, test_size=0.2, random_state=9), 40, labels))
    pool = [i for i in range(40) if i not in test]
    val = {pool[j] for j in _held_groups(StratifiedShuffleSplit(1, test_size=0.25, random_state=9), 32,
                                         labels[pool])}
    want = ["test" if i in test else "val" if i in val else "train" for i in range(40)]
    assert [r["split"] for r in rows] == want
    assert (len(test), len(val)) == (8, 8)
    assert info == {
        "seed": 9, "grouped_by": ["pixel_hash"],
        "test": {"carved_from": "all rows (the dataset has no test split)",
                 "method": "StratifiedShuffleSplit over groups", "fraction": 0.2},
        "val": {"carved_from": "the training split only", "method": "StratifiedShuffleSplit over groups",
                "fraction": 0.25, "achieved": 0.25},
    }
    # the test carve marks rows for the val carve; every row ends in exactly one split
    assert [r["_split"] for r in rows] == ["test" if i in test else "train" for i in range(40)]


def test_assign_splits_keeps_the_datasets_own_test_split():
    rows = ([_row("ab"[i % 2], "train", f"t{i:02d}") for i in range(14)]
            + [_row("ab"[i % 2], "test", f"u{i:02d}") for i in range(6)])
    info = assign_splits(rows, val_fraction=1 / 7, test_fraction=0.5, seed=0)
    assert [r["split"] for r in rows[14:]] == ["test"] * 6  # never moved, never carved again
    assert sum(r["split"] == "val" for r in rows[:14]) == 2
    assert sum(r["split"] == "train" for r in rows) == 12
    assert info["test"] == {"carved_from": "the dataset's own test split"}
    assert info["val"]["achieved"] == 0.1429  # 2 of 14, to 4 places
    assert info["val"]["method"] == "StratifiedShuffleSplit over groups"


def test_assign_splits_without_a_test_fraction_carves_no_test():
    rows = [_row("ab"[i % 2], None, f"{i:02d}") for i in range(20)]
    info = assign_splits(rows, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert {r["split"] for r in rows} == {"train", "val"} and sum(r["split"] == "val" for r in rows) == 4
    assert info["test"] == {"carved_from": "none (the dataset has no test split and the test fraction is 0)"}


def test_assign_splits_with_no_training_rows():
    rows = [_row("a", "test", "1"), _row("b", "test", "2")]
    info = assign_splits(rows, val_fraction=0.5, test_fraction=0.2, seed=0)
    assert [r["split"] for r in rows] == ["test", "test"]
    assert info["val"] == {"carved_from": "the training split only", "method": "none", "fraction": 0.5,
                           "achieved": 0.0}


def test_group_keys_prefer_subject_then_clip_then_sequence():
    # the same 24 rows with identities down to a level: the first known of subject, clip, sequence
    # groups them (blocks of 6, 3, 2 rows), else the pixels (one row each)
    levels = ("subject", "clip_id", "sequence", "px")
    size = {"subject": 6, "clip_id": 3, "sequence": 2, "px": 1}
    for key in levels:
        rows, keys = [], []
        for i in range(24):
            r = _row("ab"[(i // 6) % 2], "train", f"{i:02d}")
            for k in levels[levels.index(key):-1]:
                r[k] = f"{k[0].upper()}{i // size[k]}"
            rows.append(r)
            keys.append(f"px:{i:02d}" if key == "px" else f"{key}:{key[0].upper()}{i // size[key]}")
        info = assign_splits(rows, val_fraction=0.5, test_fraction=0.0, seed=3)
        assert info["grouped_by"] == (["pixel_hash"] if key == "px" else [key])
        splits = [r["split"] for r in rows]
        assert splits == _expected_val(keys, [r["label"] for r in rows], 0.5, 3)
        assert all(len(set(splits[i:i + size[key]])) == 1 for i in range(0, 24, size[key]))


def test_group_key_order_fixes_the_assignment():
    # rows with a subject, rows with a clip and rows with neither: groups are numbered in key-text
    # order ("clip_id:..." < "px:..." < "subject:...", and S1 < S10 < S2), which fixes the draw
    rows, keys = [], []
    for i in range(12):
        lab = "ab"[i % 2]
        rows += [_row(lab, "train", f"h{i}", subject=f"S{i}"), _row(lab, "train", f"k{i}", clip_id=f"{i}"),
                 _row(lab, "train", f"p{i}")]
        keys += [f"subject:S{i}", f"clip_id:{i}", f"px:p{i}"]
    info = assign_splits(rows, val_fraction=0.25, test_fraction=0.0, seed=5)
    assert info["grouped_by"] == ["clip_id", "pixel_hash", "subject"]
    assert [r["split"] for r in rows] == _expected_val(keys, [r["label"] for r in rows], 0.25, 5)


def test_group_key_ignores_empty_identities():
    # an empty subject / clip is no identity: such rows group by their pixels
    rows = [_row("ab"[i % 2], "train", f"{i:02d}", subject="", clip_id="", sequence="") for i in range(10)]
    info = assign_splits(rows, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert info["grouped_by"] == ["pixel_hash"]
    assert sum(r["split"] == "val" for r in rows) == 2


# --------------------------------------------------------------------------- flag_duplicates

def _d(split, h, label="a", orig=None):
    return {"split": split, "pixel_hash": h, "label": label, "orig_split": orig}


def test_flag_duplicates_counts_by_hand():
    rows = [
        _d("train", "A"), _d("train", "A"), _d("val", "A"),        # A: 3 copies in train/val
        _d("test", "A", orig="PrivateTest"),                       #    + 1 in test (a leak)
        _d("test", "B", orig="PublicTest"), _d("test", "B", orig="PublicTest"),  # B: twice in test only
        _d("train", "C", "a"), _d("test", "C", "b", orig="PublicTest"),         # C: leak, labels differ
        _d("test", "D", orig=None),                                # D: in val too (leak, no orig split)
        _d("val", "D"),
        _d("train", "E"), _d("test", "F"),                         # unique rows
    ]
    got = flag_duplicates(rows)
    assert [r["leak"] for r in rows] == [False, False, False, True, False, False, False, True, True, False,
                                         False, False]
    assert got == {
        "groups": 4,                       # A, B, C, D
        "redundant_copies": 3 + 1 + 1 + 1,
        "redundant_within_train_val": 2,   # A's second and third train/val copy
        "redundant_within_test": 1,        # B's second copy
        "groups_train_test": 3,            # A, C, D
        "groups_conflicting_labels": 1,    # C
        "test_rows_leaked": 3,
        "test_rows_leaked_by_orig_split": {"PrivateTest": 1, "PublicTest": 1, "test": 1},
    }
    assert list(got["test_rows_leaked_by_orig_split"]) == ["PrivateTest", "PublicTest", "test"]  # sorted


def test_flag_duplicates_without_duplicates():
    rows = [_d("train", "A"), _d("val", "B"), _d("test", "C", orig="x")]
    assert flag_duplicates(rows) == {
        "groups": 0, "redundant_copies": 0, "redundant_within_train_val": 0, "redundant_within_test": 0,
        "groups_train_test": 0, "groups_conflicting_labels": 0, "test_rows_leaked": 0,
        "test_rows_leaked_by_orig_split": {},
    }
    assert [r["leak"] for r in rows] == [False, False, False]


def test_flag_duplicates_pairs_and_triples():
    # a pair within test, a triple within train, a train/test pair: copies minus one per group and side
    rows = [_d("test", "P", orig="t"), _d("test", "P", orig="t"),
            _d("train", "T"), _d("val", "T"), _d("train", "T"),
            _d("train", "X", "a"), _d("test", "X", "a", orig="t")]
    got = flag_duplicates(rows)
    assert (got["groups"], got["redundant_copies"], got["redundant_within_train_val"],
            got["redundant_within_test"], got["groups_train_test"], got["test_rows_leaked"]) == (3, 4, 2, 1, 1, 1)
    assert got["groups_conflicting_labels"] == 0
    assert [r["leak"] for r in rows] == [False, False, False, False, False, False, True]


@pytest.mark.parametrize("seed", [0, 1])
def test_assign_then_flag_no_leak_between_train_and_val(seed):
    # exact duplicates without an identity are one group: a carved val or test never holds a copy
    rows = [_row("ab"[i % 2], None, f"h{i % 15:02d}") for i in range(45)]
    assign_splits(rows, val_fraction=0.2, test_fraction=0.2, seed=seed)
    got = flag_duplicates(rows)
    by = {s: {r["pixel_hash"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert not by["train"] & by["val"] and not by["train"] & by["test"] and not by["val"] & by["test"]
    assert got["test_rows_leaked"] == 0 and got["groups_train_test"] == 0 and got["groups"] == 15
