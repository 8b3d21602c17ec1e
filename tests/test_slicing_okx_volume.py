"""The OKX simulator reports volume as OKX does, in 1-minute candlesticks, read through the
real ccxt client: the market's volume a price tells it and its own fills."""

from __future__ import annotations

import time

import ccxt

from connectors.sims.okx import running
from connectors.venues.okx_volume import MINUTE_MS, minute_volume
from okx_fixtures import CREDENTIALS, KEY, PASSPHRASE, PRICES, SECRET, raw


def _client(url: str) -> ccxt.okx:
    ex = ccxt.okx({"apiKey": KEY, "secret": SECRET, "password": PASSPHRASE, "timeout": 5000})
    ex.urls["api"]["rest"] = url
    ex.options["fetchMarkets"] = {"types": ["spot"]}
    ex.has["fetchCurrencies"] = False
    return ex


def test_the_simulator_reports_volume_in_its_candles_through_ccxt():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        ex = _client(sim.url)
        assert ex.fetch_ohlcv("BTC/USDT", "1m") == []  # nothing traded yet
        assert minute_volume(ex, "BTC/USDT") is None
        for px, vol in ((101.0, 2.0), (103.0, 3.5), (102.0, 0.5)):
            assert raw(sim.url, "POST", "/sim/price", {"instId": "BTC-USDT", "px": px, "vol": vol})[0] == 200
        raw(sim.url, "POST", "/sim/price", {"instId": "ETH-USDT", "px": 51.0, "vol": 9.0})  # another symbol's
        order = ex.create_order("BTC/USDT", "market", "buy", 1.0, params={"tdMode": "cash", "tgtCcy": "base_ccy"})
        assert order["id"]
        bars = ex.fetch_ohlcv("BTC/USDT", "1m")
        # the bar may straddle a minute's turn: the bars between them hold every trade
        assert sum(b[5] for b in bars) == 2.0 + 3.5 + 0.5 + 1.0
        assert max(b[2] for b in bars) >= 103.0 and min(b[3] for b in bars) <= 101.0
        start = bars[-1][0]
        assert start % MINUTE_MS == 0
        # seen from the next minute, the bar is the last complete minute's volume
        assert minute_volume(ex, "BTC/USDT", now_ms=start + MINUTE_MS) == bars[-1][5]
        assert minute_volume(ex, "BTC/USDT", now_ms=start + 5 * MINUTE_MS) == 0.0  # a quiet minute
        assert raw(sim.url, "GET", "/api/v5/market/candles?instId=BTC-USDT&bar=5m")[1]["code"] == "51000"
        assert raw(sim.url, "GET", "/api/v5/market/candles?instId=NOPE-USDT")[1]["code"] == "51001"
        assert int(raw(sim.url, "GET", "/api/v5/market/candles?instId=BTC-USDT")[1]["data"][0][0]) <= time.time() * 1000
