"""The optional HTTP endpoint: /healthz (the loop runs), /readyz (polls succeed), /metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .logs import scrub
from .metrics import Metrics
from .poller import ChatbotPoller
from .text import safe_text
from .types import Clock
from .wording import iso

READINESS_LIMIT = 20
"""At most this many chatbots are named in /readyz's body; `count` says how many there are."""


def verdict(*, failures: int, last_error: str | None, last_success: datetime | None, degraded: str | None,
            interval: float, now: datetime) -> str | None:
    """Why one chatbot makes the service unready, or None: the one rule /readyz and `status` share."""
    if failures:
        return f"last poll failed: {last_error}"
    if degraded:
        return f"answer mostly unusable: {degraded}"
    if last_success is None:
        return "never polled successfully yet"
    if now - last_success > timedelta(seconds=3 * interval):
        return f"no successful poll within 3 intervals (last success: {iso(last_success)})"
    return None


def readiness(pollers: Sequence[ChatbotPoller], now: datetime,
              limit: int = READINESS_LIMIT) -> tuple[int, list[dict[str, str]]]:
    """How many chatbots make the service unready (`verdict`), and the first `limit` of them with
    their reasons. The reasons leave the process (the Docker image binds 0.0.0.0): each is
    scrubbed of secrets (the vendor echoes API keys in its error messages) and bounded, like
    everything else an operator is shown."""
    count = 0
    problems: list[dict[str, str]] = []
    for poller in pollers:
        status = poller.status
        if not (status.failures or status.degraded or status.last_success is None
                or now - status.last_success > timedelta(seconds=3 * poller.chatbot.interval)):
            continue  # the common case, without building a reason
        count += 1
        if len(problems) >= limit:  # counted, not described: 100,000 failing chatbots stay a small body
            continue
        reason = verdict(failures=status.failures, last_error=status.last_error, last_success=status.last_success,
                         degraded=status.degraded, interval=poller.chatbot.interval, now=now) or ""
        problems.append({"chatbot": scrub(safe_text(poller.chatbot.name, 200)),
                         "reason": scrub(safe_text(reason, 300))})
    return count, problems


def health_app(pollers: Callable[[], Sequence[ChatbotPoller]], metrics: Metrics, clock: Clock,
               problems: Callable[[], list[str]] = list) -> web.Application:
    """`problems`: what keeps the whole daemon from its work (state, delivery, clock, a task that
    keeps failing), each named by its part: "state: …", "delivery: …"."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        count, chatbots = readiness(pollers(), clock())
        daemon = [scrub(safe_text(problem, 500)) for problem in problems()[:READINESS_LIMIT]]
        if count or daemon:
            return web.json_response({"status": "unready", "problems": daemon, "count": count,
                                      "chatbots": chatbots, "more": count - len(chatbots)}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=await metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_health(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
