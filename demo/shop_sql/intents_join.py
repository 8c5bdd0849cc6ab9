"""Multi-table families: 2- and 3+-table joins and revenue, and the join chain the grouped
families (intents_group) and lookups (intents_lookup) share.

Joins always walk the one chain customers c -> orders o -> order_lines ol -> products p with the
same aliases and ON clauses, and start at the first table the question needs: one canonical shape
is easier for a small model to learn than every equivalent join order.
"""

from __future__ import annotations

import re

from demo.shop_sql.intents_basic import CAT_NOUN, order_np
from demo.shop_sql.phrasing import Ctx, intent, lit

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


CO = joins("customers", "orders")
CP = joins("customers", "products")
OLP = joins("order_lines", "products")


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


@intent("join2", ("? which customers have {np}", "- customers with {np}",
                  "! list the customers who have {np}", "? who has {np}",
                  "! show the customers that have {np}", "- names of customers with {np}",
                  "? which of our customers have {np}", "! find every customer with {np}",
                  "- customers who have {np}"))
def customers_with_orders(x: Ctx):
    np, where = order_np(x, ("status", "month", "year", "status_year"))
    return {"np": np}, f"SELECT DISTINCT c.name FROM {CO} WHERE {on_orders(where)}"


@intent("join2", ("! list the {np} with the customer's name", "- {np} and who placed them",
                  "? who placed each of the {np}",
                  "! show the ids of the {np} together with the customer names",
                  "- order ids and customer names for {np}",
                  "? which customer placed each of the {np}, by order id",
                  "! give me the {np} along with their customers' names",
                  "- {np}: order id and customer",
                  "? can you list the {np} with the customer who placed each"))
def orders_with_customer(x: Ctx):
    np, where = order_np(x, ("status_year", "month", "date", "range"))
    return {"np": np}, f"SELECT o.id, c.name FROM {CO} WHERE {on_orders(where)}"


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


