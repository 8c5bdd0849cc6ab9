"""The text-to-SQL demo data: database, generated splits and the execution-accuracy evaluator."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from demo.shop_sql.evaluate import execution_accuracy, extract_sql, run_query
from demo.shop_sql.generate import (
    FAMILIES,
    HANDWRITTEN_SEED,
    SYSTEM,
    generate_splits,
    handwritten_examples,
    main,
    write_dataset,
)
from demo.shop_sql.schema import build_database

EXPECTED_FAMILIES = {"text_filter", "numeric_filter", "date_range", "count", "aggregate", "join2",
                     "join3", "revenue", "group_by", "group_having", "top_n", "distinct", "never",
                     "lookup", "lookup_join", "quantity", "arg_extreme"}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_database(tmp_path_factory.mktemp("shop") / "shop.db", seed=3)


@pytest.fixture(scope="module")
def splits(db):
    return generate_splits(db, 700, 150, seed=3)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_gold_query_runs_and_returns_rows(db, splits):
    conn = sqlite3.connect(db)
    empty = 0
    for ex in splits[0] + splits[1]:
        rows = conn.execute(ex.sql).fetchall()
        empty += not rows or all(v is None for v in rows[0])
    assert empty <= 0.02 * sum(map(len, splits))


def test_every_family_is_in_both_splits(splits):
    assert set(FAMILIES) == EXPECTED_FAMILIES
    for split in splits:
        assert {e.family for e in split} == EXPECTED_FAMILIES


def test_heldout_phrasing_is_never_used_in_training(splits):
    train, heldout = splits
    assert not {e.template for e in train} & {e.template for e in heldout}
    assert not {e.question for e in train} & {e.question for e in heldout}


def test_generation_is_deterministic_per_seed(tmp_path, splits):
    a = build_database(tmp_path / "a.db", seed=3)
    b = build_database(tmp_path / "b.db", seed=3)
    assert _sha(a) == _sha(b)
    again = generate_splits(a, 700, 150, seed=3)
    assert again == splits
    other = generate_splits(a, 700, 150, seed=4)
    assert [e.question for e in other[0]] != [e.question for e in splits[0]]


def test_gold_sql_has_one_canonical_style(splits):
    for ex in splits[0] + splits[1]:
        assert ex.sql.startswith("SELECT ") and not ex.sql.endswith(";"), ex.sql
        assert '"' not in ex.sql and "select " not in ex.sql, ex.sql


def test_dollars_in_questions_are_cents_in_sql(splits):
    checked = 0
    for ex in splits[0] + splits[1]:
        for dollars in re.findall(r"\$([\d,]+(?:\.\d\d)?)|([\d,]+(?:\.\d\d)?) (?:dollars|bucks)",
                                  ex.question):
            amount = next(d for d in dollars if d).replace(",", "")
            assert str(round(float(amount) * 100)) in ex.sql, (ex.question, ex.sql)
            checked += 1
    assert checked > 50


def _select_list(sql: str) -> str:
    return sql[len("SELECT "):sql.index(" FROM ")]


def _intent(ex) -> str:
    return ex.template.split("#")[0]


def assert_no_tie_under_limit(conn: sqlite3.Connection, sql: str) -> None:
    """A `... ORDER BY key LIMIT n` answer whose n-th and (n+1)-th keys are equal is arbitrary."""
    m = re.fullmatch(r"SELECT .+? FROM (.+) ORDER BY (.+?)( DESC)? LIMIT (\d+)", sql)
    assert m, sql
    body, key, desc, n = m.groups()
    keys = [r[0] for r in conn.execute(
        f"SELECT {key} FROM {body} ORDER BY {key}{desc or ''} LIMIT {int(n) + 1}")]
    assert len(set(keys)) == len(keys), (sql, keys)


def test_projection_follows_the_question(splits):
    checked = 0
    for ex in splits[0] + splits[1]:
        cols = _select_list(ex.sql)
        for word, col in (("skus", "sku"), ("ids", "id"), ("titles", "title"),
                          ("prices", "price_cents"), ("quantities", "quantity")):
            if re.search(rf"\b{word}\b", ex.question, re.IGNORECASE):
                assert col in cols, (ex.question, ex.sql)
                checked += 1
        if _intent(ex).startswith("list_columns"):  # not the answer a bare "list the ..." gets
            table = ex.sql.split(" FROM ")[1].split()[0]
            default = {"customers": "name", "products": "title", "orders": "id"}[table]
            assert cols != default, (ex.question, ex.sql)
    assert checked > 50


def test_units_are_summed_and_lines_counted(splits):
    seen = set()
    for ex in splits[0] + splits[1]:
        name = _intent(ex)
        if name in ("units_sold", "units_of_sku"):
            assert re.search(r"SUM\((ol\.)?quantity\)", ex.sql), ex.sql
            assert re.search(r"\b(units|items|quantit(y|ies))\b", ex.question, re.I), ex.question
        elif name == "order_lines_count":
            assert "COUNT(*)" in ex.sql and "SUM(" not in ex.sql, ex.sql
            assert re.search(r"\b(order lines|line items|lines)\b", ex.question), ex.question
        else:
            continue
        seen.add(name)
    assert seen == {"units_sold", "units_of_sku", "order_lines_count"}


def test_per_group_answers_carry_their_key(splits):
    checked = 0
    for ex in splits[0] + splits[1]:
        if ex.family != "group_by":
            continue
        key = ex.sql.rsplit(" GROUP BY ", 1)[1]
        assert _select_list(ex.sql).startswith(f"{key}, "), ex.sql
        checked += 1
    assert checked > 30


def test_lookups_by_a_given_value_are_families(splits):
    for ex in splits[0] + splits[1]:
        if ex.family in ("lookup", "lookup_join"):
            assert re.search(r" WHERE \S+ = ", ex.sql), ex.sql
            value = re.search(r" WHERE \S+ = ('(?:[^']|'')*'|\d+)", ex.sql).group(1)
            assert value.strip("'").replace("''", "'") in ex.question, (ex.question, ex.sql)
    names = {_intent(e) for e in splits[0] if e.family in ("lookup", "lookup_join")}
    assert {"order_lookup", "sku_lookup", "customer_lookup", "product_lookup",
            "products_in_order", "customer_of_order", "orders_of_customer"} <= names


def test_arg_extremes_rank_one_group_without_a_tie(db, splits):
    conn = sqlite3.connect(db)
    directions = set()
    for ex in splits[0] + splits[1]:
        if ex.family != "arg_extreme":
            continue
        assert " GROUP BY " in ex.sql and ex.sql.endswith(" LIMIT 1"), ex.sql
        assert_no_tie_under_limit(conn, ex.sql)
        directions.add(" DESC LIMIT" in ex.sql)
    assert directions == {True, False}


HANDWRITTEN_FIELDS = {"question", "sql", "family", "ordered", "template"}


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    """The database `make demo` builds, which the hand-written questions are about."""
    return build_database(tmp_path_factory.mktemp("demo") / "shop.db", seed=HANDWRITTEN_SEED)


def test_handwritten_set_is_valid_on_the_demo_database(demo_db):
    rows = [json.loads(line) for line in
            (Path(__file__).parents[2] / "demo" / "shop_sql" / "handwritten.jsonl").open()]
    assert len(rows) >= 30
    assert [asdict(e) for e in handwritten_examples()] == rows
    conn = sqlite3.connect(demo_db)
    for row in rows:
        assert set(row) == HANDWRITTEN_FIELDS and row["template"] == "handwritten", row
        assert row["family"] in FAMILIES, row
        answer = conn.execute(row["sql"]).fetchall()
        assert answer and all(v is not None for r in answer for v in r), row
        if row["ordered"]:
            assert " ORDER BY " in row["sql"], row
        if " LIMIT " in row["sql"]:
            assert_no_tie_under_limit(conn, row["sql"])
    assert {r["family"] for r in rows} == EXPECTED_FAMILIES  # every kind of question
    assert len({r["question"] for r in rows}) == len(rows)
    train, _ = generate_splits(demo_db, 2000, 0, seed=HANDWRITTEN_SEED)  # the demo's train split
    assert not {r["question"] for r in rows} & {e.question for e in train}


def test_handwritten_eval_set_is_written_for_the_demo_seed_only(tmp_path):
    said: list[str] = []
    paths = write_dataset(tmp_path / "s0", 40, 20, seed=HANDWRITTEN_SEED, say=said.append)
    gold = [json.loads(line) for line in paths["handwritten_gold"].open()]
    items = [json.loads(line) for line in paths["handwritten_eval"].open()]
    heldout_item = json.loads(paths["heldout_eval"].open().readline())
    assert len(gold) == len(items) == len(handwritten_examples()) and not said
    for g, item in zip(gold, items, strict=True):
        assert set(item) == set(heldout_item)
        assert item["input"][1]["content"] == g["question"] and item["sql"] == g["sql"]
    report = execution_accuracy(paths["db"], [g["sql"] for g in gold], gold)
    assert report.accuracy == 1.0

    other = write_dataset(tmp_path / "s0", 40, 20, seed=1, say=said.append)
    assert "handwritten_gold" not in other and "seed-0" in said[0]
    assert not (tmp_path / "s0" / "handwritten_eval.jsonl").exists()


def test_cli_writes_chat_records_and_gold(tmp_path):
    main(["--out", str(tmp_path), "--train", "40", "--heldout", "20", "--seed", "1"])
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    gold = [json.loads(line) for line in (tmp_path / "heldout_gold.jsonl").read_text().splitlines()]
    assert (len(train), len(heldout), len(gold)) == (40, 20, 20)
    for rec in train + heldout:
        assert list(rec) == ["messages"]
        assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
        assert rec["messages"][0]["content"] == SYSTEM
    assert SYSTEM == "You write one SQLite query for the shop database. Reply with the SQL only."
    for rec, g in zip(heldout, gold, strict=True):
        assert {"question", "sql", "ordered", "family"} <= set(g)
        assert rec["messages"][1]["content"] == g["question"]
        assert rec["messages"][2]["content"] == g["sql"]
    report = execution_accuracy(tmp_path / "shop.db", [g["sql"] for g in gold], gold)
    assert report.accuracy == 1.0


NEVER = "SELECT name FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)"
TOP3 = "SELECT title FROM products ORDER BY price_cents DESC LIMIT 3"
TOP3_REVERSED = ("SELECT title FROM (SELECT title, price_cents FROM products "
                 "ORDER BY price_cents DESC LIMIT 3) ORDER BY price_cents")


def _score(db, prediction: str, sql: str, ordered: bool = False):
    report = execution_accuracy(db, [prediction], [{"sql": sql, "ordered": ordered,
                                                    "family": "f", "question": "q"}])
    return report.results[0]


def test_evaluator_accepts_identical_and_equivalent_sql(db):
    assert _score(db, NEVER, NEVER).correct
    assert _score(db, "select c.name from customers c where not exists "
                      "(select 1 from orders o where o.customer_id = c.id)", NEVER).correct
    assert _score(db, "SELECT COUNT(id) FROM customers WHERE city = 'Berlin'",
                  "SELECT COUNT(*) FROM customers WHERE city = 'Berlin'").correct


def test_evaluator_rejects_wrong_and_broken_sql(db):
    assert not _score(db, "SELECT name FROM customers", NEVER).correct
    assert not _score(db, "SELECT title FROM products WHERE price_cents < 20",
                      "SELECT title FROM products WHERE price_cents < 2000").correct
    broken = _score(db, "SELEC name FROM customers", NEVER)
    assert not broken.correct and broken.error


def test_row_order_matters_only_when_ordered(db):
    assert _score(db, TOP3_REVERSED, TOP3, ordered=False).correct
    assert not _score(db, TOP3_REVERSED, TOP3, ordered=True).correct
    assert _score(db, TOP3, TOP3, ordered=True).correct


@pytest.mark.parametrize("attack", ["DELETE FROM orders",
                                    "WITH x AS (SELECT 1) DELETE FROM orders",
                                    "SELECT 1; DROP TABLE orders",
                                    "ATTACH DATABASE 'x.db' AS x"])
def test_writes_are_refused_and_database_unchanged(db, attack):
    before = _sha(db)
    result = _score(db, attack, "SELECT 42")
    assert not result.correct
    if not attack.startswith("SELECT"):  # "SELECT 1; DROP ..." runs only its first statement
        assert result.error
    assert _sha(db) == before
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 900


def test_runaway_query_is_interrupted(db):
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError):
        run_query(conn, "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) "
                        "SELECT COUNT(*) FROM c", timeout_s=0.2)


@pytest.mark.parametrize("reply", ["```sql\nSELECT 1;\n```", "SQL: SELECT 1;", "`SELECT 1`",
                                   "Here it is:\n```\nSELECT 1\n```\nIt counts rows.",
                                   "  SELECT 1; SELECT 2", "The query is: SELECT 1"])
def test_model_output_is_normalized(reply):
    assert extract_sql(reply) == "SELECT 1"


def test_fenced_prediction_scores_correct(db):
    assert _score(db, f"```sql\n{NEVER};\n```", NEVER).correct
    assert extract_sql("SELECT name FROM customers WHERE city = 'a;b';") == \
        "SELECT name FROM customers WHERE city = 'a;b'"
