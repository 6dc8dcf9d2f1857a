"""The journal's disk nearly full: the ``journal_disk_low`` alert and ``/metrics`` (api.disk_status).

A gateway whose journal cannot write stops; on a quiet site that happened at the next change
however long the disk had been nearly full, with nothing said before. Real parts: a small
tmpfs holding the journal (a real file system filling and emptying), the real gateway core
writing to it and the real API app reading ``statvfs`` of it."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import PASSWORD, GatewayHarness, journal_with_users, settings
from fastapi.testclient import TestClient

from api.app import create_app
from api.disk_status import disk_low, disk_space
from parking.site import EXAMPLE_SITE, load_site

MiB = 1024 * 1024


def test_levels_and_the_margin_before_an_alert_clears():
    low = 100 * MiB
    assert disk_low(200 * MiB, low, None) is None
    assert disk_low(99 * MiB, low, None) == "warning"
    assert disk_low(24 * MiB, low, None) == "critical"
    # an open level holds until the free space is a quarter above its limit: a disk hovering
    # at the limit does not raise and clear (losing the acknowledgement) with every write
    assert disk_low(110 * MiB, low, "warning") == "warning"
    assert disk_low(126 * MiB, low, "warning") is None
    assert disk_low(30 * MiB, low, "critical") == "critical"
    assert disk_low(32 * MiB, low, "critical") == "warning"
    assert disk_low(0, 0, None) is None  # PARKGUIDE_JOURNAL_DISK_LOW_MB=0: off


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 64 MiB tmpfs (root may mount one; where it may not, the pure test above and the
    alert's wiring below on the real disk still run)."""
    folder = Path(tempfile.mkdtemp(prefix="parkguide-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield folder
    finally:
        # lazy: the API's journal readers may still hold the file until collected
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def _manager(client: TestClient) -> dict[str, str]:
    r = client.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _disk_alerts(client: TestClient, h: dict[str, str]) -> list[dict]:
    r = client.get("/api/v1/alerts", params={"kind": "journal_disk_low"}, headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_alerts(client, h, want: list[str], timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = _disk_alerts(client, h)
        if sorted(a["id"] for a in got) == want or time.monotonic() > deadline:
            assert sorted(a["id"] for a in got) == want, got
            return got
        time.sleep(0.1)


def _fill(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))


def test_a_filling_disk_raises_a_warning_then_a_critical_alert_and_both_clear(small_disk):
    site = load_site(EXAMPLE_SITE)
    db = journal_with_users(small_disk)
    gw = GatewayHarness(site, db)
    gw.fill()  # the gateway journals on this disk
    app = create_app(
        gw.gateway, settings(alert_check_s=0.2, journal_disk_low_mb=32), db_path=str(db)
    )
    try:
        with TestClient(app) as client:
            h = _manager(client)
            assert _wait_alerts(client, h, []) == []
            metrics = client.get("/metrics", headers=h).text.splitlines()
            free = next(
                float(m.split()[1])
                for m in metrics
                if m.startswith("parkguide_journal_disk_free_bytes ")
            )
            assert abs(free - disk_space(small_disk).free_bytes) < 2 * MiB
            assert any(m.startswith("parkguide_journal_disk_size_bytes 6710") for m in metrics)

            _fill(small_disk / "backup-copy", 40)  # 24 MiB left, under the 32 MiB limit
            [alert] = _wait_alerts(client, h, ["journal_disk_low:warning"])
            assert alert["severity"] == "warning"
            assert str(small_disk) in alert["message"]["en"] and "32 MiB" in alert["message"]["en"]
            assert "the gateway stops" in alert["message"]["en"]
            assert "网关停止" in alert["message"]["zh"]

            _fill(small_disk / "more", 18)  # ~6 MiB left: under a quarter of the limit
            [alert] = _wait_alerts(client, h, ["journal_disk_low:critical"])
            assert alert["severity"] == "critical" and "8 MiB" in alert["message"]["en"]
            gw.fill(occupied=site.spaces_of_source("bus-g")[:5])  # it still writes

            (small_disk / "more").unlink()
            (small_disk / "backup-copy").unlink()
            _wait_alerts(client, h, [])
    finally:
        gw.close()
