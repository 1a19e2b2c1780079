"""The sandbox carrier: S10 tracking numbers, unique serials, rates, failures, void/track."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cloud.carriers import (
    REGISTRY,
    Address,
    Carrier,
    CarrierError,
    CustomsItem,
    Label,
    SandboxCarrier,
    Shipment,
    format_s10,
    get_carrier,
    is_valid_s10,
    s10_check_digit,
)
from cloud.carriers.sandbox import SerialCounter, default_serials

LEJ = Address(name="Packline Leipzig", street="Logistikring 1", postal_code="04435", city="Schkeuditz",
              country="DE")
BERLIN = Address(name="Erika Mustermann", street="Platz der Republik 1", postal_code="11011", city="Berlin",
                 country="DE", phone="+4930123456")
PARIS = Address(name="Jean Dupont", street="5 Avenue Anatole France", postal_code="75007", city="Paris",
                country="FR")
BERN = Address(name="Ueli Muster", street="Bundesplatz 3", postal_code="3005", city="Bern", country="CH")
TENT = CustomsItem(sku="TENT-2P-GRN", description="Trekking tent 2P, green", qty=1, hs_code="630622", origin="VN",
                   unit_value=Decimal("189.00"), currency="EUR", weight_g=2150)


def shipment(to: Address = BERLIN, weight_g: int = 1200, customs: tuple[CustomsItem, ...] = ()) -> Shipment:
    return Shipment(reference="ACME-1", ship_from=LEJ, ship_to=to, weight_g=weight_g, service_level="standard",
                    customs=customs)


def counter(start: int) -> SerialCounter:
    return SerialCounter(start=start)


# --- S10 ---------------------------------------------------------------------------------------------
def test_s10_check_digit_matches_the_published_example() -> None:
    # UPU S10 / Wikipedia: 47312482 -> S = 200 -> 11 - (200 mod 11) = 9
    assert s10_check_digit("47312482") == 9
    assert is_valid_s10("RR473124829GB")
    assert format_s10("RR", 47312482, "GB") == "RR473124829GB"


def test_s10_other_examples_and_the_10_and_11_rules() -> None:
    assert is_valid_s10("RA123456785GB")  # S = 204, 204 mod 11 = 6 -> 5
    assert s10_check_digit("00000008") == 0  # S = 56, 56 mod 11 = 1 -> 10 -> 0
    assert s10_check_digit("11111111") == 5  # S = 44, 44 mod 11 = 0 -> 11 -> 5
    assert s10_check_digit("00000003") == 1  # S = 21, 21 mod 11 = 10 -> 1


def test_s10_rejects_wrong_check_digit_and_malformed() -> None:
    assert not is_valid_s10("RR473124828GB")
    assert not is_valid_s10("rr473124829gb")
    assert not is_valid_s10("RR 473124829 GB")
    assert not is_valid_s10("RR47312482GB")
    # The example "EE876543217CH" sometimes quoted does NOT pass the published algorithm:
    # 8*8+7*6+6*4+5*2+4*3+3*5+2*9+1*7 = 192, 192 mod 11 = 5, 11 - 5 = 6.
    assert not is_valid_s10("EE876543217CH")
    assert is_valid_s10("EE876543216CH")
    with pytest.raises(ValueError):
        s10_check_digit("1234567")
    with pytest.raises(ValueError):
        format_s10("RR", 100_000_000, "GB")
    with pytest.raises(ValueError):
        format_s10("R1", 1, "GB")


# --- registry ------------------------------------------------------------------------------------------
def test_registry_builds_a_sandbox_carrier() -> None:
    c = get_carrier("sandbox", seed_prefix="CP", country="PL")
    assert isinstance(c, SandboxCarrier) and isinstance(c, Carrier)
    assert c.code == "sandbox" and set(REGISTRY) == {"sandbox"}
    with pytest.raises(CarrierError, match="unknown carrier"):
        get_carrier("dhl-express")
    with pytest.raises(ValueError):
        SandboxCarrier(seed_prefix="pl")
    with pytest.raises(ValueError):
        SandboxCarrier(fail_rate=1.5)


# --- buy -----------------------------------------------------------------------------------------------
def test_buy_returns_an_s10_label_from_the_serial_hook() -> None:
    c = SandboxCarrier(seed_prefix="RR", country="GB", next_serial=counter(47312482),
                       clock=lambda: datetime(2025, 1, 2, 3, 4, tzinfo=UTC))
    label = c.buy(shipment(), "standard")
    assert label == Label("sandbox", "standard", "RR473124829GB", label.zpl)
    assert label.zpl.startswith("^XA^CI28") and label.zpl.count("^XA") == 1 and label.zpl.endswith("^XZ")
    assert "^FDRR473124829GB^FS" in label.zpl
    assert "2025-01-02 03:04 UTC" in label.zpl
    assert c.buy(shipment(), "express").tracking_number == "RR473124832GB"  # S = 207 -> 11 - 9 = 2


def test_default_serials_are_shared_by_all_instances_of_a_process() -> None:
    a, b = SandboxCarrier(), SandboxCarrier()
    numbers = {a.buy(shipment(), "standard").tracking_number for _ in range(20)}
    numbers |= {b.buy(shipment(), "standard").tracking_number for _ in range(20)}
    assert len(numbers) == 40 and all(is_valid_s10(n) for n in numbers)
    assert default_serials() is default_serials()


def test_serial_counter_is_unique_across_threads_and_wraps() -> None:
    serials = counter(99_999_000)
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [serials() for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 4000
    assert all(0 <= s < 100_000_000 for s in seen) and 0 in seen  # wrapped past 99 999 999


def test_two_counters_seeded_from_time_and_randomness_start_apart() -> None:
    a = SerialCounter(rng=random.Random(1))
    b = SerialCounter(rng=random.Random(2))
    assert a() != b()


def test_a_serial_outside_the_s10_range_is_refused() -> None:
    c = SandboxCarrier(next_serial=lambda: 100_000_000)
    with pytest.raises(CarrierError, match="S10 range"):
        c.buy(shipment(), "standard")


def test_buy_refuses_what_the_carrier_cannot_carry() -> None:
    c = SandboxCarrier()
    with pytest.raises(CarrierError, match="unknown service"):
        c.buy(shipment(), "overnight")
    with pytest.raises(CarrierError, match="weight"):
        c.buy(shipment(weight_g=0), "standard")
    with pytest.raises(CarrierError, match="weight"):
        c.buy(shipment(weight_g=40_000), "standard")
    with pytest.raises(CarrierError, match="customs"):
        c.buy(shipment(to=BERN), "standard")
    label = c.buy(shipment(to=BERN, customs=(TENT,)), "standard")
    assert "CN 22" in label.zpl and "630622" in label.zpl


# --- rates ---------------------------------------------------------------------------------------------
def test_rates_by_zone_and_service() -> None:
    c = SandboxCarrier()
    domestic = {r.service: r for r in c.rates(shipment(to=BERLIN))}
    eu = {r.service: r for r in c.rates(shipment(to=PARIS))}
    world = {r.service: r for r in c.rates(shipment(to=BERN, customs=(TENT,)))}
    for table in (domestic, eu, world):
        assert set(table) == {"standard", "express"}
        assert table["express"].amount > table["standard"].amount
        assert table["express"].transit_days <= table["standard"].transit_days
        assert all(r.currency == "EUR" and r.carrier == "sandbox" for r in table.values())
    assert domestic["standard"].amount < eu["standard"].amount < world["standard"].amount
    assert domestic["standard"].amount == Decimal("4.90")  # 4.20 + 2 started kg * 0.35
    heavier = {r.service: r for r in c.rates(shipment(to=BERLIN, weight_g=5001))}
    assert heavier["standard"].amount > domestic["standard"].amount


# --- latency and failures --------------------------------------------------------------------------
def test_latency_is_slept_through_the_injected_sleep() -> None:
    slept: list[float] = []
    c = SandboxCarrier(latency_s=0.25, sleep=slept.append)
    c.rates(shipment())
    c.buy(shipment(), "standard")
    assert slept == [0.25, 0.25]


def test_fail_rate_one_always_fails_and_a_seeded_rate_replays_exactly() -> None:
    always = SandboxCarrier(fail_rate=1.0)
    for op in (lambda: always.rates(shipment()), lambda: always.buy(shipment(), "standard"),
               lambda: always.track("RR473124829GB")):
        with pytest.raises(CarrierError, match="simulated failure"):
            op()

    def outcomes(seed: int) -> list[bool]:
        c = SandboxCarrier(fail_rate=0.5, rng=random.Random(seed))
        result = []
        for _ in range(40):
            try:
                c.rates(shipment())
                result.append(True)
            except CarrierError:
                result.append(False)
        return result

    first = outcomes(42)
    assert first == outcomes(42)
    assert 5 < first.count(False) < 35


# --- void and track ----------------------------------------------------------------------------------
def test_void_and_track() -> None:
    c = SandboxCarrier(next_serial=counter(1))
    label = c.buy(shipment(), "standard")
    assert c.track(label.tracking_number) == "label_created"
    c.void(label)
    c.void(label)  # idempotent
    assert c.track(label.tracking_number) == "voided"
    with pytest.raises(CarrierError, match="not an S10"):
        c.track("1Z999AA10123456784")
    with pytest.raises(CarrierError, match="unknown tracking"):
        c.track("RR473124829GB")
    with pytest.raises(CarrierError, match="unknown label"):
        c.void(Label("other", "standard", label.tracking_number, ""))
    with pytest.raises(CarrierError, match="unknown label"):
        SandboxCarrier().void(label)
