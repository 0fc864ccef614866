"""`loadtop report --redetect`: the detectors read ticks only (verify results
included), so a recording re-detected with the options it ran with gives the
anomalies it recorded, and changed options give a different, predictable set.
The run is real (a Session with a scenario that needs no server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app.engine.engine import EngineConfig
from app.scenario import Context, Scenario
from app.session.pipeline import redetect_recording
from app.session.recording import read_recording
from app.session.runner import RunConfig, Session

ROOT = Path(__file__).resolve().parents[2]


class Flaky(Scenario):
    """Every fourth operation fails with a timeout; verify() always finds a broken invariant."""

    name = "flaky"
    writes = False

    async def run(self, ctx: Context) -> None:
        import asyncio

        n = ctx.state["n"] = ctx.state.get("n", 0) + 1
        await asyncio.sleep(0.002)
        if n % 4 == 0:
            raise TimeoutError("simulated")

    async def verify(self, ctx: Context) -> list[str]:
        return ["counter drifted by 3"]


def _keys(ticks) -> list[list[tuple[str, str, int]]]:
    return [sorted((a.key, a.kind, a.started_tick) for a in t.anomalies) for t in ticks]


async def _record(tmp_path: Path) -> Path:
    path = tmp_path / "run.jsonl"
    cfg = RunConfig(
        scenarios=[(Flaky, 1.0)], probes=False, record=str(path),
        engine=EngineConfig(concurrency=3, duration=3.0, interval=0.25, verify_every=0.5),
    )  # fmt: skip
    await Session(cfg).run()
    return path


async def test_redetect_reproduces_the_recorded_anomalies_and_follows_new_options(
    tmp_path: Path,
) -> None:
    path = await _record(tmp_path)
    rec = read_recording(path)
    recorded = _keys(rec.ticks)
    kinds = {k for tk in recorded for _, k, _ in tk}
    # the verify results travelled in the ticks, so the invariant detector saw them
    assert any(t.invariants for t in rec.ticks)
    assert {"invariant", "error-burst"} <= kinds, kinds

    again = redetect_recording(rec)
    assert _keys(again.ticks) == recorded

    # without the invariant detector: the same anomalies, minus the invariant ones
    less = redetect_recording(rec, ["disabled=invariant"])
    assert _keys(less.ticks) == [[a for a in tk if a[1] != "invariant"] for tk in recorded]

    # a quarter of operations failing is under a 50% floor: no error burst
    lenient = redetect_recording(rec, ["error-burst.min_ratio=0.5"])
    assert not any(a.kind == "error-burst" for t in lenient.ticks for a in t.anomalies)
    assert any(a.kind == "invariant" for t in lenient.ticks for a in t.anomalies)


async def test_report_redetect_on_the_command_line(tmp_path: Path) -> None:
    path = await _record(tmp_path)

    def report(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "report", *flags, str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def kinds(p: subprocess.CompletedProcess[str]) -> set[str]:
        assert p.returncode == 0, p.stderr
        return {a["kind"] for a in json.loads(p.stdout)["anomalies"]["anomalies"]}

    assert "invariant" in kinds(report("--json"))
    assert "invariant" in kinds(report("--json", "--redetect"))
    assert "invariant" not in kinds(
        report("--json", "--redetect", "--detect", "disabled=invariant")
    )
    bad = report("--detect", "disabled=invariant")
    assert bad.returncode == 2 and "--detect needs --redetect" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = report("--redetect", "--detect", "no-such.k=1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
