"""OKX's private WebSocket (``/ws/v5/private``) as the simulator serves it: ``login``
checked as OKX checks it, ``subscribe`` to the ``orders`` channel, each change of an order
pushed to every socket subscribed to its instrument type, and the text ``ping`` answered
``pong``. A socket silent for 30 seconds is closed, as OKX closes it.

Login: ``sign`` = base64(HMAC-SHA256(secret, timestamp + "GET" + "/users/self/verify")),
the timestamp in seconds and within 30 seconds of the venue's clock. A simulator given
no credentials takes any key, passphrase and signature (the timestamp is still checked):
it cannot know the secret to check against. Errors come as OKX sends them:
``{"event": "error", "code": "60007", "msg": "Invalid sign", "connId": ...}``.

A test may drop every open socket and refuse new ones (``Sockets.drop``): a link lost."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

from aiohttp import WSMsgType, web

VERIFY = "GET/users/self/verify"
CLOCK_SKEW_S = 30  # how far a login's timestamp may be from the venue's clock
SILENT_S = 30.0  # OKX closes a socket that sent nothing for this long
INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION", "ANY")


@dataclass(frozen=True)
class Credentials:
    api_key: str
    secret: str
    passphrase: str

    def __repr__(self) -> str:
        return "Credentials(...)"  # never shown


def sign(secret: str, timestamp: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), (timestamp + VERIFY).encode(), hashlib.sha256).digest()).decode()


def login_error(args: object, known: Credentials | None, now: float) -> tuple[str, str] | None:
    """OKX's (code, message) refusing a login, or None if it passes."""
    if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], dict):
        return "60012", "Invalid request"
    a = args[0]
    key, passphrase, ts, signed = (str(a.get(k) or "") for k in ("apiKey", "passphrase", "timestamp", "sign"))
    if not key:
        return "60001", "OK-ACCESS-KEY can not be empty"
    if not signed:
        return "60002", "OK-ACCESS-SIGN can not be empty"
    if not passphrase:
        return "60003", "OK-ACCESS-PASSPHRASE can not be empty"
    try:
        seconds = float(ts)
    except ValueError:
        return "60004", "Invalid OK-ACCESS-TIMESTAMP"
    if abs(now - seconds) > CLOCK_SKEW_S:
        return "60006", "Timestamp request expired"
    if known is None:
        return None
    if not hmac.compare_digest(key, known.api_key):
        return "60005", "Invalid OK-ACCESS-KEY"
    if not hmac.compare_digest(passphrase, known.passphrase):
        return "60024", "Wrong passphrase"
    if not hmac.compare_digest(signed, sign(known.secret, ts)):
        return "60007", "Invalid sign"
    return None


class Conn:
    """One open socket: whether it logged in, which instrument types it follows."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, loop: asyncio.AbstractEventLoop):
        self.ws, self.transport, self.loop = ws, request.transport, loop
        self.id = secrets.token_hex(4)  # OKX's connId
        self.logged_in = False
        self.follows: set[str] = set()
        self.out: asyncio.Queue[str] = asyncio.Queue()

    def push(self, order: dict) -> None:
        """From any thread: queues OKX's push of an order change if this socket follows it."""
        kind = "ANY" if "ANY" in self.follows else order.get("instType", "")
        if kind in self.follows:
            doc = {"arg": {"channel": "orders", "instType": kind, "uid": "1"}, "data": [order]}
            self.loop.call_soon_threadsafe(self.out.put_nowait, json.dumps(doc))

    def answer(self, doc: dict) -> None:
        self.out.put_nowait(json.dumps({**doc, "connId": self.id}))

    def error(self, code: str, msg: str) -> None:
        self.answer({"event": "error", "code": code, "msg": msg})


class Sockets:
    """The open sockets, the credentials a login must show, and what a test switches."""

    def __init__(self, credentials: Credentials | None = None):
        self.credentials = credentials
        self.lock = threading.Lock()  # the book tells changes from the server's loop; a test reads counts
        self.open: set[Conn] = set()
        self.refusing = False
        self.logins = {"accepted": 0, "refused": 0}

    def changed(self, order: dict) -> None:
        """A Book watcher: every change of an order, pushed to the sockets that follow it."""
        with self.lock:
            conns = list(self.open)
        for c in conns:
            c.push(order)

    def drop(self, refuse: bool) -> None:
        """From any thread: closes every open socket at once, as a failed link does, and
        refuses new ones while ``refuse`` holds."""
        with self.lock:
            self.refusing = refuse
            conns = list(self.open)
        for c in conns:
            c.loop.call_soon_threadsafe(_abort, c)

    def stats(self) -> dict:
        with self.lock:
            return {"open": len(self.open), "logged_in": sum(c.logged_in for c in self.open),
                    "subscribed": sum(bool(c.follows) for c in self.open), "logins": dict(self.logins)}

    async def close_all(self) -> None:
        with self.lock:
            conns = list(self.open)
        for c in conns:
            await c.ws.close()

    # ----- one socket's conversation -----

    async def serve(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            refusing = self.refusing
        if refusing:
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Conn(ws, request, asyncio.get_running_loop())
        with self.lock:
            self.open.add(conn)
        sender = asyncio.ensure_future(_send(conn))
        try:
            while not ws.closed:
                try:
                    msg = await ws.receive(timeout=SILENT_S)
                except asyncio.TimeoutError:
                    break  # silent too long: OKX closes it
                if msg.type != WSMsgType.TEXT:
                    break
                if msg.data == "ping":
                    conn.out.put_nowait("pong")
                    continue
                self._handle(conn, msg.data)
        finally:
            with self.lock:
                self.open.discard(conn)
            sender.cancel()
            await ws.close()
        return ws

    def _handle(self, conn: Conn, text: str) -> None:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        op = doc.get("op") if isinstance(doc, dict) else None
        if op == "login":
            refused = login_error(doc.get("args"), self.credentials, time.time())
            with self.lock:
                self.logins["refused" if refused else "accepted"] += 1
            if refused:
                conn.error(*refused)
            else:
                conn.logged_in = True
                conn.answer({"event": "login", "code": "0", "msg": ""})
        elif op == "subscribe":
            self._subscribe(conn, doc.get("args"))
        else:
            conn.error("60012", f"Invalid request: {text[:200]}")  # OKX quotes the request it could not read

    def _subscribe(self, conn: Conn, args: object) -> None:
        if not conn.logged_in:
            conn.error("60011", "Please log in")
            return
        if not isinstance(args, list) or not args:
            conn.error("60012", "Invalid request")
            return
        for arg in args:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            kind = arg.get("instType") if isinstance(arg, dict) else None
            if channel != "orders" or kind not in INST_TYPES:
                conn.error("60018", f"Wrong URL or channel:{channel},instType:{kind} doesn't exist")
                continue
            conn.follows.add(kind)
            conn.answer({"event": "subscribe", "arg": {"channel": "orders", "instType": kind}})


async def _send(conn: Conn) -> None:
    """Writes what the socket is to be told, in order, until it closes."""
    try:
        while True:
            text = await conn.out.get()
            await conn.ws.send_str(text)
    except (ConnectionError, RuntimeError):
        pass  # closed meanwhile: the reader ends the conversation


def _abort(conn: Conn) -> None:
    """Cuts the connection without a closing handshake, as a broken link does."""
    if conn.transport is not None:
        conn.transport.abort()
