"""Regenerate docs/screenshot.svg: the demo's console at 120x40, live.

    uv run python docs/make_screenshot.py [--seconds 24]

Runs what `loadtop demo` runs (embedded PostgreSQL and Valkey, the demo
service, the default mix and ramp plan) with the console in Textual's
headless driver, lets the plan take a step, then saves the SVG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def shoot(out: Path, seconds: float, show_text: bool = False) -> None:
    from app.commands.demo import demo_config, demo_processes
    from app.demo_service import DemoService
    from app.embedded import EmbeddedPostgres, EmbeddedRedis
    from app.session.runner import Session
    from app.ui.main import make_live_app

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(EmbeddedPostgres())
        redis = stack.enter_context(EmbeddedRedis())
        service = stack.enter_context(DemoService(pg.dsn, redis.url))
        pids = demo_processes(pg, redis)
        cfg = demo_config(pg.dsn, redis.url, service.url, local_pids=pids)
        session = Session(cfg)
        app = make_live_app(session)
        await asyncio.to_thread(session.start_thread)
        try:
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.pause(seconds)
                app.save_screenshot(str(out.name), path=str(out.parent))
                if show_text:
                    from app.ui.textshot import screen_text

                    print(screen_text(app), file=sys.stderr)
        finally:
            session.stop("screenshot taken")
            await asyncio.to_thread(session.wait, 60)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.svg"))
    ap.add_argument("--text", action="store_true", help="also print the screen as text")
    args = ap.parse_args()
    out = Path(args.out)
    asyncio.run(shoot(out, args.seconds, args.text))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
