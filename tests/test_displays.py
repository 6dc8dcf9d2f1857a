"""Sign rendering from line counts (gateway.displays, pure)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.displays import LineLayout, content, render_line, render_lines
from parking.payloads import DisplayContent, LocalText

LABEL = LocalText(zh="A区", en="Zone A")


def test_count_shows_the_number_in_both_languages():
    line = render_line(LABEL, "right", free=12, unknown=0, total=80, fallback_fraction=0.5)
    assert (line.status, line.count, line.text.zh, line.text.en) == ("ok", 12, "12", "12")
    assert line.label == LABEL and line.arrow == "right"


def test_zero_free_is_full():
    line = render_line(LABEL, "left", free=0, unknown=3, total=80, fallback_fraction=0.5)
    assert (line.status, line.count, line.text.zh, line.text.en) == ("full", 0, "满", "FULL")


@pytest.mark.parametrize(
    ("unknown", "status"), [(40, "ok"), (41, "fallback"), (80, "fallback"), (0, "ok")]
)
def test_fallback_when_more_than_the_fraction_is_unknown(unknown, status):
    line = render_line(LABEL, "up", free=5, unknown=unknown, total=80, fallback_fraction=0.5)
    assert line.status == status
    if status == "fallback":
        assert line.count is None and line.text.zh == "--" and line.text.en == "--"


@pytest.mark.parametrize(
    ("unknown", "status"), [(0, "full"), (5, "full"), (6, "fallback"), (29, "fallback")]
)
def test_zero_is_full_only_while_few_of_its_spaces_are_unknown(unknown, status):
    """At a count of zero, unknown spaces may be the free ones: past full_fraction of the
    line (a tenth by default) the sign shows "--", not FULL (29 of 58 unknown read FULL,
    short of the fallback's half). A count above zero is shown as before."""
    line = render_line(
        LABEL, "up", free=0, unknown=unknown, total=58, fallback_fraction=0.5, full_fraction=0.1
    )
    assert line.status == status
    shown = render_line(
        LABEL, "up", free=3, unknown=unknown, total=58, fallback_fraction=0.5, full_fraction=0.1
    )
    assert shown.status == "ok" and shown.count == 3


def test_the_renderer_and_the_zone_counts_judge_full_alike(example_site):
    from gateway.displays import SignRenderer, zone_offered

    renderer = SignRenderer(example_site)
    assert renderer.full_fraction == example_site.display_settings.full_unknown_fraction == 0.1
    assert renderer.line(0, 0, 29, 58).line.status == "fallback"
    assert renderer.line(0, 0, 0, 58).line.status == "full"  # not the cached fallback
    assert renderer.line(0, 0, 5, 58).line.status == "full"
    # the API's zone cards and NGSI-LD: what a sign over the zone would show
    assert zone_offered(10, 10, 29, 0, 58, 0.5, 0.1) is None  # all free ones held
    assert zone_offered(10, 10, 5, 0, 58, 0.5, 0.1) == 0
    assert zone_offered(12, 2, 29, 0, 58, 0.5, 0.1) == 10


def test_fallback_wins_over_full():
    line = render_line(LABEL, "up", free=0, unknown=60, total=80, fallback_fraction=0.5)
    assert line.status == "fallback"


def test_all_closed_line_is_full_not_fallback():
    line = render_line(LABEL, "up", free=0, unknown=0, total=0, fallback_fraction=0.5)
    assert line.status == "full"


def test_render_lines_follows_the_site_line_order(example_site):
    layout = LineLayout.from_site(example_site)
    n = sum(len(d.lines) for d in example_site.displays)
    assert len(layout.line_display) == n
    free = np.arange(n) + 1
    unknown = np.zeros(n, dtype=int)
    total = np.full(n, 100)
    for d, disp in enumerate(example_site.displays):
        lines = render_lines(example_site, layout, d, free, unknown, total)
        assert [ln.label.zh for ln in lines] == [ln.label.zh for ln in disp.lines]
        assert [ln.arrow for ln in lines] == [ln.arrow for ln in disp.lines]
        first = layout.first[d]
        assert [ln.count for ln in lines] == list(range(first + 1, first + 1 + len(disp.lines)))


def test_content_expires_after_the_site_setting(example_site):
    layout = LineLayout.from_site(example_site)
    n = len(layout.line_display)
    lines = render_lines(example_site, layout, 0, [1] * n, [0] * n, [10] * n)
    c = content(example_site, 0, lines, ts=1000.0)
    assert isinstance(c, DisplayContent)
    assert c.display == example_site.displays[0].id
    assert c.expires == 1000.0 + example_site.display_settings.expires_s
    assert DisplayContent.model_validate_json(c.model_dump_json()) == c


def test_a_line_wholly_unknown_is_blind_whatever_the_fraction():
    """fallback_unknown_fraction 1.0 (the site file allows it) never reached "more than all
    of it", so a car park gone wholly blind said FULL."""
    line = render_line(LocalText(zh="A区", en="Zone A"), "right", 0, 10, 10, 1.0)
    assert line.status == "fallback" and line.count is None
    assert render_line(LocalText(zh="A区", en="Zone A"), "right", 0, 9, 10, 1.0).status == "full"
