"""Site ranking by distance, the centroid table, and the customs border rule."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from cloud.routing import (
    EU_CUSTOMS_UNION,
    SiteCandidate,
    customs_territory,
    destination_point,
    haversine_km,
    known_countries,
    needs_customs,
    rank_sites,
)
from tests.support import SAMPLE_DATA

EU27 = {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT",
        "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"}


def _load(name: str) -> Any:
    return json.loads((SAMPLE_DATA / name).read_text("utf-8"))


SITES = {s["id"]: s for s in _load("sites.json")}


def site(site_id: str, can_ship_all: bool = True) -> SiteCandidate:
    s = SITES[site_id]
    return SiteCandidate(s["id"], s["lat"], s["lon"], can_ship_all)


def candidates_for(order: dict[str, Any]) -> list[SiteCandidate]:
    on_hand: dict[tuple[str, str], int] = {}
    for row in _load("stock.json"):
        if row["tenant"] == order["tenant"]:
            on_hand[(row["site"], row["sku"])] = on_hand.get((row["site"], row["sku"]), 0) + row["qty"]
    return [site(sid, all(on_hand.get((sid, line["sku"]), 0) >= line["qty"] for line in order["lines"]))
            for sid in SITES]


# --- sample orders ------------------------------------------------------------------------------------
EXPECTED_FIRST = {
    "ACME-10001": "DE-LEJ",  # Berlin, only Leipzig has everything
    "ACME-10002": "PL-POZ",  # Warsaw: Poznań beats Leipzig
    "ACME-10003": "DE-LEJ",  # Prague
    "ACME-10004": "NL-VNL",  # Paris: stock at Leipzig and Venlo, Venlo is nearer
    "ACME-10005": "DE-LEJ",  # Bern
    "ACME-10006": "DE-LEJ",  # London
    "ACME-10007": "PL-POZ",  # Athens: Poznań (socks) is nearer than Leipzig
    "NT-5001": "NL-VNL",
    "NT-5002": "NL-VNL",
    "NT-5003": "NL-VNL",
    "NT-5004": "PL-POZ",  # Oslo: Poznań 930 km, Venlo 980 km
    "NT-5005": "NL-VNL",
}


@pytest.mark.parametrize("order", _load("orders.json"), ids=lambda o: o["external_id"])
def test_every_sample_order_routes(order: dict[str, Any]) -> None:
    ship_to = order["ship_to"]
    ranked = rank_sites(candidates_for(order), ship_to["country"], ship_to["postal_code"])
    assert ranked and ranked[0] == EXPECTED_FIRST[order["external_id"]]
    assert len(ranked) == len(set(ranked))


def test_paris_goes_to_venlo_and_warsaw_to_poznan() -> None:
    assert rank_sites([site("DE-LEJ"), site("NL-VNL")], "FR", "75007") == ["NL-VNL", "DE-LEJ"]
    assert rank_sites([site("DE-LEJ"), site("PL-POZ"), site("NL-VNL")], "PL", "00-061")[0] == "PL-POZ"
    assert rank_sites([site("DE-LEJ"), site("PL-POZ"), site("NL-VNL")], "de", "80331")[0] == "DE-LEJ"


def test_only_sites_that_can_ship_everything() -> None:
    assert rank_sites([site("PL-POZ", False), site("DE-LEJ")], "PL", "00-061") == ["DE-LEJ"]
    assert rank_sites([site("PL-POZ", False), site("DE-LEJ", False)], "PL") == []
    assert rank_sites([], "DE") == []


def test_ties_break_by_id() -> None:
    same = [SiteCandidate("B", 50.0, 10.0, True), SiteCandidate("A", 50.0, 10.0, True),
            SiteCandidate("C", 40.0, 10.0, True)]
    assert rank_sites(same, "DE") == ["A", "B", "C"]


def test_unknown_country() -> None:
    with pytest.raises(ValueError, match="XX"):
        destination_point("XX")
    with pytest.raises(ValueError):
        rank_sites([site("DE-LEJ")], "US")


# --- the centroid table ----------------------------------------------------------------------------------
def test_centroids_cover_europe() -> None:
    required = EU27 | {"NO", "IS", "LI", "CH", "GB", "MC", "AL", "BA", "ME", "MK", "RS", "XK", "TR", "UA", "MD"}
    assert required <= known_countries()
    for country in known_countries():
        lat, lon = destination_point(country)
        assert 27 < lat < 72 and -32 < lon < 45, country


def test_region_prefixes_refine_the_country() -> None:
    raw = json.loads(resources.files("cloud.data").joinpath("country_centroids.json").read_text("utf-8"))
    assert set(raw["regions"]) <= set(raw["countries"])
    munich = destination_point("DE", "80331")
    assert munich != destination_point("DE") and haversine_km(munich, (48.14, 11.58)) < 60
    assert haversine_km(destination_point("PL", "00-061"), (52.23, 21.01)) < 20  # Warsaw
    assert haversine_km(destination_point("ES", "38001"), (28.47, -16.25)) < 60  # Tenerife: longest prefix
    assert destination_point("ES", "28001") == destination_point("ES")  # no region: country centroid
    assert destination_point("DE", None) == destination_point("DE", "")


def test_haversine() -> None:
    paris, berlin = (48.8566, 2.3522), (52.52, 13.405)
    assert haversine_km(paris, berlin) == pytest.approx(878, abs=10)
    assert haversine_km(paris, paris) == 0


# --- customs -------------------------------------------------------------------------------------------
def test_eu_customs_union() -> None:
    assert EU27 | {"MC"} == EU_CUSTOMS_UNION
    assert not {"NO", "CH", "GB", "IS", "LI"} & EU_CUSTOMS_UNION


@pytest.mark.parametrize(
    ("origin", "dest", "postal", "expected"),
    [
        ("DE", "FR", None, False),
        ("DE", "DE", "10115", False),
        ("DE", "MC", "98000", False),
        ("PL", "GR", "105 63", False),
        ("DE", "CH", "3005", True),
        ("DE", "GB", "SW1A 2AA", True),
        ("NL", "NO", "0159", True),
        ("DE", "IS", None, True),
        ("DE", "LI", "9490", True),
        ("CH", "LI", "9490", False),  # Swiss-Liechtenstein customs union
        ("CH", "CH", "8001", False),
        ("GB", "NO", None, True),
        ("DE", "ES", "28001", False),
        ("DE", "ES", "35001", True),  # Canary Islands
        ("DE", "ES", "38 001", True),
        ("DE", "ES", "51001", True),  # Ceuta
        ("DE", "FI", "22100", True),  # Åland
        ("DE", "FI", "00100", False),
        ("DE", "FR", "97400", True),  # Réunion
        ("DE", "DE", "78266", True),  # Büsingen: Swiss customs area
        ("CH", "DE", "78266", False),
        ("DE", "IT", "23041", True),  # Livigno
        ("de", "ch", None, True),
    ],
)
def test_needs_customs(origin: str, dest: str, postal: str | None, expected: bool) -> None:
    assert needs_customs(origin, dest, dest_postal_code=postal) is expected


def test_customs_territory() -> None:
    assert customs_territory("DE") == "EU"
    assert customs_territory("ES", "35001") == "ES-CN"
    assert customs_territory("LI") == "CH"
    assert customs_territory("NO") == "NO"
