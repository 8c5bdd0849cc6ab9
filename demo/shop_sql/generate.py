"""Synthetic (question, gold SQL) pairs for the shop database, as chat JSONL.

    python -m demo.shop_sql.generate --out DIR [--train 2000] [--heldout 100] [--seed 0]

writes DIR/shop.db, DIR/train.jsonl and DIR/heldout.jsonl (chat records: system, user, assistant)
and DIR/heldout_gold.jsonl (question, sql, ordered, family, template) for the evaluator, and
DIR/heldout_eval.jsonl: the same held-out questions as an eval set (`input` messages + those
fields) for `tuneplex evals run` with the `sql_execution` grader in demo/shop_sql/grader.json.
For seed 0 (the demo's database) it also writes DIR/handwritten_gold.jsonl and
DIR/handwritten_eval.jsonl: a second held-out set, questions written by hand as people type them
(demo/shop_sql/handwritten.jsonl). They name customers, products and orders of that database, so
other seeds skip them.

Every example is checked against the database before it is kept: the gold SQL must run and return
a non-empty, non-NULL answer, so a model cannot score by returning nothing. Families are drawn in
shuffled rounds so each split is balanced across families. The held-out split draws only from
the held-out share of every phrasing list (see `phrasing.split_of`) and never repeats a training
question.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# Importing the intent modules registers their families in phrasing.INTENTS.
from demo.shop_sql import intents_basic, intents_group, intents_join, intents_lookup  # noqa: F401
from demo.shop_sql.phrasing import INTENTS, Ctx, Facts, Intent, Reject, render, split_of
from demo.shop_sql.schema import build_database

SYSTEM = "You write one SQLite query for the shop database. Reply with the SQL only."
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(i.family for i in INTENTS))
MAX_TRIES = 200
HANDWRITTEN = Path(__file__).resolve().parent / "handwritten.jsonl"
HANDWRITTEN_SEED = 0  # the database the hand-written questions are about (the demo's)


@dataclass(frozen=True)
class Example:
    question: str
    sql: str
    family: str
    ordered: bool
    template: str  # "<intent>#<frame index>": which phrasing produced the question

    def chat(self) -> dict:
        """The training record: only the conversation, no metadata."""
        return {"messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": self.question},
                             {"role": "assistant", "content": self.sql}]}

    def gold(self) -> dict:
        return asdict(self)

    def eval_item(self) -> dict:
        """The eval-set record (registry format EVAL): the request the model answers, and the
        references the `sql_execution` grader reads as `{{item.sql}}` / `{{item.ordered}}`."""
        return {"input": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": self.question}],
                **self.gold()}


def _answer_ok(conn: sqlite3.Connection, sql: str) -> bool:
    rows = conn.execute(sql).fetchall()
    # SUM/MAX over no rows gives one all-NULL row: as useless as an empty answer.
    return bool(rows) and not (len(rows) == 1 and all(v is None for v in rows[0]))


def _draw(ctx: Ctx, intents: list[Intent], seen: set[str]) -> Example | None:
    it = ctx.rng.choice(intents)
    frame_idx = ctx.rng.choice(split_of(range(len(it.frames)), ctx.heldout))
    try:
        slots, sql = it.build(ctx)
    except Reject:
        return None
    question = render(ctx, it.frames[frame_idx], slots)
    if question in seen or not _answer_ok(ctx.conn, sql):
        return None
    return Example(question, sql, it.family, it.ordered, f"{it.name}#{frame_idx}")


def _split(conn: sqlite3.Connection, facts: Facts, n: int, seed: int, heldout: bool,
           avoid: set[str], families: tuple[str, ...]) -> list[Example]:
    rng = random.Random(f"shop-sql-{'heldout' if heldout else 'train'}-{seed}")
    ctx = Ctx(conn, facts, rng, heldout)
    by_family = {f: [i for i in INTENTS if i.family == f] for f in families}
    seen, out, queue = set(avoid), [], []
    while len(out) < n:
        if not queue:
            queue = list(families)
            rng.shuffle(queue)
        family = queue.pop()
        for _ in range(MAX_TRIES):
            ex = _draw(ctx, by_family[family], seen)
            if ex is not None:
                break
        else:
            raise RuntimeError(f"could not draw a valid {family} example; database too small?")
        seen.add(ex.question)
        out.append(ex)
    return out


def generate_splits(db_path: str | Path, n_train: int, n_heldout: int, seed: int = 0,
                    families: tuple[str, ...] = FAMILIES) -> tuple[list[Example], list[Example]]:
    """Draw the training and held-out examples of `families` against the database at
    `db_path`."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        facts = Facts(conn)
        train = _split(conn, facts, n_train, seed, heldout=False, avoid=set(),
                       families=families)
        heldout = _split(conn, facts, n_heldout, seed, heldout=True,
                         avoid={e.question for e in train}, families=families)
    finally:
        conn.close()
    return train, heldout


def handwritten_examples() -> list[Example]:
    """The hand-written held-out questions, valid on the database of `HANDWRITTEN_SEED`."""
    with HANDWRITTEN.open(encoding="utf-8") as fh:
        return [Example(**json.loads(line)) for line in fh if line.strip()]


def _checked_handwritten(db_path: Path, train: list[Example]) -> list[Example]:
    """The hand-written set, refused if a gold query fails on `db_path` or returns nothing, or a
    question is also a training question: either is a bug in handwritten.jsonl."""
    examples = handwritten_examples()
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        bad = [e.question for e in examples if not _answer_ok(conn, e.sql)]
    finally:
        conn.close()
    bad += sorted({e.question for e in examples} & {e.question for e in train})
    if bad:
        raise ValueError(f"{HANDWRITTEN.name}: empty answers or training questions: {bad}")
    return examples


def _write_jsonl(path: Path, records) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_dataset(out: str | Path, n_train: int = 2000, n_heldout: int = 100, seed: int = 0,
                  say: Callable[[str], None] = print,
                  families: tuple[str, ...] = FAMILIES) -> dict[str, Path]:
    """Build the database and both splits (of `families`) under `out`, and for
    `HANDWRITTEN_SEED` the hand-written set (`say` tells when it is skipped); return the written
    paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = build_database(out / "shop.db", seed)
    train, heldout = generate_splits(db, n_train, n_heldout, seed, families)
    paths = {"db": db, "train": out / "train.jsonl", "heldout": out / "heldout.jsonl",
             "heldout_gold": out / "heldout_gold.jsonl", "heldout_eval": out / "heldout_eval.jsonl"}
    _write_jsonl(paths["train"], (e.chat() for e in train))
    _write_jsonl(paths["heldout"], (e.chat() for e in heldout))
    _write_jsonl(paths["heldout_gold"], (e.gold() for e in heldout))
    _write_jsonl(paths["heldout_eval"], (e.eval_item() for e in heldout))
    handwritten_paths = [out / "handwritten_gold.jsonl", out / "handwritten_eval.jsonl"]
    if seed != HANDWRITTEN_SEED:
        for path in handwritten_paths:  # an earlier seed-0 run here: they do not fit this db
            path.unlink(missing_ok=True)
        say(f"no hand-written eval set for seed {seed}: its questions name customers, products "
            f"and orders of the seed-{HANDWRITTEN_SEED} database")
        return paths
    handwritten = _checked_handwritten(db, train)
    paths["handwritten_gold"], paths["handwritten_eval"] = handwritten_paths
    _write_jsonl(paths["handwritten_gold"], (e.gold() for e in handwritten))
    _write_jsonl(paths["handwritten_eval"], (e.eval_item() for e in handwritten))
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m demo.shop_sql.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", type=int, default=2000, help="training examples")
    ap.add_argument("--heldout", type=int, default=100, help="held-out examples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = write_dataset(args.out, args.train, args.heldout, args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
