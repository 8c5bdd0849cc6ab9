"""Single-table families: text, numeric and date filters, counts, aggregates, DISTINCT, "never".

Gold SQL conventions (one style so a small model can learn it): uppercase keywords, single-quoted
literals, no trailing semicolon; a customer is answered by `name`, a product by `title`, an order
by `id`, unless the question names other columns: then those, in the order it names them; money
stays in cents as stored; months and years via strftime on the ISO text dates.
"""

from __future__ import annotations

from demo.shop_sql.phrasing import (
    NUM_CMP,
    Ctx,
    date_cond,
    date_text,
    intent,
    lit,
    month_text,
    price_cond,
    random_day,
)

CAT_NOUN = {"books": "books", "electronics": "electronics", "kitchen": "kitchen items",
            "toys": "toys", "garden": "garden products", "sports": "sports gear",
            "beauty": "beauty products", "office": "office supplies"}


def cust_np(x: Ctx, kinds: tuple[str, ...]) -> tuple[str, str]:
    """A noun phrase naming a set of customers and its WHERE condition."""
    kind = x.value(kinds)
    city, tier = x.value(x.f.cities), x.value(x.f.tiers)
    year = x.value(("2023", "2024", "2025"))
    if kind == "city":
        return x.pick(("customers in {c}", "customers from {c}", "{c} customers",
                       "customers based in {c}", "customers who live in {c}",
                       "customers located in {c}")).format(c=city), f"city = {lit(city)}"
    if kind == "tier":
        return x.pick(("{t}-tier customers", "customers on the {t} tier", "{t} customers",
                       "customers with the {t} plan", "customers on the {t} plan",
                       "customers whose tier is {t}")).format(t=tier), f"tier = {lit(tier)}"
    if kind == "city_tier":
        phrase = x.pick(("{t} customers in {c}", "customers in {c} on the {t} tier",
                         "{c} customers with the {t} plan", "{t}-tier customers from {c}"))
        return phrase.format(c=city, t=tier), f"city = {lit(city)} AND tier = {lit(tier)}"
    if kind == "joined_year":
        return x.pick(("customers who joined in {y}", "customers who signed up in {y}",
                       "customers that joined during {y}", "customers registered in {y}")
                      ).format(y=year), f"strftime('%Y', joined_on) = {lit(year)}"
    cond, where = date_cond(x, "joined_on")
    return x.pick(("customers who joined {d}", "customers who signed up {d}",
                   "customers registered {d}", "customers with a join date {d}")
                  ).format(d=cond), where


def prod_np(x: Ctx, kinds: tuple[str, ...]) -> tuple[str, str]:
    """A noun phrase naming a set of products and its WHERE condition."""
    kind, cat = x.value(kinds), x.value(x.f.categories)
    noun = CAT_NOUN[cat]
    if kind == "category":
        return x.pick(("{n}", "products in the {c} category", "items in the {c} category",
                       "products listed under {c}", "{n} in our catalog",
                       "products categorized as {c}")
                      ).format(n=noun, c=cat), f"category = {lit(cat)}"
    cond, where = price_cond(x)
    if kind == "price":
        return x.pick(("products priced {p}", "products that cost {p}", "items that are {p}",
                       "products costing {p}", "items priced {p}", "products with a price {p}")
                      ).format(p=cond), where
    return x.pick(("{n} priced {p}", "products in the {c} category that cost {p}",
                   "{n} costing {p}", "{c} products priced {p}")
                  ).format(n=noun, c=cat, p=cond), f"category = {lit(cat)} AND {where}"


def order_np(x: Ctx, kinds: tuple[str, ...]) -> tuple[str, str]:
    """A noun phrase naming a set of orders and its WHERE condition."""
    kind, status = x.value(kinds), x.value(x.f.statuses)
    ym, year = x.value(x.f.months), x.value(x.f.years)
    if kind == "status":
        return x.pick(("{s} orders", "orders that are {s}", "orders with status {s}",
                       "orders marked as {s}", "orders in {s} status",
                       "orders whose status is {s}")).format(s=status), f"status = {lit(status)}"
    if kind == "month":
        return x.pick(("orders placed in {m}", "orders from {m}", "orders made during {m}",
                       "orders received in {m}")).format(m=month_text(x, ym)), \
            f"strftime('%Y-%m', placed_on) = {lit(ym)}"
    if kind == "year":
        return x.pick(("orders placed in {y}", "orders from {y}", "orders made during {y}",
                       "{y} orders")).format(y=year), f"strftime('%Y', placed_on) = {lit(year)}"
    if kind == "status_year":
        return x.pick(("{s} orders from {y}", "orders placed in {y} that are {s}",
                       "orders from {y} with status {s}", "{y} orders marked {s}")
                      ).format(s=status, y=year), \
            f"status = {lit(status)} AND strftime('%Y', placed_on) = {lit(year)}"
    if kind == "range":
        a, b = sorted((random_day(x), random_day(x)))
        return x.pick(("orders placed between {a} and {b}", "orders from {a} to {b}",
                       "orders made between {a} and {b}")
                      ).format(a=date_text(x, a), b=date_text(x, b)), \
            f"placed_on BETWEEN {lit(a)} AND {lit(b)}"
    cond, where = date_cond(x, "placed_on")
    return x.pick(("orders placed {d}", "orders made {d}", "orders with a placement date {d}",
                   "orders submitted {d}")).format(d=cond), where


LIST_CUST = ("! list the {np}", "? who are our {np}", "- names of all {np}",
             "! show me all {np}", "? what are the names of the {np}",
             "! give me the names of the {np}", "- {np}", "? can you pull up the {np}",
             "! find all the {np}")
LIST_PROD = ("! list the {np}", "? which {np} do we carry", "- titles of all {np}",
             "! show me the {np}", "? what are the {np}", "! name all the {np}",
             "- {np}", "? what are the product titles for {np}", "! find the {np}")
LIST_ORD = ("! list the {np}", "? what are the {np}", "- ids of all {np}",
            "! show me the {np}", "? what are the ids of the {np}", "! pull up the {np}",
            "- {np}", "? can I see the {np}", "! find all {np}")


ROW_SETS = {  # the sets of rows a list question names: (table, noun phrase builder, its kinds)
    "customers_text": ("customers", cust_np, ("city", "tier", "city_tier")),
    "customers_joined": ("customers", cust_np, ("joined_year", "joined_date")),
    "products_category": ("products", prod_np, ("category",)),
    "products_price": ("products", prod_np, ("price", "price", "category_price")),
    "orders_status": ("orders", order_np, ("status",)),
    "orders_date": ("orders", order_np, ("month", "year", "date", "range", "status_year")),
}


def _list(rows: str, col: str):
    def build(x: Ctx):
        table, np_fn, kinds = ROW_SETS[rows]
        phrase, where = np_fn(x, kinds)
        return {"np": phrase}, f"SELECT {col} FROM {table} WHERE {where}"
    return build


for _fam, _name, _frames, _rows, _col in (
    ("text_filter", "list_customers_text", LIST_CUST, "customers_text", "name"),
    ("text_filter", "list_products_category", LIST_PROD, "products_category", "title"),
    ("numeric_filter", "list_products_price", LIST_PROD, "products_price", "title"),
    ("date_range", "list_orders_date", LIST_ORD, "orders_date", "id"),
    ("date_range", "list_customers_joined", LIST_CUST, "customers_joined", "name"),
):
    intent(_fam, _frames, name=_name)(_list(_rows, _col))

# The columns a question asks for, in the order it names them ("skus and titles": sku, title).
COLUMNS = {
    "customers": (("ids", "id"), ("customer ids", "id"), ("IDs", "id"),
                  ("ids and names", "id, name"), ("names and ids", "name, id"),
                  ("names and cities", "name, city"), ("names and tiers", "name, tier"),
                  ("names and join dates", "name, joined_on"),
                  ("names, cities and tiers", "name, city, tier")),
    "products": (("skus", "sku"), ("SKUs", "sku"), ("SKU codes", "sku"),
                 ("prices", "price_cents"), ("titles and prices", "title, price_cents"),
                 ("names and prices", "title, price_cents"), ("skus and titles", "sku, title"),
                 ("titles and skus", "title, sku"),
                 ("titles, skus and prices", "title, sku, price_cents"),
                 ("titles and categories", "title, category")),
    "orders": (("ids and dates", "id, placed_on"), ("ids and statuses", "id, status"),
               ("order numbers and placement dates", "id, placed_on"),
               ("customer ids", "customer_id"), ("ids and customer ids", "id, customer_id"),
               ("ids, statuses and dates", "id, status, placed_on"),
               ("placement dates", "placed_on")),
}
LIST_COLS = ("! list the {cols} of the {np}", "? what are the {cols} of the {np}",
             "- {cols} of all {np}", "! show me the {cols} of {np}",
             "? can you give me the {cols} for the {np}", "- {np}, {cols} only",
             "! pull up the {cols} of every one of the {np}", "? which {cols} do the {np} have",
             "- the {cols} of {np}")


def _list_cols(lists: tuple[str, ...]):
    def build(x: Ctx):
        table, np_fn, kinds = ROW_SETS[x.value(lists)]
        phrase, where = np_fn(x, kinds)
        words, cols = x.value(COLUMNS[table])
        return {"np": phrase, "cols": words}, f"SELECT {cols} FROM {table} WHERE {where}"
    return build


for _fam, _name, _lists in (
    ("text_filter", "list_columns_text", ("customers_text", "products_category", "orders_status")),
    ("numeric_filter", "list_columns_price", ("products_price",)),
    ("date_range", "list_columns_date", ("orders_date", "customers_joined")),
):
    intent(_fam, LIST_COLS, name=_name)(_list_cols(_lists))


@intent("text_filter", ("! list the {np}", "? which orders are {s}", "- ids of {np}",
                        "! show me every order that is {s}", "? what orders are currently {s}",
                        "! get me the {np}", "- {np}", "? which order ids have status {s}",
                        "! find the orders with a {s} status"))
def list_orders_status(x: Ctx):
    s = x.value(x.f.statuses)
    np = x.pick((f"{s} orders", f"orders marked {s}", f"orders with status {s}"))
    return {"s": s, "np": np}, f"SELECT id FROM orders WHERE status = {lit(s)}"


@intent("numeric_filter", ("! list order lines with a quantity of {q}",
                           "? which order lines have a quantity of {q}",
                           "- order lines where quantity is {q}",
                           "! show the order id and SKU of lines with quantity {q}",
                           "? which lines were ordered in a quantity of {q}",
                           "! find order lines whose quantity is {q}"))
def order_lines_quantity(x: Ctx):
    phrase, op = x.value(NUM_CMP)
    n = x.value((1, 2, 3, 4, 5)) if op != "<" else x.value((2, 3))
    return ({"q": phrase.format(n=n)},
            f"SELECT order_id, sku FROM order_lines WHERE quantity {op} {n}")


COUNT_FRAMES = ("? how many {np} are there", "! count the {np}", "- number of {np}",
                "? how many {np} do we have", "! tell me how many {np} there are",
                "- count of {np}", "? what's the total number of {np}",
                "! give me a count of {np}", "? what is the number of {np}")


def _count(table: str, np_fn, kinds):
    def build(x: Ctx):
        phrase, where = np_fn(x, kinds)
        return {"np": phrase}, f"SELECT COUNT(*) FROM {table} WHERE {where}"
    return build


for _name, _table, _np, _kinds in (
    ("count_customers", "customers", cust_np, ("city", "tier", "city_tier", "joined_year")),
    ("count_products", "products", prod_np, ("category", "price", "category_price")),
    ("count_orders", "orders", order_np, ("status", "month", "year", "date", "status_year")),
):
    intent("count", COUNT_FRAMES, name=_name)(_count(_table, _np, _kinds))

STATS = {"AVG": ("average", "mean"), "MIN": ("lowest", "minimum", "smallest"),
         "MAX": ("highest", "maximum", "largest")}


@intent("aggregate", ("? what is the {stat} price of {np}", "- {stat} price of {np}",
                      "! give me the {stat} price among {np}", "? what's the {stat} price for {np}",
                      "! find the {stat} price of {np}", "- {np}: {stat} price",
                      "! compute the {stat} price over {np}",
                      "? whats the {stat} price across {np}",
                      "! work out the {stat} price of {np}"))
def price_stat(x: Ctx):
    fn = x.value(tuple(STATS))
    if x.rng.random() < 0.25:
        np, where = x.value(("all products", "our products", "everything we sell")), ""
    else:
        np, where = prod_np(x, ("category",))
        where = f" WHERE {where}"
    return {"stat": x.value(STATS[fn]), "np": np}, f"SELECT {fn}(price_cents) FROM products{where}"


@intent("aggregate", ("? what is the {stat} quantity on an order line",
                      "- {stat} order line quantity",
                      "! give me the {stat} quantity across all order lines",
                      "? what's the {stat} number of units on a single order line",
                      "! find the {stat} line quantity", "- {stat} quantity per order line"))
def quantity_stat(x: Ctx):
    fn = x.value(("AVG", "MAX", "MIN"))
    return {"stat": x.value(STATS[fn])}, f"SELECT {fn}(quantity) FROM order_lines"


@intent("aggregate", ("? when was the {which} {np} placed", "- date of the {which} {np}",
                      "! tell me the date of the {which} {np}",
                      "? what's the date of the {which} {np}",
                      "! find when the {which} {np} came in", "- {which} {np}: date"))
def order_date_stat(x: Ctx):
    fn, which = x.value((("MIN", "first"), ("MIN", "earliest"), ("MAX", "latest"),
                         ("MAX", "most recent"), ("MAX", "last")))
    s = x.value(x.f.statuses)
    return ({"which": which, "np": f"{s} order"},
            f"SELECT {fn}(placed_on) FROM orders WHERE status = {lit(s)}")


@intent("aggregate", ("? when did the {which} customer from {city} join",
                      "- join date of the {which} customer in {city}",
                      "! tell me when our {which} {city} customer signed up",
                      "? what is the {which} join date among {city} customers",
                      "! find the {which} signup date for customers in {city}",
                      "- {which} {city} signup date"))
def join_date_stat(x: Ctx):
    fn, which = x.value((("MIN", "first"), ("MIN", "earliest"), ("MAX", "newest"),
                         ("MAX", "latest"), ("MAX", "most recent")))
    city = x.value(x.f.cities)
    return ({"which": which, "city": city},
            f"SELECT {fn}(joined_on) FROM customers WHERE city = {lit(city)}")


@intent("distinct", ("? which cities do our {np} come from", "- distinct cities of {np}",
                     "! list the different cities where {np} live",
                     "? in which cities do we have {np}", "! show each city that has {np}",
                     "- cities with {np}", "? what cities are home to {np}",
                     "! name the unique cities of {np}", "- every city with {np}"))
def cities_of(x: Ctx):
    tier = x.value(x.f.tiers)
    np = x.value((f"{tier} customers", f"{tier}-tier customers", "customers"))
    where = "" if np == "customers" else f" WHERE tier = {lit(tier)}"
    return {"np": np}, f"SELECT DISTINCT city FROM customers{where}"


@intent("distinct", ("? which categories have products priced {p}",
                     "- distinct categories with items priced {p}",
                     "! list the categories that include products priced {p}",
                     "? what categories offer something priced {p}",
                     "! show every category with items priced {p}",
                     "- categories selling anything priced {p}"))
def categories_with_price(x: Ctx):
    cond, where = price_cond(x)
    return {"p": cond}, f"SELECT DISTINCT category FROM products WHERE {where}"


@intent("distinct", ("? how many different customers ordered in {y}",
                     "- number of distinct customers with orders in {y}",
                     "! count the unique customers who placed an order in {y}",
                     "? how many unique buyers did we have in {y}",
                     "! tell me how many distinct customers bought something in {y}",
                     "- distinct customer count for {y} orders"))
def distinct_buyers_year(x: Ctx):
    y = x.value(x.f.years)
    return ({"y": y}, "SELECT COUNT(DISTINCT customer_id) FROM orders "
            f"WHERE strftime('%Y', placed_on) = {lit(y)}")


NEVER_CUST = ("? which {np} have never placed an order", "- {np} with no orders",
              "! list {np} who never ordered anything", "? who among the {np} has never ordered",
              "! show the {np} that have not placed any orders", "- {np} without a single order",
              "? which {np} haven't bought anything yet", "! find {np} who never made a purchase",
              "- {np} that never ordered")


@intent("never", NEVER_CUST)
def customers_never_ordered(x: Ctx):
    if x.rng.random() < 0.35:
        return {"np": "customers"}, \
            "SELECT name FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)"
    phrase, where = cust_np(x, ("city", "tier"))
    return ({"np": phrase}, f"SELECT name FROM customers WHERE {where} "
            "AND id NOT IN (SELECT customer_id FROM orders)")


@intent("never", ("? which {np} have never been ordered", "- {np} nobody has bought",
                  "! list the {np} that were never sold", "? what {np} has no one ordered",
                  "! show {np} with zero orders", "- {np} never ordered",
                  "? which of our {np} have never sold", "! find {np} that no order includes",
                  "- unsold {np}"))
def products_never_ordered(x: Ctx):
    if x.rng.random() < 0.35:
        return {"np": "products"}, \
            "SELECT title FROM products WHERE sku NOT IN (SELECT sku FROM order_lines)"
    phrase, where = prod_np(x, ("category", "price"))
    return ({"np": phrase}, f"SELECT title FROM products WHERE {where} "
            "AND sku NOT IN (SELECT sku FROM order_lines)")


@intent("never", ("? which customers have never had a {s} order",
                  "- customers with no {s} orders",
                  "! list customers who never had an order marked {s}",
                  "? who has never had an order that was {s}",
                  "! show customers without any {s} orders",
                  "- customers never having a {s} order",
                  "? which customers never had an order with status {s}",
                  "! find customers who have no {s} orders at all",
                  "- customers lacking {s} orders"))
def customers_never_status(x: Ctx):
    s = x.value(x.f.statuses)
    return ({"s": s}, "SELECT name FROM customers WHERE id NOT IN "
            f"(SELECT customer_id FROM orders WHERE status = {lit(s)})")


@intent("never", ("? which customers have never bought {n}", "- customers who never bought {n}",
                  "! list customers who have not ordered any {n}",
                  "? who has never purchased {n}", "! show customers that never bought {n}",
                  "- customers with no {n} purchases"))
def customers_never_category(x: Ctx):
    cat = x.value(x.f.categories)
    return ({"n": CAT_NOUN[cat]}, "SELECT name FROM customers WHERE id NOT IN "
            "(SELECT o.customer_id FROM orders o JOIN order_lines ol ON ol.order_id = o.id "
            f"JOIN products p ON p.sku = ol.sku WHERE p.category = {lit(cat)})")
