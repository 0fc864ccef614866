"""Modal screens: help, y/n confirmation, blocker details, seek."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from app import fmt

LIVE_KEYS = [
    ("+ / -", "step concurrency up / down by the step size"),
    ("] / [", "step size up / down (1, 2, 5, 10, 25, 50, 100)"),
    ("p", "pause / resume the load"),
    ("x", "panic: stop all load now (resuming asks first)"),
    ("r", "start / stop the ramp plan"),
    ("f", "inject a fault: choose, see what it hits, y (needs --allow-faults)"),
    ("e", "export the Markdown summary now"),
    ("tab", "move between panes"),
    ("enter", "on a blocker: details (c cancel, k terminate)"),
    ("?", "this help"),
    ("q", "quit: stop the load, teardown, close the recording"),
    ("ctrl+c", "the same as q, after a y/n"),
]
REPLAY_KEYS = [
    ("space", "pause / play"),
    ("← / →", "one tick back / forward"),
    ("home / end", "first / last tick"),
    ("g", "seek to a time (seconds, or m:ss)"),
    ("e", "export the Markdown summary of the recording"),
    ("tab", "move between panes"),
    ("enter", "on a blocker: details"),
    ("?", "this help"),
    ("q", "quit"),
]


def keys_markdown(replay: bool = False) -> str:
    rows = REPLAY_KEYS if replay else LIVE_KEYS
    out = ["| key | action |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in rows]
    return "\n".join(out)


class HelpScreen(ModalScreen[None]):
    """The keys of the console it was opened from (`LIVE_KEYS`, `REPLAY_KEYS`)."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, title: str, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys

    def compose(self) -> ComposeResult:
        text = Text()
        text.append(f"{self.title_text}\n\n", "bold")
        for k, v in self.keys:
            text.append(f"{k:>12}  ", "bold cyan")
            text.append(f"{v}\n")
        text.append("\nescape closes this help", "dim")
        with Vertical(id="help-box", classes="modal-box"):
            yield Static(text)


class ConfirmScreen(ModalScreen[bool]):
    """A y/n question; dismisses with True only on `y`."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box confirm-box"):
            yield Static(Text(self.question, "bold"))
            yield Static(Text("y = yes, n = no", "dim"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class BlockerScreen(ModalScreen[None]):
    """One backend: who it is, what it runs, who waits on it; `c` / `k`
    cancel / terminate it after a y/n confirmation (absent when read-only)."""

    BINDINGS = [
        Binding("escape,q", "dismiss", "close"),
        Binding("c", "act('cancel')", "cancel backend"),
        Binding("k", "act('terminate')", "terminate backend"),
    ]

    def __init__(
        self,
        backend: dict[str, Any],
        act: Callable[[str, int], str] | None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.act = act  # None: read-only or replay
        self.gone = False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # without an action (read-only, replay) c / k are hidden and inert
        return not (action == "act" and self.act is None)

    def detail_text(self) -> Text:
        b = self.backend
        t = Text()
        t.append(f"backend {b.get('pid')}", "bold")
        if b.get("root"):
            t.append("  root blocker", "bold red")
        if self.gone:
            t.append("  no longer in the lock tree", "bold green")
        t.append("\n\n")
        for label, key in (
            ("application", "application_name"),
            ("user", "usename"),
            ("state", "state"),
            ("wait", "wait_event"),
        ):
            v = b.get(key)
            if key == "wait_event" and b.get("wait_event_type"):
                v = f"{b.get('wait_event_type')}:{v}"
            t.append(f"{label:>12}  ", "bold cyan")
            t.append(f"{v if v is not None else '-'}\n")
        t.append(f"{'transaction':>12}  ", "bold cyan")
        t.append(f"{fmt.age(b.get('xact_age_s'))}\n")
        t.append(f"{'in state':>12}  ", "bold cyan")
        t.append(f"{fmt.age(b.get('state_age_s'))}\n")
        if b.get("blocked_by"):
            t.append(f"{'blocked by':>12}  ", "bold cyan")
            t.append(", ".join(str(p) for p in b["blocked_by"]) + "\n")
        if b.get("waits_for"):
            from app.readings import describe_wait

            t.append(f"{'waits for':>12}  ", "bold cyan")
            t.append(describe_wait(b["waits_for"]) + "\n", "magenta")
        t.append(f"{'query':>12}  ", "bold cyan")
        t.append(f"{b.get('query') or ''}\n")
        waiters = b.get("waiters") or []
        if waiters:
            t.append(f"\n{len(waiters)} waiting behind it:\n", "bold")
            for w in waiters[:10]:
                t.append(f"  {w.get('pid')}  {w.get('application_name', '')}  ")
                t.append(f"{w.get('wait_event_type')}:{w.get('wait_event')}\n", "dim")
        return t

    def update_backend(self, backend: dict[str, Any] | None) -> None:
        """The latest reading of this backend while the screen is open (None:
        it left the lock tree: the last figures stay, marked as such)."""
        self.gone = backend is None
        if backend is not None:
            self.backend = backend
        if self.is_mounted:
            self.query_one("#blocker-detail", Static).update(self.detail_text())

    def compose(self) -> ComposeResult:
        t = self.detail_text()
        hint = (
            "c cancel · k terminate · escape close"
            if self.act is not None
            else "escape close (read-only: no cancel / terminate)"
        )
        with Vertical(id="blocker-box", classes="modal-box"):
            yield Static(t, id="blocker-detail")
            yield Static(Text(hint, "dim"))
            yield Static("", id="blocker-result")

    def action_act(self, verb: str) -> None:
        pid = self.backend.get("pid")
        if self.act is None or not isinstance(pid, int):
            return

        def answered(yes: bool | None) -> None:
            if not yes or self.act is None:
                return
            result = self.act(verb, pid)
            self.query_one("#blocker-result", Static).update(Text(result, "bold"))
            self.app.notify(result, title=f"{verb} {pid}")

        self.app.push_screen(ConfirmScreen(f"{verb} backend {pid}?"), answered)


class SeekScreen(ModalScreen[float | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box confirm-box"):
            yield Static(Text("seek to (seconds, or m:ss):", "bold"))
            yield Input(placeholder="90 or 1:30", id="seek-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(parse_seek(event.value))

    def action_cancel(self) -> None:
        self.dismiss(None)


def parse_seek(text: str) -> float | None:
    text = text.strip().rstrip("s")
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            v = 0.0
            for p in parts:
                v = v * 60 + p
            return v
        return float(text)
    except ValueError:
        return None
