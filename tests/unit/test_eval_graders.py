"""Graders: every type and operator on known answers, and every spec mistake refused with the
field at fault (``param``) and a message that says what to change."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.evaluation.graders import (
    GRADER_TYPES,
    GraderResources,
    Sample,
    build_graders,
    judge_models,
    referenced_databases,
    validate_graders,
)
from services.evaluation.graders.sql_execution import extract_sql
from services.evaluation.sampling import SamplingConfig
from services.evaluation.templates import render


def grader(spec: dict, resources: GraderResources | None = None):
    return build_graders([{"name": "g", **spec}], resources or GraderResources())[0]


async def grade(spec: dict, output: str, item: dict | None = None, resources=None):
    return await grader(spec, resources).grade(item or {}, Sample(output))


def refused(specs: list[dict]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as exc:
        validate_graders(specs)
    assert exc.value.code == "invalid_grader"
    assert exc.value.message.startswith(f"{exc.value.param}: ")
    return exc.value


# --- templates ---------------------------------------------------------------------------


def test_templates_read_item_fields_nested_fields_and_the_sample():
    item = {"q": "2+2", "meta": {"level": 3, "ok": True}, "tags": ["a", "b"]}
    template = (
        "{{ item.q }}={{sample.output_text}} L{{item.meta.level}} {{item.meta.ok}} {{item.tags.1}}"
    )
    assert render(template, item, "4") == "2+2=4 L3 true b"


# --- string_check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation, output, reference, score",
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris ", "Paris", 0.0),
        ("ne", "Lyon", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "the capital is paris.", "Paris", 0.0),
        ("ilike", "the capital is PARIS.", "Paris", 1.0),
        ("ilike", "Lyon", "Paris", 0.0),
        ("eq", "", "Paris", 0.0),
        ("like", "", "", 1.0),
    ],
)
async def test_string_check_operations(operation, output, reference, score):
    spec = {"type": "string_check", "input": "{{sample.output_text}}",
            "reference": "{{item.city}}", "operation": operation}
    result = await grade(spec, output, {"city": reference})
    assert (result.score, result.passed, result.error) == (score, score == 1.0, None)


# --- text_similarity ---------------------------------------------------------------------

HYP, REF = "the cat sat on the mat", "the cat sat on a mat"


def similarity_spec(metric: str, threshold: float = 0.5) -> dict:
    return {"type": "text_similarity", "input": "{{sample.output_text}}",
            "reference": "{{item.ref}}", "evaluation_metric": metric,
            "pass_threshold": threshold}


@pytest.mark.parametrize(
    "metric, output, reference, expected",
    [
        # rapidfuzz's README: fuzz.ratio("this is a test", "this is a test!") == 96.55...
        ("fuzzy_match", "this is a test", "this is a test!", 0.9655172413793103),
        ("fuzzy_match", "", "", 1.0),
        # By hand: n-gram precisions 5/6, 3/5, 2/4, 1/3, no brevity penalty -> (1/12) ** 0.25
        ("bleu", HYP, REF, (1 / 12) ** 0.25),
        ("bleu", HYP, HYP, 1.0),
        ("bleu", "", REF, 0.0),
        # Unigram overlap 5 of 6 both ways; bigrams 3 of 5; LCS "the cat sat on mat" = 5
        ("rouge_1", HYP, REF, 5 / 6),
        ("rouge_2", HYP, REF, 3 / 5),
        ("rouge_l", HYP, REF, 5 / 6),
        ("rouge_1", "", REF, 0.0),
        ("exact", HYP, HYP, 1.0),
        ("exact", HYP, REF, 0.0),
    ],
)
async def test_text_similarity_metrics(metric, output, reference, expected):
    result = await grade(similarity_spec(metric), output, {"ref": reference})
    assert result.score == pytest.approx(expected, abs=1e-9)
    assert result.passed is (result.score >= 0.5)


async def test_text_similarity_passes_at_the_threshold_exactly():
    result = await grade(similarity_spec("rouge_2", threshold=0.6), HYP, {"ref": REF})
    assert result.passed is True
    result = await grade(similarity_spec("rouge_2", threshold=0.61), HYP, {"ref": REF})
    assert result.passed is False


@pytest.mark.parametrize("metric", ["cosine", "gleu", "meteor"])
def test_openai_metrics_we_do_not_compute_are_refused_by_name(metric):
    err = refused([{"name": "s", **similarity_spec(metric)}])
    assert err.param == "graders[0].evaluation_metric"
    assert f"{metric!r} is not computed" in err.message and "fuzzy_match" in err.message


# --- regex -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, flags, output, score",
    [
        (r"\bSELECT\b", [], "SELECT 1", 1.0),
        (r"\bSELECT\b", [], "select 1", 0.0),
        (r"\bSELECT\b", ["i"], "select 1", 1.0),
        (r"^FROM", [], "SELECT *\nFROM t", 0.0),
        (r"^FROM", ["m"], "SELECT *\nFROM t", 1.0),
        (r"a.b", [], "a\nb", 0.0),
        (r"a.b", ["s"], "a\nb", 1.0),
        (r"\d+", [], "", 0.0),
    ],
)
async def test_regex_search_and_flags(pattern, flags, output, score):
    result = await grade({"type": "regex", "pattern": pattern, "flags": flags}, output)
    assert (result.score, result.passed) == (score, score == 1.0)


def test_an_invalid_regex_is_refused():
    err = refused([{"type": "regex", "name": "r", "pattern": "(unclosed"}])
    assert err.param == "graders[0].pattern"
    assert "not a valid Python regular expression" in err.message


# --- json --------------------------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}}}


@pytest.mark.parametrize(
    "output, schema, score",
    [
        ('{"sql": "SELECT 1"}', None, 1.0),
        ("[1, 2]", None, 1.0),
        ('```json\n{"sql": "SELECT 1"}\n```', SCHEMA, 1.0),
        ('```\n{"sql": "SELECT 1"}\n```', SCHEMA, 1.0),
        ('{"sql": 3}', SCHEMA, 0.0),
        ("[1, 2]", SCHEMA, 0.0),
        ('{"sql": "SELECT 1"', None, 0.0),
        ("", None, 0.0),
    ],
)
async def test_json_parses_and_validates(output, schema, score):
    spec = {"type": "json"} if schema is None else {"type": "json", "schema": schema}
    result = await grade(spec, output)
    assert (result.score, result.passed, result.error) == (score, score == 1.0, None)


def test_an_invalid_json_schema_is_refused():
    err = refused([{"type": "json", "name": "j", "schema": {"type": "no-such-type"}}])
    assert err.param == "graders[0].schema"
    assert "not a valid JSON Schema" in err.message


# --- sql_execution -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sql") / "tiny.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, note TEXT);"
        "INSERT INTO items VALUES (1, 'pen', 1.5, NULL), (2, 'ink', 0.1, 'blue'),"
        " (3, 'pad', 0.2, NULL);"
    )
    conn.commit()
    conn.close()
    return path


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sql_spec(**extra) -> dict:
    return {"type": "sql_execution", "reference": "{{item.sql}}", "database": "tiny-db", **extra}


async def sql_grade(db, output: str, item: dict, **extra):
    return await grade(sql_spec(**extra), output, item, GraderResources({"tiny-db": db}))


BY_PRICE = "SELECT name FROM items ORDER BY price DESC"
BY_PRICE_ASC = "SELECT name FROM items ORDER BY price"


@pytest.mark.parametrize(
    "output, reference, ordered, score",
    [
        (BY_PRICE, BY_PRICE, False, 1.0),
        ("```sql\nSELECT name FROM items ORDER BY price DESC;\n```", BY_PRICE, True, 1.0),
        ("Here you go:\n```\nselect name from items order by price desc\n```", BY_PRICE, True, 1.0),
        (BY_PRICE_ASC, BY_PRICE, False, 1.0),  # same multiset of rows
        (BY_PRICE_ASC, BY_PRICE, True, 0.0),  # same rows, other order
        ("SELECT name FROM items WHERE id < 3", BY_PRICE, False, 0.0),
        # NULLs compare equal to NULLs, and the count of each row matters
        ("SELECT note FROM items", "SELECT note FROM items ORDER BY id DESC", False, 1.0),
        ("SELECT DISTINCT note FROM items", "SELECT note FROM items", False, 0.0),
        # 0.1 + 0.2 is 0.30000000000000004: rounded to 6 places, as equivalent SQL must be
        ("SELECT price + 0.2 FROM items WHERE id = 2", "SELECT 0.3", False, 1.0),
        ("SELECT 0.300001", "SELECT 0.3", False, 0.0),  # a real difference stays one
        ("", BY_PRICE, False, 0.0),
        ("SELEC name FROM items", BY_PRICE, False, 0.0),
    ],
)
async def test_sql_execution_compares_result_rows(db, output, reference, ordered, score):
    result = await sql_grade(db, output, {"sql": reference}, ordered=ordered)
    assert (result.score, result.passed, result.error) == (score, score == 1.0, None)


async def test_ordered_may_come_from_the_item(db):
    spec = {"ordered": "{{item.ordered}}"}
    ordered = await sql_grade(db, BY_PRICE_ASC, {"sql": BY_PRICE, "ordered": True}, **spec)
    unordered = await sql_grade(db, BY_PRICE_ASC, {"sql": BY_PRICE, "ordered": False}, **spec)
    assert (ordered.score, unordered.score) == (0.0, 1.0)


@pytest.mark.parametrize(
    "attack",
    ["DELETE FROM items", "UPDATE items SET price = 0", "DROP TABLE items",
     "WITH x AS (SELECT 1) DELETE FROM items", "ATTACH DATABASE 'x.db' AS x",
     "PRAGMA writable_schema = 1"],
)
async def test_a_write_in_the_prediction_scores_zero_and_changes_nothing(db, attack):
    before = sha(db)
    result = await sql_grade(db, attack, {"sql": "SELECT 1"})
    assert (result.score, result.passed, result.error) == (0.0, False, None)
    assert sha(db) == before
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM items").fetchone() == (3,)


def test_extract_sql_takes_the_first_statement_only():
    assert extract_sql("SELECT 1; DROP TABLE items") == "SELECT 1"
    assert extract_sql("SQL: SELECT ';' AS s;") == "SELECT ';' AS s"


@pytest.mark.parametrize(
    "reference",
    ["INSERT INTO items VALUES (9, 'x', 1, NULL)", "DROP TABLE items",
     "ATTACH DATABASE 'x.db' AS x", "SELECT 1; DROP TABLE items", "SELECT nope FROM items"],
)
def test_a_broken_reference_is_refused_by_the_preflight(db, reference):
    g = grader(sql_spec(), GraderResources({"tiny-db": db}))
    before = sha(db)
    with pytest.raises(InvalidArgument) as exc:
        g.check_items([{"sql": "SELECT 1"}, {"sql": reference}])
    assert exc.value.code == "reference_invalid"
    assert exc.value.param == "evaluation.eval_set"
    assert exc.value.message.startswith("item 2: ")
    assert exc.value.message.endswith("(rule: reference_invalid)")
    assert str(db) not in exc.value.message  # no internal paths
    assert sha(db) == before


def test_the_preflight_refuses_an_ordered_field_that_is_not_a_boolean(db):
    g = grader(sql_spec(ordered="{{item.ordered}}"), GraderResources({"tiny-db": db}))
    g.check_items([{"sql": "SELECT 1", "ordered": True}, {"sql": "SELECT 1", "ordered": "no"}])
    with pytest.raises(InvalidArgument) as exc:
        g.check_items([{"sql": "SELECT 1", "ordered": "sometimes"}])
    assert exc.value.message.startswith("item 1: ") and "ordered must be true or false" in (
        exc.value.message)


async def test_a_broken_reference_at_grading_is_the_items_error(db):
    result = await sql_grade(db, "SELECT 1", {"sql": "DELETE FROM items"})
    assert (result.score, result.error) == (0.0, "reference_invalid")


def test_the_preflight_refuses_an_item_without_the_reference_field(db):
    g = grader(sql_spec(), GraderResources({"tiny-db": db}))
    g.check_items([{"sql": "SELECT 1"}])  # a good set passes
    with pytest.raises(InvalidArgument) as exc:
        g.check_items([{"sql": "SELECT 1"}, {"query": "SELECT 1"}])
    assert exc.value.code == "template_field_missing"
    assert exc.value.message.startswith("item 2: ") and "{{item.sql}}" in exc.value.message


async def test_a_missing_field_at_grading_is_the_items_error(db):
    result = await sql_grade(db, "SELECT 1", {"query": "SELECT 1"})
    assert (result.score, result.error) == (0.0, "template_field_missing")


def test_a_database_the_resources_lack_is_a_failed_precondition():
    with pytest.raises(FailedPrecondition) as exc:
        grader(sql_spec(), GraderResources({}))
    assert exc.value.code == "database_missing" and "'tiny-db'" in exc.value.message


# --- score_model -------------------------------------------------------------------------


class ScriptedJudge:
    """The judge model's stand-in (an outside system): replies with a fixed text and records
    what it was asked."""

    def __init__(self, reply: str | Exception):
        self.reply = reply
        self.calls: list[tuple[str, list[dict[str, str]], SamplingConfig]] = []

    async def complete(self, model, messages, sampling):
        self.calls.append((model, messages, sampling))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


JUDGE_SPEC = {
    "type": "score_model",
    "model": "judge-model",
    "input": [
        {"role": "system", "content": "Rate from 0 to 10."},
        {"role": "user", "content": "Q: {{item.q}}\nA: {{sample.output_text}}"},
    ],
    "range": [0, 10],
    "pass_threshold": 7,
    "sampling_params": {"temperature": 0.0, "max_tokens": 4, "seed": 1},
}


@pytest.mark.parametrize(
    "reply, score, passed, error",
    [
        ("8", 0.8, True, None),
        ("Score: 7/10", 0.7, True, None),
        ('{"score": 3, "reason": "vague"}', 0.3, False, None),
        ('```json\n{"score": 10}\n```', 1.0, True, None),
        ('I would say {"score": 2.5} overall, out of 10', 0.25, False, None),
        ("0", 0.0, False, None),
        ("15", 0.0, False, "judge_out_of_range"),
        ("-1", 0.0, False, "judge_out_of_range"),
        ("no idea", 0.0, False, "judge_no_score"),
        ("", 0.0, False, "judge_no_score"),
    ],
)
async def test_score_model_reads_the_judges_number(reply, score, passed, error):
    judge = ScriptedJudge(reply)
    result = await grade(JUDGE_SPEC, "4", {"q": "2+2?"}, GraderResources(judge=judge))
    assert result.score == pytest.approx(score)
    assert (result.passed, result.error) == (passed, error)
    model, messages, sampling = judge.calls[0]
    assert model == "judge-model"
    assert messages[1] == {"role": "user", "content": "Q: 2+2?\nA: 4"}
    assert sampling == SamplingConfig(temperature=0.0, max_tokens=4, seed=1)


async def test_score_model_without_threshold_has_no_verdict_and_default_range():
    spec = {**JUDGE_SPEC, "range": [0, 1]}
    del spec["pass_threshold"]
    result = await grade(spec, "4", {"q": "?"}, GraderResources(judge=ScriptedJudge("0.25")))
    assert (result.score, result.passed) == (0.25, None)


async def test_a_failing_judge_is_the_items_error():
    judge = ScriptedJudge(ConnectionError("judge down"))
    result = await grade(JUDGE_SPEC, "4", {"q": "?"}, GraderResources(judge=judge))
    assert (result.score, result.error) == (0.0, "judge_failed")


def test_score_model_needs_a_judge():
    with pytest.raises(FailedPrecondition):
        grader(JUDGE_SPEC, GraderResources())


# --- multi -------------------------------------------------------------------------------

MULTI = {
    "type": "multi",
    "graders": {
        "sql": {"type": "regex", "pattern": r"^SELECT\b"},
        "fmt": {"type": "json"},
    },
    "calculate_output": "0.7 * sql + 0.3 * fmt",
}


@pytest.mark.parametrize(
    "formula, output, score",
    [
        ("0.7 * sql + 0.3 * fmt", "SELECT 1", 0.7),
        ("0.7 * sql + 0.3 * fmt", '{"a": 1}', 0.3),
        ("0.7 * sql + 0.3 * fmt", "nothing", 0.0),
        ("sql + fmt + 1", "SELECT 1", 1.0),  # clipped to [0, 1]
        ("sql - 2", "SELECT 1", 0.0),
        ("min(sql, 0.4) + 0.5 ^ 2", "SELECT 1", 0.65),  # "^" is a power, as in OpenAI's
        ("sqrt(0.25) * sql", "SELECT 1", 0.5),
        ("max(sql, fmt)", '{"a": 1}', 1.0),
    ],
)
async def test_multi_combines_sub_grader_scores(formula, output, score):
    result = await grade({**MULTI, "calculate_output": formula}, output)
    assert result.score == pytest.approx(score) and result.error is None


async def test_multi_reports_a_sub_graders_error():
    spec = {**MULTI, "graders": {**MULTI["graders"], "ref": {
        "type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.x}}",
        "operation": "eq"}}, "calculate_output": "sql + ref"}
    result = await grade(spec, "SELECT 1", {})
    assert (result.score, result.error) == (1.0, "template_field_missing")


def test_multi_normalises_its_sub_graders():
    [spec] = validate_graders([{"name": "m", **MULTI}])
    assert spec["graders"]["sql"] == {"type": "regex", "name": "sql", "pattern": r"^SELECT\b",
                                      "input": "{{sample.output_text}}", "flags": []}


# --- spec validation ---------------------------------------------------------------------

GOOD = {"type": "regex", "name": "r", "pattern": "x"}


@pytest.mark.parametrize(
    "specs, param, words",
    [
        ([], "graders", "at least one grader"),
        ([{"type": "label_model", "name": "x"}], "graders[0].type", "string_check, text_simil"),
        ([{"name": "x"}], "graders[0].type", "needs a type"),
        ([GOOD, "regex"], "graders[1]", "JSON object"),
        ([{**GOOD, "flags": ["x"]}], "graders[0].flags[0]", "'i', 'm' or 's'"),
        ([{**GOOD, "patern": "y"}], "graders[0].patern", "unknown key 'patern'"),
        ([{"type": "regex", "pattern": "x"}], "graders[0].name", "needs 'name'"),
        ([{**GOOD, "name": "has space"}], "graders[0].name", "letters, digits"),
        ([GOOD, {**GOOD}], "graders[1].name", "already used by graders[0]"),
        ([{**GOOD, "input": "{{itm.x}}"}], "graders[0].input", "unknown namespace 'itm'"),
        ([{**GOOD, "input": "{{sample.text}}"}], "graders[0].input", "sample.output_text"),
        ([{**GOOD, "input": "{{item.x}"}], "graders[0].input", "unbalanced"),
        ([{"name": "s", "type": "string_check", "input": "a", "reference": "b",
           "operation": "contains"}], "graders[0].operation", "'like' or 'ilike'"),
        ([{"name": "j", **JUDGE_SPEC, "input": [{"role": "user", "content": "{{x.y}}"}]}],
         "graders[0].input[0].content", "unknown namespace 'x'"),
        ([{"name": "j", **JUDGE_SPEC, "range": [5, 1]}], "graders[0].range", "min < max"),
        ([{"name": "j", **JUDGE_SPEC, "pass_threshold": 11}], "graders[0].pass_threshold",
         "outside range"),
        ([{"name": "j", **JUDGE_SPEC, "sampling_params": {"temp": 1}}],
         "graders[0].sampling_params.temp", "temp"),
        ([{"name": "s", **sql_spec(ordered=3)}], "graders[0].ordered", "true, false"),
        ([{"name": "m", **MULTI, "calculate_output": "0.5 * sql + 0.5 * style"}],
         "graders[0].calculate_output", "'style' is not defined"),
        ([{"name": "m", **MULTI, "calculate_output": "sql +"}], "graders[0].calculate_output",
         "invalid formula"),
        ([{"name": "m", **MULTI, "calculate_output": "__import__('os')"}],
         "graders[0].calculate_output", "invalid formula"),
        ([{"name": "m", **MULTI, "graders": {"inner": {**MULTI}}, "calculate_output": "inner"}],
         "graders[0].graders.inner.type", "cannot contain another multi"),
        ([{"name": "m", **MULTI, "graders": {"sql": {"type": "regex", "pattern": "("}},
           "calculate_output": "sql"}],
         "graders[0].graders.sql.pattern", "regular expression"),
        ([{"name": "m", **MULTI, "graders": {"a-b": GOOD}}], "graders[0].graders",
         "formula name"),
    ],
)
def test_spec_mistakes_name_the_field_and_the_fix(specs, param, words):
    err = refused(specs)
    assert err.param == param
    assert words in err.message


def test_validation_fills_defaults_and_is_stable():
    specs = [{"name": "s", **sql_spec()}, {"name": "j", **JUDGE_SPEC}]
    normalised = validate_graders(specs)
    assert normalised[0]["input"] == "{{sample.output_text}}"
    assert (normalised[0]["ordered"], normalised[0]["timeout_s"]) == (False, 2.0)
    assert normalised[1]["sampling_params"] == {"temperature": 0.0, "max_tokens": 4,
                                                "top_p": 1.0, "seed": 1}
    assert validate_graders(normalised) == normalised
    assert set(GRADER_TYPES) == {"string_check", "text_similarity", "regex", "json",
                                 "sql_execution", "score_model", "multi"}


def test_databases_and_judges_are_found_inside_multi_too():
    specs = [
        {"name": "a", **sql_spec(database="shop-db")},
        {"name": "m", "type": "multi", "calculate_output": "x + y + z",
         "graders": {"x": sql_spec(database="other-db@2"), "y": {**JUDGE_SPEC, "model": "j2"},
                     "z": sql_spec(database="shop-db")}},
        {"name": "j", **JUDGE_SPEC},
    ]
    assert referenced_databases(specs) == ["shop-db", "other-db@2"]
    assert judge_models(specs) == ["j2", "judge-model"]
    assert referenced_databases([GOOD]) == [] and judge_models([GOOD]) == []
