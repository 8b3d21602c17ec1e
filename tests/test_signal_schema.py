"""Signal schema v1.x: what is accepted, what is invalid and the reason recorded."""

from __future__ import annotations

import json

import pytest

from helpers import DROP, payload, sig
from operators.signal import MAX_PAYLOAD_BYTES, Invalid, parse_signal


def test_valid_v1_0_parses_every_field():
    s = parse_signal(payload(sig("sig-ok")))
    assert s.version == "1.0"
    assert s.signal_id == "sig-ok"
    assert s.emitted_ms == 1767261600000
    assert s.ttl_seconds == 300
    assert (s.source, s.venue, s.symbol, s.side, s.regime) == ("macro", "okx", "BTC-USDT", "buy", "trending_up")
    assert s.confidence == 0.8
    assert s.reference_price == 100.0
    assert s.exit_rules.exit_regimes == ["choppy"]
    assert s.exit_rules.hard_stop_pct == 0.05
    assert s.backtest_stats.win_rate == 0.62
    assert s.regime_change_alert is False
    assert s.unknown_fields() == []


def test_timestamp_offset_other_than_utc_is_accepted_and_converted():
    s = parse_signal(payload(sig(timestamp="2026-01-01T12:00:00.000+02:00")))
    assert s.emitted_ms == 1767261600000


def test_reference_price_is_optional():
    assert parse_signal(payload(sig(reference_price=DROP))).reference_price is None


def test_v1_1_carries_regime_change_alert():
    s = parse_signal(payload(sig(version="1.1", regime_change_alert=True)))
    assert s.version == "1.1"
    assert s.regime_change_alert is True


def test_v1_1_without_regime_change_alert_defaults_to_false():
    s = parse_signal(payload(sig(version="1.1")))
    assert s.regime_change_alert is False


def test_unknown_fields_are_kept_listed_and_not_rejected():
    doc = sig(argus_build="1.84.2")
    doc["exit_rules"]["trailing_stop_pct"] = 0.02
    doc["backtest_stats"]["sharpe"] = 1.4
    s = parse_signal(payload(doc))
    assert sorted(s.unknown_fields()) == ["argus_build", "backtest_stats.sharpe", "exit_rules.trailing_stop_pct"]
    assert s.model_extra == {"argus_build": "1.84.2"}
    assert s.exit_rules.model_extra == {"trailing_stop_pct": 0.02}


@pytest.mark.parametrize("value", [0, 0.0, 0.65, 1, 1.0])
def test_confidence_bounds_inclusive(value):
    assert parse_signal(payload(sig(confidence=value))).confidence == float(value)


def test_signal_id_of_128_chars_is_valid():
    assert len(parse_signal(payload(sig("x" * 128))).signal_id) == 128


def _reason(raw) -> Invalid:
    with pytest.raises(Invalid) as info:
        parse_signal(raw)
    return info.value


@pytest.mark.parametrize(
    "overrides, reason_start",
    [
        ({"confidence": "0.8"}, "schema: confidence: Input should be a valid number"),
        ({"confidence": True}, "schema: confidence: Input should be a valid number"),
        ({"confidence": float("nan")}, "schema: confidence: Input should be a finite number"),
        ({"confidence": 1.0001}, "schema: confidence: Input should be less than or equal to 1"),
        ({"confidence": -0.01}, "schema: confidence: Input should be greater than or equal to 0"),
        ({"version": "2.0"}, "schema: version:"),
        ({"version": "10.0"}, "schema: version:"),
        ({"timestamp": "2026-01-01T10:00:00"}, "schema: timestamp: Input should have timezone info"),
        ({"signal_id": DROP}, "schema: signal_id: Field required"),
        ({"signal_id": ""}, "schema: signal_id:"),
        ({"signal_id": "x" * 129}, "schema: signal_id: String should have at most 128 characters"),
        ({"ttl_seconds": 0}, "schema: ttl_seconds: Input should be greater than 0"),
        ({"ttl_seconds": 60.0}, "schema: ttl_seconds:"),
        ({"venue": "binance"}, "schema: venue:"),
        ({"source": "astrology"}, "schema: source:"),
        ({"side": "hold"}, "schema: side:"),
        ({"regime": "sideways"}, "schema: regime:"),
        ({"symbol": ""}, "schema: symbol:"),
        ({"reference_price": 0}, "schema: reference_price:"),
        ({"suggested_kelly": 1.5}, "schema: suggested_kelly:"),
        ({"max_position_usd": 0}, "schema: max_position_usd:"),
        ({"holding_period_hours": 0}, "schema: holding_period_hours:"),
        ({"exit_rules": DROP}, "schema: exit_rules: Field required"),
        ({"backtest_stats": {"avg_win": 0.02}}, "schema: backtest_stats.win_rate: Field required"),
        ({"backtest_stats": {"win_rate": 1.2}}, "schema: backtest_stats.win_rate:"),
    ],
)
def test_schema_violations_are_invalid_with_the_field_named(overrides, reason_start):
    err = _reason(payload(sig(**{"signal_id": "sig-bad", **overrides})))
    assert err.reason.startswith(reason_start), err.reason


def test_invalid_signal_keeps_its_signal_id_for_the_audit_trail():
    assert _reason(payload(sig("sig-bad", confidence="0.8"))).signal_id == "sig-bad"
    assert _reason(payload(sig("x" * 129))).signal_id is None


def test_payload_over_64_kib_is_invalid_and_exactly_64_kib_is_not():
    doc = sig("sig-big", debug_blob="")
    fixed = len(payload(doc).encode())
    doc["debug_blob"] = "x" * (MAX_PAYLOAD_BYTES - fixed)
    exact = payload(doc)
    assert len(exact.encode()) == 65536
    assert parse_signal(exact).unknown_fields() == ["debug_blob"]
    doc["debug_blob"] += "x"
    err = _reason(payload(doc))
    assert err.reason == "payload_too_large: 65537 bytes > 65536"


def test_payload_size_counts_bytes_not_characters():
    doc = sig("sig-utf8", note="")
    fixed = len(json.dumps(doc, ensure_ascii=False).encode())
    doc["note"] = "é" * ((MAX_PAYLOAD_BYTES - fixed) // 2 + 1)  # 2 bytes each in UTF-8
    text = json.dumps(doc, ensure_ascii=False)
    assert len(text) <= MAX_PAYLOAD_BYTES < len(text.encode())
    assert _reason(text).reason.startswith("payload_too_large:")


@pytest.mark.parametrize(
    "raw, reason_start",
    [
        ('{"version": "1.0", "signal_id": ', "not_json:"),
        ("not json at all", "not_json:"),
        (b"\xff\xfe{}", "not_json:"),
        (json.dumps([sig()]), "not_object: payload must be a JSON object"),
        ('"a string"', "not_object:"),
        ("42", "not_object:"),
        ("null", "not_object:"),
    ],
)
def test_payloads_that_are_not_a_json_object_are_invalid(raw, reason_start):
    assert _reason(raw).reason.startswith(reason_start)


def test_missing_payload_field_is_invalid():
    assert _reason(None).reason == "missing payload field"
