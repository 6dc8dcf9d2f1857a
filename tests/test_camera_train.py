"""Tests of the held-out splits of the camera training script (edge.camera.train)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera.classifier import DEFAULT_MODEL
from edge.camera.train import cnrpark_block, evaluate_heldout, main, patch_time

DAYS = ("20150703", "20150708")


def _at(day: str, hhmm: str) -> str:
    return f"{day}_{hhmm}_7.jpg"


def test_patch_time_from_name() -> None:
    assert patch_time("20150703_1455_12.jpg") == "1455"
    assert patch_time("busy/20150708_0905_A3.jpg") == "0905"
    with pytest.raises(ValueError):
        patch_time("2013-02-22_06_25_00.png")  # a PKLot stem, not a patch name
    with pytest.raises(ValueError):
        patch_time("20150703_15h_12.jpg")


def test_no_split_trains_on_everything() -> None:
    assert cnrpark_block("20150703_1700_1.jpg") == "train"
    assert cnrpark_block("20150703_1700_1.jpg", {"2013-03-09"}) == "train"


def test_whole_day_holdout_unchanged() -> None:
    held = {"20150708"}
    assert cnrpark_block("20150708_0800_1.jpg", held) == "day"
    assert cnrpark_block("20150708_1700_1.jpg", held, "1500") == "day"  # whole day wins
    assert cnrpark_block("20150703_0800_1.jpg", held) == "train"


@pytest.mark.parametrize("day", DAYS)
def test_holdout_from_is_a_later_block_of_every_day(day: str) -> None:
    def block(t: str) -> str:
        return cnrpark_block(_at(day, t), set(), "1500")

    assert block("0859") == "train"
    assert block("1455") == "train"  # just before: trained on (no gap asked for)
    assert block("1459") == "train"
    assert block("1500") == "from-1500"  # at the boundary: held out
    assert block("1805") == "from-1500"


@pytest.mark.parametrize("day", DAYS)
def test_gap_is_neither_trained_on_nor_in_the_main_block(day: str) -> None:
    def block(t: str) -> str:
        return cnrpark_block(_at(day, t), set(), "1500", "1300")

    assert block("1259") == "train"
    assert block("1300") == "gap-1300-1500"
    assert block("1455") == "gap-1300-1500"
    assert block("1500") == "from-1500"
    assert block("1700") == "from-1500"


def test_gap_needs_a_later_holdout() -> None:
    with pytest.raises(ValueError):
        cnrpark_block("20150703_1000_1.jpg", set(), None, "1300")
    with pytest.raises(ValueError):
        cnrpark_block("20150703_1000_1.jpg", set(), "1200", "1300")


@pytest.mark.parametrize(
    "args",
    [
        ["--train-before", "1300"],  # no --holdout-from
        ["--holdout-from", "1300", "--train-before", "1500"],  # gap after the block
        ["--holdout-from", "15:00"],
        ["--holdout-from", "2500"],
    ],
)
def test_cli_rejects_bad_time_splits(args: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), *args])
    assert e.value.code == 2


def test_heldout_report_names_each_block(tmp_path: Path) -> None:
    """Patches are grouped per block and day; trained-on patches are not evaluated."""
    rng = np.random.default_rng(0)
    names = {
        "busy": ["20150703_1000_1", "20150703_1400_1", "20150703_1500_1", "20150708_1630_2"],
        "free": ["20150703_1200_3", "20150708_1300_4", "20150708_1800_4"],
    }
    for sub, stems in names.items():
        (tmp_path / sub).mkdir()
        for stem in stems:
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / sub / f"{stem}.jpg"), img)
    rep = evaluate_heldout(
        DEFAULT_MODEL,
        None,
        tmp_path,
        set(),
        lambda n: cnrpark_block(n, set(), "1500", "1300"),
    )
    counts = {k: v["n"] for k, v in rep.items()}
    assert counts == {
        "cnrpark:20150703@from-1500": 1,
        "cnrpark:20150708@from-1500": 2,
        "cnrpark:20150703@gap-1300-1500": 1,
        "cnrpark:20150708@gap-1300-1500": 1,
        "cnrpark:all@from-1500": 3,
        "cnrpark:all@gap-1300-1500": 2,
    }
    # the default selection (no block function) is unchanged: whole days
    by_day = evaluate_heldout(DEFAULT_MODEL, None, tmp_path, {"20150708"})
    assert {k: v["n"] for k, v in by_day.items()} == {"cnrpark:20150708": 3, "cnrpark:all": 3}
