"""The wire contract between stations and the cloud (version 1).

Everything that crosses MQTT is an :class:`Envelope` serialised as UTF-8 JSON.
Topic names live here and only here; ``docs/sync-contract.md`` describes them for
humans. Both halves import this module; neither imports the other.

Topics (``{station}`` and ``{site}`` are ids such as ``ST-DE-LEJ-1`` / ``DE-LEJ``)::

    packline/v1/stations/{station}/events   station -> cloud   QoS 1   order.packed, station.hello, ...
    packline/v1/stations/{station}/cmd      cloud -> station   QoS 1   ack, feed replay answers
    packline/v1/stations/{station}/state    station, retained  QoS 1   presence (Last Will = offline)
    packline/v1/sites/{site}/feed           cloud -> site      QoS 1   order.released, order.cancelled

Delivery is at-least-once; effects are exactly-once because every consumer
applies an envelope ``id`` once and producers keep what they sent until acked.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "CONTRACT_VERSION",
    "TOPIC_ROOT",
    "AckBody",
    "ContractError",
    "Envelope",
    "FeedSkipBody",
    "HelloBody",
    "LabelInfo",
    "OrderCancelledBody",
    "OrderPackedBody",
    "OrderReleasedBody",
    "OrderUpdatedBody",
    "PackedLine",
    "PresenceBody",
    "ReleasedLine",
    "ReplayRequestBody",
    "ShipToSummary",
    "cloud_events_subscription",
    "decode",
    "encode",
    "new_envelope",
    "parse_body",
    "parse_topic",
    "site_feed_topic",
    "station_cmd_topic",
    "station_events_topic",
    "station_state_topic",
]

CONTRACT_VERSION = 1
TOPIC_ROOT = f"packline/v{CONTRACT_VERSION}"
SCHEMA_VERSION = 1
_B = TypeVar("_B", bound=BaseModel)

# --- message types -------------------------------------------------------------
# station -> cloud
ORDER_PACKED = "order.packed"
STATION_HELLO = "station.hello"
REPLAY_REQUEST = "feed.replay_request"
# cloud -> site feed
ORDER_RELEASED = "order.released"
ORDER_CANCELLED = "order.cancelled"
ORDER_UPDATED = "order.updated"  # the order closed (shipped, exception) at the cloud: other stations stop
FEED_SKIP = "feed.skip"  # a replayed entry whose order closed meanwhile: advance seq, change nothing
FEED_TYPES = (ORDER_RELEASED, ORDER_CANCELLED, ORDER_UPDATED, FEED_SKIP)
MAX_SEQ = 2**63 - 1
"""Sequence numbers are stored as 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT)."""
# cloud -> one station
ACK = "ack"
# presence (retained)
PRESENCE = "station.presence"


class ContractError(ValueError):
    """A payload or topic that does not follow this contract (goes to the dead-letter record)."""


# --- topics ---------------------------------------------------------------------
def _check_id(value: str, what: str) -> str:
    if not value or any(c in value for c in "/+#\x00") or value.startswith("$"):
        raise ContractError(f"{what} {value!r} cannot be used in an MQTT topic")
    return value


def station_events_topic(station: str) -> str:
    return f"{TOPIC_ROOT}/stations/{_check_id(station, 'station id')}/events"


def station_cmd_topic(station: str) -> str:
    return f"{TOPIC_ROOT}/stations/{_check_id(station, 'station id')}/cmd"


def station_state_topic(station: str) -> str:
    return f"{TOPIC_ROOT}/stations/{_check_id(station, 'station id')}/state"


def site_feed_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/sites/{_check_id(site, 'site id')}/feed"


def cloud_events_subscription(shared_group: str | None = None) -> str:
    """What the cloud ingest subscribes to; with MQTT 5 several workers can share it."""
    topic = f"{TOPIC_ROOT}/stations/+/events"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a contract topic into (kind, id, leaf): ("stations", "ST-1", "events")."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT or parts[2] not in ("stations", "sites"):
        raise ContractError(f"not a {TOPIC_ROOT} topic: {topic!r}")
    return parts[2], parts[3], parts[4]


# --- envelope ---------------------------------------------------------------------
def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """One message on the bus. ``id`` is created and stored by the producer before sending."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    id: uuid.UUID
    type: str = Field(min_length=1, max_length=64)
    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema", ge=1)
    tenant: str | None = None
    site: str = Field(min_length=1)
    station: str | None = None
    seq: int = Field(ge=0, le=MAX_SEQ, description="monotonic per producer stream (station outbox, or site feed)")
    occurred_at: datetime
    body: dict[str, Any] = Field(default_factory=dict)


def new_envelope(
    type_: str,
    *,
    site: str,
    seq: int,
    body: BaseModel | dict[str, Any],
    tenant: str | None = None,
    station: str | None = None,
    id_: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return Envelope(
        id=id_ or uuid.uuid4(),
        type=type_,
        tenant=tenant,
        site=site,
        station=station,
        seq=seq,
        occurred_at=occurred_at or utcnow(),
        body=payload,
    )


def encode(env: Envelope) -> bytes:
    return env.model_dump_json(by_alias=True).encode("utf-8")


MAX_PAYLOAD_BYTES = 256 * 1024
"""No message of this contract comes near this (an order.released with a label is a few KiB);
anything larger is refused before it is parsed, so a flood of junk costs no memory or CPU."""
MAX_REASON_CHARS = 500


def _errors_text(e: ValidationError) -> str:
    """Pydantic's errors without the offending input (it may be megabytes), cut short."""
    text = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(envelope)'}: {err['msg']}"
                     for err in e.errors(include_url=False, include_input=False))
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def decode(payload: bytes | str) -> Envelope:
    """Parse bytes from the wire; raise :class:`ContractError` with a readable reason."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise ContractError(f"payload of {size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ContractError(f"payload is not UTF-8 JSON: {e}") from None
    except RecursionError:
        raise ContractError("payload is JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise ContractError("payload is not a JSON object")
    schema = raw.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise ContractError(f"schema must be an integer, got {schema!r}")
    if schema > SCHEMA_VERSION:
        raise ContractError(f"schema {raw.get('schema')} is newer than this build understands ({SCHEMA_VERSION})")
    try:
        return Envelope.model_validate(raw)
    except ValidationError as e:
        raise ContractError(f"envelope invalid: {_errors_text(e)}") from None


def parse_body(env: Envelope, model: type[_B]) -> _B:
    try:
        return model.model_validate(env.body)
    except ValidationError as e:
        raise ContractError(f"{env.type} body invalid: {_errors_text(e)}") from None


def check_feed_entry(env: Envelope) -> None:
    """Raise :class:`ContractError` unless ``env`` is a feed entry of a known type whose body
    parses. A station checks an entry that arrived on the site feed before it lets it take a
    ``seq``: a malformed or foreign entry must not take the place of the cloud's real one."""
    models: dict[str, type[_Body]] = {ORDER_RELEASED: OrderReleasedBody, ORDER_CANCELLED: OrderCancelledBody,
                                      ORDER_UPDATED: OrderUpdatedBody, FEED_SKIP: FeedSkipBody}
    model = models.get(env.type)
    if model is None:
        raise ContractError(f"feed entry type {env.type!r} is not understood by this station")
    parse_body(env, model)


# --- bodies -------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ReleasedLine(_Body):
    sku: str
    name: str
    qty: int = Field(gt=0)
    gtins: list[str] = Field(description="GTIN-14, zero padded, that verify this line")
    lot_tracked: bool = False
    bin: str | None = None


class LabelInfo(_Body):
    carrier: str
    service: str
    tracking_number: str
    zpl: str = Field(description="exactly one ^XA..^XZ label, UTF-8 (^CI28)")


class ShipToSummary(_Body):
    name: str
    city: str
    country: str


class OrderReleasedBody(_Body):
    order_id: str
    external_id: str
    tenant: str
    service_level: str = "standard"
    ship_to: ShipToSummary
    lines: list[ReleasedLine]
    label: LabelInfo
    expected_weight_g: int | None = None


class OrderCancelledBody(_Body):
    order_id: str
    reason: str | None = None


class PackedLine(_Body):
    sku: str
    qty: int = Field(gt=0)
    gtin: str
    lots: list[str] = Field(default_factory=list)


class OrderPackedBody(_Body):
    order_id: str
    packer: str | None = None
    lines: list[PackedLine]
    tracking_number: str
    weight_g: int | None = None
    started_at: datetime | None = None
    packed_at: datetime


class OrderUpdatedBody(_Body):
    """The cloud's new status for an order, e.g. ``shipped`` after one station packed it: every
    other station of the site must not pack it again."""

    order_id: str
    status: str
    station: str | None = Field(default=None, description="the station whose event caused it")
    reason: str | None = None


class FeedSkipBody(_Body):
    """Stands in, on replay, for an entry that no longer asks anything of a station
    (its order shipped, was cancelled or went to exception before the station saw it)."""

    order_id: str | None = None
    replaces: str = Field(description="the type of the entry it stands in for")
    reason: str


class HelloBody(_Body):
    """Sent by a station on every (re)connect: lets the cloud replay the feed it missed."""

    last_feed_seq: int = Field(ge=0, le=MAX_SEQ)
    outbox_depth: int = Field(ge=0, le=MAX_SEQ, default=0)
    software: str | None = None


class ReplayRequestBody(_Body):
    from_seq: int = Field(ge=0, le=MAX_SEQ, description="replay every feed entry with seq > from_seq")


class AckBody(_Body):
    event_id: uuid.UUID
    status: Literal["applied", "duplicate", "rejected"]
    reason: str | None = None


class PresenceBody(_Body):
    station: str
    site: str
    online: bool
    outbox_depth: int = 0
    last_feed_seq: int = 0
