"""A tiny HTTP reward server, and the client that ``rewards.load("http://host:port")`` returns.

    python -m rewards.serve out/rm_helpful --port 8100            # any reward spec: a dir, "math", ...
    python -m rewards.serve out/rm_helpful --option batch_size=64 --option device=cuda

Protocol (JSON over HTTP, standard library only on both sides):

- ``POST /score`` with ``{"prompts": [...], "completions": [...], "columns": {"answer": [...], ...}}``
  -> ``200 {"rewards": [float | null, ...]}`` (one per completion; NaN is sent as JSON ``NaN``, so
  the caller's isolation counts it as an error).
- ``GET /health`` -> ``200 {"status": "ok", "reward": SPEC}``.
- Errors come back as ``{"error": MESSAGE}``: 400 malformed JSON or fields, 411 no Content-Length,
  413 a body over ``--max-body-mb``, 404 another path, 500 the reward raised.

The server binds to 127.0.0.1 by default. It has no authentication and no TLS, so another address
is refused unless ``--allow-remote`` is given (and then it warns). Requests are handled in threads;
a reward-model reward serialises its forward passes itself.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
SCORE_PATH, HEALTH_PATH = "/score", "/health"


class RewardServerError(RuntimeError):
    """A reward server that cannot be reached or answered with an error (the message says which)."""


# ----------------------------------------------------------------------------------------------
# Client


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RemoteReward:
    """A reward (TRL convention) computed by a reward server: one POST per call.

    ``url``: ``http(s)://host:port`` (POSTs to ``/score``) or a full endpoint URL with its own path.
    ``timeout_s``: per request. Any failure (unreachable, HTTP error, a malformed answer) raises
    ``RewardServerError``, which ``rewards.combine`` counts as that call's error. Per-sample columns
    (lists with one entry per completion) are sent; other keyword arguments (e.g. TRL's
    ``trainer_state``) are not. Constructing it does not touch the network (see ``health()``).
    """

    def __init__(self, url: str, *, timeout_s: float = 60.0, headers: Mapping[str, str] | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"a reward server URL is http(s)://host:port[/path], not {url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        base = f"{parsed.scheme}://{parsed.netloc}"
        self.url = url
        self.score_url = base + (parsed.path if parsed.path not in ("", "/") else SCORE_PATH)
        self.health_url = base + HEALTH_PATH
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        # A proxy from the environment must not see loopback traffic.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(parsed.hostname) else []
        self._opener = urllib.request.build_opener(*handlers)
        self.__name__ = "remote_reward"

    def __repr__(self) -> str:
        return f"RemoteReward({self.score_url!r})"

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float | None]:
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        sent = {
            k: list(v)
            for k, v in columns.items()
            if isinstance(v, list | tuple) and len(v) == n  # per-sample columns only
        }
        try:
            body = json.dumps({"prompts": list(prompts), "completions": list(completions), "columns": sent})
        except TypeError as e:
            raise TypeError(f"reward server {self.url}: the batch is not JSON-serialisable: {e}") from None
        answer = self._request(self.score_url, body.encode("utf-8"))
        values = answer.get("rewards") if isinstance(answer, dict) else None
        if not isinstance(values, list) or len(values) != n:
            got = f"{len(values)} rewards" if isinstance(values, list) else repr(answer)[:200]
            raise RewardServerError(f"reward server {self.score_url}: expected {n} rewards, got {got}")
        return values

    def health(self) -> dict:
        """``GET /health``: the server's status, or ``RewardServerError``."""
        return self._request(self.health_url, None)

    def _request(self, url: str, data: bytes | None) -> Any:
        req = urllib.request.Request(url, data=data, headers=self.headers, method="POST" if data else "GET")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:2000].decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise RewardServerError(f"reward server {url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, DNS, time-out
            why = getattr(e, "reason", e)
            raise RewardServerError(f"reward server {url}: cannot reach it: {why}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RewardServerError(f"reward server {url}: the answer is not JSON: {raw[:200]!r}") from None


# ----------------------------------------------------------------------------------------------
# Server


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _parse_score_request(body: bytes) -> tuple[list, list, dict]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise _BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise _BadRequest(400, f"expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"prompts", "completions", "columns"}
    if unknown:
        raise _BadRequest(400, f"unknown field(s) {sorted(unknown)}; expected prompts, completions, columns")
    prompts, completions = data.get("prompts"), data.get("completions")
    columns = data.get("columns") or {}
    for name, value in (("prompts", prompts), ("completions", completions)):
        if not isinstance(value, list):
            raise _BadRequest(400, f"field '{name}': expected a list, got {type(value).__name__}")
    if len(prompts) != len(completions):
        raise _BadRequest(400, f"{len(prompts)} prompts for {len(completions)} completions")
    if not isinstance(columns, dict):
        raise _BadRequest(400, f"field 'columns': expected an object, got {type(columns).__name__}")
    for key, value in columns.items():
        if key in ("prompts", "completions"):
            raise _BadRequest(400, f"column {key!r} clashes with the top-level field")
        if not isinstance(value, list) or len(value) != len(completions):
            raise _BadRequest(400, f"column {key!r}: expected a list with one entry per completion")
    return prompts, completions, columns


def _number(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else math.nan  # inf -> NaN: both are errors for the caller


class RewardHandler(BaseHTTPRequestHandler):
    """``POST /score`` and ``GET /health`` for the reward in ``server.reward``."""

    server_version = "align-reward-server/1"
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a client may take to send its request

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?")[0] != HEALTH_PATH:
            return self._send(404, {"error": f"no such endpoint {self.path!r}; try POST {SCORE_PATH}"})
        self._send(200, {"status": "ok", "reward": self.server.spec})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != SCORE_PATH:
            return self._send(404, {"error": f"no such endpoint {self.path!r}; try POST {SCORE_PATH}"})
        try:
            length = self._content_length()
            prompts, completions, columns = _parse_score_request(self.rfile.read(length))
        except _BadRequest as e:
            return self._send(e.status, {"error": str(e)})
        try:
            values = self.server.reward(prompts=prompts, completions=completions, **columns)
            rewards = [_number(v) for v in values]
            if len(rewards) != len(completions):
                raise ValueError(f"the reward returned {len(rewards)} values for {len(completions)} samples")
        except Exception as e:  # noqa: BLE001 - reported to the client, the server keeps serving
            log.exception("reward failed")
            return self._send(500, {"error": f"{type(e).__name__}: {e}"})
        self._send(200, {"rewards": rewards})

    def _content_length(self) -> int:
        text = self.headers.get("Content-Length")
        if text is None:
            self.close_connection = True
            raise _BadRequest(411, "a Content-Length header is required")
        try:
            length = int(text)
        except ValueError:
            self.close_connection = True
            raise _BadRequest(400, f"bad Content-Length {text!r}") from None
        if length < 0:
            self.close_connection = True
            raise _BadRequest(400, f"bad Content-Length {text!r}")
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise _BadRequest(
                413, f"request body of {length:,} bytes is over the limit of {self.server.max_body_bytes:,}"
            )
        return length

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)


class RewardServer(ThreadingHTTPServer):
    """A threading HTTP server holding one reward; ``server_address`` has the bound port."""

    daemon_threads = True

    def __init__(self, reward: Callable, spec: str, address: tuple[str, int], max_body_bytes: int):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, RewardHandler)
        self.reward, self.spec, self.max_body_bytes = reward, spec, max_body_bytes


def make_server(
    reward: Callable | str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    **options: Any,
) -> RewardServer:
    """A server for ``reward`` (a callable or a spec for ``rewards.load`` with ``options``), not yet
    serving: call ``serve_forever()`` (e.g. in a thread) and ``shutdown()``. ``port=0`` picks a free port.

    A host that is not loopback raises ``PermissionError`` unless ``allow_remote=True``.
    """
    if not _is_loopback(host):
        if not allow_remote:
            raise PermissionError(
                f"refusing to bind the reward server to {host!r}: it has no authentication and no TLS, "
                "so anyone who can reach the port can use it. Bind to 127.0.0.1 (the default), or pass "
                "--allow-remote (allow_remote=True) if that is what you want."
            )
        log.warning(
            "WARNING: the reward server listens on %s, beyond this machine, with no authentication and "
            "no TLS; anyone who can reach the port can use it.",
            host,
        )
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    spec = reward if isinstance(reward, str) else getattr(reward, "__name__", repr(reward))
    if isinstance(reward, str):
        from rewards.loading import load

        reward = load(reward, **options)
    return RewardServer(reward, spec, (host, port), max_body_bytes)


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a bare string


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewards.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "spec", help="a reward spec for rewards.load: a reward-model dir, a built-in name, ..."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8100, help="port; 0 picks a free one (printed)")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (no auth, no TLS: be sure)"
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20, help="larger requests get 413"
    )
    parser.add_argument(
        "--option",
        "-o",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for rewards.load (JSON value or a string), e.g. -o batch_size=64 -o device=cpu",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        server = make_server(
            args.spec,
            args.host,
            args.port,
            allow_remote=args.allow_remote,
            max_body_bytes=int(args.max_body_mb * 2**20),
            **dict(args.option),
        )
    except (PermissionError, ValueError, OSError) as e:  # refused host, bad spec/options, port in use
        print(f"rewards.serve: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"rewards.serve: serving {args.spec!r} on http://{shown}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
