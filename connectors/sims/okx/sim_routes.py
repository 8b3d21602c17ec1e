"""What a test or a demo may ask of ``apex sim okx`` while it runs: the ``/sim`` routes
(``control.py`` serves them) with their bodies, as ``apex sim okx --help`` lists them. Apart
from ``control.py`` so that the help is written without importing the server (aiohttp), which
every ``apex`` command would otherwise pay for at start."""

from __future__ import annotations

# every route below, with its body and what it does: `apex sim okx --help` lists them from here
CONTROLS = (
    ("POST /sim/fault", '{"kind": KIND, "times": 1, "paths": ["trade/order", "trade/batch-orders"], '
                        '"accept": true, "status": 503, "code": "51008"}: arm a fault for the next '
                        '`times` requests to those paths (accept false: drop, hang and 50004 take nothing)'),
    ("POST /sim/clear-faults", "disarm every fault"),
    ("POST /sim/price", '{"instId": "BTC-USDT", "px": 100.0, "vol": 2.5}: the last price, the bid and ask drawn '
                        'around it; resting limit orders it crosses fill at their price; vol (optional): what the '
                        'market traded since, in the 1m candles (market/candles) with the simulator\'s own fills'),
    ("POST /sim/depth", '{"half_spread_bps": 1, "step_bps": 1, "levels": 20, "level_notional": 50000}: the '
                        'book around each last price that market orders walk (levels each step_bps further, '
                        'each holding level_notional of the quote currency)'),
    ("POST /sim/balance", '{"ccy": "USDT", "amount": 1000}: set a currency\'s balance'),
    ("POST /sim/fill-ratio", '{"ratio": 0.5}: the share of each order filled at once (0 to 1); the rest rests'),
    ("POST /sim/clock", '{"skew_s": 2.5}: public/time answers this far from this machine\'s clock'),
    ("POST /sim/funding", '{"rate": 0.0001, "instId": "BTC-USDT-SWAP"}: funding at that rate (left out: the '
                          'current one) for every open swap position (of instId only, if given: the swap or '
                          'BTC-USDT); a long pays a positive rate; bills of type 8'),
    ("POST /sim/latency", '{"latency_ms": 20}: added to every /api/v5 answer from now on'),
    ("POST /sim/drop-sockets", '{"refuse": false}: close every WebSocket at once (refuse true: and new ones, '
                               'until called again with false)'),
    ("GET /sim/stats", "orders accepted, requests rate-limited, requests by path"),
    ("GET /sim/placements", "how many times each clOrdId was sent to be placed"),
    ("GET /sim/sockets", "WebSockets open, logged in and subscribed, and the logins seen"),
)
