"""The fault menu (`f` on the live console; issue 15).

    list of the kinds the configured targets allow
      -> enter: the spec, pre-filled (editable: `kind=pg-terminate,app=shop-api`)
      -> enter: exactly what will be hit (pod name, backend pids, client ids, key)
      -> y: injected; the result is a notification, the fault a mark on every chart

Without --allow-faults the screen says how to enable them; with --readonly
the console has no `f` at all. The session's calls block briefly (describe
resolves the match on the target), so they run on a worker thread.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option


class FaultScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("y", "confirm", "inject", show=False),
    ]

    def __init__(self, control: Any) -> None:
        super().__init__()
        self.control = control
        self.disabled_why: str | None = control.fault_disabled()
        self.allowed: dict[str, str] = {}
        if self.disabled_why is None:
            actions = control.fault_actions()
            suggestions = control.fault_suggestions()
            self.allowed = {k: suggestions.get(k, f"kind={k}")
                            for k, why in actions.items() if why is None}  # fmt: skip
        self.described: str | None = None  # the spec whose match is on screen

    def compose(self) -> ComposeResult:
        with Vertical(id="fault-box", classes="modal-box"):
            yield Static(Text("Inject a fault", "bold"))
            if self.disabled_why is not None:
                yield Static(Text(self.disabled_why, "yellow"), id="fault-disabled")
                yield Static(Text("escape closes", "dim"))
                return
            if not self.allowed:
                yield Static(Text("No fault fits the configured targets: give --pg, --redis,"
                                  " --http with --http-via-proxy, or --k8s-namespace with"
                                  " --k8s-selector.", "yellow"))  # fmt: skip
                return
            yield OptionList(*[Option(k, id=k) for k in self.allowed], id="fault-kinds")
            yield Input(id="fault-spec", placeholder="kind=...,param=value")
            yield Static("", id="fault-what")
            yield Static(Text("enter: show what it hits · y: inject · escape: close", "dim"),
                         id="fault-hint")  # fmt: skip

    def on_mount(self) -> None:
        if self.allowed:
            self.query_one("#fault-kinds", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        spec = self.allowed.get(str(event.option.id), "")
        box = self.query_one("#fault-spec", Input)
        box.value = spec
        box.cursor_position = len(spec)
        box.focus()
        self.described = None
        self._show(Text("edit the parameters, then enter", "dim"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.described = None
        self._show(Text("resolving what it will hit…", "dim"))
        self._describe(event.value.strip())

    def _show(self, text: Text) -> None:
        self.query_one("#fault-what", Static).update(text)

    @work(thread=True, exclusive=True, group="fault", exit_on_error=False)
    def _describe(self, spec: str) -> None:
        ok, what = self.control.describe_fault(spec)
        self.app.call_from_thread(self._described, spec, ok, what)

    def _described(self, spec: str, ok: bool, what: str) -> None:
        if not ok:
            self._show(Text(what, "yellow"))
            return
        self.described = spec
        t = Text()
        t.append("will hit: ", "bold")
        t.append(what + "\n")
        t.append("y injects it now · escape cancels", "bold red")
        self._show(t)
        self.set_focus(None)

    def action_confirm(self) -> None:
        if self.described is None:
            return
        spec, self.described = self.described, None
        self._show(Text("injecting…", "dim"))
        self._inject(spec)

    @work(thread=True, exclusive=True, group="fault", exit_on_error=False)
    def _inject(self, spec: str) -> None:
        result = self.control.inject_fault(spec)
        self.app.call_from_thread(self._injected, result)

    def _injected(self, result: str) -> None:
        failed = " failed:" in result or not result.startswith("#")
        self.app.notify(result, title="fault", severity="error" if failed else "warning")
        if failed:
            self._show(Text(result, "yellow"))
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
