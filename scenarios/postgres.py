"""Built-in Postgres scenarios. Each has an invariant in `verify`; each
`-p mode=unsafe` variant exists to show that invariant catching the bug.

Tables live in the scenario's own schema (`ctx.prefix`), which the engine
creates before `setup` and drops after `teardown`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import ClassVar

from app.scenario import Context, Param, Scenario, ScenarioError

MODE = ("safe", "unsafe")


def _q(ctx: Context, table: str) -> str:
    return f'"{ctx.prefix}".{table}'


class StockReservation(Scenario):
    name = "stock-reservation"
    processes_ok = True  # state lives in the database
    description = (
        "reserve k units of a product's stock in a transaction (FOR UPDATE); unsafe mode oversells"
    )
    needs = ("postgres",)
    parameters = {
        "mode": Param(str, "safe", "safe: SELECT ... FOR UPDATE; unsafe: read, then write"
                      " without the row lock", choices=MODE),
        "products": Param(int, 10, "number of products (fewer = more contention)",
                          min=1, max=1_000_000),
        "stock": Param(int, 100_000, "initial units per product", min=0, max=2**31 - 1),
        "max_k": Param(int, 3, "units per reservation, 1..max_k", min=1, max=1_000_000),
    }  # fmt: skip

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        products = ctx.param("products", 10)
        stock = ctx.param("stock", 100_000)
        mode = ctx.param("mode", "safe")
        if mode not in ("safe", "unsafe"):
            raise ScenarioError(f"stock-reservation: -p mode={mode} is unknown: use safe or unsafe")
        await ctx.conn.execute(
            f"""
            CREATE TABLE {_q(ctx, "products")} (
                id int PRIMARY KEY, quantity int NOT NULL, reserved int NOT NULL DEFAULT 0,
                initial int NOT NULL);
            CREATE TABLE {_q(ctx, "reservations")} (
                id bigserial PRIMARY KEY, product int NOT NULL, k int NOT NULL,
                worker int NOT NULL);
            """
        )
        await ctx.conn.execute(
            f"INSERT INTO {_q(ctx, 'products')} (id, quantity, initial)"
            " SELECT g, $1, $1 FROM generate_series(1, $2) g",
            stock,
            products,
        )

    async def run(self, ctx: Context) -> None:
        conn = ctx.conn
        assert conn is not None
        st = ctx.state
        if "sql" not in st:
            st["products"] = ctx.param("products", 10)
            st["max_k"] = ctx.param("max_k", 3)
            st["unsafe"] = ctx.param("mode", "safe") == "unsafe"
            p, r = _q(ctx, "products"), _q(ctx, "reservations")
            st["sql"] = (
                f"SELECT quantity FROM {p} WHERE id = $1" + ("" if st["unsafe"] else " FOR UPDATE"),
                # unsafe: write back what was read (a lost update, oversell)
                f"UPDATE {p} SET quantity = $2, reserved = reserved + $3 WHERE id = $1",
                f"UPDATE {p} SET quantity = quantity - $2, reserved = reserved + $2 WHERE id = $1",
                f"INSERT INTO {r} (product, k, worker) VALUES ($1, $2, $3)",
            )
        sel, upd_unsafe, upd_safe, ins = st["sql"]
        product = ctx.rng.randint(1, st["products"])
        k = ctx.rng.randint(1, st["max_k"])
        async with conn.transaction():
            qty = await conn.fetchval(sel, product)
            if qty < k:
                ctx.count("sold out")
                return  # a correct refusal, not an error
            if st["unsafe"]:
                await conn.execute(upd_unsafe, product, qty - k, k)
            else:
                await conn.execute(upd_safe, product, k)
            await conn.execute(ins, product, k, ctx.worker)

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        rows = await ctx.conn.fetch(
            f"""SELECT p.id, p.quantity, p.initial, coalesce(sum(r.k), 0) AS sold
                FROM {_q(ctx, "products")} p LEFT JOIN {_q(ctx, "reservations")} r
                  ON r.product = p.id
                GROUP BY p.id ORDER BY p.id"""
        )
        out = []
        for row in rows:
            if row["quantity"] < 0:
                out.append(f"product {row['id']}: quantity is negative ({row['quantity']})")
            if row["quantity"] + row["sold"] != row["initial"]:
                over = row["quantity"] + row["sold"] - row["initial"]
                out.append(
                    f"product {row['id']}: oversold by {over} units"
                    f" ({row['sold']} reserved + {row['quantity']} left != {row['initial']} stock)"
                )
        return out


class HotCounter(Scenario):
    name = "hot-counter"
    processes_ok = True  # state lives in the database
    description = (
        "increment one row from every worker; unsafe mode (read, then write) loses updates"
    )
    needs = ("postgres",)
    parameters = {
        "mode": Param(str, "safe", "safe: n = n + 1; unsafe: SELECT n, then UPDATE n = read + 1",
                      choices=MODE),
    }  # fmt: skip

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.execute(
            f"""CREATE TABLE {_q(ctx, "counter")} (id int PRIMARY KEY, n bigint NOT NULL);
                INSERT INTO {_q(ctx, "counter")} VALUES (1, 0);
                CREATE TABLE {_q(ctx, "oplog")} (id bigserial PRIMARY KEY, worker int);"""
        )

    async def run(self, ctx: Context) -> None:
        conn = ctx.conn
        assert conn is not None
        c, log = _q(ctx, "counter"), _q(ctx, "oplog")
        async with conn.transaction():
            if ctx.param("mode", "safe") == "unsafe":
                n = await conn.fetchval(f"SELECT n FROM {c} WHERE id = 1")
                await conn.execute(f"UPDATE {c} SET n = $1 WHERE id = 1", n + 1)
            else:
                await conn.execute(f"UPDATE {c} SET n = n + 1 WHERE id = 1")
            await conn.execute(f"INSERT INTO {log} (worker) VALUES ($1)", ctx.worker)

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        # one snapshot for both figures: the increment and its log row commit together
        async with ctx.conn.transaction(isolation="repeatable_read", readonly=True):
            n = await ctx.conn.fetchval(f"SELECT n FROM {_q(ctx, 'counter')} WHERE id = 1")
            logged = await ctx.conn.fetchval(f"SELECT count(*) FROM {_q(ctx, 'oplog')}")
        if n != logged:
            return [f"lost updates: counter is {n} but {logged} increments committed"
                    f" ({logged - n} lost)"]  # fmt: skip
        return []


class OppositeOrder(Scenario):
    name = "opposite-order"
    processes_ok = True  # state lives in the database
    description = "two-row transfers taking row locks in opposite orders: deadlocks (40P01)"
    needs = ("postgres",)
    parameters = {
        "accounts": Param(int, 2, "number of accounts", min=2, max=1_000_000),
        "hold_ms": Param(float, 5.0, "ms between the two row locks, widening the window",
                         min=0, max=60_000),
        "order": Param(str, "opposite", "opposite: deadlocks; sorted: locks in id order,"
                       " no deadlock", choices=("opposite", "sorted")),
    }  # fmt: skip

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        n = ctx.param("accounts", 2)
        await ctx.conn.execute(
            f"CREATE TABLE {_q(ctx, 'accounts')} (id int PRIMARY KEY, balance bigint NOT NULL)"
        )
        await ctx.conn.execute(
            f"INSERT INTO {_q(ctx, 'accounts')} SELECT g, 1000 FROM generate_series(1, $1) g", n
        )

    async def run(self, ctx: Context) -> None:
        conn = ctx.conn
        assert conn is not None
        n = ctx.param("accounts", 2)
        a = ctx.rng.randint(1, n)
        b = a % n + 1
        if ctx.param("order", "opposite") == "sorted":
            a, b = min(a, b), max(a, b)
        elif ctx.worker % 2:
            a, b = b, a
        acc = _q(ctx, "accounts")
        hold = ctx.param("hold_ms", 5.0) / 1000.0
        async with conn.transaction():
            await conn.execute(f"UPDATE {acc} SET balance = balance - 1 WHERE id = $1", a)
            if hold:
                await asyncio.sleep(hold)
            await conn.execute(f"UPDATE {acc} SET balance = balance + 1 WHERE id = $1", b)

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        total = await ctx.conn.fetchval(f"SELECT sum(balance) FROM {_q(ctx, 'accounts')}")
        expected = 1000 * ctx.param("accounts", 2)
        if total != expected:
            return [f"money not conserved: balances sum to {total}, expected {expected}"]
        return []


class UniqueIds(Scenario):
    name = "unique-ids"
    processes_ok = True  # state lives in the database
    description = "concurrent inserts with client-made ids; the timestamp scheme collides"
    needs = ("postgres",)
    parameters = {
        "scheme": Param(str, "uuid4", "uuid4, or timestamp (milliseconds since the epoch)",
                        choices=("uuid4", "timestamp")),
    }  # fmt: skip

    async def setup(self, ctx: Context) -> None:
        assert ctx.conn is not None
        scheme = ctx.param("scheme", "uuid4")
        if scheme not in ("uuid4", "timestamp"):
            raise ScenarioError(
                f"unique-ids: -p scheme={scheme} is unknown: use uuid4 or timestamp"
            )
        # no unique constraint on purpose: verify counts the collisions
        await ctx.conn.execute(
            f"CREATE TABLE {_q(ctx, 'items')} (id text NOT NULL, worker int NOT NULL)"
        )

    async def run(self, ctx: Context) -> None:
        conn = ctx.conn
        assert conn is not None
        if ctx.param("scheme", "uuid4") == "timestamp":
            ident = str(int(time.time() * 1000))
        else:
            ident = str(uuid.uuid4())
        await conn.execute(
            f"INSERT INTO {_q(ctx, 'items')} (id, worker) VALUES ($1, $2)", ident, ctx.worker
        )

    async def verify(self, ctx: Context) -> list[str]:
        assert ctx.conn is not None
        row = await ctx.conn.fetchrow(
            f"""SELECT count(*) AS ids, coalesce(sum(c - 1), 0) AS extra, max(id) AS example
                FROM (SELECT id, count(*) c FROM {_q(ctx, "items")} GROUP BY id
                      HAVING count(*) > 1) d"""
        )
        if row["ids"]:
            return [f"id collisions: {row['ids']} ids issued more than once"
                    f" ({row['extra']} duplicate rows), e.g. {row['example']}"]  # fmt: skip
        return []


class PgSelect(Scenario):
    name = "pg-select"
    processes_ok = True  # state lives in the database
    description = "SELECT 1 on the worker's own connection: the generator's own cost"
    needs = ("postgres",)
    writes = False
    parameters: ClassVar[dict[str, Param]] = {}

    async def run(self, ctx: Context) -> None:
        assert ctx.conn is not None
        await ctx.conn.fetchval("SELECT 1")
