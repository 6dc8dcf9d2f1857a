"""Tests of the held-out splits of the camera training script (edge.camera.train)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import train as T
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
        ["--patch-margin", "0.1"],  # an inset only
        ["--patch-margin", "-0.5"],  # nothing left
    ],
)
def test_cli_rejects_bad_time_splits_and_patch_insets(args: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), *args])
    assert e.value.code == 2


def test_cli_names_a_missing_dataset_and_a_missing_torch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped dataset path is said before anything loads; without the training extra
    the error says how to install it (it was a ModuleNotFoundError traceback)."""
    out = str(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as e:
        main(["--pklot", str(tmp_path / "nowhere"), "--out", out])
    assert e.value.code == 2
    assert "--pklot" in capsys.readouterr().err
    a_file = tmp_path / "hostname"
    a_file.write_text("x")
    with pytest.raises(SystemExit):
        main(["--cnrpark", str(a_file), "--out", out])
    assert "no such folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without the extra
    with pytest.raises(SystemExit) as e:
        main(["--cnrpark", str(tmp_path), "--out", out])
    assert e.value.code == 2
    assert "pip install -e '.[train]'" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------- augmentations


def _textured(seed: int = 0, size: int = 32) -> np.ndarray:
    """A mid-grey textured BGR patch (values well inside 0..255)."""
    rng = np.random.default_rng(seed)
    return rng.integers(60, 190, (size, size, 3), dtype=np.uint8)


def test_cast_shadow_darkens_some_pixels_and_never_brightens() -> None:
    img = _textured()
    for seed in range(50):
        out = T._cast_shadow(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.all(out.astype(int) <= img.astype(int) + 1)  # +1: rounding only
        darker = out.astype(int) < img.astype(int) - 10
        assert darker.any(axis=2).sum() >= 10  # a visible shadow in every draw
        # darkened by 30-70 %: the deepest shadow keeps at least ~30 % of the light
        ratio = out.astype(float) / img.astype(float)
        assert ratio.min() >= 0.29
        assert ratio.min() <= 0.75


def test_augmentations_are_deterministic_with_a_seeded_generator() -> None:
    img, car = _textured(0), _textured(1)
    for fn in (T._cast_shadow, T._dapple, T._warm_haze, T._rain):
        a = fn(img, np.random.default_rng(7))
        b = fn(img, np.random.default_rng(7))
        c = fn(img, np.random.default_rng(8))
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
    a = T._intrude(img, car, np.random.default_rng(7))
    assert np.array_equal(a, T._intrude(img, car, np.random.default_rng(7)))


def test_dapple_makes_patches_of_light_and_shade() -> None:
    img = np.full((32, 32, 3), 128, np.uint8)
    for seed in range(20):
        out = T._dapple(img, np.random.default_rng(seed)).astype(int)
        assert out.shape == img.shape
        assert out.max() > 128 + 5 and out.min() < 128 - 5  # both brighter and darker parts
        assert out.max() <= 255 and out.min() >= 0
        assert out.max() <= round(128 * np.exp(0.4)) + 1  # gain bounded by e^0.4


def test_warm_haze_shifts_colour_towards_red() -> None:
    img = np.full((32, 32, 3), 120, np.uint8)
    for seed in range(20):
        out = T._warm_haze(img, np.random.default_rng(seed)).astype(int)
        assert out.shape == img.shape
        b, g, r = out[..., 0].mean(), out[..., 1].mean(), out[..., 2].mean()
        assert r > g > b  # warmer: red up, blue down
    # saturated input stays in range
    white = np.full((32, 32, 3), 255, np.uint8)
    assert T._warm_haze(white, np.random.default_rng(0)).dtype == np.uint8


def test_rain_draws_thin_bright_streaks_and_sometimes_wets_the_ground() -> None:
    img = np.full((32, 32, 3), 100, np.uint8)
    wet = 0
    for seed in range(40):
        out = T._rain(img, np.random.default_rng(seed)).astype(int)
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 255
        ground = np.median(out)
        brighter = (out > ground + 4).all(axis=2)
        assert 0 < brighter.sum() < 0.5 * brighter.size  # streaks, not a brighter patch
        if ground < 100 - 5:  # the ground between the streaks darker: wet
            wet += 1
    assert 5 <= wet <= 35  # wet about half the time


def test_intrude_pastes_along_one_border_and_keeps_the_far_side() -> None:
    base = np.full((32, 32, 3), 100, np.uint8)
    car = np.full((32, 32, 3), 30, np.uint8)
    for seed in range(30):
        out = T._intrude(base, car, np.random.default_rng(seed))
        assert out.shape == base.shape and out.dtype == np.uint8
        changed = np.abs(out.astype(int) - 100).max(axis=2) > 2
        assert changed.any()
        # the changed region touches a border; the opposite 40 % of the patch is untouched
        sides = {
            "left": (changed[:, 0].all(), changed[:, -13:].any()),
            "right": (changed[:, -1].all(), changed[:, :13].any()),
            "top": (changed[0, :].all(), changed[-13:, :].any()),
            "bottom": (changed[-1, :].all(), changed[:13, :].any()),
        }
        entered = [k for k, (edge, far) in sides.items() if edge]
        assert len(entered) == 1
        assert not sides[entered[0]][1]
        assert not changed[13:19, 13:19].all()  # the centre is not covered


def test_new_augmentations_are_off_by_default_and_leave_the_stream_unchanged() -> None:
    assert all(T.AUG[k] == 0.0 for k in ("shadow", "dapple", "warm", "rain", "intrude"))
    canvas, other, car = _textured(0, 64), _textured(1, 64), _textured(2, 64)
    a = T.augment(canvas, 32, np.random.default_rng(3), other)
    b = T.augment(canvas, 32, np.random.default_rng(3), other, car)  # intrude off: ignored
    assert np.array_equal(a, b)


def test_augment_applies_the_cast_shadow_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    orig = T._cast_shadow

    def spy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append(1)
        return orig(img, rng)

    monkeypatch.setattr(T, "_cast_shadow", spy)
    monkeypatch.setitem(T.AUG, "shadow", 1.0)
    T.augment(_textured(0, 64), 32, np.random.default_rng(0))
    assert calls == [1]


def test_synthetic_samples_are_labelled_by_the_simulated_scene() -> None:
    samples = T.load_synthetic(5, 32, -0.2)
    from parking.site import EXAMPLE_SITE, load_site

    n_spaces = len(load_site(EXAMPLE_SITE).cameras[0].polygons)
    assert len(samples) == 5 * n_spaces
    assert {s.source for s in samples} == {"synthetic"}
    assert all(s.canvas.shape == (64, 64, 3) and s.canvas.dtype == np.uint8 for s in samples)
    labels = np.array([s.label for s in samples])
    assert 0 < labels.mean() < 1  # both classes
    # a drawn car makes its stall's crop busier than the bare ground of a free one
    grads = np.array([cv2.Laplacian(s.canvas, cv2.CV_32F).std() for s in samples])
    assert grads[labels == 1].mean() > grads[labels == 0].mean()
    again = T.load_synthetic(5, 32, -0.2)  # seeded: the same frames
    assert all(np.array_equal(a.canvas, b.canvas) for a, b in zip(samples, again, strict=True))


def test_synthetic_dark_cars_are_dark() -> None:
    """--synthetic-dark: that share of the simulated cars is black (the crops of occupied
    stalls are darker than with the usual mix of paints, mostly white)."""
    usual = T.load_synthetic(5, 32, -0.2)
    dark = T.load_synthetic(5, 32, -0.2, dark=1.0)

    def occupied_mean(samples: list[T.Sample]) -> float:
        return float(np.mean([s.canvas.mean() for s in samples if s.label == 1]))

    assert occupied_mean(dark) < occupied_mean(usual) - 20


def _sample(source: str, label: int) -> T.Sample:
    return T.Sample(np.zeros((64, 64, 3), np.uint8), label, source, "d")


def test_synthetic_share_takes_its_part_of_every_batch_and_leaves_the_rest_split() -> None:
    real = [_sample("pklot", 0)] * 3 + [_sample("pklot", 1)] + [_sample("cnrpark", 0)] * 2
    real += [_sample("cnrpark", 1)] * 2
    synth = [_sample("synthetic", 0)] * 5 + [_sample("synthetic", 1)] * 5
    without = T._sampling_weights(real, 0.6)
    with_synth = T._sampling_weights(real + synth, 0.6, 0.1)
    assert with_synth[len(real) :].sum() == pytest.approx(0.1)
    np.testing.assert_allclose(with_synth[: len(real)], without * 0.9)
    assert with_synth[:3].sum() == pytest.approx(0.9 * 0.6 / 2)  # pklot free


def test_cli_rejects_bad_synthetic_options(tmp_path: Path) -> None:
    for args in (["--synthetic", "-1"], ["--synthetic", "10", "--synthetic-share", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), *args])
        assert exc.value.code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--aug-rain", "1.5"],
        ["--aug-intrude", "-0.1"],
        ["--aug-occlude", "nan"],
        ["--synthetic-dark", "2"],
        ["--aug-gain", "1"],
        ["--occlude-size", "0"],
        ["--occlude-size", "inf"],
    ],
)
def test_cli_rejects_augmentation_values_out_of_range(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), *args])
    assert exc.value.code == 2
    assert args[0] in capsys.readouterr().err  # the message names the option


def test_mixstyle_mixes_feature_statistics_and_keeps_the_content() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * torch.arange(1, 9).view(8, 1, 1, 1) + torch.arange(8).view(
        8, 1, 1, 1
    )  # every sample with its own mean and spread
    mu, sigma = x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)
    out = T.mixstyle(x, p=1.0)
    out_mu, out_sigma = out.mean(dim=(2, 3)), out.std(dim=(2, 3), unbiased=False)
    # the new statistics lie between the batch's own (a mix of two samples')
    assert (out_mu >= mu.min() - 1e-4).all() and (out_mu <= mu.max() + 1e-4).all()
    assert (out_sigma >= sigma.min() * 0.99).all() and (out_sigma <= sigma.max() * 1.01).all()
    assert not torch.allclose(out_mu, mu, atol=1e-3)  # some sample got another's style
    # the content (the normalised map) is unchanged
    norm = (x - mu[..., None, None]) / sigma[..., None, None]
    out_norm = (out - out_mu[..., None, None]) / out_sigma[..., None, None]
    assert torch.allclose(norm, out_norm, atol=1e-3)


def test_mixstyle_off_draws_nothing_and_changes_nothing() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 3, 4, 4)
    torch.manual_seed(5)
    assert torch.equal(T.mixstyle(x, p=0.0), x)  # p = 0: never mixes
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.rand(1)  # the one draw that decides
    assert torch.equal(torch.rand(1), after)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mixstyle", "0.5"], "--mixstyle needs --backbone"),
        (["--mixstyle", "1.5"], "--mixstyle takes a probability in [0, 1]"),
        (["--mixstyle-after", "0,x"], "not a list of block numbers"),
        (["--mixstyle-after=-1"], "block numbers are 0 or more"),
    ],
)
def test_cli_rejects_bad_mixstyle_options(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_mixing_after_the_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "g.json"
    graph.write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--backbone",
              str(graph), "--tap", "b5", "--mixstyle", "0.5", "--mixstyle-after", "0,7"])  # fmt: skip
    assert exc.value.code == 2
    assert "cut after block 5" in capsys.readouterr().err


def test_occluders_and_intruders_are_cut_from_photographs_only() -> None:
    samples = [_sample("cnrpark", 0), _sample("synthetic", 0), _sample("pklot", 1)]
    samples += [_sample("synthetic", 1), _sample("cnrpark", 1)]
    free, busy = T.paste_pools(samples)
    assert free.tolist() == [0] and busy.tolist() == [2, 4]


# ----------------------------------------------------------------------------- weight averaging


def test_ema_follows_the_formula_with_warm_up() -> None:
    """The plain mean of the first weights, then decay 0.9 from the tenth update on."""
    avg = T.WeightAverage(0.9)
    ws = [np.array([float(i), 2.0 * i]) for i in range(1, 40)]
    expected = ws[0].copy()
    avg.update(1, {"w": ws[0]})
    for n, w in enumerate(ws[1:], start=1):
        avg.update(n + 1, {"w": w})
        d = min(0.9, n / (n + 1))
        expected = expected * d + w * (1 - d)
    np.testing.assert_allclose(avg.avg["w"], expected)
    assert avg.count == len(ws)
    # late weights dominate, but the average lags behind the last ones
    assert ws[-12][0] < avg.avg["w"][0] < ws[-1][0]


def test_mean_from_a_step_is_the_plain_mean_of_the_later_weights() -> None:
    avg = T.WeightAverage(None, start=4)
    for step in range(1, 11):
        avg.update(step, {"a": np.full(3, float(step)), "b": np.array([step**2.0])})
    assert avg.count == 7
    np.testing.assert_allclose(avg.avg["a"], np.full(3, np.mean(range(4, 11))))
    np.testing.assert_allclose(avg.avg["b"], [np.mean([s**2.0 for s in range(4, 11)])])


def test_weight_average_copies_the_first_weights_and_rejects_bad_decays() -> None:
    w = np.array([1.0, 2.0])
    avg = T.WeightAverage(0.5)
    avg.update(1, {"w": w})
    w[:] = 99.0  # the caller's buffer changes afterwards (torch updates in place)
    np.testing.assert_array_equal(avg.avg["w"], [1.0, 2.0])
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            T.WeightAverage(bad)


def test_averaging_does_not_change_the_training_and_is_what_gets_loaded() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    samples = [
        T.Sample(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), i % 2, "cnrpark", "d")
        for i in range(8)
    ]
    plain = T.train(samples, 16, 4, 4, 1e-3, 0, 0.4)
    avg = T.WeightAverage(None, start=3)
    averaged_run = T.train(samples, 16, 4, 4, 1e-3, 0, 0.4, averages=[avg])
    for a, b in zip(plain.state_dict().values(), averaged_run.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same trajectory, same last weights
    assert avg.count == 2
    loaded = T.load_average(averaged_run, avg)
    for k, v in loaded.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, avg.avg[k])
    assert not all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError):
        T.load_average(plain, T.WeightAverage(0.99))


def test_cli_rejects_bad_weight_averages(tmp_path: Path) -> None:
    for args in (["--ema", "1.0"], ["--swa", "0"], ["--ema", "0.99", "--swa", "0.3"]):
        with pytest.raises(SystemExit) as exc:
            main(["--cnrpark", str(tmp_path), "--out", str(tmp_path / "m.onnx"), *args])
        assert exc.value.code == 2


# ----------------------------------------------------------------------------- occluders


def test_occluders_can_be_restricted_to_some_days() -> None:
    samples = [
        T.Sample(np.zeros((4, 4, 3), np.uint8), 0, "cnrpark", "20150708"),
        T.Sample(np.zeros((4, 4, 3), np.uint8), 0, "cnrpark", "20150703"),
        T.Sample(np.zeros((4, 4, 3), np.uint8), 1, "cnrpark", "20150708"),
        T.Sample(np.zeros((4, 4, 3), np.uint8), 0, "pklot", "2013-02-22"),
        T.Sample(np.zeros((4, 4, 3), np.uint8), 0, "synthetic", "20150708"),
    ]
    free, busy = T.paste_pools(samples, {"20150708"})
    assert free.tolist() == [0] and busy.tolist() == [2]
    free, _ = T.paste_pools(samples, {"19990101"})  # day not trained on: all free photographs
    assert free.tolist() == [0, 1, 3]


def test_occluder_size_scales_the_covered_area() -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    other = np.full((32, 32, 3), 200, np.uint8)

    def covered(scale: float) -> float:
        return float(
            np.mean(
                [
                    (T._occlude(img, other, np.random.default_rng(s), scale)[..., 0] > 100).mean()
                    for s in range(40)
                ]
            )
        )

    default = T._occlude(img, other, np.random.default_rng(0))  # scale 1 by default
    assert np.array_equal(default, T._occlude(img, other, np.random.default_rng(0), 1.0))
    assert covered(1.5) > 1.5 * covered(1.0)
    assert T.AUG["occlude"] == 0.3 and T.AUG["occlude_size"] == 1.0  # the v3 recipe
