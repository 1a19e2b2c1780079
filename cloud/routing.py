"""Where an order ships from, and whether it crosses a customs border.

Pure functions; the only I/O is reading the packaged table ``cloud/data/country_centroids.json``
(approximate country centroids, refined for some countries by postal-code prefix) once, on first use.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = [
    "EU_CUSTOMS_UNION",
    "SiteCandidate",
    "customs_territory",
    "destination_point",
    "haversine_km",
    "known_countries",
    "needs_customs",
    "rank_sites",
]

EARTH_RADIUS_KM = 6371.0

#: EU27 plus Monaco (in the EU customs territory through France). Norway, Switzerland, the UK,
#: Iceland and Liechtenstein are outside; so are San Marino, Andorra and the Vatican for our purposes
#: (own VAT or customs rules: a parcel there needs a customs declaration).
EU_CUSTOMS_UNION: frozenset[str] = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "MC",
})

# Parts of EU states outside the EU customs territory or VAT area, by (country, postal-code prefix).
# The value names the territory; a parcel between two different territories needs customs data.
# Büsingen (DE 78266) is inside the Swiss customs area, so it maps to "CH".
_SPECIAL_TERRITORIES: Mapping[str, Mapping[str, str]] = {
    "ES": {"35": "ES-CN", "38": "ES-CN", "51": "ES-CE", "52": "ES-ML"},  # Canary Islands, Ceuta, Melilla
    "FI": {"22": "AX"},  # Åland: outside the VAT area
    "DE": {"27498": "DE-HELGOLAND", "78266": "CH"},
    "IT": {"23041": "IT-LIVIGNO", "22061": "IT-CAMPIONE"},
    "GR": {"63086": "GR-ATHOS"},
    "FR": {p: f"FR-{p}" for p in ("971", "972", "973", "974", "975", "976", "977", "978",
                                   "984", "986", "987", "988")},  # overseas departments and territories
}
# Customs unions with a non-EU partner that make the border invisible for parcels.
_SAME_TERRITORY_AS: Mapping[str, str] = {"LI": "CH"}


@dataclass(frozen=True)
class SiteCandidate:
    id: str
    lat: float
    lon: float
    can_ship_all: bool  # the site has stock for every line of the order


@cache
def _centroids() -> tuple[dict[str, tuple[float, float]], dict[str, dict[str, tuple[float, float]]]]:
    raw = json.loads(resources.files("cloud.data").joinpath("country_centroids.json").read_text("utf-8"))
    countries = {c: (float(v[0]), float(v[1])) for c, v in raw["countries"].items()}
    regions = {
        c: {prefix: (float(v[0]), float(v[1])) for prefix, v in table.items()}
        for c, table in raw.get("regions", {}).items()
    }
    return countries, regions


def known_countries() -> frozenset[str]:
    """Countries :func:`destination_point` can place."""
    return frozenset(_centroids()[0])


def _postal_digits(postal_code: str | None) -> str:
    return re.sub(r"[\s-]", "", postal_code or "").upper()


def destination_point(country: str, postal_code: str | None = None) -> tuple[float, float]:
    """Approximate (lat, lon) of a destination: the longest matching postal-prefix region of the
    country if the table has one, else the country centroid. ``ValueError`` for an unknown country."""
    countries, regions = _centroids()
    code = country.strip().upper()
    if code not in countries:
        raise ValueError(f"no centroid for country {country!r}")
    pc = _postal_digits(postal_code)
    table = regions.get(code, {})
    for length in range(min(len(pc), 5), 0, -1):
        point = table.get(pc[:length])
        if point is not None:
            return point
    return countries[code]


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rank_sites(candidates: Sequence[SiteCandidate], country: str, postal_code: str | None = None) -> list[str]:
    """Ids of the sites that can ship the whole order, nearest to the destination first (ties by id);
    ``[]`` when none can. ``ValueError`` for a country without a centroid."""
    point = destination_point(country, postal_code)
    able = [c for c in candidates if c.can_ship_all]
    able.sort(key=lambda c: (haversine_km((c.lat, c.lon), point), c.id))
    return [c.id for c in able]


def customs_territory(country: str, postal_code: str | None = None) -> str:
    """The customs/VAT territory of an address: ``"EU"`` for the EU customs union and VAT area,
    otherwise a territory tag (the country code, or e.g. ``"ES-CN"`` for the Canary Islands)."""
    code = country.strip().upper()
    pc = _postal_digits(postal_code)
    for prefix, territory in _SPECIAL_TERRITORIES.get(code, {}).items():
        if pc.startswith(prefix):
            return territory
    if code in EU_CUSTOMS_UNION:
        return "EU"
    return _SAME_TERRITORY_AS.get(code, code)


def needs_customs(
    origin_country: str,
    dest_country: str,
    *,
    dest_postal_code: str | None = None,
    origin_postal_code: str | None = None,
) -> bool:
    """True when a parcel crosses a customs or VAT border and needs a customs declaration (CN22/CN23).

    DE -> FR: False; DE -> CH, NO, GB: True; CH -> LI: False (customs union);
    ES -> ES with a Canary Islands postal code (35xxx/38xxx): True.
    """
    return customs_territory(origin_country, origin_postal_code) != customs_territory(
        dest_country, dest_postal_code
    )
