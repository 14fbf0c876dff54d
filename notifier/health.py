"""The optional HTTP endpoint: /healthz (the loop runs), /readyz (polls succeed), /metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics
from .poller import ChatbotPoller
from .types import Clock


def readiness(pollers: Sequence[ChatbotPoller], now: datetime) -> list[dict[str, str]]:
    """Chatbots that make the service unready: last poll failed, or no success in 3 intervals."""
    problems = []
    for poller in pollers:
        status = poller.status
        window = timedelta(seconds=3 * poller.chatbot.interval)
        if status.failures:
            problems.append({"chatbot": poller.chatbot.name, "reason": f"last poll failed: {status.last_error}"})
        elif status.last_success is None or now - status.last_success > window:
            when = "never" if status.last_success is None else status.last_success.isoformat()
            problems.append({"chatbot": poller.chatbot.name,
                             "reason": f"no successful poll within 3 intervals (last success: {when})"})
    return problems


def health_app(pollers: Callable[[], Sequence[ChatbotPoller]], metrics: Metrics, clock: Clock) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        problems = readiness(pollers(), clock())
        if problems:
            return web.json_response({"status": "unready", "chatbots": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
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
