"""The station catalog: every file of every station folder with its content version, and a version per
station, so that a new station or new annotations (or images) of one are seen, and only that station is
refreshed."""

from __future__ import annotations

from pydantic import BaseModel, Field

from geoembed.core.lineage import named_versions_version
from geoembed.core.sources import SourceFile

STATION_FILE = "db/station.json"


class StationCatalog(BaseModel):
    files: dict[str, tuple[str, str]] = Field(default_factory=dict)  # name -> (fingerprint, content version)
    stations: dict[str, str] = Field(default_factory=dict)  # station key -> version of all its files
    rejected: dict[str, str] = Field(default_factory=dict)

    def changed_since(self, previous: StationCatalog | None) -> list[str]:
        """Stations that are new or whose files changed (or lost files) since ``previous``."""
        before = previous.stations if previous else {}
        return sorted(k for k, v in self.stations.items() if before.get(k) != v)


def build_station_catalog(files: list[SourceFile]) -> StationCatalog:
    """``files``: the versioned listing of ``<root>/stations`` (names relative to it: <station>/db/...)."""
    by_station: dict[str, dict[str, str]] = {}
    for f in files:
        station, _, rest = f.name.partition("/")
        by_station.setdefault(station, {})[rest] = f.version
    stations = {k: named_versions_version(v) for k, v in sorted(by_station.items()) if STATION_FILE in v}
    return StationCatalog(files={f.name: (f.fingerprint, f.version) for f in files}, stations=stations,
                          rejected=dict(getattr(files, "rejected", {})))
