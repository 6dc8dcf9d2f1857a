"""Tests of the per-space camera occupancy classifier (edge.camera)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import crops, evaluate
from edge.camera.classifier import DEFAULT_MODEL, SpaceClassifier, raw_input, standardise
from edge.camera.pklot import labelled_spaces, parse_pklot_xml

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UFPR05 = DATA / "pklot-ufpr05"
CNRPARK = DATA / "cnrpark-patches-train"
MODEL_DIR = DEFAULT_MODEL.parent
HOLDOUT_MODEL = MODEL_DIR / "occupancy_holdout.onnx"
HOLDOUT_CNR_FLOOR = 0.87  # measured 0.876 (full day), 0.888 (this subsample)
HOLDOUT_UFPR_FLOOR = 0.98  # measured 0.985 (197/200: 3 false positives)
FIT_UFPR_FLOOR = 0.98  # measured 0.987 on all 600 (training data!)

needs_data = pytest.mark.skipif(
    not (UFPR05.is_dir() and CNRPARK.is_dir()),
    reason=f"shared real data not found at {DATA} (../shared/data beside the repo)",
)

XML = """<?xml version="1.0"?>
<parking id="test">
  <space id="1" occupied="1">
    <rotatedRect><center x="50" y="50"/><size w="20" h="40"/><angle d="0"/></rotatedRect>
    <contour><Point x="40" y="30"/><Point x="60" y="30"/>
             <Point x="60" y="70"/><Point x="40" y="70"/></contour>
  </space>
  <Space id="2" occupied="0">
    <Contour><point x="100" y="30"/><point x="120" y="30"/>
             <point x="120" y="70"/><point x="100" y="70"/></Contour>
  </Space>
  <space id="3">
    <contour><point x="200" y="30"/><point x="220" y="30"/>
             <point x="220" y="70"/><point x="200" y="70"/></contour>
  </space>
</parking>
"""


# ----------------------------------------------------------------------------- XML


def test_parse_case_insensitive_tags() -> None:
    spaces = parse_pklot_xml(XML)
    assert [s.id for s in spaces] == ["1", "2", "3"]
    assert spaces[0].occupied is True and spaces[1].occupied is False
    assert spaces[2].occupied is None
    np.testing.assert_array_equal(spaces[0].contour, [[40, 30], [60, 30], [60, 70], [40, 70]])
    assert spaces[1].contour.shape == (4, 2) and spaces[1].contour.dtype == np.int32


def test_unlabelled_spaces_skipped() -> None:
    spaces = labelled_spaces(XML)
    assert [s.id for s in spaces] == ["1", "2"]


def test_contour_not_confused_with_rotated_rect() -> None:
    # the rotatedRect's <center> is not a point; only contour points are used
    assert len(parse_pklot_xml(XML)[0].contour) == 4


# ----------------------------------------------------------------------------- crops


def _two_tone_space(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Grey frame with a rotated 60x140 space: red half at the top, blue half at the bottom."""
    frame = np.full((360, 640, 3), 128, np.uint8)
    rect = ((320, 180), (60, 140), angle)
    box = cv2.boxPoints(rect)
    centre, down, right, long_n, short_n = crops.rect_axes(box)
    assert long_n == pytest.approx(140, abs=1) and short_n == pytest.approx(60, abs=1)
    top = np.array([centre - right * 30 - down * 70, centre + right * 30 - down * 70,
                    centre + right * 30, centre - right * 30])  # fmt: skip
    bottom = top + down * 70
    cv2.fillPoly(frame, [np.round(top).astype(np.int32)], (0, 0, 255))
    cv2.fillPoly(frame, [np.round(bottom).astype(np.int32)], (255, 0, 0))
    return frame, box.astype(np.int32)


@pytest.mark.parametrize("angle", [0.0, 25.0, -40.0, 90.0, 70.0])
def test_crop_is_upright_long_axis_vertical(angle: float) -> None:
    frame, poly = _two_tone_space(angle)
    patch = crops.crop_polygons(frame, [poly], size=32, margin=0.1)[0]
    assert patch.shape == (32, 32, 3) and patch.dtype == np.uint8
    top, bottom = patch[6:12, 8:24].reshape(-1, 3), patch[20:26, 8:24].reshape(-1, 3)
    assert top[:, 2].mean() > 200 and top[:, 0].mean() < 50  # red on top
    assert bottom[:, 0].mean() > 200 and bottom[:, 2].mean() < 50  # blue at the bottom
    # the context margin shows the grey background at the patch border
    assert np.abs(patch[0, 16].astype(int) - 128).max() < 40
    assert np.abs(patch[16, 0].astype(int) - 128).max() < 40


def test_negative_margin_insets_the_crop() -> None:
    # a negative margin crops inside the space: no background at the patch border
    frame, poly = _two_tone_space(25.0)
    patch = crops.crop_polygons(frame, [poly], size=32, margin=-0.2)[0]
    assert patch[1, 16, 2] > 200 and patch[1, 16, 0] < 50  # red up to the top edge
    assert patch[30, 16, 0] > 200 and patch[30, 16, 2] < 50  # blue down to the bottom edge
    assert patch[16, 1, 0] > 150 or patch[16, 1, 2] > 150  # no grey background at the sides
    with pytest.raises(ValueError, match="margin"):
        crops.crop_polygons(frame, [poly], size=32, margin=-0.5)


def test_precomputed_plan_matches_one_shot_and_many_polygons() -> None:
    frame, poly = _two_tone_space(10.0)
    polys = [poly, poly + [100, 0], poly - [100, 0]]
    plan = crops.precompute(polys, size=40)
    a = crops.extract(frame, plan)
    b = crops.crop_polygons(frame, polys, size=40)
    assert a.shape == (3, 40, 40, 3)
    np.testing.assert_array_equal(a, b)
    assert len(crops.extract(frame, crops.precompute([], size=40))) == 0


def test_polygon_partly_outside_frame() -> None:
    frame = np.full((100, 100, 3), 90, np.uint8)
    poly = np.array([[80, 80], [130, 80], [130, 140], [80, 140]])
    patch = crops.crop_polygons(frame, [poly], size=32)[0]
    assert patch.shape == (32, 32, 3)


# ----------------------------------------------------------------------------- classifier


def test_classifier_outputs_on_synthetic_frame() -> None:
    clf = SpaceClassifier.load()
    frame, poly = _two_tone_space(30.0)
    polys = [poly, poly + [150, 0]]
    occ, conf = clf.classify(frame, polys)
    assert occ.shape == (2,) and occ.dtype == bool
    assert conf.shape == (2,) and np.all((conf >= 0.0) & (conf <= 1.0))
    occ2, conf2 = clf.classify(frame, clf.plan(polys))
    np.testing.assert_array_equal(occ, occ2)
    np.testing.assert_allclose(conf, conf2)
    occ3, conf3 = clf.classify_patches([np.zeros((150, 120, 3), np.uint8), frame[:, :, 0]])
    assert occ3.shape == (2,) and np.all((conf3 >= 0) & (conf3 <= 1))
    assert clf.classify_patches([])[0].shape == (0,)


def test_patch_inset_takes_the_centre_of_a_whole_patch() -> None:
    patch = np.zeros((100, 80, 3), np.uint8)
    patch[:, :] = (0, 0, 255)  # a red frame 10 % wide on every side ...
    patch[10:90, 8:72] = 120  # ... around a grey centre
    centre = crops.inset_patch(patch, -0.1)
    assert centre.shape == (80, 64, 3) and np.all(centre == 120)
    resized = crops.normalise_patch(patch, 32, -0.1)
    assert resized.shape == (32, 32, 3) and np.all(resized == 120)
    assert crops.inset_patch(patch, 0.0) is patch
    assert (crops.normalise_patch(patch, 32)[..., 2] > 120).any()  # whole: the frame shows
    for bad in (0.1, -0.5, -0.7):
        with pytest.raises(ValueError):
            crops.inset_patch(patch, bad)


def test_classifier_insets_patches_by_its_metadata(tmp_path: Path) -> None:
    """A model whose metadata has ``patch_margin`` sees only the centre of a whole patch;
    polygons keep their own ``margin``; older models (no key) see whole patches."""
    plain = SpaceClassifier.load()
    assert plain.patch_margin == 0.0
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    model = tmp_path / "m.onnx"
    model.write_bytes(DEFAULT_MODEL.read_bytes())
    model.with_suffix(".json").write_text(json.dumps({**meta, "patch_margin": -0.25}))
    inset = SpaceClassifier.load(model)
    assert inset.patch_margin == -0.25 and inset.margin == plain.margin
    rng = np.random.default_rng(3)
    patches = [rng.integers(0, 255, (150, 120, 3), dtype=np.uint8) for _ in range(4)]
    patches[0][40:110, 30:90] = (30, 30, 200)  # something in the middle of one
    _, conf_inset = inset.classify_patches(patches)
    _, conf_manual = plain.classify_patches([crops.inset_patch(p, -0.25) for p in patches])
    np.testing.assert_allclose(conf_inset, conf_manual, rtol=1e-5)
    _, conf_whole = plain.classify_patches(patches)
    assert not np.allclose(conf_inset, conf_whole)
    model.with_suffix(".json").write_text(json.dumps({**meta, "patch_margin": 0.2}))
    with pytest.raises(ValueError, match="patch margin"):
        SpaceClassifier.load(model)


def test_grey_input_mode() -> None:
    patches = np.zeros((2, 32, 32, 3), np.uint8)
    patches[0, :, :16] = (0, 0, 255)  # red left half, black right half
    patches[1, :, :, 1] = 200
    x = standardise(patches, "grey")
    assert x.shape == (2, 1, 32, 32) and x.dtype == np.float32
    assert x[0, 0, 5, 2] > 0 > x[0, 0, 5, 30]  # the grey level keeps the red/black edge
    np.testing.assert_allclose(x[1], 0.0, atol=1e-6)  # a flat patch stays flat
    assert standardise(patches).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="colour"):
        standardise(patches, "hsv")


def test_raw_input_mode() -> None:
    patches = np.zeros((2, 8, 8, 3), np.uint8)
    patches[0, 1, 2] = (10, 20, 250)
    x = raw_input(patches)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    assert tuple(x[0, :, 1, 2]) == (10.0, 20.0, 250.0)  # BGR order, 0..255, no scaling
    net = cv2.dnn.readNetFromONNX(str(DEFAULT_MODEL))
    with pytest.raises(ValueError, match="preprocess"):
        SpaceClassifier(net, 32, 0.1, preprocess="imagenet")
    with pytest.raises(ValueError, match="raw"):
        SpaceClassifier(net, 32, 0.1, colour="grey", preprocess="raw")


def test_bundled_model_metadata_consistent() -> None:
    for p in MODEL_DIR.glob("*.onnx"):
        meta = json.loads(p.with_suffix(".json").read_text())
        clf = SpaceClassifier.load(p)
        assert clf.preprocess == meta.get("preprocess", "standardise")
        assert clf.size == meta["size"] and clf.margin == meta["margin"]


def _tfjs_graph(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A 3-node TF.js graph model in the CenterNet naming: conv s2 (+ReLU6, float16
    weights), depthwise (+ReLU), residual add, cut point ``b5``."""
    import base64

    rng = np.random.default_rng(0)
    w = {
        "c/w": rng.normal(0, 0.2, (3, 3, 3, 4)).astype(np.float16),
        "c/b": rng.normal(0, 0.1, 4).astype(np.float32),
        "d/w": rng.normal(0, 0.3, (3, 3, 4, 1)).astype(np.float32),
        "d/b": rng.normal(0, 0.1, 4).astype(np.float32),
    }

    def b64(t: str) -> str:
        return base64.b64encode(t.encode()).decode()

    def conv(name: str, op: str, src: str, wk: str, bk: str, stride: int, act: str) -> dict:
        return {"name": name, "op": op, "input": [src, wk, bk], "attr": {
            "strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}},
            "padding": {"s": b64("SAME")},
            "fused_ops": {"list": {"s": [b64("BiasAdd"), b64(act)]}}}}  # fmt: skip

    tap = "tower_0/MobilenetV3/expanded_conv_5/add"
    nodes = [{"name": k, "op": "Const"} for k in w] + [
        {"name": "tower_0/images", "op": "Placeholder"},
        conv("conv", "_FusedConv2D", "tower_0/images", "c/w", "c/b", 2, "Relu6"),
        conv("dw", "FusedDepthwiseConv2dNative", "conv", "d/w", "d/b", 1, "Relu"),
        {"name": tap, "op": "Add", "input": ["dw", "conv"]},
    ]
    manifest = [{"name": "c/w", "shape": [3, 3, 3, 4], "dtype": "float32",
                 "quantization": {"dtype": "float16", "original_dtype": "float32"}}]  # fmt: skip
    manifest += [
        {"name": k, "shape": list(w[k].shape), "dtype": "float32"} for k in ("c/b", "d/w", "d/b")
    ]
    (tmp_path / "g.bin").write_bytes(b"".join(w[k].tobytes() for k in ("c/w", "c/b", "d/w", "d/b")))
    spec = {"format": "graph-model", "modelTopology": {"node": nodes},
            "weightsManifest": [{"paths": ["g.bin"], "weights": manifest}]}  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(spec))
    return tmp_path / "g.json", {k: v.astype(np.float32) for k, v in w.items()}


def test_pretrained_backbone_reader(tmp_path: Path) -> None:
    """The TF.js reader reproduces TF semantics: HWIO weights, float16 weights, BGR
    input for an RGB graph, asymmetric "SAME" padding at stride 2, fused activations."""
    torch = pytest.importorskip("torch")
    from edge.camera.backbone import build_backbone

    path, w = _tfjs_graph(tmp_path)
    body = build_backbone(path, "b5").eval()
    x = np.random.default_rng(1).uniform(0, 255, (2, 3, 8, 8)).astype(np.float32)  # BGR
    with torch.no_grad():
        got = body(torch.from_numpy(x)).numpy()
    # reference in numpy: RGB input, TF SAME padding (0 before, 1 after for 8 -> 4 at stride 2)
    rgb = np.pad(x[:, ::-1], ((0, 0), (0, 0), (0, 1), (0, 1)))
    c = np.zeros((2, 4, 4, 4), np.float32)
    for i in range(4):
        for j in range(4):
            win = rgb[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]  # N C kh kw
            c[:, :, i, j] = np.einsum("nchw,hwco->no", win, w["c/w"]) + w["c/b"]
    c = np.clip(c, 0, 6)
    cp = np.pad(c, ((0, 0), (0, 0), (1, 1), (1, 1)))
    d = np.zeros_like(c)
    for i in range(4):
        for j in range(4):
            d[:, :, i, j] = np.einsum(
                "nchw,hwc->nc", cp[:, :, i : i + 3, j : j + 3], w["d/w"][..., 0]
            )
    d = np.maximum(d + w["d/b"][None, :, None, None], 0)
    np.testing.assert_allclose(got, d + c, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="tap"):
        build_backbone(path, "b7")


def test_backbone_train_hooks_act_in_training_only(tmp_path: Path) -> None:
    """A hook on a node (MixStyle in training) changes the output in training mode and
    nothing in eval mode, which is what gets exported."""
    torch = pytest.importorskip("torch")
    from edge.camera.backbone import build_backbone

    path, _ = _tfjs_graph(tmp_path)
    body = build_backbone(path, "b5").eval()
    x = torch.from_numpy(np.random.default_rng(2).uniform(0, 255, (2, 3, 8, 8)).astype("f4"))
    with torch.no_grad():
        plain = body(x)
        body.train_hooks["conv"] = lambda y: y * 0.0
        hooked_eval = body(x)
        body.train()
        hooked_train = body(x)
    assert torch.equal(plain, hooked_eval)
    assert not torch.allclose(plain, hooked_train)
    assert "conv" in body.node_names


def test_model_files_small() -> None:
    for p in MODEL_DIR.glob("*.onnx"):
        assert p.stat().st_size < 5 * 1024 * 1024, p


# ----------------------------------------------------------------------------- evaluate CLI


def _run_eval(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    rc = evaluate.main(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_missing_or_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = _run_eval([str(tmp_path / "nope"), "--json"], capsys)
    assert rc == 2 and "not found" in err
    rc, _, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 2 and "no labelled images" in err
    rc, _, err = _run_eval([str(tmp_path), "--patches"], capsys)
    assert rc == 2 and "no labelled patches" in err


def _labelled_frame(folder: Path, name: str, spaces: list[tuple[str, np.ndarray]]) -> None:
    """The two-tone test frame as ``name``.jpg, and a PKLot annotation beside it named
    ``name`` with the image's stem: one space per (occupied attribute, contour)."""
    frame, _ = _two_tone_space(0.0)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{Path(name).stem}.jpg"), frame)
    body = "".join(
        f'<space id="{i}"{occ}><contour>'
        + "".join(f'<point x="{x}" y="{y}"/>' for x, y in contour)
        + "</contour></space>"
        for i, (occ, contour) in enumerate(spaces, 1)
    )
    (folder / name).write_text(f"<parking>{body}</parking>")


def test_eval_synthetic_frame_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, poly = _two_tone_space(0.0)
    _labelled_frame(tmp_path / "a" / "b", "f1.xml", [(' occupied="1"', poly), ("", poly)])
    rc, out, _ = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0
    res = json.loads(out.strip())
    assert set(res) == {"images", "spaces", "accuracy", "precision", "recall", "f1", "ms_per_frame"}
    assert res["images"] == 1 and res["spaces"] == 1
    rc, out, _ = _run_eval([str(tmp_path)], capsys)
    assert rc == 0 and "accuracy" in out


def test_eval_finds_labels_in_any_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Patches under busy/ or free/ folders at any depth (CNRPark's camera folders, any
    letter case); an annotation named .Xml next to its frame."""
    frame, poly = _two_tone_space(0.0)
    patch = frame[:60, :60]
    for rel in ("A/busy/1.jpg", "A/free/2.jpg", "B/Busy/3.jpg", "B/FREE/x/4.jpg", "C/5.jpg"):
        (tmp_path / "p" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "p" / rel), patch)
    rc, out, _ = _run_eval([str(tmp_path / "p"), "--patches", "--json"], capsys)
    assert rc == 0 and json.loads(out)["spaces"] == 4  # C/5.jpg has no label
    files = dict((p.name, label) for p, label in evaluate._patch_files(tmp_path / "p"))
    assert files == {"1.jpg": True, "2.jpg": False, "3.jpg": True, "4.jpg": False}
    _labelled_frame(tmp_path / "f" / "day1", "f1.Xml", [(' occupied="1"', poly)])
    rc, out, _ = _run_eval([str(tmp_path / "f"), "--json"], capsys)
    assert rc == 0 and json.loads(out)["images"] == 1


def test_eval_skips_a_space_whose_contour_is_a_point(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, poly = _two_tone_space(0.0)
    dot = np.array([[100, 100]] * 3)
    _labelled_frame(tmp_path, "f1.xml", [(' occupied="1"', poly), (' occupied="0"', dot)])
    rc, out, _ = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0
    res = json.loads(out.strip())
    assert res["images"] == 1 and res["spaces"] == 1


def test_eval_undefined_figures_are_null_not_perfect() -> None:
    """No occupied space called or labelled: precision/recall are undefined, not 1.0."""
    empty_lot = evaluate.metrics(np.array([False, False]), np.array([False, False]))
    assert empty_lot["accuracy"] == 1.0
    assert empty_lot["precision"] is None and empty_lot["recall"] is None
    assert empty_lot["f1"] is None
    blind = evaluate.metrics(np.array([False, False, False]), np.array([True, True, False]))
    assert blind["precision"] is None and blind["recall"] == 0.0 and blind["f1"] == 0.0
    false_alarm = evaluate.metrics(np.array([True, False]), np.array([False, False]))
    assert false_alarm["precision"] == 0.0 and false_alarm["recall"] is None
    assert false_alarm["f1"] == 0.0
    both = evaluate.metrics(np.array([True, True, False]), np.array([True, False, True]))
    assert both["f1"] == pytest.approx(0.5)  # 2PR/(P+R) with P = R = 0.5


def test_eval_reads_names_that_are_not_utf8_and_followed_links(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A Latin-1 file name (old NAS, unzip) once crashed OpenCV (segfault); folders linked
    into the dataset were not searched."""
    frame, poly = _two_tone_space(0.0)
    real = tmp_path / "real"
    _labelled_frame(real, "f1.xml", [(' occupied="1"', poly)])
    latin1 = os.fsdecode(b"caf\xe9")
    (real / "f1.jpg").rename(real / f"{latin1}.jpg")
    (real / "f1.xml").rename(real / f"{latin1}.xml")
    data = tmp_path / "data"
    data.mkdir()
    (data / "lot1").symlink_to(real, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)  # visited once, no loop
    rc, out, err = _run_eval([str(data), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["images"] == 1
    patches = tmp_path / "patches"
    (patches / "busy").mkdir(parents=True)
    (patches / "busy" / f"{latin1}.jpg").write_bytes(cv2.imencode(".jpg", frame[:60, :60])[1])
    elsewhere = tmp_path / "mounted" / "free"
    elsewhere.mkdir(parents=True)
    cv2.imwrite(str(elsewhere / "1.jpg"), frame[:60, :60])
    (patches / "free").symlink_to(elsewhere, target_is_directory=True)
    rc, out, err = _run_eval([str(patches), "--patches", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["images"] == 2


def test_eval_patches_reads_pklot_segmented_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """PKLotSegmented, the patches PKLot itself publishes, labels by ``Occupied`` and
    ``Empty`` folders: those were not found ("no labelled patches")."""
    frame, _ = _two_tone_space(0.0)
    for label, n in (("Occupied", 2), ("Empty", 3)):
        day = tmp_path / "PKLotSegmented" / "UFPR04" / "Sunny" / "2012-12-07" / label
        day.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(day / f"{i}.jpg"), frame[:60, :60])
    rc, out, err = _run_eval([str(tmp_path), "--patches", "--json"], capsys)
    assert rc == 0, err
    got = json.loads(out)
    assert got["images"] == 5 and got["spaces"] == 5
    # one picture for all five: it is called the same, right for 2 or for 3 of them
    assert got["accuracy"] in (0.4, 0.6)


def test_eval_skips_truncated_jpegs_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """libjpeg pads a cut JPEG with grey, which would be scored as empty stalls."""
    _, poly = _two_tone_space(0.0)
    _labelled_frame(tmp_path / "good", "f1.xml", [(' occupied="1"', poly)])
    _labelled_frame(tmp_path / "cut", "f2.xml", [(' occupied="1"', poly)])
    jpeg = (tmp_path / "cut" / "f2.jpg").read_bytes()
    (tmp_path / "cut" / "f2.jpg").write_bytes(jpeg[: len(jpeg) // 4])
    with caplog.at_level("WARNING"):
        rc, out, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["images"] == 1
    assert any("f2.jpg" in r.message and "truncated" in r.message for r in caplog.records)
    patches = tmp_path / "p" / "busy"
    patches.mkdir(parents=True)
    (patches / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 4])
    rc, _, err = _run_eval([str(tmp_path / "p"), "--patches", "--json"], capsys)
    assert rc == 2 and "no labelled patches" in err


def test_eval_skips_spaces_outside_their_image(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Labels for another image size are not scored against stretched edge pixels."""
    _, poly = _two_tone_space(0.0)
    away = poly + np.array([5000, 0])
    half_out = poly + np.array([0, 150])  # 140 px tall at y 250..390 of 360: 79 % inside
    _labelled_frame(
        tmp_path,
        "f1.xml",
        [(' occupied="1"', poly), (' occupied="1"', away), (' occupied="0"', half_out)],
    )
    with caplog.at_level("WARNING"):
        rc, out, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["spaces"] == 2
    assert any("1 of 3 spaces lie mostly outside" in r.message for r in caplog.records)
    _labelled_frame(tmp_path, "f1.xml", [(' occupied="1"', away)])
    rc, _, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 2 and "no labelled images" in err
    # half or more outside: the labels are another image's, those inside misplaced too
    # (a 640x360 picture with 1280x720 labels was scored on the 14 of 40 left inside)
    _labelled_frame(
        tmp_path, "f1.xml", [(' occupied="1"', poly), (' occupied="1"', away), ("", poly)]
    )
    _labelled_frame(tmp_path, "f2.xml", [(' occupied="1"', poly), (' occupied="0"', away)])
    caplog.clear()
    with caplog.at_level("WARNING"):
        rc, out, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 2 and "no labelled images" in err
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "f1.jpg skipped" in said and "f2.jpg skipped" in said


def test_rotated_rect_only_and_zero_area_contours(caplog: pytest.LogCaptureFixture) -> None:
    """A space labelled with its rotatedRect alone is used; a contour of collinear points
    (no area) is skipped with a warning, like one of fewer than three points."""
    xml = """<parking>
      <space id="1" occupied="1"><rotatedRect><center x="100" y="100"/><size w="40" h="80"/>
        <angle d="-30"/></rotatedRect></space>
      <space id="2" occupied="0"><contour><point x="0" y="0"/><point x="10" y="10"/>
        <point x="20" y="20"/></contour></space>
      <space id="3" occupied="0"><contour><point x="0" y="0"/><point x="10" y="0"/>
        <point x="10" y="10"/><point x="0" y="10"/></contour></space>
    </parking>"""
    with caplog.at_level("WARNING"):
        spaces = labelled_spaces(xml, "lot/f1.xml")
    assert [s.id for s in spaces] == ["1", "3"]
    assert cv2.contourArea(spaces[0].contour.reshape(-1, 1, 2)) == pytest.approx(3200, rel=0.05)
    said = [r.getMessage() for r in caplog.records]
    assert any("lot/f1.xml: 1 labelled space(s) without a usable contour" in m for m in said)


def test_eval_names_an_xml_without_a_label_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """An image whose XML had no label read as 0 or 1 (occupied="02") dropped out of the
    figures without a word."""
    _, poly = _two_tone_space(0.0)
    _labelled_frame(tmp_path, "good.xml", [(' occupied="1"', poly)])
    _labelled_frame(tmp_path, "odd.xml", [(' occupied="02"', poly), (' occupied="12"', poly)])
    with caplog.at_level("WARNING"):
        rc, out, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["images"] == 1
    warned = [r.getMessage() for r in caplog.records if "odd.xml" in r.getMessage()]
    assert any('neither 0 nor 1 (e.g. "02")' in w for w in warned), warned
    assert any("no labelled space" in w and "odd.jpg skipped" in w for w in warned), warned


def _exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF segment whose Orientation tag is ``orientation``."""
    ifd = (1).to_bytes(2, "little") + (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little")
    ifd += (1).to_bytes(4, "little") + orientation.to_bytes(2, "little") + b"\0\0"
    tiff = b"II*\0" + (8).to_bytes(4, "little") + ifd + (0).to_bytes(4, "little")
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def test_eval_reads_quirky_files_as_they_are_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Files met in real datasets: an empty image (it crashed the whole run), a JPEG with a
    trailer after its end (phones append kilobytes: it was called truncated), an EXIF
    orientation tag (labels are in the stored pixels: it was rotated, and scored on the
    wrong crops), a contour point that is no number (the image was dropped) and a contour
    of one point with a good ``<rotatedRect>`` (the space was dropped)."""
    from edge.camera.pklot import ImageError, parse_pklot_xml, read_image

    frame, poly = _two_tone_space(0.0)
    _labelled_frame(tmp_path, "a.xml", [(' occupied="1"', poly)])
    jpeg = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "trailer.jpg").write_bytes(jpeg + bytes(10_000))
    assert read_image(tmp_path / "trailer.jpg").shape == frame.shape
    (tmp_path / "turned.jpg").write_bytes(_exif_orientation(jpeg, 6))
    assert read_image(tmp_path / "turned.jpg").shape == frame.shape  # not 90° turned
    (tmp_path / "cut.jpg").write_bytes(_exif_orientation(jpeg, 6)[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.jpg")  # the EXIF segment's bytes do not hide the cut
    for name in ("empty", "trailer", "turned"):
        (tmp_path / f"{name}.xml").write_text((tmp_path / "a.xml").read_text())
    with caplog.at_level("WARNING"):
        rc, out, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert (res["images"], res["spaces"], res["accuracy"]) == (3, 3, 1.0), res
    assert any("empty.jpg" in r.getMessage() for r in caplog.records)
    (x, y) = poly[0]
    rect = f'<rotatedRect><center x="{x + 20}" y="{y + 20}"/><size w="30" h="30"/></rotatedRect>'
    for points in (f'<point x="{x},5" y="{y}"/>' * 4, f'<point x="{x}" y="{y}"/>' * 4):
        xml = f'<parking><space id="1" occupied="1"><contour>{points}</contour>{rect}</space></parking>'
        (space,) = parse_pklot_xml(xml)
        assert abs(cv2.contourArea(space.contour.reshape(-1, 1, 2).astype(np.float32))) > 800


def test_eval_says_what_is_wrong_with_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    """A file given as DIR; a folder of patches without --patches; an unreadable folder
    (its files were left out of the totals without a word)."""
    (tmp_path / "f.txt").write_text("x")
    rc, _, err = _run_eval([str(tmp_path / "f.txt"), "--json"], capsys)
    assert rc == 2 and "not a directory" in err
    frame, poly = _two_tone_space(0.0)
    (tmp_path / "p" / "busy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "p" / "busy" / "1.jpg"), frame[:60, :60])
    rc, _, err = _run_eval([str(tmp_path / "p"), "--json"], capsys)
    assert rc == 2 and "add --patches" in err
    _labelled_frame(tmp_path / "d" / "ok", "a.xml", [(' occupied="1"', poly)])
    _labelled_frame(tmp_path / "d" / "locked", "b.xml", [(' occupied="1"', poly)])
    real_scandir = os.scandir

    def scandir(path="."):  # noqa: ANN001, ANN202 - root reads every folder: a refusal, made
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING"):
        rc, out, err = _run_eval([str(tmp_path / "d"), "--json"], capsys)
    assert rc == 0 and json.loads(out)["images"] == 1, err
    assert any("locked" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)


def test_eval_reads_other_image_formats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, poly = _two_tone_space(0.0)
    _labelled_frame(tmp_path, "f1.xml", [(' occupied="1"', poly)])
    img = cv2.imread(str(tmp_path / "f1.jpg"))
    (tmp_path / "f1.jpg").unlink()
    cv2.imwrite(str(tmp_path / "f1.bmp"), img)
    rc, out, err = _run_eval([str(tmp_path), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["images"] == 1


def test_a_model_that_cannot_be_read_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage, not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        SpaceClassifier.load(bad)
    good = tmp_path / "m.onnx"
    good.write_bytes(DEFAULT_MODEL.read_bytes())
    for text in ("{bad", "[1, 2]"):
        good.with_suffix(".json").write_text(text)
        with pytest.raises(ValueError, match="metadata"):
            SpaceClassifier.load(good)
    cv2.imwrite(str(tmp_path / "f1.jpg"), _two_tone_space(0.0)[0])
    for model in (bad, good):
        rc, out, err = _run_eval([str(tmp_path), "--json", "--model", str(model)], capsys)
        assert rc == 2 and out == "" and err.startswith("error: cannot load model")


# ----------------------------------------------------------------------------- real data floors


def _eval_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    rc, out, err = _run_eval(argv + ["--json"], capsys)
    assert rc == 0, err
    return json.loads(out.strip())


def _day_accuracy_frames(clf: SpaceClassifier, day: str) -> tuple[float, int]:
    preds, truths = [], []
    for img in sorted(UFPR05.glob(f"{day}*")):
        if img.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        spaces = [s for s in parse_pklot_xml(img.with_suffix(".xml").read_bytes())
                  if s.occupied is not None]  # fmt: skip
        occ, _ = clf.classify(cv2.imread(str(img)), [s.contour for s in spaces])
        preds.append(occ)
        truths.append([bool(s.occupied) for s in spaces])
    p, t = np.concatenate(preds), np.concatenate(truths)
    return float(np.mean(p == t)), len(t)


def _day_accuracy_patches(clf: SpaceClassifier, day: str, step: int) -> tuple[float, int]:
    files = [(p, True) for p in sorted((CNRPARK / "busy").glob(f"{day}_*.jpg"))[::step]]
    files += [(p, False) for p in sorted((CNRPARK / "free").glob(f"{day}_*.jpg"))[::step]]
    occ, _ = clf.classify_patches([cv2.imread(str(p)) for p, _ in files])
    truth = np.array([lab for _, lab in files])
    return float(np.mean(occ == truth)), len(truth)


@needs_data
def test_heldout_floor_ufpr05_unseen_day() -> None:
    """HONEST floor: ``occupancy_holdout.onnx`` was trained without UFPR05 day
    2013-03-09 (and without CNRPark day 20150708); here it classifies that unseen
    day's 200 spaces through the full-frame run-time path. Measured 0.985 (3 empty
    stalls called occupied)."""
    clf = SpaceClassifier.load(HOLDOUT_MODEL)
    acc, n = _day_accuracy_frames(clf, "2013-03-09")
    assert n == 200
    assert acc >= HOLDOUT_UFPR_FLOOR


@needs_data
def test_heldout_floor_cnrpark_unseen_day() -> None:
    """HONEST floor: the same holdout model on CNRPark day 20150708, which it never
    saw (every 3rd patch, ~2100). That day looks like another camera (closer view,
    heavy tree occlusion): this is a cross-view figure, below the 0.95 target; see
    docs/camera.md. Measured 0.876 on the full day, 0.888 on this subsample."""
    clf = SpaceClassifier.load(HOLDOUT_MODEL)
    acc, n = _day_accuracy_patches(clf, "20150708", 3)
    assert n > 2000
    assert acc >= HOLDOUT_CNR_FLOOR


@needs_data
def test_fit_floor_bundled_model(capsys: pytest.CaptureFixture) -> None:
    """NOT a generalisation figure: the bundled model was trained on ALL of both
    datasets, so these floors only catch regressions of the crop / inference
    pipeline or a broken model file. UFPR05 through the ``eval camera`` code path
    (all 600 spaces; measured 0.987: some stained empty stalls are called
    occupied, see docs/camera.md) and CNRPark day 20150703 (every 4th patch;
    measured 0.996)."""
    res = _eval_json([str(UFPR05)], capsys)
    assert res["images"] == 15 and res["spaces"] == 600
    assert res["accuracy"] >= FIT_UFPR_FLOOR
    clf = SpaceClassifier.load()
    acc, n = _day_accuracy_patches(clf, "20150703", 4)
    assert n > 1000
    assert acc >= 0.95
