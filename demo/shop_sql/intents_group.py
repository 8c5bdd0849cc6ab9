"""Grouped families: GROUP BY (with and without HAVING), ORDER BY + LIMIT, and "the one with the
most/least": the group that ranks first on an aggregate.

A per-group answer carries its key (`SELECT key, AGG(...) ... GROUP BY key`). A ranked answer
must not depend on how the database breaks a tie, so a draw whose first place is shared is
rejected, like any other bad draw. Filters and dimensions join only tables that do not multiply
the rows being counted: a count of customers never joins orders, a count of orders never joins
order lines (`joinable`).
"""

from __future__ import annotations

from demo.shop_sql.intents_basic import CAT_NOUN
from demo.shop_sql.intents_join import (
    CO,
    CP,
    OLP,
    REV,
    REVENUE_WORDS,
    TABLES,
    joins,
    unalias,
)
from demo.shop_sql.phrasing import NUM_CMP, PRICE_CMP, Ctx, Reject, intent, lit, money

YEAR, MONTH = "strftime('%Y', o.placed_on)", "strftime('%Y-%m', o.placed_on)"
MEASURES = {  # name: (phrases, count nouns ("how many X"), aggregate, tables it needs: grain first)
    "customers": (("number of customers", "customer count"), ("customers",), "COUNT(*)",
                  ("customers",)),
    "orders": (("number of orders", "order count"), ("orders",), "COUNT(*)", ("orders",)),
    "products": (("number of products", "product count"), ("products",), "COUNT(*)",
                 ("products",)),
    "avg_price": (("average price", "mean price"), (), "AVG(p.price_cents)", ("products",)),
    "max_price": (("highest price", "maximum price"), (), "MAX(p.price_cents)", ("products",)),
    "min_price": (("lowest price", "minimum price"), (), "MIN(p.price_cents)", ("products",)),
    "revenue": (REVENUE_WORDS, (), REV, ("order_lines", "products")),
    "units": (("units sold", "total quantity sold"), ("units sold", "items sold"),
              "SUM(ol.quantity)", ("order_lines",)),
    "lines": (("number of order lines", "order line count"), ("order lines", "line items"),
              "COUNT(*)", ("order_lines",)),
}
DIMS = {
    "city": (("city", "customer city"), "c.city", "customers"),
    "tier": (("tier", "customer tier", "plan"), "c.tier", "customers"),
    "category": (("category", "product category"), "p.category", "products"),
    "status": (("status", "order status"), "o.status", "orders"),
    "year": (("year", "order year"), YEAR, "orders"),
    "month": (("month", "order month"), MONTH, "orders"),
}
GROUPINGS = (("customers", "city"), ("customers", "tier"), ("orders", "status"),
             ("orders", "year"), ("orders", "city"), ("orders", "tier"), ("orders", "month"),
             ("products", "category"), ("avg_price", "category"), ("max_price", "category"),
             ("min_price", "category"), ("revenue", "category"), ("revenue", "status"),
             ("revenue", "year"), ("revenue", "city"), ("revenue", "month"),
             ("units", "category"), ("units", "year"), ("units", "status"), ("units", "city"),
             ("lines", "category"), ("lines", "year"), ("lines", "status"))
FILTERS = {  # kind: (phrases, column, table)
    "year": ((" in {v}", " during {v}", " for {v}"), YEAR, "orders"),
    "status": ((" for {v} orders", " counting only {v} orders", " over {v} orders"), "o.status",
               "orders"),
    "city": ((" among customers in {v}", " among {v} customers", " in {v}"), "c.city",
             "customers"),
    "tier": ((" among {v} customers", " among {v}-tier customers", " on the {v} plan"),
             "c.tier", "customers"),
    "category": ((" for {n}", " in the {v} category", " for {v} products"), "p.category",
                 "products"),
}


def joinable(grain: str, table: str) -> bool:
    """Whether joining `table` keeps one row per `grain` row (the chain is many-to-one
    towards customers and towards products, one-to-many the other way)."""
    return grain == "order_lines" or table == grain or (grain, table) == ("orders", "customers")


def span(tables) -> str:
    """FROM clause over the chain covering `tables`."""
    idx = sorted(TABLES.index(t) for t in tables)
    return joins(TABLES[idx[0]], TABLES[idx[-1]])


def a_filter(x: Ctx, grain: str, exclude: str) -> tuple[str, str, str]:
    """(phrase, condition, table) of a filter that fits a count at `grain`, or all empty."""
    kinds = [k for k, (_, _, t) in FILTERS.items() if k != exclude and joinable(grain, t)]
    if not kinds:
        return "", "", ""
    kind = x.value(kinds)
    phrases, col, table = FILTERS[kind]
    v = x.value({"year": x.f.years, "status": x.f.statuses, "city": x.f.cities,
                 "tier": x.f.tiers, "category": x.f.categories}[kind])
    return (x.pick(phrases).format(v=v, n=CAT_NOUN.get(v, v)), f"{col} = {lit(v)}", table)


def _grouped(x: Ctx, counted: bool) -> tuple[dict, str]:
    measure, dim = x.value([g for g in GROUPINGS if MEASURES[g[0]][1] or not counted])
    phrases, count_nouns, agg, tables = MEASURES[measure]
    d_phrases, dim_sql, dim_table = DIMS[dim]
    fphrase, where, ftable = "", "", ""
    if x.rng.random() < 0.35:
        fphrase, where, ftable = a_filter(x, tables[0], dim)
    needed = {*tables, dim_table, *filter(None, [ftable])}
    frm = span(needed)
    sql = f"SELECT {dim_sql}, {agg} FROM {frm}{' WHERE ' + where if where else ''} " \
          f"GROUP BY {dim_sql}"
    slots = {"m": x.value(count_nouns if counted else phrases), "d": x.value(d_phrases),
             "f": fphrase}
    return slots, unalias(sql) if len(needed) == 1 else sql


@intent("group_by", ("? what is the {m} per {d}{f}", "- {m} by {d}{f}",
                     "! break down the {m} by {d}{f}", "! show the {m} for each {d}{f}",
                     "- {m} per {d}{f}", "? can I see the {m} grouped by {d}{f}",
                     "! give me the {m} for every {d}{f}",
                     "? what does the {m} look like for each {d}{f}", "- {d} breakdown of {m}{f}",
                     "! show each {d} with its {m}{f}", "? for each {d}, what is the {m}{f}",
                     "- {m} in each {d}{f}"))
def grouped(x: Ctx):
    return _grouped(x, counted=False)


@intent("group_by", ("? how many {m} are there per {d}{f}", "- {m} per {d}{f}",
                     "! count the {m} in each {d}{f}", "? for each {d}, how many {m} are there{f}",
                     "- number of {m} for every {d}{f}", "! break the {m} down by {d}{f}",
                     "? how many {m} does each {d} have{f}",
                     "! show each {d} and how many {m} it has{f}", "- how many {m} per {d}{f}"))
def grouped_count(x: Ctx):
    return _grouped(x, counted=True)


def count_word(x: Ctx, n: int) -> str:
    words = {2: "two", 3: "three", 4: "four", 5: "five", 10: "ten"}
    return x.value((str(n), str(n), words.get(n, str(n))))


def threshold(x: Ctx, values_sql: str, step: int) -> int:
    """A round threshold inside the observed range, so HAVING keeps some groups but not all."""
    values = sorted(v for (v,) in x.rows(values_sql) if v is not None)
    if len(values) < 3:
        raise Reject("too few groups")
    v = values[x.rng.randint(len(values) // 5, len(values) * 4 // 5)]
    return max(step, int(v // step * step))


HAVING = {  # name: (select, from, group key, aggregate, step, money?, nouns, condition phrase)
    "cities": ("city", "customers", "city", "COUNT(*)", 5, False, ("cities",), "{c} customers"),
    "customers": ("c.name", CO, "c.id", "COUNT(*)", 1, False, ("customers", "shoppers"),
                  "{c} orders"),
    "categories_price": ("category", "products", "category", "AVG(price_cents)", 1000, True,
                         ("categories", "product categories"), "an average price {c}"),
    "products_units": ("p.title", OLP, "p.sku", "SUM(ol.quantity)", 5, False,
                       ("products", "items"), "{c} units sold"),
    "customers_spend": ("c.name", CP, "c.id", REV, 50000, True, ("customers", "shoppers"),
                        "a total spend {c}"),
    "categories_revenue": ("p.category", OLP, "p.category", REV, 500000, True,
                           ("categories", "product categories"), "revenue {c}"),
}


@intent("group_having", ("? which {np} have {c}", "- {np} with {c}", "! list the {np} having {c}",
                         "? what {np} have {c}", "! show the {np} that have {c}",
                         "- {np} having {c}", "? which of our {np} have {c}",
                         "! find the {np} with {c}", "- all {np} with {c}"))
def having(x: Ctx):
    sel, frm, key, agg, step, is_money, nps, cond_phrase = HAVING[x.value(tuple(HAVING))]
    t = threshold(x, f"SELECT {agg} FROM {frm} GROUP BY {key}", step)
    ops = PRICE_CMP if is_money else [c for c in NUM_CMP if c[1] != "="]
    if " JOIN " in frm:
        # Joined groups exist only for customers/products with at least one order, so "fewer
        # than" or "at most" would silently drop the zero rows: ask only "more than" there.
        ops = [c for c in ops if c[1] in (">", ">=")]
    phrase, op = x.value(ops)
    cond = phrase.format(m=money(x, t)) if is_money else phrase.format(n=t)
    return ({"np": x.value(nps), "c": cond_phrase.format(c=cond)},
            f"SELECT {sel} FROM {frm} GROUP BY {key} HAVING {agg} {op} {t}")


TOP = {  # name: (nouns, adjectives -> direction, select, from, group, order expr, filter kind)
    "price": (("products", "items"), {"most expensive": "DESC", "priciest": "DESC",
                                      "cheapest": "", "least expensive": ""},
              "title", "products", "", "price_cents", "category"),
    "orders": (("orders",), {"most recent": "DESC", "latest": "DESC", "newest": "DESC",
                             "earliest": "", "oldest": ""},
               "id", "orders", "", "placed_on", "status"),
    "joined": (("customers",), {"earliest": "", "earliest-joining": "", "longest-standing": "",
                                "newest": "DESC", "most recently joined": "DESC"},
               "name", "customers", "", "joined_on", "city"),
    "spend": (("customers", "shoppers"), {"biggest-spending": "DESC", "top-spending": "DESC",
                                          "highest-spending": "DESC"},
              "c.name", CP, "c.id", REV, ""),
    "units": (("products", "items"), {"best-selling": "DESC", "most popular": "DESC",
                                      "top-selling": "DESC"},
              "p.title", OLP, "p.sku", "SUM(ol.quantity)", ""),
    "cities": (("cities by customer count", "cities by number of customers"),
               {"biggest": "DESC", "largest": "DESC"},
               "city", "customers", "city", "COUNT(*)", ""),
}


def _top_filter(x: Ctx, kind: str) -> tuple[str, str]:
    if not kind or x.rng.random() < 0.5:
        return "", ""
    if kind == "category":
        cat = x.value(x.f.categories)
        return f" in {cat}", f"category = {lit(cat)}"
    if kind == "status":
        s = x.value(x.f.statuses)
        return f" that are {s}", f"status = {lit(s)}"
    city = x.value(x.f.cities)
    return f" from {city}", f"city = {lit(city)}"


@intent("top_n", ("! list the {n} {adj} {np}{f}", "? what are the {n} {adj} {np}{f}",
                  "- top {n} {adj} {np}{f}", "! show me the {n} {adj} {np}{f}",
                  "? which are the {n} {adj} {np}{f}", "- the {n} {adj} {np}{f}",
                  "! give me the {n} {adj} {np}{f}", "? can you name the {n} {adj} {np}{f}",
                  "- {n} {adj} {np}{f}"), ordered=True)
def top_n(x: Ctx):
    nps, adjs, sel, frm, group, key, fkind = TOP[x.value(tuple(TOP))]
    adj = x.value(tuple(adjs))
    n = x.value((2, 3, 3, 5, 5, 10))
    fphrase, where = _top_filter(x, fkind)
    where = f" WHERE {where}" if where else ""
    group_sql = f" GROUP BY {group}" if group else ""
    order = f"{key} {adjs[adj]}".rstrip()
    x.no_ties(f"SELECT {key} FROM {frm}{where}{group_sql} ORDER BY {order} LIMIT {n + 1}")
    return ({"n": count_word(x, n), "adj": adj, "np": x.value(nps), "f": fphrase},
            f"SELECT {sel} FROM {frm}{where}{group_sql} ORDER BY {order} LIMIT {n}")


@intent("top_n", ("? what is {name}'s {which} order", "- {which} order by {name}",
                  "! find the {which} order {name} placed", "? which order did {name} place {when}",
                  "! show me the id of {name}'s {which} order", "- id of {name}'s {which} order"),
        ordered=True)
def customer_extreme_order(x: Ctx):
    name = x.value(x.f.buyers)
    which, direction, when = x.value((("most recent", "DESC", "most recently"),
                                      ("latest", "DESC", "last"), ("first", "", "first"),
                                      ("earliest", "", "first")))
    order = f"o.placed_on {direction}".rstrip()
    x.no_ties(f"SELECT o.placed_on FROM {CO} WHERE c.name = {lit(name)} "
              f"ORDER BY {order} LIMIT 2")
    return ({"name": name, "which": which, "when": when},
            f"SELECT o.id FROM {CO} WHERE c.name = {lit(name)} ORDER BY {order} LIMIT 1")


@intent("top_n", ("! list the {n} sorted by price, {dir}",
                  "? what are the {n} ordered by price, {dir}",
                  "- {n} by price, {dir}", "! sort the {n} by price, {dir}",
                  "? can you rank the {n} by price, {dir}", "- {n} ranked by price, {dir}"),
        ordered=True)
def sorted_by_price(x: Ctx):
    cat = x.value(x.f.categories)
    label, direction = x.value((("cheapest first", ""), ("lowest to highest", ""),
                                ("most expensive first", " DESC"), ("highest to lowest", " DESC")))
    return ({"n": CAT_NOUN[cat], "dir": label}, f"SELECT title FROM products "
            f"WHERE category = {lit(cat)} ORDER BY price_cents{direction}")


ENTITIES = {  # name: (nouns, answer column, group key, table)
    "customer": (("customer", "shopper"), "c.name", "c.id", "customers"),
    "product": (("product", "item"), "p.title", "p.sku", "products"),
    "category": (("category", "product category"), "p.category", "p.category", "products"),
    "city": (("city",), "c.city", "c.city", "customers"),
    "tier": (("tier", "plan"), "c.tier", "c.tier", "customers"),
    "status": (("order status", "status"), "o.status", "o.status", "orders"),
    "year": (("year",), YEAR, YEAR, "orders"),
    "month": (("month",), MONTH, MONTH, "orders"),
}
RANKED = {  # measure: (nouns after highest/lowest, nouns after most/fewest, value nouns)
    "revenue": (("revenue", "total sales"), (), ("revenue", "total")),
    "orders": (("number of orders", "order count"), ("orders",), ("order count",
                                                                  "number of orders")),
    "customers": (("number of customers", "customer count"), ("customers",),
                  ("customer count", "number of customers")),
    "units": (("total quantity sold", "unit sales"), ("units sold", "items sold"),
              ("units sold", "unit count")),
    "lines": (("number of order lines", "order line count"), ("order lines", "line items"),
              ("line count", "number of order lines")),
    "avg_price": (("average price", "mean price"), (), ("average price",)),
}
RANKINGS = (("customer", "revenue"), ("customer", "orders"), ("customer", "units"),
            ("product", "units"), ("product", "revenue"), ("product", "lines"),
            ("category", "units"), ("category", "revenue"), ("category", "lines"),
            ("category", "avg_price"), ("city", "customers"), ("city", "orders"),
            ("city", "revenue"), ("city", "units"), ("tier", "customers"), ("tier", "orders"),
            ("tier", "revenue"), ("status", "orders"), ("status", "revenue"),
            ("status", "units"), ("year", "orders"), ("year", "revenue"), ("year", "units"),
            ("month", "orders"), ("month", "revenue"))
VERBS = {  # (entity, measure): (most, least)
    ("customer", "revenue"): ("spent the most", "spent the least"),
    ("customer", "orders"): ("placed the most orders", "placed the fewest orders"),
    ("customer", "units"): ("bought the most units", "bought the fewest units"),
    ("product", "units"): ("sold the most units", "sold the fewest units"),
    ("product", "revenue"): ("brought in the most revenue", "brought in the least revenue"),
    ("category", "units"): ("sold the most units", "sold the fewest units"),
    ("category", "revenue"): ("made the most money", "made the least money"),
    ("city", "orders"): ("placed the most orders", "placed the fewest orders"),
    ("city", "revenue"): ("spent the most", "spent the least"),
    ("year", "orders"): ("had the most orders", "had the fewest orders"),
    ("month", "revenue"): ("brought in the most revenue", "brought in the least revenue"),
}
# Only customers and products that appear in an order have a group: "the least" of them is
# asked among those, and said so.
AMONG = {"customer": (" among customers who have ordered", " of those who have ordered"),
         "product": (" among products that have sold", " of the products that sold at all")}


def _ranked(x: Ctx, with_value: bool, verb: bool) -> tuple[dict, str]:
    ent, measure = x.value(tuple(VERBS) if verb else RANKINGS)
    nouns, sel, key, ent_table = ENTITIES[ent]
    amount, counted, value_nouns = RANKED[measure]
    _, _, agg, tables = MEASURES[measure]
    most = x.rng.random() < 0.65
    fphrase, where, ftable = "", "", ""
    if not most and ent in AMONG:
        fphrase = x.value(AMONG[ent])
    elif most and x.rng.random() < 0.4:
        fphrase, where, ftable = a_filter(x, tables[0], ent)
    needed = {*tables, ent_table, *filter(None, [ftable])}
    body = f"FROM {span(needed)}{' WHERE ' + where if where else ''} GROUP BY {key} " \
           f"ORDER BY {agg}{' DESC' if most else ''}"
    if len(needed) == 1:
        sel, agg, body = unalias(sel), unalias(agg), unalias(body)
    x.no_ties(f"SELECT {agg} {body} LIMIT 2")
    if not most and ent not in AMONG:
        # "the city with the fewest orders" must not skip a city that has none.
        groups = len(x.rows(f"SELECT {agg} {body}"))
        if groups != x.rows(f"SELECT COUNT(DISTINCT {unalias(key)}) FROM {ent_table}")[0][0]:
            raise Reject("a group without rows would rank last")
    slots = {"ent": x.value(nouns), "f": fphrase, "mv": x.value(value_nouns)}
    if verb:
        slots["verb"] = VERBS[(ent, measure)][0 if most else 1]
    elif counted and x.rng.random() < 0.5:
        slots["sup"], slots["m"] = "most" if most else x.value(("fewest", "least")), \
            x.value(counted)
    else:
        slots["sup"] = x.value(("highest", "largest", "biggest") if most
                               else ("lowest", "smallest"))
        spend = ("total spend",) if (ent, measure) == ("customer", "revenue") else ()
        slots["m"] = x.value(amount + spend)
    return slots, f"SELECT {sel}{', ' + agg if with_value else ''} {body} LIMIT 1"


@intent("arg_extreme", ("? which {ent} has the {sup} {m}{f}", "- {ent} with the {sup} {m}{f}",
                        "! find the {ent} with the {sup} {m}{f}",
                        "? what {ent} had the {sup} {m}{f}",
                        "! tell me which {ent} has the {sup} {m}{f}",
                        "- the {ent} with the {sup} {m}{f}",
                        "! name the {ent} with the {sup} {m}{f}",
                        "? which single {ent} has the {sup} {m}{f}",
                        "- {ent} having the {sup} {m}{f}"), ordered=True)
def arg_extreme(x: Ctx):
    return _ranked(x, with_value=False, verb=False)


@intent("arg_extreme", ("? which {ent} {verb}{f}", "- {ent} that {verb}{f}",
                        "! find the {ent} that {verb}{f}", "? what {ent} {verb}{f}",
                        "! tell me which {ent} {verb}{f}", "- the {ent} that {verb}{f}",
                        "! name the {ent} that {verb}{f}",
                        "? can you tell me which {ent} {verb}{f}",
                        "- whichever {ent} {verb}{f}"), ordered=True)
def arg_extreme_verb(x: Ctx):
    return _ranked(x, with_value=False, verb=True)


@intent("arg_extreme", ("! show the {ent} with the {sup} {m}{f} and its {mv}",
                        "? which {ent} has the {sup} {m}{f}, and what is the {mv}",
                        "- {ent} with the {sup} {m}{f}, plus the {mv}",
                        "! give me the {ent} with the {sup} {m}{f} along with the {mv}",
                        "! name the {ent} with the {sup} {m}{f} and its {mv}",
                        "- {ent} with the {sup} {m}{f} and the {mv}",
                        "! find the {ent} with the {sup} {m}{f}, showing the {mv}",
                        "- {ent} with the {sup} {m}{f}, including the {mv}",
                        "- the {ent} with the {sup} {m}{f}, with its {mv}"), ordered=True)
def arg_extreme_value(x: Ctx):
    return _ranked(x, with_value=True, verb=False)
