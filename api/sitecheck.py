"""Does the gateway run the same site file as this API?

The gateway writes its site's digest (``parking.site.Site.digest``: the validated content,
not the file's text) and id into its journal's ``meta`` table at every start, as
``site_digest`` and ``site_id``. An API started with another site file beside it would show
zones and spaces the gateway does not have, and send it commands it refuses (an unknown
space) or applies to another space than the manager meant, while answering 202. So the API
compares the digests when it starts and every few seconds after (the gateway may restart
with another file while the API runs): a mismatch is logged once when it begins and once when
it ends, raised as the ``site_mismatch`` alert, and refuses the commands that go to the
gateway (409). A journal without the row (a gateway from before it) tells nothing: nothing
is compared and nothing is said.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass

from api.alerts import Alert, site_mismatch_alert
from api.journal import JournalReader
from gateway.site_changes import DIGEST_KEY as SITE_DIGEST_KEY
from gateway.site_changes import SITE_ID_KEY
from parking.site import Site

log = logging.getLogger(__name__)

SHORT_DIGEST = 12
"""Hex digits of a digest shown in logs, alerts and answers: enough to tell two files apart."""


@dataclass(frozen=True)
class SiteMismatch:
    """This API's site and the gateway's, as the journal names it, differ."""

    api_site: str
    api_digest: str
    gateway_site: str | None  # None: the journal has the digest but no site id
    gateway_digest: str

    @property
    def sites(self) -> str:
        gateway = self.gateway_site if self.gateway_site is not None else "?"
        return (
            f"this API serves site {self.api_site!r} (site file digest "
            f"{self.api_digest[:SHORT_DIGEST]}), the gateway runs site {gateway!r} "
            f"(digest {self.gateway_digest[:SHORT_DIGEST]})"
        )

    @property
    def same_site(self) -> bool:
        """Both name the same site: an edit of its file, or another release of parkguide
        reading it (one that validates it to other content)."""
        return self.gateway_site == self.api_site

    def refusal(self) -> str:
        """The ``detail`` of a command refused with 409."""
        if self.same_site:
            return (
                "refused: the gateway runs another site file than this API, or another release "
                f"of parkguide ({self.sites}), so it would not act on this command as meant: "
                "start the API with the gateway's site file and release"
            )
        return (
            f"refused: the gateway runs another site file than this API ({self.sites}), so it "
            "would not act on this command as meant: start the API with the gateway's site file"
        )

    def alert(self) -> Alert:
        return site_mismatch_alert(
            self.api_site, self.api_digest, self.gateway_site, self.gateway_digest
        )


class SiteCheck:
    """Compares this API's site digest with the one in the gateway's journal.

    :meth:`check` reads the journal (one small query on a read-only connection) and logs a
    change; :meth:`poll` does so unless it did within ``refresh_s``. Thread-safe: the alert
    monitor polls from a worker thread, the control routes check from the thread pool.
    """

    def __init__(self, site: Site, journal: JournalReader, refresh_s: float = 2.0):
        self.site = site
        self.journal = journal
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._mismatch: SiteMismatch | None = None
        self._checked = -float("inf")  # monotonic time of the last read
        self._read_failed = False

    @property
    def mismatch(self) -> SiteMismatch | None:
        """The mismatch as last read (None: the same site file, or nothing to compare)."""
        with self._lock:
            return self._mismatch

    def poll(self) -> SiteMismatch | None:
        """As :meth:`check`, but the last answer when it is younger than ``refresh_s``."""
        with self._lock:
            if time.monotonic() - self._checked < self.refresh_s:
                return self._mismatch
        return self.check()

    def check(self) -> SiteMismatch | None:
        """Read the gateway's site digest now; a journal that cannot be read keeps the last
        answer (the next check tries again)."""
        try:
            found = self._read()
        except sqlite3.Error as exc:
            with self._lock:
                if not self._read_failed:
                    self._read_failed = True
                    log.warning(
                        "cannot read the gateway's site digest from the journal %s: %s",
                        self.journal.db_path,
                        exc,
                    )
                return self._mismatch
        mismatch = None
        if found is not None and self.site.digest:
            digest, site_id = found
            if digest != self.site.digest:
                mismatch = SiteMismatch(self.site.id, self.site.digest, site_id, digest)
        with self._lock:
            self._read_failed = False
            self._checked = time.monotonic()
            before, self._mismatch = self._mismatch, mismatch
            if mismatch is not None and (
                before is None or before.gateway_digest != mismatch.gateway_digest
            ):
                log.warning(
                    "site file mismatch: %s (journal %s). Closing and opening spaces is "
                    "refused (409) and the map may show zones and spaces the gateway does not "
                    "have: start the API with the gateway's site file%s",
                    mismatch.sites,
                    self.journal.db_path,
                    " and release (another release of parkguide may read the same file otherwise)"
                    if mismatch.same_site
                    else "",
                )
            elif mismatch is None and before is not None:
                log.warning(
                    "site file mismatch over: %s (site %r, digest %s); closing and opening "
                    "spaces is allowed again",
                    "the gateway now runs this API's site file"
                    if found is not None
                    else "the journal no longer names the gateway's site file",
                    self.site.id,
                    self.site.digest[:SHORT_DIGEST],
                )
        return mismatch

    def _read(self) -> tuple[str, str | None] | None:
        """(digest, site id) from the journal's meta table; None when it has no digest."""
        rows = self.journal.meta(SITE_DIGEST_KEY, SITE_ID_KEY)
        digest = rows.get(SITE_DIGEST_KEY)
        if not digest:
            return None
        return str(digest), rows.get(SITE_ID_KEY)
