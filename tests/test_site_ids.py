"""Ids in the site file: every id, space ids too (ranges expanded), follows the identifier
rule of the wire contract (``parking.payloads.is_identifier``), and a file breaking it is
refused by ``parkguide site check`` with file:line and the rule in words, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parkguide.cli import main
from parking.payloads import is_identifier
from parking.site import SiteError, parse_site
from parking.sitedoc import render

RULE = "ids may use only ASCII letters, digits and _ . : - (1-64 characters)"

SITE = """\
site:
  id: xingfu
  name: {zh: 幸福小区, en: Xingfu Community}
  timezone: Asia/Shanghai

levels:
  - {id: G, name: {zh: 地面层, en: Ground}}

zones:
  - {id: A, level: G, name: {zh: A区（业主）, en: Zone A residents}}
  - {id: V, level: G, name: {zh: 访客区, en: Visitors}}

kinds: [resident, visitor]

vehicle_classes:
  - {id: resident, name: {zh: 业主, en: Resident}, kinds: [resident]}
  - {id: visitor, name: {zh: 访客, en: Visitor}, kinds: [visitor]}

spaces:
  - {ids: A-001..A-012, zone: A, kinds: [resident], access: [L1, L2],
     layout: {origin: [0, 3], step: [2.5, 0]}}
  - {ids: V-001..V-004, zone: V, kinds: [visitor], access: [L2],
     layout: {origin: [30, -8], step: [2.5, 0]}}
# extra spaces

lanes:
  nodes:
    - {id: GATE, level: G, at: [-10, 0]}
    - {id: L1, level: G, at: [10, 0]}
    - {id: L2, level: G, at: [40, 0]}
  edges:
    - [GATE, L1, L2]

entrances:
  - {id: east, name: {zh: 东大门, en: East gate}, node: GATE}

buses:
  - id: bus-1
    baud: 19200
    nodes:
      - {address: 1, spaces: [A-001..A-012, V-001..V-004]}
"""


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def check(tmp_path, text: str, capsys) -> tuple[int, str, str]:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    rc = main(["site", "check", str(path)])
    out, err = capsys.readouterr()
    return rc, err, str(path)


def test_the_example_like_site_passes(tmp_path, capsys):
    rc, err, _ = check(tmp_path, SITE, capsys)
    assert rc == 0, err


def test_chinese_space_ids_bound_to_a_bus_are_refused_without_a_traceback(tmp_path):
    """The reviewer's file: 车位-001..车位-012 on a bus used to end in a pydantic traceback
    (the snapshot-size check built a report with those ids)."""
    text = SITE.replace("A-001..A-012", "车位-001..车位-012")
    path = tmp_path / "zh-spaceid.yaml"
    path.write_text(text, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "parkguide", "site", "check", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "ValidationError" not in run.stderr
    line = line_of(text, "ids: 车位-001..车位-012")
    problems = [p for p in run.stderr.splitlines() if "车位" in p]
    # one problem for the range, not one per id
    assert len(problems) == 1, run.stderr
    assert problems[0].startswith(f"{path}:{line}: spaces[0].ids: space id '车位-001': {RULE};")
    assert "no name" in problems[0] and "zone's name:" in problems[0]
    assert "likewise the other 11 ids of '车位-001..车位-012'" in problems[0]
    assert "site refused" in run.stderr


@pytest.mark.parametrize("bad", ["X+1", "X/2", "X#3", "车位1", "X 1", "X" * 65])
def test_unbound_space_ids_that_break_the_rule_are_refused(tmp_path, capsys, bad):
    """Unbound spaces were accepted: 'X/2' could not be addressed by the API (404), 'X+1' is
    an MQTT wildcard, '车位1' could never be reported by an agent."""
    assert not is_identifier(bad)
    text = SITE.replace(
        "# extra spaces",
        f'  - {{ids: [V-100, "{bad}"], zone: V, kinds: [visitor], access: [L2],\n'
        "     layout: {origin: [30, -20], step: [2.5, 0]}}",
    )
    rc, err, path = check(tmp_path, text, capsys)
    assert rc == 2
    assert "Traceback" not in err
    shown = bad if len(bad) <= 64 else bad[:61] + "..."
    line = line_of(text, "V-100")
    assert f"{path}:{line}: spaces[2].ids[1]: space id '{shown}': {RULE};" in err
    assert "V-100" not in err.split("spaces[2].ids[1]")[0]  # the valid one is not named


def test_every_problem_id_of_several_groups_is_named(tmp_path, capsys):
    text = SITE.replace(
        "# extra spaces",
        '  - {ids: ["X+1", "X/2", ok-1], zone: V, kinds: [visitor], access: [L2],\n'
        "     layout: {origin: [30, -20], step: [2.5, 0]}}",
    )
    rc, err, path = check(tmp_path, text, capsys)
    assert rc == 2
    assert "2 problem(s); site refused" in err
    assert "space id 'X+1'" in err and "space id 'X/2'" in err and "'ok-1'" not in err


def test_valid_space_ids_of_every_allowed_character_pass(tmp_path, capsys):
    text = SITE.replace(
        "# extra spaces",
        "  - {ids: [B1-E.007, 'a:b_c', Z-09..Z-11], zone: V, kinds: [visitor], access: [L2],\n"
        "     layout: {origin: [30, -20], step: [2.5, 0]}}",
    )
    rc, err, _ = check(tmp_path, text, capsys)
    assert rc == 0, err


def test_a_chinese_zone_id_gets_the_sentence_not_the_regex(tmp_path, capsys):
    text = SITE.replace("{id: A, level: G", "{id: 甲区, level: G").replace(
        "zone: A,", "zone: 甲区,"
    )
    rc, err, path = check(tmp_path, text, capsys)
    assert rc == 2
    assert "should match pattern" not in err and "A-Za-z0-9" not in err
    assert "errors.pydantic.dev" not in err
    line = line_of(text, "{id: 甲区")
    assert f"{path}:{line}: zones[0].id: zone id '甲区': {RULE}; put Chinese in name:" in err
    # the reference to it: the same rule, and which id is meant
    ref = line_of(text, "zone: 甲区")
    assert f"{path}:{ref}: spaces[0].zone: zone id '甲区': {RULE};" in err


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("{id: G, name", "{id: 地面, name", "levels[0].id: level id '地面'"),
        ("{id: east, name", "{id: 东门, name", "entrances[0].id: entrance id '东门'"),
        ("- id: bus-1", "- id: 总线1", "buses[0].id: bus id '总线1'"),
        ("{id: GATE, level", "{id: 大门, level", "lanes.nodes[0].id: lane node id '大门'"),
        ("{id: G, name", "{id: " + "G" * 65 + ", name", "levels[0].id: level id 'GGG"),
        ("id: xingfu", "id: 幸福", "site.id: site id '幸福'"),
    ],
)
def test_other_ids_get_the_sentence(old, new, where):
    text = SITE.replace(old, new, 1)
    with pytest.raises(SiteError) as exc:
        parse_site(text, "s.yaml")
    problems = [p for p in exc.value.problems if where in p]
    assert problems, exc.value.problems
    assert RULE in problems[0]
    assert not any("should match pattern" in p or "at most 64" in p for p in exc.value.problems)


def test_a_default_agent_id_too_long_is_refused_not_a_traceback():
    """A 58-character bus id is an id, but its agent's default id serial-<id> is over 64."""
    long_bus = "b" * 60
    text = SITE.replace("- id: bus-1", f"- id: {long_bus}")
    with pytest.raises(SiteError) as exc:
        parse_site(text, "s.yaml")
    assert len(exc.value.problems) == 1
    problem = exc.value.problems[0]
    assert problem.startswith(f"s.yaml:{line_of(text, long_bus)}: buses[0].id: ")
    assert "default id 'serial-bbb" in problem and RULE in problem and "agent:" in problem
    # with its agent named, the same bus is fine
    named = text.replace("    baud: 19200", "    baud: 19200\n    agent: serial-1")
    assert parse_site(named, "s.yaml").buses[0].agent == "serial-1"


def test_the_generated_docs_state_the_rule():
    doc = render()
    assert "## Ids" in doc
    assert "ASCII letters, digits and `_ . : -` only,\n1 to 64 characters" in doc
    assert "A space has no name" in doc
    assert "a space id (of a range too) is not an [id](#ids)" in doc
    assert "| `id` | [id](#ids) | required | zone id, used in topics |" in doc
