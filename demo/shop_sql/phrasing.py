"""Shared machinery for question families: the intent registry, the phrasing split and renderers.

Phrasing (sentence frames, noun phrases, polite wrappers) is split between training and held-out
with one rule, `split_of`, so the held-out set measures whether the adapter learned the task
rather than the templates. Value vocabulary (comparison words, date and money formats) is shared:
it is what the model has to learn to translate ("since" means >=), not surface wording.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

HELDOUT_EVERY = 3  # every third phrasing option (index 2, 5, 8, ...) is reserved for held-out


class Reject(Exception):
    """The drawn values make a bad example (empty answer, ties under LIMIT); draw again."""


def split_of(options: Sequence, heldout: bool) -> list:
    """The options one split may use; lists shorter than 3 are shared (nothing to hold out)."""
    if len(options) < HELDOUT_EVERY:
        return list(options)
    return [o for i, o in enumerate(options) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == heldout]


def lit(value: str) -> str:
    """A single-quoted SQL literal (quotes doubled), the one literal style of the gold SQL."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Intent:
    family: str
    name: str
    frames: tuple[str, ...]  # "? " question, "! " imperative, "- " terse noun phrase
    build: Callable[[Ctx], tuple[dict, str]]
    ordered: bool = False


INTENTS: list[Intent] = []


def intent(family: str, frames: Sequence[str], ordered: bool = False, name: str | None = None):
    """Register a question intent; `build(ctx)` returns (slots for the frame, gold SQL)."""

    def deco(fn):
        INTENTS.append(Intent(family, name or fn.__name__, tuple(frames), fn, ordered))
        return fn

    return deco


class Facts:
    """Values present in the database, so questions ask about things that exist."""

    def __init__(self, conn: sqlite3.Connection):
        col = lambda sql: [r[0] for r in conn.execute(sql)]  # noqa: E731
        self.cities = col("SELECT DISTINCT city FROM customers ORDER BY city")
        self.tiers = col("SELECT DISTINCT tier FROM customers ORDER BY tier")
        self.names = col("SELECT name FROM customers ORDER BY id")
        self.customer_ids = col("SELECT id FROM customers ORDER BY id")
        self.buyers = col("SELECT DISTINCT c.name FROM customers c JOIN orders o "
                          "ON o.customer_id = c.id ORDER BY c.name")
        self.categories = col("SELECT DISTINCT category FROM products ORDER BY category")
        self.titles = col("SELECT title FROM products ORDER BY sku")
        self.skus = col("SELECT sku FROM products ORDER BY sku")
        self.sold_skus = col("SELECT DISTINCT sku FROM order_lines ORDER BY sku")
        self.sold_titles = col("SELECT DISTINCT p.title FROM order_lines ol JOIN products p "
                               "ON p.sku = ol.sku ORDER BY p.title")
        self.statuses = col("SELECT DISTINCT status FROM orders ORDER BY status")
        self.order_ids = col("SELECT id FROM orders ORDER BY id")
        self.months = col("SELECT DISTINCT strftime('%Y-%m', placed_on) FROM orders ORDER BY 1")
        self.years = col("SELECT DISTINCT strftime('%Y', placed_on) FROM orders ORDER BY 1")


class Ctx:
    """One draw: random values from the database and phrasing from this split's half."""

    def __init__(self, conn: sqlite3.Connection, facts: Facts, rng: random.Random, heldout: bool):
        self.conn, self.f, self.rng, self.heldout = conn, facts, rng, heldout

    def pick(self, options: Sequence):
        """A phrasing option from this split's share."""
        return self.rng.choice(split_of(options, self.heldout))

    def value(self, options: Sequence):
        """A value or shared vocabulary item (both splits)."""
        return self.rng.choice(list(options))

    def rows(self, sql: str) -> list[tuple]:
        return self.conn.execute(sql).fetchall()

    def no_ties(self, key_sql: str) -> None:
        """Reject when an ORDER BY key repeats: then the row order (and LIMIT cut) is arbitrary."""
        keys = [r[0] for r in self.rows(key_sql)]
        if len(keys) != len(set(keys)):
            raise Reject("ties in ordering key")


# --- renderers: one value, several ways people write it ------------------------------------

MONTHS = ("January February March April May June July August September October November "
          "December").split()


def money(x: Ctx, cents: int) -> str:
    if cents % 100:
        return x.value((f"${cents / 100:.2f}", f"{cents / 100:.2f} dollars"))
    dollars = cents // 100
    # Large amounts are usually written with thousands separators ("$15,000").
    d = f"{dollars:,}" if dollars >= 1000 and x.rng.random() < 0.6 else str(dollars)
    return x.value((f"${d}", f"${d}", f"${d}.00", f"{d} dollars", f"{d} bucks"))


def nice_cents(x: Ctx) -> int:
    """A price threshold a person would say: mostly round dollars, sometimes $x.99."""
    dollars = x.value((5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150, 200, 250))
    return dollars * 100 - 1 if x.rng.random() < 0.15 else dollars * 100


def date_text(x: Ctx, iso: str) -> str:
    y, m, d = iso.split("-")
    month = MONTHS[int(m) - 1]
    return x.value((iso, iso, f"{month} {int(d)}, {y}", f"{int(d)} {month} {y}",
                    f"{month[:3]} {int(d)}, {y}", f"{month} {int(d)} {y}"))


def month_text(x: Ctx, ym: str) -> str:
    y, m = ym.split("-")
    month = MONTHS[int(m) - 1]
    return x.value((f"{month} {y}", f"{month} {y}", f"{month[:3]} {y}", ym, f"{month}, {y}"))


def random_day(x: Ctx, lo: str = "2023-02-01", hi: str = "2025-11-30") -> str:
    import datetime as dt

    a, b = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi)
    return (a + dt.timedelta(days=x.rng.randint(0, (b - a).days))).isoformat()


DATE_CMP = (("after {d}", ">"), ("later than {d}", ">"), ("before {d}", "<"),
            ("earlier than {d}", "<"), ("prior to {d}", "<"), ("since {d}", ">="),
            ("on or after {d}", ">="), ("on or before {d}", "<="), ("no later than {d}", "<="))
PRICE_CMP = (("under {m}", "<"), ("below {m}", "<"), ("less than {m}", "<"),
             ("cheaper than {m}", "<"), ("over {m}", ">"), ("above {m}", ">"),
             ("more than {m}", ">"), ("at least {m}", ">="), ("{m} or more", ">="),
             ("at most {m}", "<="), ("{m} or less", "<="), ("no more than {m}", "<="))
NUM_CMP = (("more than {n}", ">"), ("over {n}", ">"), ("at least {n}", ">="),
           ("fewer than {n}", "<"), ("less than {n}", "<"), ("at most {n}", "<="),
           ("exactly {n}", "="))


def date_cond(x: Ctx, col: str) -> tuple[str, str]:
    phrase, op = x.value(DATE_CMP)
    day = random_day(x)
    return phrase.format(d=date_text(x, day)), f"{col} {op} {lit(day)}"


def price_cond(x: Ctx, col: str = "price_cents") -> tuple[str, str]:
    if x.rng.random() < 0.2:
        lo = nice_cents(x)
        hi = lo + x.value((10, 20, 25, 50, 100)) * 100
        return (f"between {money(x, lo)} and {money(x, hi)}",
                f"{col} BETWEEN {lo} AND {hi}")
    phrase, op = x.value(PRICE_CMP)
    cents = nice_cents(x)
    return phrase.format(m=money(x, cents)), f"{col} {op} {cents}"


# --- wrappers around a filled frame, by frame kind ------------------------------------------

WRAPPERS = {
    "?": ("{}?", "{}?", "Quick question: {}?", "Hey, {}?", "{}", "I was wondering, {}?",
          "{}? Thanks.", "Hi! {}?", "{}? thx"),
    "!": ("{}.", "Please {}.", "{}, please.", "Can you {}?", "{}", "Could you please {}?",
          "I need you to {}.", "Please {}", "Would you {}?"),
    "-": ("{}", "{}?", "{}, please", "{}.", "I need {}.", "Looking for {}.", "{} please",
          "Show me {}.", "Give me {}, thanks."),
}


def render(x: Ctx, frame: str, slots: dict) -> str:
    """Fill a frame (written lowercase-first) and wrap it; slot values keep their case."""
    kind, text = frame[0], frame[2:].format(**slots)
    out = x.pick(WRAPPERS[kind]).format(text)
    if x.rng.random() < 0.12:  # terse typists: no capital, no final punctuation
        return out.rstrip(".?!")
    return out[0].upper() + out[1:]
