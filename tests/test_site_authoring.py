"""Site-file slips an author makes, refused or warned about with what to write instead:
a repeated kind or policy, a row reached from another level's lane node, YAML reading an
id as a number or true/false, a plain name, a bare range, a path edge between levels, a
camera polygon out of frame, and a zone or sign line without spaces (满 FULL for good)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parkguide.cli import main
from parking.site import SiteError, lane_warnings, parse_site
from parking.sitedoc import render
from tests.conftest import EXAMPLE_SITE

TEXT = EXAMPLE_SITE.read_text(encoding="utf-8")
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "parking" / "examples").glob("*.yaml"))
RAW = ("Input should be a valid", "constrained-str", "instance of LocalName")


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SiteError) as info:
        parse_site(text, "s.yaml")
    return info.value.problems


def check(tmp_path, text: str, capsys, *args: str) -> tuple[int, str, str, str]:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    rc = main(["site", "check", str(path), *args])
    out, err = capsys.readouterr()
    return rc, out, err, str(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_sites_pass_without_warnings(path):
    site = parse_site(path.read_text(encoding="utf-8"), str(path))
    assert lane_warnings(site) == []


def test_a_repeated_kind_is_refused_by_site_check(tmp_path, capsys):
    """The gateway numbered kinds by their place and died with an IndexError at start."""
    text = TEXT.replace(
        "kinds: [resident, visitor, ev, accessible, shared]",
        "kinds: [resident, visitor, ev, accessible, shared, ev]",
    )
    rc, _, err, path = check(tmp_path, text, capsys)
    assert rc == 2
    assert (
        f"{path}:{line_of(text, 'kinds: [resident, visitor, ev')}: kinds[5]: duplicate kind 'ev'"
        in err
    )


def test_a_row_reached_from_another_levels_node_is_refused(tmp_path, capsys):
    """A B1 row with a ground access node sent cars to B1 by a route ending on the ground."""
    old = "{ids: B1-E-031..B1-E-060, zone: E, kinds: [resident], access: [K0, K1, K2],"
    text = TEXT.replace(old, old.replace("[K0, K1, K2]", "[N1]"))
    rc, _, err, path = check(tmp_path, text, capsys)
    assert rc == 2
    line = line_of(text, "{ids: B1-E-031..B1-E-060")
    assert (
        f"{path}:{line}: spaces[11].access: access node N1 is on level G but zone E is on level B1"
    ) in err


def test_numbers_and_booleans_read_by_yaml_say_to_quote_them():
    text = TEXT.replace("ids: B-037..B-072", "ids: [101, 1.50, yes]", 1)
    problems = problems_of(text)
    line = line_of(text, "ids: [101, 1.50, yes]")
    # one problem per item, in the words of the fix, none for the union's other branch
    assert problems == [
        f"s.yaml:{line}: spaces[4].ids[0]: YAML read 101 as a number, not as text:"
        " quote it ('101')",
        f"s.yaml:{line}: spaces[4].ids[1]: YAML read 1.50 as a number, not as text:"
        " quote it ('1.50')",
        f"s.yaml:{line}: spaces[4].ids[2]: YAML read yes as true/false (yes/no, on/off and"
        " true/false are booleans in YAML), not as text: quote it ('yes')",
    ], problems
    single = problems_of(TEXT.replace("ids: B-037..B-072", "ids: 101", 1))
    hits = [p for p in single if "spaces[4].ids" in p]
    assert hits == [f"s.yaml:{line}: spaces[4].ids: YAML read 101 as a number, not as text:"
                    " quote it ('101')"], single  # fmt: skip
    # the quoted forms are fine ids
    quoted = TEXT.replace("ids: B-037..B-072", "ids: [B-037..B-072, '101', '1.50', 'yes']", 1)
    assert parse_site(quoted, "s.yaml").space("yes").zone == "B"


def test_a_plain_name_says_to_give_chinese_and_english():
    text = TEXT.replace("{id: C, level: G, name: {zh: C区访客, en: Zone C Visitors}}",
                        "{id: C, level: G, name: Visitors}")  # fmt: skip
    (problem,) = problems_of(text)
    assert problem == (
        f"s.yaml:{line_of(text, '{id: C, level: G')}: zones[2].name: a name is text in Chinese"
        " and English: write name: {zh: <Chinese>, en: Visitors}"
    )
    text = TEXT.replace("label: {zh: A区, en: Zone A}", "label: A区", 1)
    (problem,) = problems_of(text)
    assert "label: {zh: A区, en: <English>}" in problem and not any(r in problem for r in RAW)


def test_a_bare_range_binds_a_node_like_a_row_or_a_camera_row():
    """SpaceGroup.ids and CameraRow.spaces took a bare range; a node's spaces did not."""
    bare = TEXT.replace(
        "{address: 6, spaces: [B-065..B-072]}", "{address: 6, spaces: B-065..B-072}"
    )
    assert bare != TEXT
    assert parse_site(bare, "s.yaml").bus("bus-g").node(6) == (
        parse_site(TEXT, "s.yaml").bus("bus-g").node(6)
    )
    bad = TEXT.replace("{address: 6, spaces: [B-065..B-072]}", "{address: 6, spaces: B-065..B-99}")
    problems = problems_of(bad)
    assert any("buses[0].nodes[5].spaces: range 'B-065..B-99'" in p for p in problems), problems


def test_a_path_between_levels_says_how_to_write_the_edge():
    text = TEXT.replace("    - {from: R1, to: K1, length: 45}    # ramp", "    - [R1, K1]", 1)
    (problem,) = problems_of(text)
    assert problem == (
        f"s.yaml:{line_of(text, '    - [R1, K1]')}: lanes.edges[5]: the edge from R1 to K1 joins"
        " levels G and B1: a path has no length: write it as {from: R1, to: K1, length: ...}"
        " (metres)"
    )
    text = TEXT.replace("{from: R1, to: K1, length: 45}", "{from: R1, to: K1}", 1)
    (problem,) = problems_of(text)
    assert "joins levels G and B1: give its length" in problem


def test_a_camera_polygon_out_of_frame_names_its_row_or_space():
    row = TEXT.replace("first: [[120, 470], [168, 470]", "first: [[120, 470], [168, 790]", 1)
    (problem,) = problems_of(row)
    line = line_of(row, "first: [[120, 470], [168, 790]")
    assert problem.startswith(f"s.yaml:{line}: cameras[0].rows[1].first: polygon of 'C-021'")
    assert "leaves the 1280x720 frame (likewise" in problem
    single = TEXT.replace(
        "      - spaces: C-021..C-040\n",
        "      - spaces: C-021..C-039\n",
        1,
    ).replace(
        "    last: [[1110, 470], [1158, 470], [1134, 350], [1090, 350]]\n",
        "    last: [[1110, 470], [1158, 470], [1134, 350], [1090, 350]]\n"
        "    spaces:\n"
        "      - space: C-040\n"
        "        polygon: [[1200, 470], [1300, 470], [1250, 350]]\n",
        1,
    )
    assert single.count("space: C-040") == 1
    (problem,) = problems_of(single)
    line = line_of(single, "polygon: [[1200, 470]")
    assert problem == (
        f"s.yaml:{line}: cameras[0].spaces[0].polygon: polygon of 'C-040' leaves the 1280x720 frame"
    )


EMPTY_ZONE = TEXT.replace(
    "  - {id: F, level: B1,",
    "  - {id: Q, level: G, name: {zh: 空区, en: Empty}}\n  - {id: F, level: B1,",
    1,
).replace(
    "zones: [D], vehicle_class: resident}\n  - id: jct-w0",
    "zones: [D], vehicle_class: resident}\n"
    "      - {label: {zh: 空区, en: Empty}, arrow: up, zones: [Q]}\n"
    "      - {label: {zh: 访客D, en: D visitors}, arrow: up, zones: [D, Q],"
    " vehicle_class: visitor}\n"
    "  - id: jct-w0",
    1,
)


def test_a_zone_and_sign_lines_without_spaces_are_warned_about(tmp_path, capsys):
    """Such a line reads 满 FULL for good: site check warns (exit 0), and so does the list
    the gateway logs at its start (lane_warnings)."""
    assert EMPTY_ZONE.count("zones: [Q]") == 1 and "zones: [D, Q]" in EMPTY_ZONE
    site = parse_site(EMPTY_ZONE, "s.yaml")
    display = next(d for d in site.displays if any(ln.zones == ["Q"] for ln in d.lines))
    li = next(i for i, ln in enumerate(display.lines) if ln.zones == ["Q"])
    warnings = lane_warnings(site)
    assert len(warnings) == 3, warnings
    assert (
        warnings[0].startswith("zone Q (空区 / Empty) has no spaces") and "满 FULL" in warnings[0]
    )
    assert warnings[1].startswith(
        f"display {display.id} lines[{li}] (空区 / Empty) counts no space"
    )
    assert "have none that vehicle class visitor may use" in warnings[2]
    rc, out, err, _ = check(tmp_path, EMPTY_ZONE, capsys)
    assert rc == 0, err
    shown = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("warning:")]
    assert shown == [f"warning: {w}" for w in warnings]
    rc, out, _, _ = check(tmp_path, EMPTY_ZONE, capsys, "--json")
    assert rc == 0 and json.loads(out)["warnings"] == warnings


def test_the_docs_say_the_new_checks():
    doc = render()
    assert "zones, kinds, classes, policies, lane nodes" in doc
    assert "a row's\n`access` node is on another level than the row's zone" in doc
    assert "write\nsuch an edge as `{from: a, to: b, length: ...}`" in doc
    assert "Quote an id that YAML would read" in doc and "`kinds: ['on']`" in doc
    assert "a zone without spaces" in doc


# the main road made one-way at C0: a car from the east gate reaches zone C only, while the
# north gate reaches every zone (R2 -> C0 is still allowed)
EAST_CUT_OFF = TEXT.replace(
    "    - [GE, R4, C2, R3, C0, R2, R1, R0]   # main road\n",
    "    - [GE, R4, C2, R3, C0]\n    - {from: R2, to: C0, oneway: true}\n    - [R2, R1, R0]\n",
)


def test_an_entrance_sign_counting_spaces_its_entrance_cannot_reach_is_warned_about(
    tmp_path, capsys
):
    """The east gate's sign counted zone B and the basement, which no car from the east
    gate can reach: site check names the lines (exit 0), and the gateway logs the same."""
    assert EAST_CUT_OFF != TEXT
    site = parse_site(EAST_CUT_OFF, "s.yaml")
    warnings = lane_warnings(site)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(
        "display gate-east lines[1] (B区 / Zone B) counts 72 spaces a car from entrance east"
        " cannot reach over the lanes (B-001, B-002,"
    )
    assert warnings[1].startswith("display gate-east lines[2] (地库B1 / Basement B1) counts 108")
    rc, out, err, _ = check(tmp_path, EAST_CUT_OFF, capsys)
    assert rc == 0, err
    assert [ln.strip() for ln in out.splitlines() if ln.strip().startswith("warning:")] == [
        f"warning: {w}" for w in warnings
    ]
