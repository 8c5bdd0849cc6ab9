"""Multi-table families: 2- and 3+-table joins, revenue, GROUP BY (with and without HAVING) and
ORDER BY + LIMIT.

Joins always walk the one chain customers c -> orders o -> order_lines ol -> products p with the
same aliases and ON clauses, and start at the first table the question needs: one canonical shape
is easier for a small model to learn than every equivalent join order.
"""

from __future__ import annotations

import re

from demo.shop_sql.intents_basic import CAT_NOUN, order_np
from demo.shop_sql.phrasing import NUM_CMP, PRICE_CMP, Ctx, Reject, intent, lit, money

CHAIN = (("customers", "c", ""), ("orders", "o", "o.customer_id = c.id"),
         ("order_lines", "ol", "ol.order_id = o.id"), ("products", "p", "p.sku = ol.sku"))
TABLES = [t[0] for t in CHAIN]
REV = "SUM(ol.quantity * p.price_cents)"
REVENUE_WORDS = ("revenue", "total revenue", "total sales", "gross sales", "turnover")


def joins(first: str, last: str) -> str:
    """FROM clause spanning the chain from `first` to `last` (aliases only when joining)."""
    i, j = TABLES.index(first), TABLES.index(last)
    if i == j:
        return first
    parts = [f"{CHAIN[i][0]} {CHAIN[i][1]}"]
    parts += [f"JOIN {t} {a} ON {on}" for t, a, on in CHAIN[i + 1:j + 1]]
    return " ".join(parts)


def unalias(sql: str) -> str:
    return re.sub(r"\b(?:c|o|ol|p)\.", "", sql)


def on_orders(where: str) -> str:
    """Qualify an orders-only condition for use inside a join."""
    return re.sub(r"\b(status|placed_on)\b", r"o.\1", where)


def count_word(x: Ctx, n: int) -> str:
    words = {2: "two", 3: "three", 4: "four", 5: "five", 10: "ten"}
    return x.value((str(n), str(n), words.get(n, str(n))))


CO = joins("customers", "orders")
CP = joins("customers", "products")
OLP = joins("order_lines", "products")


@intent("join2", ("! list the orders placed by {name}", "? which orders did {name} place",
                  "- order ids for {name}", "! show me {name}'s orders",
                  "? what orders has {name} made", "- orders from customer {name}",
                  "! pull up every order by {name}", "? what are {name}'s order ids",
                  "- all of {name}'s orders"))
def orders_of_customer(x: Ctx):
    name = x.value(x.f.buyers)
    return {"name": name}, f"SELECT o.id FROM {CO} WHERE c.name = {lit(name)}"


@intent("join2", ("? how many orders has {name} placed", "- number of orders by {name}",
                  "! count {name}'s orders", "? how many times has {name} ordered",
                  "! tell me how many orders {name} made", "- order count for {name}"))
def count_orders_of_customer(x: Ctx):
    name = x.value(x.f.buyers)
    return {"name": name}, f"SELECT COUNT(*) FROM {CO} WHERE c.name = {lit(name)}"


@intent("join2", ("! list the {s}orders from customers in {city}",
                  "? which {s}orders came from {city} customers",
                  "- {s}orders placed by customers living in {city}",
                  "! show the ids of {s}orders from {city}",
                  "? what {s}orders do we have from customers based in {city}",
                  "- ids of {s}orders from {city} customers"))
def orders_from_city(x: Ctx):
    city, status = x.value(x.f.cities), x.value(x.f.statuses)
    with_status = x.rng.random() < 0.5
    cond = f" AND o.status = {lit(status)}" if with_status else ""
    return ({"city": city, "s": f"{status} " if with_status else ""},
            f"SELECT o.id FROM {CO} WHERE c.city = {lit(city)}{cond}")


@intent("join2", ("? which products are in order {n}", "- products in order #{n}",
                  "! list the product titles on order {n}", "? what did order {n} contain",
                  "! show me what was bought in order number {n}", "- items of order {n}"))
def products_in_order(x: Ctx):
    n = x.value(x.f.order_ids)
    return {"n": n}, f"SELECT p.title FROM {OLP} WHERE ol.order_id = {n}"


@intent("join2", ("? who placed order {n}", "- customer behind order #{n}",
                  "! tell me which customer placed order {n}", "? whose order is number {n}",
                  "! find the name of the customer for order {n}", "- name on order {n}"))
def customer_of_order(x: Ctx):
    n = x.value(x.f.order_ids)
    return {"n": n}, f"SELECT c.name FROM {CO} WHERE o.id = {n}"


@intent("join3", ("? which products has {name} bought", "- products purchased by {name}",
                  "! list everything {name} has ordered", "? what has {name} ever ordered",
                  "! show the distinct products {name} bought", "- titles bought by {name}",
                  "? what items did {name} purchase", "! give me the products in {name}'s orders",
                  "- {name}'s purchased products"))
def products_bought_by(x: Ctx):
    name = x.value(x.f.buyers)
    return {"name": name}, f"SELECT DISTINCT p.title FROM {CP} WHERE c.name = {lit(name)}"


@intent("join3", ("? who has bought {item}", "- customers who purchased {item}",
                  "! list the customers that ordered {item}", "? which customers bought {item}",
                  "! show everyone who has ordered {item}", "- buyers of {item}",
                  "? which customers have {item} in an order",
                  "! name the customers who got {item}",
                  "- customers with an order containing {item}"))
def buyers_of_product(x: Ctx):
    if x.rng.random() < 0.4:  # by SKU: only three tables are needed
        sku = x.value(x.f.sold_skus)
        return ({"item": x.value((f"SKU {sku}", sku, f"product {sku}"))},
                f"SELECT DISTINCT c.name FROM {joins('customers', 'order_lines')} "
                f"WHERE ol.sku = {lit(sku)}")
    title = x.value(x.f.sold_titles)
    return ({"item": x.value((title, f"the {title}"))},
            f"SELECT DISTINCT c.name FROM {CP} WHERE p.title = {lit(title)}")


@intent("join3", ("? which {np} include {n}", "- {np} containing {n}",
                  "! list the {np} that had {n} in them", "? what {np} contained {n}",
                  "! show ids of {np} with {n}", "- {np} that included {n}"))
def orders_with_category(x: Ctx):
    cat = x.value(x.f.categories)
    np, where = order_np(x, ("status", "year", "month"))
    return ({"np": np, "n": CAT_NOUN[cat]},
            f"SELECT DISTINCT o.id FROM {joins('orders', 'products')} "
            f"WHERE {on_orders(where)} AND p.category = {lit(cat)}")


@intent("join3", ("? which customers in {city} bought {n}", "- {city} customers who bought {n}",
                  "! list customers from {city} who ordered {n}",
                  "? who in {city} has purchased {n}", "! show {city} buyers of {n}",
                  "- customers based in {city} with {n} orders"))
def city_buyers_of_category(x: Ctx):
    city, cat = x.value(x.f.cities), x.value(x.f.categories)
    return ({"city": city, "n": CAT_NOUN[cat]}, f"SELECT DISTINCT c.name FROM {CP} "
            f"WHERE c.city = {lit(city)} AND p.category = {lit(cat)}")


@intent("distinct", ("? which categories has {name} bought from",
                     "- categories {name} ordered from",
                     "! list the distinct categories in {name}'s orders",
                     "? what kinds of products does {name} buy",
                     "! show the categories {name} has purchased", "- {name}'s categories"))
def categories_of_customer(x: Ctx):
    name = x.value(x.f.buyers)
    return {"name": name}, f"SELECT DISTINCT p.category FROM {CP} WHERE c.name = {lit(name)}"


REV_FRAMES = ("? what is the {rev} {scope}", "- {rev} {scope}", "! calculate the {rev} {scope}",
              "? how much did we make {scope}", "! give me the {rev} {scope}",
              "? what's our {rev} {scope}", "! sum up the {rev} {scope}",
              "? how much money came in {scope}", "! work out the {rev} {scope}")


@intent("revenue", REV_FRAMES)
def revenue(x: Ctx):
    kind = x.value(("all", "category", "order", "orders", "customer", "city", "product"))
    if kind == "all":
        scope, frm, where = x.value(("overall", "in total", "across all orders")), OLP, ""
    elif kind == "category":
        cat = x.value(x.f.categories)
        scope, frm, where = f"from {CAT_NOUN[cat]}", OLP, f"p.category = {lit(cat)}"
    elif kind == "order":
        n = x.value(x.f.order_ids)
        scope, frm, where = f"from order {n}", OLP, f"ol.order_id = {n}"
    elif kind == "orders":
        np, cond = order_np(x, ("status", "year", "month"))
        scope, frm, where = f"from {np}", joins("orders", "products"), on_orders(cond)
    elif kind == "customer":
        name = x.value(x.f.buyers)
        scope, frm, where = f"from {name}", CP, f"c.name = {lit(name)}"
    elif kind == "city":
        city = x.value(x.f.cities)
        scope, frm, where = f"from customers in {city}", CP, f"c.city = {lit(city)}"
    else:
        title = x.value(x.f.sold_titles)
        scope, frm, where = f"from the {title}", OLP, f"p.title = {lit(title)}"
    where = f" WHERE {where}" if where else ""
    return {"rev": x.value(REVENUE_WORDS), "scope": scope}, f"SELECT {REV} FROM {frm}{where}"


MEASURES = {  # name: (phrases, aggregate, tables it needs)
    "customers": (("number of customers", "customer count"), "COUNT(*)", ("customers",)),
    "orders": (("number of orders", "order count"), "COUNT(*)", ("orders",)),
    "products": (("number of products", "product count"), "COUNT(*)", ("products",)),
    "avg_price": (("average price", "mean price"), "AVG(p.price_cents)", ("products",)),
    "max_price": (("highest price", "maximum price"), "MAX(p.price_cents)", ("products",)),
    "min_price": (("lowest price", "minimum price"), "MIN(p.price_cents)", ("products",)),
    "revenue": (REVENUE_WORDS, REV, ("order_lines", "products")),
    "units": (("units sold", "total quantity sold"), "SUM(ol.quantity)", ("order_lines",)),
}
DIMS = {
    "city": (("city", "customer city"), "c.city", "customers"),
    "tier": (("tier", "customer tier", "plan"), "c.tier", "customers"),
    "category": (("category", "product category"), "p.category", "products"),
    "status": (("status", "order status"), "o.status", "orders"),
    "year": (("year", "order year"), "strftime('%Y', o.placed_on)", "orders"),
}
GROUPINGS = (("customers", "city"), ("customers", "tier"), ("orders", "status"),
             ("orders", "year"), ("orders", "city"), ("orders", "tier"),
             ("products", "category"), ("avg_price", "category"), ("max_price", "category"),
             ("min_price", "category"), ("revenue", "category"), ("revenue", "status"),
             ("revenue", "year"), ("revenue", "city"), ("units", "category"), ("units", "year"))


def grouped_from(measure: str, dim: str) -> tuple[str, str, str]:
    """(FROM clause, dimension expression, aggregate) with aliases dropped for one table."""
    needed = {*MEASURES[measure][2], DIMS[dim][2]}
    idx = sorted(TABLES.index(t) for t in needed)
    frm = joins(TABLES[idx[0]], TABLES[idx[-1]])
    dim_sql, agg = DIMS[dim][1], MEASURES[measure][1]
    if len(idx) == 1:
        dim_sql, agg = unalias(dim_sql), unalias(agg)
    return frm, dim_sql, agg


@intent("group_by", ("? what is the {m} per {d}", "- {m} by {d}", "! break down the {m} by {d}",
                     "! show the {m} for each {d}", "- {m} per {d}",
                     "? can I see the {m} grouped by {d}", "! give me the {m} for every {d}",
                     "? what does the {m} look like for each {d}", "- {d} breakdown of {m}"))
def grouped(x: Ctx):
    measure, dim = x.value(GROUPINGS)
    frm, dim_sql, agg = grouped_from(measure, dim)
    return ({"m": x.value(MEASURES[measure][0]), "d": x.value(DIMS[dim][0])},
            f"SELECT {dim_sql}, {agg} FROM {frm} GROUP BY {dim_sql}")


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
