"""Version floors checked at run time, read from the one place they are declared: pyproject.toml.

The sampler's KV-cache path uses transformers' cache layers and attention interface, which older releases
lack or shape differently; an older transformers would fail deep inside a stage with an AttributeError or a
TypeError. :func:`require` turns that into one clear message before any work. The floor is what
``.ci/run`` proves: it runs the model tests against exactly that release.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata


def floor_in(requirements: list[str], package: str) -> str | None:
    """The ``>=`` floor of ``package`` among requirement strings (``"transformers>=4.57"``), or None."""
    for req in requirements:
        # the name must end where the specifier starts: "transformers-stream-generator>=9" is another package
        m = re.match(rf"^{re.escape(package)}\s*(\[[^\]]*\])?\s*(?P<spec>(?:[<>=!~(]|$)[^;]*)", req.strip())
        if m:
            floor = re.search(r">=\s*([0-9][0-9.]*)", m.group("spec"))
            if floor:
                return floor.group(1)
    return None


@functools.cache
def declared_floor(package: str) -> str | None:
    """The ``>=`` floor alignslm's installed metadata declares for ``package`` (None if not installed)."""
    try:
        return floor_in(metadata.requires("alignslm") or [], package)
    except metadata.PackageNotFoundError:
        return None


def version_key(version: str) -> tuple[int, ...]:
    """``"4.57.0.dev0"`` -> (4, 57, 0): release numbers only, for comparing with a floor."""
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


@functools.cache
def require(package: str) -> None:
    """Raise ImportError naming the versions and the fix when ``package`` is older than the declared floor."""
    floor = declared_floor(package)
    if floor is None:
        return
    have = metadata.version(package)
    if version_key(have) < version_key(floor):
        raise ImportError(f"alignslm needs {package}>={floor} (found {have}); pip install -U '{package}>={floor}'")
