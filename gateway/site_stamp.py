"""The site file the journal's gateway last validated, kept beside the journal
(``JOURNAL.site-ok``), so that a restart republishes the journaled signs before parsing the
site file again: at 20,000 spaces parsing and validating take ~0.6 s of an idle core. The
compiled site itself is kept too (``JOURNAL.site-cache``), so that a restart whose journal
still has changes to replay (its stored signs are behind) loads it in ~0.1 s instead of
parsing the file again before the full start can publish.

The stamp is keyed by the sha256 of the site file's bytes and of the code that validates it
(the ``parking`` package, pydantic, PyYAML, Python): a key that matches means these very bytes
passed these very checks. It holds only what the republishing needs (site id, display ids);
the full site is parsed right after, as before. JSON, never trusted when it does not match,
cannot be read or is damaged (then ignored with a warning, and rewritten after the parse).

The cache (:func:`read_site_cache`) has the same key in its header, checked before a byte of
it is unpickled, and a sha256 of its body: one that is for other bytes or code is ignored
(and rewritten after the parse), one that is damaged is warned about and ignored too. It is
unpickled by an unpickler that builds only the site's own classes (``parking.site``,
``parking.siteconfig``), and it is private like the journal: whoever could write it could
write the journal and the site file as well.

Light on purpose (no pydantic, no numpy): the restart path uses it before anything heavy loads
(the cache imports ``parking.site`` when it is read).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from parking.private import create_private

if TYPE_CHECKING:
    from parking.site import Site

log = logging.getLogger(__name__)

STAMP_SUFFIX = ".site-ok"
CACHE_SUFFIX = ".site-cache"
CACHE_MAGIC = b"parkguide site cache 1\n"
"""first bytes of a cache file; the key and the sha256 of the pickle follow"""
_CACHE_MODULES = ("parking.site", "parking.siteconfig")
"""the only modules whose classes a cache may build"""
STAMP_VERSION = 1
_VALIDATING_PACKAGES = ("parking", "pydantic", "pydantic_core", "yaml")
"""whose code decides whether a site file is refused: a change in any invalidates stamps"""


@dataclass(frozen=True)
class ValidatedSite:
    """What a validated site file tells the restart path."""

    site_id: str
    displays: tuple[str, ...]
    timezone: str
    shortest_ttl_s: float | None = None
    """the shortest TTL of the site's sources: the journaled signs are not shown again
    after a stop longer than it (None: a stamp written before it was kept)"""

    @classmethod
    def of(cls, site: Site) -> ValidatedSite:
        return cls(
            site.id, tuple(d.id for d in site.displays), site.timezone, site.shortest_ttl_s()
        )


def stamp_path(db: str | Path) -> Path:
    return Path(f"{db}{STAMP_SUFFIX}")


def cache_path(db: str | Path) -> Path:
    return Path(f"{db}{CACHE_SUFFIX}")


def _code_files() -> list[Path]:
    """Source files of the validating packages whose bytes key the stamp: the ``parking``
    package whole; of the libraries their version file (or package init) only."""
    files: list[Path] = []
    for name in _VALIDATING_PACKAGES:
        spec = importlib.util.find_spec(name)  # finds without importing
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if name == "parking":
            files += sorted(origin.parent.glob("*.py"))
        else:
            version = origin.parent / "version.py"
            files.append(version if version.is_file() else origin)
    return files


def site_key(raw: bytes) -> str:
    """sha256 of the site file's bytes and of the code that validates them."""
    digest = hashlib.sha256()
    digest.update(f"v{STAMP_VERSION} {sys.version}\0".encode())
    for path in _code_files():
        digest.update(f"{path.name}\0".encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
        digest.update(b"\0")
    digest.update(hashlib.sha256(raw).digest())
    return digest.hexdigest()


def read_stamp(db: str | Path, key: str) -> ValidatedSite | None:
    """The validated site of ``key`` if the stamp beside journal ``db`` is for it; None when
    there is none, it is for other bytes or code, or it cannot be read (warned)."""
    path = stamp_path(db)
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): ignored, the site file is parsed first", path, exc)
        return None
    site = _from_doc(doc)
    if site is None:
        log.warning("%s is damaged: ignored, the site file is parsed first", path)
        return None
    if doc["key"] != key:
        return None  # the site file or the code changed since
    try:
        ZoneInfo(site.timezone)  # the one check that depends on the machine (its tzdata)
    except Exception:  # noqa: BLE001 - any failure: let the full parse say what is wrong
        return None
    return site


def _from_doc(doc: Any) -> ValidatedSite | None:
    if not isinstance(doc, dict) or doc.get("v") != STAMP_VERSION:
        return None
    key, site_id, tz, displays = (doc.get(k) for k in ("key", "site", "timezone", "displays"))
    if not all(isinstance(v, str) and v for v in (key, site_id, tz)):
        return None
    if not isinstance(displays, list) or not all(isinstance(d, str) and d for d in displays):
        return None
    ttl = doc.get("ttl_s")
    if not (type(ttl) in (int, float) and math.isfinite(ttl) and ttl > 0):
        ttl = None  # a stamp of before (or a damaged value): the signs' expiry only
    return ValidatedSite(site_id, tuple(displays), tz, ttl)


def write_stamp(db: str | Path, key: str, site: ValidatedSite) -> None:
    """Record that the site file of ``key`` passed validation (atomically, private like the
    journal). A failure is only warned: the next start parses the site file first."""
    path = stamp_path(db)
    doc = {
        "v": STAMP_VERSION,
        "key": key,
        "site": site.site_id,
        "timezone": site.timezone,
        "displays": list(site.displays),
        "ttl_s": site.shortest_ttl_s,
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        create_private(tmp)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s (%s): the next start parses the site file first", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class _SiteUnpickler(pickle.Unpickler):
    """Builds the classes of a compiled site and nothing else (no callable of any other
    module can run while a cache is read)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _CACHE_MODULES and not name.startswith("_"):
            found = getattr(sys.modules.get(module) or importlib.import_module(module), name, None)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not a class of a site")


def read_site_cache(db: str | Path, key: str) -> Site | None:
    """The compiled site of ``key`` from the cache beside journal ``db``; None when there is
    none or it is for other bytes or code (both silently: the file is parsed and the cache
    rewritten), or it cannot be read or is damaged (warned)."""
    from parking.site import Site

    path = cache_path(db)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s cannot be read (%s): ignored, the site file is parsed", path, exc)
        return None
    header = CACHE_MAGIC + key.encode() + b"\n"
    if blob.startswith(CACHE_MAGIC) and not blob.startswith(header):
        return None  # the site file or the code changed since
    body = blob[len(header) + 32 :]
    site: Any = None
    if blob.startswith(header) and hashlib.sha256(body).digest() == blob[len(header) :][:32]:
        with contextlib.suppress(Exception):  # whatever it raises, it is not our site
            site = _SiteUnpickler(io.BytesIO(body)).load()
    if not isinstance(site, Site):
        log.warning("%s is damaged: ignored, the site file is parsed", path)
        return None
    return site


def write_site_cache(db: str | Path, key: str, site: Site) -> None:
    """Keep the compiled ``site`` of the site file of ``key`` beside journal ``db``
    (atomically, private like the journal). A failure is only warned: the next start that
    has changes to replay parses the site file."""
    path = cache_path(db)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        body = pickle.dumps(site, protocol=pickle.HIGHEST_PROTOCOL)
        create_private(tmp)
        with open(tmp, "wb") as f:
            f.write(CACHE_MAGIC + key.encode() + b"\n" + hashlib.sha256(body).digest())
            f.write(body)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - a cache only: the disk, or a site pickle refuses
        log.warning("cannot write %s (%s): the next start parses the site file", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
