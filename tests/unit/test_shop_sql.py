"""The text-to-SQL demo data: database, generated splits and the execution-accuracy evaluator."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import pytest

from demo.shop_sql.evaluate import execution_accuracy, extract_sql, run_query
from demo.shop_sql.generate import FAMILIES, SYSTEM, generate_splits, main
from demo.shop_sql.schema import build_database

EXPECTED_FAMILIES = {"text_filter", "numeric_filter", "date_range", "count", "aggregate", "join2",
                     "join3", "revenue", "group_by", "group_having", "top_n", "distinct", "never"}


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
