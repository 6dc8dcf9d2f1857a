"""Site model: ranges, bindings, policies, and errors that name file, line and field."""

from __future__ import annotations

import json
import subprocess
from datetime import date

import pytest

from parking import siteconfig as cfg
from parking.site import SiteError, expand_range, in_window, parse_site, parse_window
from tests.conftest import EXAMPLE_SITE, parkguide_cmd

TEXT = EXAMPLE_SITE.read_text(encoding="utf-8")


def test_expand_range():
    assert expand_range("A-001..A-003") == ["A-001", "A-002", "A-003"]
    assert expand_range("B1-E-009..B1-E-010") == ["B1-E-009", "B1-E-010"]
    assert expand_range("X-1") == ["X-1"]
    for bad in ("A-003..A-001", "A-01..A-002", "A-001..B-002", "A..B"):
        with pytest.raises(ValueError):
            expand_range(bad)


def test_windows_cross_midnight():
    w = parse_window("19:00-08:00")
    assert in_window(19 * 60, w) and in_window(2 * 60, w) and in_window(7 * 60 + 59, w)
    assert not in_window(8 * 60, w) and not in_window(12 * 60, w)


def test_example_site_requirements(example_site):
    s = example_site
    assert len(s.spaces) >= 300 and len(s.zones) >= 6 and len(s.entrances) == 2
    assert len(s.displays) >= 6 and len(s.buses) >= 2 and s.cameras
    assert {lv.kind for lv in s.levels} >= {"surface", "basement"}
    kinds = set().union(*(sp.kinds for sp in s.spaces))
    assert kinds >= {"resident", "visitor", "ev", "accessible", "shared"}
    bus_bound = sum(1 for b in s.bindings.values() if b.kind == "bus")
    assert bus_bound > len(s.spaces) / 2
    d = s.space("D-001")
    assert s.eligible(d, "resident", 20 * 60) and s.eligible(d, "resident", 7 * 60)
    assert not s.eligible(d, "resident", 12 * 60)
    assert s.eligible(d, "office", 12 * 60) and not s.eligible(d, "office", 22 * 60)
    node = s.bus("bus-g").node(1)
    assert node.spaces[0] == "A-001" and node.detectors == 32


def test_site_check_json():
    out = subprocess.run(
        parkguide_cmd("site", "check", str(EXAMPLE_SITE), "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    assert out.stdout.count("\n") == 1
    assert summary["ok"] is True
    assert summary["site"] == "xinyuan" and summary["spaces"] == 342
    assert summary["buses"]["bus-g"] == [1, 2, 3, 4, 5, 6, 7]
    assert (
        summary["cameras"] == ["cam-c"] and summary["displays"] == 7 and summary["entrances"] == 2
    )


def _line_of(needle: str, text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_each_source_has_one_agent_named_by_default_or_by_the_site():
    """The gateway accepts a source's reports from its agent only; by default the id the
    agent takes by default, else the site file's ``agent``, never one agent for two."""
    site = parse_site(TEXT, "site.yaml")
    assert [b.agent for b in site.buses] == ["serial-bus-g", "serial-bus-b1"]
    assert [c.agent for c in site.cameras] == ["camera-cam-c"]
    named = parse_site(TEXT.replace("  - id: cam-c\n", "  - id: cam-c\n    agent: pole-7\n"), "s")
    assert [c.agent for c in named.cameras] == ["pole-7"]
    twice = TEXT.replace("  - id: cam-c\n", "  - id: cam-c\n    agent: serial-bus-g\n")
    with pytest.raises(SiteError) as info:
        parse_site(twice, "site.yaml")
    assert any(
        "cameras[0].agent" in p and "already reports for 'bus-g'" in p for p in info.value.problems
    ), info.value.problems


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        (
            "timezone: Asia/Shanghai",
            "timezone: Asia/Shanghai\n  colour: red",
            "site.colour",
            "unknown key (allowed: id, name, timezone)",
        ),
        (  # a list item's keys too
            "en: Basement 1}, kind: basement}",
            "en: Basement 1}, kind: basement, type: deck}",
            "levels[1].type",
            "unknown key (allowed: id, name, kind)",
        ),
        (
            "{address: 6, spaces: [B-065..B-072]}",
            "{address: 6, spaces: [B-065..B-072, A-001]}",
            "buses[0].nodes[5].spaces",
            "already bound",
        ),
        (
            "zones: [D], vehicle_class: resident}\n  - id: jct-w0",
            "zones: [Q], vehicle_class: resident}\n  - id: jct-w0",
            "displays[4].lines[1].zones",
            "does not exist",
        ),
        ("ids: B-037..B-072", "ids: B-036..B-072", "spaces[4].ids", "duplicate space"),
        # a class is only sent first to bays it may use at all
        (
            "prefer: [accessible], avoid: [ev]}",
            "prefer: [ev]}",
            "vehicle_classes[4].prefer",
            "kind 'ev' to prefer is not one of the class's kinds",
        ),
        # a kind to avoid is any of the site's kinds, never one the class prefers, never all
        # of the kinds it may use (it would avoid nothing)
        (
            "kinds: [visitor], avoid: [ev]}",
            "kinds: [visitor], avoid: [charger]}",
            "vehicle_classes[1].avoid",
            "kind 'charger' to avoid is not in kinds",
        ),
        (
            "prefer: [accessible], avoid: [ev]}",
            "prefer: [accessible], avoid: [accessible]}",
            "vehicle_classes[4].avoid",
            "kind 'accessible' is both preferred and avoided",
        ),
        (
            "kinds: [visitor], avoid: [ev]}",
            "kinds: [visitor], avoid: [ev, visitor]}",
            "vehicle_classes[1].avoid",
            "avoids every kind it may use ['visitor']: it would avoid nothing",
        ),
        (
            "{address: 7, detectors: 32, spaces: [D-001..D-030]}",
            "{address: 7, detectors: 32, spaces: [D-001..D-030], map: [{detector: 3, space: C-001}]}",
            "buses[0].nodes[6].map[0].detector",
            "bound twice",
        ),
        (
            "timezone: Asia/Shanghai",
            "timezone: Asia/Shangai",
            "site.timezone",
            "not an IANA time zone",
        ),
        # 24:30 would silently mean 24:00 (a day has no minute 1440)
        ('windows: ["19:00-08:00"]', 'windows: ["23:00-24:30"]', "policies[0].windows", "00:30"),
        # the gateway republishes at half the validity, on a 0.5 s timer
        ("expires_s: 60", "expires_s: 0.3", "display_settings.expires_s", "greater than or equal"),
        # silence must end in unknown
        ("ttl_s: 15", "ttl_s: .inf", "buses[0].ttl_s", "less than or equal"),
        (
            "baud: 9600\n    parity: E\n    ttl_s: 15\n    nodes:\n      - {address: 1, spaces: [B1",
            "baud: 9601\n    parity: E\n    ttl_s: 15\n    nodes:\n      - {address: 1, spaces: [B1",
            "buses[1].baud",
            "Input should be",
        ),
        # the gateway numbers kinds by their place in the list: a repeated one crashed it
        (
            "kinds: [resident, visitor, ev, accessible, shared]",
            "kinds: [resident, visitor, ev, accessible, shared, resident]",
            "kinds[5]",
            "duplicate kind 'resident'",
        ),
        (
            "lends zone D to residents at night\n  - id: shared-day-office",
            "lends zone D to residents at night (twice)\n  - id: shared-night-residents",
            "policies[1].id",
            "duplicate id 'shared-night-residents'",
        ),
        # a copy-paste slip: a basement row reached from a ground node
        (
            "{ids: B1-E-003..B1-E-030, zone: E, kinds: [resident], access: [K0, K1, K2],",
            "{ids: B1-E-003..B1-E-030, zone: E, kinds: [resident], access: [K0, K1, AN0],",
            "spaces[10].access",
            "access node AN0 is on level G but zone E is on level B1",
        ),
        # a path has no place for a length: say how to write the edge instead
        (
            "    - [BN0, W0]",
            "    - [BN0, W0, K3]",
            "lanes.edges[4]",
            "joins levels G and B1: a path has no length: write it as {from: W0, to: K3, length:",
        ),
        # the row's bay that is out of the frame, not the camera's first line
        (
            "last: [[1196, 700], [1254, 700], [1222, 540], [1170, 540]]",
            "last: [[1196, 700], [1294, 700], [1222, 540], [1170, 540]]",
            "cameras[0].rows[0].last",
            "polygon of 'C-020' leaves the 1280x720 frame",
        ),
        # YAML 1.1 reads these as numbers and booleans: say to quote them
        (
            "{id: B1, name: {zh: 地下一层",
            "{id: 1, name: {zh: 地下一层",
            "levels[1].id",
            "YAML read 1 as a number, not as text: quote it ('1')",
        ),
        (
            "ids: B-037..B-072",
            "ids: [101, 102]",
            "spaces[4].ids[0]",
            "YAML read 101 as a number, not as text: quote it ('101')",
        ),
        (
            "{id: east, name: {zh: 东门",
            "{id: no, name: {zh: 东门",
            "entrances[1].id",
            "YAML read no as true/false",
        ),
        (
            "kinds: [resident, visitor, ev, accessible, shared]",
            "kinds: [resident, visitor, ev, accessible, on]",
            "kinds[4]",
            "quote it ('on')",
        ),
        # a plain name: say how to write Chinese and English
        (
            "{id: visitor, name: {zh: 访客, en: Visitor}",
            "{id: visitor, name: 访客",
            "vehicle_classes[1].name",
            "write name: {zh: 访客, en: ",
        ),
        (
            "{id: visitor, name: {zh: 访客, en: Visitor}, kinds: [visitor], avoid: [ev]}",
            "{id: visitor, name: {zh: 访客, en: Visitor}, kinds: visitor, avoid: [ev]}",
            "vehicle_classes[1].kinds",
            "write kinds: [visitor]",
        ),
    ],
)
def test_bad_site_names_line_and_field(old, new, field, words):
    assert old in TEXT
    text = TEXT.replace(old, new, 1)
    with pytest.raises(SiteError) as info:
        parse_site(text, "site.yaml")
    problems = info.value.problems
    hit = [p for p in problems if f": {field}: " in p and words in p]
    assert hit, problems
    line = int(hit[0].split(":")[1])
    first_new_line = new.splitlines()[-1] if "colour" in new else new.splitlines()[0]
    assert abs(line - _line_of(first_new_line.strip(), text)) <= 4, (hit, line)
    assert hit[0].startswith("site.yaml:")


def test_site_check_refuses_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TEXT.replace(
            "kinds: [resident, visitor, ev, accessible, shared]",
            "kinds: [resident, visitor, ev, accessible]",
        ),
        encoding="utf-8",
    )
    out = subprocess.run(parkguide_cmd("site", "check", str(bad)), capture_output=True, text=True)
    assert out.returncode == 2
    assert "kind 'shared' is not in kinds" in out.stderr
    assert str(bad) in out.stderr


def test_site_check_json_says_a_refused_site_on_stdout(tmp_path):
    """A script that reads --json learns of a refusal from stdout, in one line, not silence."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEXT.replace("kinds: [resident, visitor, ev, accessible, shared]",
                                "kinds: [resident, visitor, ev, accessible]"), encoding="utf-8")  # fmt: skip
    out = subprocess.run(
        parkguide_cmd("site", "check", str(bad), "--json"), capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stdout.count("\n") == 1
    answer = json.loads(out.stdout)
    assert answer["ok"] is False
    assert any("kind 'shared' is not in kinds" in p for p in answer["problems"])
    assert "site refused" in out.stderr  # a person at a terminal still reads it there


def test_site_file_reference_is_generated_from_the_schema():
    """docs/site-file.md is rendered from parking.siteconfig; regenerate it after a schema change
    with ``python -m parking.sitedoc > docs/site-file.md``."""
    from parking.sitedoc import render
    from tests.conftest import REPO

    assert (REPO / "docs" / "site-file.md").read_text(encoding="utf-8") == render()


def test_agents_snapshot_well_within_the_gateway_ttl(example_site):
    for source in [b.id for b in example_site.buses] + [c.id for c in example_site.cameras]:
        assert example_site.snapshot_interval(source) <= example_site.source_ttl(source) / 3


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("site:\n  id: x\n  name: [a, b\nzones: 3\n", 4, "expected ',' or ']'"),
        # safe loading refuses object tags: a clear error, never a traceback or a call
        ('site:\n  id: x\n  name: !!python/object/apply:os.system "true"\n', 3, "constructor"),
        ('site:\n  id: x\n  name: !!python/object/apply:os.system ["true"]\n', 3, "not allowed"),
    ],
)
def test_invalid_yaml_is_refused_with_its_line(text, line, words):
    with pytest.raises(SiteError) as info:
        parse_site(text, "site.yaml")
    (problem,) = info.value.problems
    assert problem.startswith(f"site.yaml:{line}: invalid YAML"), problem
    assert words in problem


@pytest.mark.parametrize("encoding", ["gb18030", "utf-16"])
def test_site_file_not_in_utf8_is_refused_naming_offset_and_line(tmp_path, encoding):
    """A site file saved as GBK/GB18030 (Windows 'ANSI' on a Chinese PC) or UTF-16: a
    SiteError naming the file, the line and the byte offset, never a UnicodeDecodeError."""
    from parking.site import load_site

    path = tmp_path / "site.yaml"
    raw = TEXT.encode(encoding)
    path.write_bytes(raw)
    with pytest.raises(UnicodeDecodeError) as bad:
        raw.decode("utf-8")
    offset = bad.value.start
    line = raw.count(b"\n", 0, offset) + 1
    with pytest.raises(SiteError) as info:
        load_site(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{line}: not UTF-8: "), problem
    assert f"offset {offset} " in problem and "save the site file as UTF-8" in problem
    out = subprocess.run(parkguide_cmd("site", "check", str(path)), capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert problem in out.stderr


RAMP = "    - {from: R1, to: K1, length: 45}    # ramp\n"


@pytest.mark.parametrize(
    ("old", "new", "spaces", "entrances"),
    [
        ("", "", 0, []),
        (RAMP, "", 120, []),  # the whole basement cut off
        (RAMP, "    - {from: K1, to: R1, length: 45, oneway: true}\n", 120, []),  # one-way out
        (RAMP, "    - {from: R1, to: K1, length: 45, oneway: true}\n", 0, []),  # one-way in
        (  # the north gate's road one-way towards the gate: nothing to drive to from there
            "    - [GN, N1, R2]",
            "    - {from: N1, to: GN, length: 20, oneway: true}\n    - [N1, R2]",
            0,
            ["north"],
        ),
    ],
    ids=["example", "no-ramp", "ramp-one-way-out", "ramp-one-way-in", "gate-one-way-out"],
)
def test_spaces_and_entrances_cut_off_by_the_lanes_are_found(old, new, spaces, entrances):
    """Spaces no entrance reaches over the lanes (one-way edges one way) are never assigned
    but counted on the signs; an entrance that reaches no space is as likely a typo."""
    from parking.site import unreachable

    assert old in TEXT
    site = parse_site(TEXT.replace(old, new, 1), "site.yaml")
    cut_off, dead = unreachable(site)
    assert len(cut_off) == spaces and dead == entrances
    assert all(site.space(s).level == "B1" for s in cut_off)


def test_site_check_warns_about_spaces_no_entrance_reaches(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(TEXT.replace(RAMP, "", 1), encoding="utf-8")
    out = subprocess.run(parkguide_cmd("site", "check", str(path)), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    warning = next(
        (ln for ln in out.stdout.splitlines() if "warning: 120 spaces cannot be reached" in ln), ""
    )
    assert "B1-E-001" in warning and "never assigned, nor counted on the signs" in warning, (
        out.stdout
    )
    out = subprocess.run(
        parkguide_cmd("site", "check", str(path), "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    (warning,) = json.loads(out.stdout)["warnings"]
    assert warning.startswith("120 spaces cannot be reached")
    out = subprocess.run(
        parkguide_cmd("site", "check", str(EXAMPLE_SITE), "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["warnings"] == []


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # "billion laughs" (here only a thousand): every alias would be a copy
        (
            "site:\n  id: x\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
            "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
            4,
            "alias *a is not allowed",
        ),
        (TEXT.replace("  id: xinyuan\n", "  id: &id xinyuan\n", 1), 9, "anchor &id is not"),
        ("defaults: &d {ttl_s: 15}\nbuses:\n  - <<: *d\n    id: b\n", 3, "alias *d is not"),
    ],
    ids=["billion-laughs", "anchor", "merge-key"],
)
def test_yaml_anchors_and_aliases_are_refused_with_their_line(text, line, words):
    with pytest.raises(SiteError) as info:
        parse_site(text, "site.yaml")
    (problem,) = info.value.problems
    assert problem.startswith(f"site.yaml:{line}: invalid YAML: "), problem
    assert words in problem


def test_ampersand_and_asterisk_in_values_are_not_anchors():
    text = TEXT.replace("en: Xinyuan Community}", 'en: "Xinyuan & Co. *1*"}', 1)
    assert parse_site(text, "site.yaml").name.en == "Xinyuan & Co. *1*"


def _with_a_bus_of(n_nodes: int) -> str:
    """The example site plus zone X and a bus of ``n_nodes`` full node controllers."""
    n = 64 * n_nodes
    text = TEXT.replace(
        "zones:\n", "zones:\n  - {id: X, level: G, name: {zh: X区, en: Zone X}}\n", 1
    ).replace(
        "spaces:\n",
        f"spaces:\n  - {{ids: X-0001..X-{n:04d}, zone: X, kinds: [resident], access: [AN0],\n"
        "     layout: {origin: [0, 200], step: [2.5, 0]}}\n",
        1,
    )
    nodes = "".join(
        f"      - {{address: {a + 1}, spaces: [X-{64 * a + 1:04d}..X-{64 * a + 64:04d}]}}\n"
        for a in range(n_nodes)
    )
    return text.replace(
        "buses:\n",
        f"buses:\n  - id: bus-x\n    baud: 115200\n    parity: E\n    ttl_s: 15\n    nodes:\n{nodes}",
        1,
    )


def test_a_source_whose_snapshot_could_not_cross_the_wire_is_refused():
    """The gateway refuses payloads over 256 KiB: a bus whose snapshot can be larger
    would stay unknown for good, so the site file is refused with the reason."""
    assert parse_site(_with_a_bus_of(16), "s.yaml").bus("bus-x")  # 1,024 spaces: fine
    with pytest.raises(SiteError) as info:
        parse_site(_with_a_bus_of(64), "s.yaml")  # 4,096 spaces
    assert [p for p in info.value.problems if "buses[0]" in p and "262144" in p], (
        info.value.problems
    )


NIGHT = '    windows: ["19:00-08:00"]\n'


def test_policies_that_never_let_a_class_in_are_warned_about():
    """Every policy naming a class and a kind must allow a minute: a second policy for
    residents on shared spaces (lunch) made zone D theirs at no hour at all, and
    site check said OK."""
    from parking.site import policy_warnings

    assert NIGHT in TEXT
    lunch = (
        "  - id: shared-lunch-residents\n    kind: shared\n    classes: [resident]\n"
        '    windows: ["12:00-13:00"]\n'
    )
    site = parse_site(TEXT.replace("policies:\n", "policies:\n" + lunch, 1), "site.yaml")
    said = policy_warnings(site, today=date(2026, 6, 1))
    assert any(
        "vehicle class resident may never use shared spaces" in w
        and "shared-lunch-residents, shared-night-residents" in w
        for w in said
    ), said
    overlapping = TEXT.replace(NIGHT, '    windows: ["19:00-08:00", "20:00-21:00"]\n', 1)
    said = policy_warnings(parse_site(overlapping, "s.yaml"), today=date(2026, 6, 1))
    assert said == [
        "policy shared-night-residents: window 20:00-21:00 overlaps another of its windows"
        " (they are joined; check it is meant)"
    ]
    assert policy_warnings(parse_site(TEXT, "s.yaml"), today=date(2026, 6, 1)) == []


def test_ids_that_would_share_a_broker_login_are_warned_about():
    """The shipped ACL takes an agent's, an entrance's and a display's id as its broker
    username: a sign named like an entrance (or the shared 'gate' role, as the small example
    site's sign was) would log in with that gate's rights and announce arrivals."""
    from parking.site import login_warnings

    assert login_warnings(parse_site(TEXT, "site.yaml")) == []
    assert "{id: north," in TEXT and "  - id: gate-north\n" in TEXT
    twin = TEXT.replace("  - id: gate-north\n", "  - id: north\n", 1)
    said = login_warnings(parse_site(twin, "site.yaml"))
    assert said == [
        "broker login 'north' would be entrance north and display north: under the shipped"
        " ACL one login gets both's rights; rename one of them if they log in separately"
    ], said
    role = TEXT.replace("  - id: jct-n1\n", "  - id: gate\n", 1)
    said = login_warnings(parse_site(role, "site.yaml"))
    assert len(said) == 1 and "'gate' would be the 'gate' role and display gate" in said[0]
    # valid as an id, but no broker login can have it (make-passwords.sh failed on it)
    colon = TEXT.replace("  - id: jct-n1\n", "  - id: sign:n1\n", 1)
    said = login_warnings(parse_site(colon, "site.yaml"))
    assert said == [
        "broker login 'sign:n1' (display sign:n1) cannot exist: mosquitto refuses a ':' in a"
        " user name; rename it if it logs in on its own"
    ], said


def test_window_edges_daylight_saving_skips_or_repeats_are_warned_about():
    """In Berlin 02:30 does not exist on 28 March 2027 and happens twice on 25 October
    2026: a window edge there opens late, or closes and reopens."""
    from parking.site import policy_warnings

    berlin = TEXT.replace("timezone: Asia/Shanghai", "timezone: Europe/Berlin", 1)
    assert berlin != TEXT
    edge = berlin.replace(NIGHT, '    windows: ["19:00-02:30"]\n', 1)
    said = policy_warnings(parse_site(edge, "s.yaml"), today=date(2026, 10, 1))
    assert said == [
        "policy shared-night-residents: 02:30 on 2026-10-25 happens twice (the clocks go back)"
        " in Europe/Berlin (daylight saving): a window edge then opens late, twice, or closes"
        " and reopens; an edge outside the changeover hour avoids it"
    ], said
    said = policy_warnings(parse_site(edge, "s.yaml"), today=date(2026, 11, 1))
    assert len(said) == 1 and "02:30 on 2027-03-28 does not exist" in said[0]
    # the example's 19:00 and 08:00 are safe there, and Shanghai has no daylight saving
    assert policy_warnings(parse_site(berlin, "s.yaml"), today=date(2026, 10, 1)) == []
    shanghai = TEXT.replace(NIGHT, '    windows: ["19:00-02:30"]\n', 1)
    assert policy_warnings(parse_site(shanghai, "s.yaml"), today=date(2026, 10, 1)) == []
    # clocks that change at midnight: an all-day window has no edge there, 00:00-08:00 has
    santiago = TEXT.replace("timezone: Asia/Shanghai", "timezone: America/Santiago", 1)
    all_day = santiago.replace(NIGHT, '    windows: ["00:00-24:00"]\n', 1)
    assert policy_warnings(parse_site(all_day, "s.yaml"), today=date(2026, 6, 1)) == []
    morning = santiago.replace(NIGHT, '    windows: ["00:00-08:00"]\n', 1)
    said = policy_warnings(parse_site(morning, "s.yaml"), today=date(2026, 6, 1))
    assert len(said) == 1 and "00:00 on 2026-09-06 does not exist" in said[0]


@pytest.mark.parametrize("zone", ["localtime", "Factory", "posixrules", "posix/Asia/Shanghai"])
def test_a_time_zone_that_depends_on_the_machine_is_refused(zone):
    text = TEXT.replace("timezone: Asia/Shanghai", f"timezone: {zone}", 1)
    with pytest.raises(SiteError, match="depends on the machine"):
        parse_site(text, "site.yaml")


def test_a_window_starting_at_24_says_to_write_00():
    with pytest.raises(SiteError, match="starts at 24:00: write it 00:00-08:00"):
        parse_site(TEXT.replace(NIGHT, '    windows: ["24:00-08:00"]\n', 1), "site.yaml")


def test_the_site_digest_is_what_the_file_says_not_the_code_defaults(monkeypatch):
    """A release adding a defaulted field (here one at the top and one inside ``site:``)
    gives the same file the same digest, so an API and a gateway of two releases agree."""
    before = parse_site(TEXT).digest

    class NextSiteInfo(cfg.SiteInfo):
        country: str = "CN"

    class NextSiteFile(cfg.SiteFile):
        site: NextSiteInfo
        night_rate: int = 0

    monkeypatch.setattr(cfg, "SiteFile", NextSiteFile)
    assert parse_site(TEXT).digest == before


def test_the_site_digest_follows_edits_not_comments_or_layout():
    digest = parse_site(TEXT).digest
    commented = "# a comment\n" + TEXT.replace("\nzones:\n", "\n\n# the zones\nzones:  \n", 1)
    assert parse_site(commented).digest == digest
    renamed = TEXT.replace("en: Zone A}", "en: Zone A North}", 1)
    assert renamed != TEXT and parse_site(renamed).digest != digest
    # a default written out is an edit of the file too (the file now says it)
    assert "timezone: Asia/Shanghai" in TEXT
    assert parse_site(TEXT.replace("  timezone: Asia/Shanghai\n", "", 1)).digest != digest
