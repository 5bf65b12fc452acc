"""`convoai-ledger simulate`: play Agora against a running service.

Serves Agora's REST API (point the service's `AGORA_API_BASE_URL` at the printed address) and
sends signed sessions to `--target` for the apps configured in the environment, with the same
variables the service reads (App ID, webhook secret, REST credentials or certificate, PCU cap).
Once the sessions are over it keeps serving the REST API until interrupted, unless
`--exit-when-done`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import httpx
import structlog

from service.config import Settings
from service.simulator import ncs, sessions
from service.simulator.backend import SimApp
from service.simulator.server import Simulator

log = structlog.get_logger(__name__)

# How long to wait for the target service to answer /healthz before starting sessions.
TARGET_WAIT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="the service's base URL (or webhook URL)")
    parser.add_argument("--agents", type=_count, default=20, help="sessions to run (default 20)")
    parser.add_argument("--rate", type=_positive, default=1.0, help="sessions started per second")
    parser.add_argument(
        "--duration", type=_positive, default=30.0, help="mean session length, seconds"
    )
    parser.add_argument(
        "--shuffle", action="store_true", help="send each session's end in random order"
    )
    parser.add_argument(
        "--duplicates",
        type=_probability,
        default=0.0,
        metavar="P",
        help="send a redundant copy of a notification with probability P",
    )
    parser.add_argument(
        "--drop",
        type=_probability,
        default=0.0,
        metavar="P",
        help="lose a notification with probability P",
    )
    parser.add_argument("--host", default="127.0.0.1", help="REST API address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="REST API port (default 8090)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every REST answer")
    parser.add_argument(
        "--keep-history-after-stop",
        action="store_true",
        help="answer GET …/history for stopped agents too",
    )
    parser.add_argument("--app", help="the App ID to run sessions for (default: the first)")
    parser.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit once the sessions are over and delivered",
    )


def apps_from_settings(settings: Settings) -> list[SimApp]:
    """The simulator's view of every configured app that has a webhook secret."""
    return [
        SimApp(
            app_id=app.app_id,
            webhook_secret=str(app.webhook_secrets[0]),
            customer_id=app.customer_id,
            customer_secret=str(app.customer_secret) if app.customer_secret else None,
            certificate=str(app.app_certificate) if app.app_certificate else None,
            pcu_cap=app.pcu_cap,
        )
        for app in settings.apps.values()
        if app.webhook_secrets
    ]


async def main(settings: Settings, args: argparse.Namespace) -> int:
    apps = apps_from_settings(settings)
    app_id = args.app or (apps[0].app_id if apps else None)
    if app_id is None or app_id not in {a.app_id for a in apps}:
        log.error("simulator_needs_an_app", hint="set AGORA_APP_ID and AGORA_WEBHOOK_SECRETS")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    delivery = ncs.DeliveryPolicy(shuffle=args.shuffle, duplicates=args.duplicates, drop=args.drop)
    simulator = Simulator(
        apps,
        target=args.target,
        delivery=delivery,
        host=args.host,
        port=args.port,
        seed=args.seed,
        latency_s=args.latency_ms / 1000,
        keep_history_after_stop=args.keep_history_after_stop,
    )
    await simulator.start()
    log.info("simulator_serving", api_base_url=simulator.api_base_url, target=args.target)
    try:
        if await _target_ready(args.target, stop):
            await _run_sessions(simulator, args, app_id=app_id, stop=stop)
        if not args.exit_when_done:
            await stop.wait()
    finally:
        await simulator.stop()
    return 0


async def _run_sessions(
    simulator: Simulator, args: argparse.Namespace, *, app_id: str, stop: asyncio.Event
) -> None:
    assert simulator.sender is not None
    summary = await sessions.run(
        simulator.backend,
        app_id=app_id,
        agents=args.agents,
        rate=args.rate,
        duration_s=args.duration,
        stop=stop,
        seed=args.seed,
    )
    # Interrupted: the service is probably stopping too; do not wait long on it.
    await simulator.sender.drain(timeout=5 if stop.is_set() else 60)
    log.info(
        "simulation_finished",
        sessions={
            "started": summary.started,
            "refused_at_cap": summary.rejected,
            "stopped": summary.stopped,
            "failed": summary.failed,
        },
        deliveries=simulator.sender.stats(),
    )


async def _target_ready(target: str, stop: asyncio.Event) -> bool:
    """Wait until the service answers /healthz (it may still be starting)."""
    base = target.split("/v1/", 1)[0].rstrip("/")
    deadline = time.monotonic() + TARGET_WAIT_S
    async with httpx.AsyncClient(timeout=2) as client:
        while not stop.is_set():
            try:
                if (await client.get(f"{base}/healthz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                log.error("simulator_target_unreachable", target=target)
                return False
            await asyncio.sleep(0.5)
    return False


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than zero")
    return value


def _probability(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value
