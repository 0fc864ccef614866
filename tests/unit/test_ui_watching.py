"""The driving console's header counts the web view's viewers (--web)."""

from __future__ import annotations

import asyncio

from tests.unit.test_ui_live import Live


async def test_live_header_shows_how_many_watch() -> None:
    live = Live()
    async with live.app.run_test(size=(120, 40)) as pilot:
        await live.tick(pilot)
        assert "watching" not in live.screen()  # no --web: nothing said
        viewers = [0]
        live.fake.web_viewers = lambda: viewers[0]
        viewers[0] = 2
        await asyncio.sleep(0.7)  # the console looks every 0.5 s
        await pilot.pause()
        assert "2 watching" in live.screen()
        viewers[0] = 1
        await asyncio.sleep(0.7)
        await pilot.pause()
        assert "1 watching" in live.screen() and "2 watching" not in live.screen()
