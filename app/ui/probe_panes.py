"""The probes' panes: PostgreSQL (connections, the lock tree, blockers,
Postgres-native queues), Redis (locks and queues) and pods. Like every pane they only read ticks
(`show(tick, timeline)`): here, the probe readings a tick carries (shapes in
`app/probes/schema.py`), and they hide while their probe has nothing to show.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.widgets import DataTable, Static

from app import fmt
from app.probes.redis_locks import elide_middle
from app.tick import Tick
from app.ui.panes import Pane, Row, reorder, sync_table
from app.ui.timeline import Timeline, sparkline

PG_APP_CHARS = 10
PG_MIN_QUERY = 40


def _backend_row(b: Mapping[str, Any], indent: str, query_chars: int = 120) -> Row:
    """pid (indented by depth), state with its age, application, and the query;
    a waiter's query cell starts with what it waits for (mode and object)."""
    state = str(b.get("state") or "")
    state = state.replace("idle in transaction", "idle tx")
    wait = b.get("wait_event_type")
    if wait == "Lock" and state == "active":
        state = "waits"
    age = b.get("state_age_s") if state == "waits" else b.get("xact_age_s")
    if age is None:
        age = b.get("state_age_s")
    label = f"{state} {fmt.age(age)}" if age is not None else state
    if state.startswith("idle tx"):
        state_t = Text(label, style="bold yellow")
    elif state == "waits":
        state_t = Text(label, style="red")
    else:
        state_t = Text(label)
    app_name = str(b.get("application_name") or "").removeprefix("loadtop:")
    q = " ".join(str(b.get("query") or "").split())
    cell = Text()
    if b.get("database"):  # a session of another database on the same server
        cell.append(f"[db {b['database']}] ", style="dim cyan")
    wf = b.get("waits_for") or {}
    if wf:
        # a row lock's wait on the holder's transaction is always ShareLock: say only what
        mode = str(wf.get("mode") or "").removesuffix("Lock")
        mode = "" if wf.get("locktype") in ("transactionid", "tuple") else f"{mode} "
        cell.append(f"{mode}{_short_object(wf)} ", style="bold magenta")
    elif wait and wait not in ("Lock", "Client") and state == "active":
        cell.append(f"{wait}:{b.get('wait_event')} ", style="dim")
    cell.append(q[:query_chars])
    return (f"{indent}{b.get('pid')}", state_t, app_name[:PG_APP_CHARS], cell)


def _fit(row: Row, room: int) -> Row:
    """The row with its last cell (waits for · query) cut to `room` characters."""
    cell = row[-1]
    if not isinstance(cell, Text) or cell.cell_len <= room:
        return row
    cut = cell.copy()
    cut.truncate(room - 1)
    cut.append("…")
    return (*row[:-1], cut)


def _short_object(wf: Mapping[str, Any]) -> str:
    t = wf.get("locktype")
    rel = str(wf.get("relation") or "").removeprefix("public.")
    if t == "transactionid":
        return f"⏳{rel or 'xid ' + str(wf.get('xid'))}"
    if t == "tuple":
        page, tup = (wf.get("tuple") or [None, None])[:2]
        return f"⏳{rel}({page},{tup})"
    if t == "advisory":
        c, o, *_ = (wf.get("advisory") or [None, None, None]) + [None]
        return f"advisory {c}/{o}"
    if t == "relation":
        return rel or "relation"
    return str(wf.get("object") or t or "?")


def _indent(depth: int) -> str:
    return "" if depth <= 0 else " " * min(depth - 1, 8) + "└ "


class PostgresPane(Pane):
    """Connections, idle in transaction, deadlocks and rollbacks per second on
    the header line; what the probe cannot see; the lock trees (root first,
    waiters indented by depth), cycles and amplifiers; under them the
    Postgres-native queues (the pg_queues reading) in the Redis pane's queue
    table. While it has a tree it asks for the wider share of the screen (the
    `pg-tree` class)."""

    def __init__(self) -> None:
        super().__init__("postgres", id="postgres")
        self._cache: dict[str, Row] = {}
        self.backends: dict[str, dict[str, Any]] = {}  # row key -> backend (for details)
        self._last: tuple[Tick, Timeline] | None = None
        self._queues: dict[str, Row] = {}
        self._depths: dict[str, deque[int]] = {}
        self._queues_t: float | None = None  # the pg_queues reading last drawn

    def compose(self) -> ComposeResult:
        yield Static("", id="pg-summary")
        t: DataTable = DataTable(id="blockers", cursor_type="row")
        t.add_columns("pid", "state", "app", "waits for · query")
        yield t
        q = queue_table("pg-queues")
        q.display = False
        yield q

    def _show_queues(self, tick: Tick) -> None:
        """procrastinate, pgmq, river, ... and [[queue.sql]] queues: the same
        columns as Redis queues; hidden while there are none."""
        r = tick.readings.get("pg_queues")
        if r is None:
            return
        qs = (r.data.get("queues") or []) if r.ok else []
        inner = self.content_region.width or 0
        avail = inner - 1 if inner >= 40 else 62  # not laid out yet: a 120-column screen's half
        qrows = queue_rows(qs, self._depths, queue_name_w(avail), record=r.t != self._queues_t)
        self._queues_t = r.t
        table = self.query_one("#pg-queues", DataTable)
        sync_table(table, qrows, self._queues)
        table.display = bool(qrows)

    def _fit_rows(self, rows: dict[str, Row]) -> dict[str, Row]:
        """Cut the last cells so the table fits the pane (no sideways scrolling),
        never below PG_MIN_QUERY characters."""
        if not rows:
            return rows
        inner = (self.content_region.width or 0) - 1  # the vertical scrollbar
        if inner <= 0:  # not laid out yet: the narrowest; cells widen on the next tick
            return {k: _fit(r, PG_MIN_QUERY) for k, r in rows.items()}
        widths = [max(Text(str(r[i])).cell_len for r in rows.values()) for i in range(3)]
        widths = [max(w, len(h)) for w, h in zip(widths, ("pid", "state", "app"), strict=True)]
        room = max(PG_MIN_QUERY, inner - sum(w + 2 for w in widths) - 2)
        return {k: _fit(r, room) for k, r in rows.items()}

    def on_resize(self) -> None:
        # columns only grow in place: rebuild the table for the new width
        if self._last is not None:
            self.query_one("#blockers", DataTable).clear()
            self._cache.clear()
            self.show(*self._last)

    def show(self, tick: Tick, tl: Timeline) -> None:
        r = tick.readings.get("postgres")
        if r is None:
            return
        self._last = (tick, tl)
        self.reveal(True)
        self._show_queues(tick)
        summary = self.query_one("#pg-summary", Static)
        if not r.ok:
            summary.update(Text(f"probe: {r.error}", style="bold red"))
            self._wide(False)
            return
        d = r.data
        summary.update(pg_summary(d))
        rows: dict[str, Row] = {}
        backends: dict[str, dict[str, Any]] = {}
        qc = 200
        for node in (d.get("blocking_tree") or [])[:20]:
            root = node.get("root") or {}
            rk = f"r{root.get('pid')}"
            n = node.get("waiting_count", len(node.get("waiters") or []))
            row = list(_backend_row(root, "▶ ", qc))
            mark = "↻" if node.get("cycle") else "⏳"
            row[0] = f"▶ {root.get('pid')} ({n}{mark})"
            rows[rk] = tuple(row)
            backends[rk] = dict(root, waiters=node.get("waiters") or [], root=True)
            tree = node.get("tree")
            if tree:
                below = [(int(b.get("depth") or 1), b) for b in tree[1:]]
            else:
                below = [(1, w) for w in node.get("waiters") or []]
            for depth, w in below[:12]:
                wk = f"{rk}/{w.get('pid')}"
                if wk in rows:
                    continue
                rows[wk] = _backend_row(w, _indent(depth), qc)
                backends[wk] = dict(w)
        self.backends = backends
        rows = self._fit_rows(rows)
        table = self.query_one("#blockers", DataTable)
        if sync_table(table, rows, self._cache):
            # keep tree order: roots first with their waiters under them
            order = {k: i for i, k in enumerate(rows)}
            reorder(table, order)
        table.display = bool(rows)
        self._wide(bool(rows))
        self._update_details(backends)

    def _wide(self, on: bool) -> None:
        """The `pg-tree` class on the app, restyling only what it changes:
        `.pg-tree #left` is its one rule. A class change on the app restyles
        every node on screen (about 0.1 s on a 2-core host, more under load),
        and a tree comes and goes from tick to tick, on every replay seek."""
        app = self.app
        if app.has_class("pg-tree") == on:
            return
        app.set_class(on, "pg-tree", update=False)
        try:
            left = app.query_one("#left")
        except NoMatches:
            app.update_styles(app)
            return
        app.update_styles(left)

    def _update_details(self, backends: Mapping[str, dict[str, Any]]) -> None:
        """An open blocker details screen follows its backend, tick by tick."""
        from app.ui.screens import BlockerScreen

        for screen in self.app.screen_stack:
            if isinstance(screen, BlockerScreen):
                pid = screen.backend.get("pid")
                root = screen.backend.get("root")
                found = [b for b in backends.values() if b.get("pid") == pid]
                found.sort(key=lambda b: bool(b.get("root")) != bool(root))  # same role first
                screen.update_backend(found[0] if found else None)


def pg_summary(d: Mapping[str, Any]) -> Text:
    """The pane's header: connections (of the usable slots), idle in
    transaction, waiting, deadlocks/s, rollbacks/s, commits/s; then what the
    probe cannot see, cycles and amplifiers, one line each."""
    parts = Text()
    conns = d.get("connections_total", d.get("connections"))
    if conns is not None:
        cap = d.get("usable_connections") or d.get("max_connections", "?")
        full = isinstance(cap, int) and conns >= cap
        parts.append(f"conns {conns}/{cap}", style="bold red" if full else "")
    iit = d.get("idle_in_tx_count")
    if iit is None:
        iit = (d.get("by_state") or {}).get("idle in transaction", 0)
    parts.append("  idle in tx ")
    parts.append(str(iit), style="bold yellow" if iit else "")
    waiting = d.get("waiting") or 0
    parts.append("  waiting ")
    parts.append(str(waiting), style="bold red" if waiting else "")
    rates = d.get("rates") or {}
    if rates:
        dl = rates.get("deadlocks", 0) or 0
        parts.append("  deadlocks ")
        parts.append(f"{fmt.rate(dl)}/s", style="bold red" if dl else "")
        rb, cm = rates.get("rollbacks", 0) or 0, rates.get("commits", 0) or 0
        high = rb >= 1 and rb / max(rb + cm, 1e-9) >= 0.1
        parts.append("  rollbacks ")
        parts.append(f"{fmt.rate(rb)}/s", style="bold red" if high else "")
        parts.append(f"  commits {fmt.rate(cm)}/s")
    oldest = d.get("oldest_xact_s")
    if oldest is not None:
        parts.append(f"  oldest xact {fmt.age(oldest)}")
    for b in d.get("blind") or ():
        parts.append(f"\nblind: {b.get('hidden')}: {b.get('grant')}", style="bold yellow")
    for c in d.get("cycles") or ():
        parts.append(
            "\ndeadlock cycle: " + " ↔ ".join(map(str, c.get("pids") or ())), style="bold red"
        )
    for a in (d.get("amplifiers") or ())[:1]:
        parts.append(
            f"\namplifier: pid {a.get('pid')} wants {a.get('mode')} on {a.get('relation')} "
            f"behind {', '.join(map(str, a.get('behind') or ()))}; {a.get('queued')} queue behind it",
            style="bold magenta",
        )
    return parts


RUN_PREFIX = re.compile(r"^loadtop_[0-9a-f]{8}_")


def short_key(key: str) -> str:
    """A key without loadtop's own run prefix (`loadtop_<run>_`): the run is
    in the header already."""
    return RUN_PREFIX.sub("", key)


QUEUE_COLUMNS = ("queue", "depth", "trend", "age", "infl", "fail", "sched", "out/s")
QUEUE_MAX_W = 34  # queue name (+ layout when it fits)
# the columns besides the queue's name: depth 5, trend 8, age 5, in flight 4, failed 4,
# and 2 cells of padding each; scheduled and out/s come last and scroll off first
QUEUE_FIXED_W = 5 + 8 + 5 + 4 + 4 + 6 * 2


def queue_table(table_id: str) -> DataTable:
    """An empty queue table (the Redis pane's and the Postgres pane's alike)."""
    table: DataTable = DataTable(id=table_id, cursor_type="row")
    table.add_columns(*QUEUE_COLUMNS)
    return table


def queue_name_w(avail: int) -> int:
    """The queue name column's width in a pane `avail` cells wide."""
    return min(QUEUE_MAX_W, max(10, avail - QUEUE_FIXED_W))


def queue_rows(
    queues: list[dict[str, Any]], depths: dict[str, deque[int]], name_w: int, record: bool = True
) -> dict[str, Row]:
    """The queue table's rows for a reading's `queues` (Redis and pg_queues
    share the keys): name (with its layout when it fits), depth, trend over
    the last 20 polls (kept in `depths`; `record=False` redraws without adding
    a point), age, in flight, failed, scheduled, out/s."""
    qrows: dict[str, Row] = {}
    for q in queues[:30]:
        name = str(q.get("name"))
        depth = int(q.get("depth") or 0)
        hist = depths.setdefault(name, deque(maxlen=20))
        if record or not hist:
            hist.append(depth)
        trend = sparkline([float(x) for x in hist], 6)
        if len(hist) > 1 and hist[-1] > hist[0]:
            trend_t = Text(f"{trend} ↑", style="yellow")
        elif len(hist) > 1 and hist[-1] < hist[0]:
            trend_t = Text(f"{trend} ↓", style="green")
        else:
            trend_t = Text(trend)
        layout = str(q.get("layout", ""))
        short = short_key(name)
        if len(short) + len(layout) + 3 <= name_w:
            label = f"{short} ({layout})"
        else:  # the name matters more than its layout
            label = elide_middle(short, name_w)
        age = q.get("oldest_age_s")
        consumed = q.get("consumed_per_s")
        qrows[name] = (
            label,
            str(depth),
            trend_t,
            "-" if age is None else fmt.age(age),
            _opt(q.get("in_flight")),
            _opt(q.get("failed")),
            _opt(q.get("scheduled")),
            "-" if consumed is None else fmt.rate(float(consumed)),
        )
    return qrows


class RedisPane(Pane):
    """Lock holders, queues and an INFO line. Fits 100-140 columns: names and
    holders elide in the middle (elide_middle), so host, pid and the queue's
    distinguishing tail survive."""

    LOCK_FIXED_W = 6 + 7 + 4 * 2  # age, pttl (NO TTL when none), padding

    def _avail(self) -> int:
        w = self.size.width - 2 if self.size.width else 0
        return w if w >= 40 else 62  # not laid out yet: a 120-column screen's half

    def __init__(self) -> None:
        super().__init__("redis", id="redis")
        self._locks: dict[str, Row] = {}
        self._queues: dict[str, Row] = {}
        self._depths: dict[str, deque[int]] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="redis-info")
        locks: DataTable = DataTable(id="redis-locks", cursor_type="row")
        locks.add_columns("lock", "holder", "age", "pttl")
        yield locks
        yield queue_table("redis-queues")

    def show(self, tick: Tick, tl: Timeline) -> None:
        r = tick.readings.get("redis")
        if r is None:
            return
        self.reveal(True)
        info = self.query_one("#redis-info", Static)
        if not r.ok:
            info.update(Text(f"probe: {r.error}", style="bold red"))
            return
        d = r.data
        line = Text()
        line.append(f"ops {fmt.rate(float(d.get('ops_per_sec') or 0))}/s  ")
        line.append(f"clients {d.get('connected_clients', '-')}  ")
        blocked = d.get("blocked_clients") or 0
        line.append(f"blocked {blocked}  ", style="bold yellow" if blocked else "")
        mem = d.get("used_memory")
        maxm = d.get("maxmemory") or 0
        line.append(f"mem {fmt.size(mem)}" + (f"/{fmt.size(maxm)}" if maxm else "") + "  ")
        ev = d.get("evicted_keys_delta") or 0
        if ev:
            line.append(f"evicted {ev}  ", style="bold red")
        rej = d.get("rejected_connections_delta") or 0
        if rej:
            line.append(f"rejected {rej}", style="bold red")
        unmatched = d.get("unmatched_keys") or []
        if unmatched:
            shown = ", ".join(elide_middle(k, 24) for k in unmatched[:2])
            line.append(
                f"\n{len(unmatched)} key(s) look like queues/locks but match nothing ({shown}): "
                "--redis-queue-pattern / --redis-lock-pattern or loadtop.toml",
                style="yellow",
            )
        info.update(line)
        lrows: dict[str, Row] = {}
        shown_locks = (d.get("locks") or [])[:30]
        room = max(16, self._avail() - self.LOCK_FIXED_W)
        kl = max((len(short_key(str(lk.get("key")))) for lk in shown_locks), default=0)
        hl = max((len(str(lk.get("holder") or "")) for lk in shown_locks), default=0)
        # the holder (host, pid) matters most; short holders leave the key room
        key_w = max(8, min(kl, max(12, room // 3), room - min(hl, room)))
        key_w = max(key_w, min(kl, 12))
        holder_w = max(8, room - key_w)
        for lk in shown_locks:
            pttl = lk.get("pttl_ms")
            no_ttl = bool(lk.get("no_ttl")) or pttl is None
            lrows[str(lk.get("key"))] = (
                elide_middle(short_key(str(lk.get("key"))), key_w),
                elide_middle(str(lk.get("holder") or ""), holder_w),
                fmt.age(lk.get("age_s")),
                Text("NO TTL", style="bold red") if no_ttl else fmt.ms(pttl),
            )
        locks = self.query_one("#redis-locks", DataTable)
        sync_table(locks, lrows, self._locks)
        locks.display = bool(lrows)
        qrows = queue_rows(d.get("queues") or [], self._depths, queue_name_w(self._avail()))
        queues = self.query_one("#redis-queues", DataTable)
        sync_table(queues, qrows, self._queues)
        queues.display = bool(qrows)


def _opt(v: object) -> str:
    return "-" if v is None else str(v)


class PodsPane(Pane):
    """Name, CPU against limit, memory against limit, restarts, last reason."""

    def __init__(self) -> None:
        super().__init__("pods", id="pods")
        self._cache: dict[str, Row] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="pods-info")
        t: DataTable = DataTable(id="pods-table", cursor_type="row")
        t.add_columns("pod", "cpu (of limit)", "mem (of limit)", "restarts", "last reason")
        yield t

    def show(self, tick: Tick, tl: Timeline) -> None:
        r = tick.readings.get("pods")
        if r is None:
            return
        self.reveal(True)
        info = self.query_one("#pods-info", Static)
        if not r.ok:
            info.update(Text(f"probe: {r.error}", style="bold red"))
            return
        d = r.data
        info.update(Text(f"{d.get('source', '')} {d.get('namespace') or ''}".strip(), "dim"))
        rows: dict[str, Row] = {}
        for c in (d.get("containers") or [])[:40]:
            key = f"{c.get('pod')}/{c.get('container')}"
            rows[key] = (
                key[-36:],
                _against(c.get("cpu_cores"), c.get("cpu_limit_cores"), lambda v: f"{v:.2f}"),
                _against(c.get("memory_bytes"), c.get("memory_limit_bytes"), fmt.size),
                Text(str(c.get("restarts") or 0), "bold red" if c.get("restarts") else ""),
                str(c.get("last_reason") or c.get("waiting_reason") or ""),
            )
        sync_table(self.query_one("#pods-table", DataTable), rows, self._cache)


def _against(v: float | None, limit: float | None, show: Callable[[float], str]) -> Text:
    if v is None:
        return Text("n/a", style="dim")
    pct = 100.0 * v / limit if limit else 0.0
    style = "bold red" if pct >= 90 else ("yellow" if pct >= 70 else "")
    return Text(f"{show(v)} {fmt.share(v, limit)}", style=style)
