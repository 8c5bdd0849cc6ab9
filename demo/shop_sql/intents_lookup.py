"""Lookups by a given value (an order id, a SKU, a customer, a product title) and what was sold:
units (the sum of quantities) and order lines (a count of rows) are different questions.

`lookup` answers from the one table the given value is in ("price of sku X", "when was order
42 placed"), `lookup_join` walks the chain from it ("what did order 17 contain", "who placed
order 42", "orders of customer Y"). The answer projects what the question names ("the SKUs and
quantities in order 17": `sku, quantity`), in the order it names them. `quantity` keeps
"units", "items sold" (`SUM(quantity)`) apart from "order lines", "line items" (`COUNT(*)`).
"""

from __future__ import annotations

from demo.shop_sql.intents_basic import CAT_NOUN, order_np
from demo.shop_sql.intents_join import CO, OLP, joins, on_orders
from demo.shop_sql.phrasing import Ctx, intent, lit, month_text

# --- lookup: one table --------------------------------------------------------------------

CUST_ATTRS = (("city", "city"), ("home city", "city"), ("tier", "tier"), ("plan", "tier"),
              ("join date", "joined_on"), ("signup date", "joined_on"), ("customer id", "id"),
              ("id", "id"), ("city and tier", "city, tier"), ("tier and join date",
                                                               "tier, joined_on"),
              ("id and city", "id, city"))


@intent("lookup", ("? what is the {attr} of {name}", "? what's {name}'s {attr}",
                   "- {attr} for customer {name}", "! look up the {attr} of {name}",
                   "- {name}: {attr}", "? do you know the {attr} of customer {name}",
                   "! tell me {name}'s {attr}", "? which {attr} does {name} have",
                   "! find the {attr} on file for {name}"))
def customer_lookup(x: Ctx):
    words, cols = x.value(CUST_ATTRS)
    name = x.value(x.f.names)
    return {"attr": words, "name": name}, f"SELECT {cols} FROM customers WHERE name = {lit(name)}"


@intent("lookup", ("? who is customer {n}", "- customer #{n}", "! look up customer {n}",
                   "? what's the name of customer id {n}", "- name of customer {n}",
                   "? which customer has id {n}", "! tell me who customer number {n} is",
                   "? do you know who customer {n} is", "- the customer with id {n}"))
def customer_by_id(x: Ctx):
    n = x.value(x.f.customer_ids)
    return {"n": n}, f"SELECT name FROM customers WHERE id = {n}"


PROD_ATTRS = (("price", "price_cents"), ("cost", "price_cents"), ("category", "category"),
              ("SKU", "sku"), ("sku", "sku"), ("SKU and price", "sku, price_cents"),
              ("category and price", "category, price_cents"))


@intent("lookup", ("? what is the {attr} of {title}", "? what's the {attr} of the {title}",
                   "- {attr} of {title}", "! look up the {attr} for {title}",
                   "- {title} {attr}", "? do you know the {attr} of the {title}",
                   "! tell me the {attr} of {title}", "? what {attr} does {title} have",
                   "! find the {attr} for the product {title}"))
def product_lookup(x: Ctx):
    words, cols = x.value(PROD_ATTRS)
    title = x.value(x.f.titles)
    return {"attr": words, "title": title}, \
        f"SELECT {cols} FROM products WHERE title = {lit(title)}"


SKU_ATTRS = (("price", "price_cents"), ("category", "category"), ("title", "title"),
             ("product name", "title"), ("title and price", "title, price_cents"),
             ("price and category", "price_cents, category"), ("name and category",
                                                              "title, category"))


@intent("lookup", ("? what is the {attr} of {sku}", "- {attr} of SKU {sku}",
                   "! look up the {attr} for sku {sku}", "? what's the {attr} of product {sku}",
                   "- {sku} {attr}", "? what {attr} does {sku} have",
                   "! tell me the {attr} of item {sku}", "- SKU {sku}: {attr}",
                   "! find the {attr} for {sku}"))
def sku_lookup(x: Ctx):
    words, cols = x.value(SKU_ATTRS)
    sku = x.value(x.f.skus)
    return {"attr": words, "sku": sku}, f"SELECT {cols} FROM products WHERE sku = {lit(sku)}"


@intent("lookup", ("? what is {sku}", "? which product is {sku}", "- product {sku}",
                   "! tell me what product {sku} is", "? what product has SKU {sku}",
                   "- the product with sku {sku}", "? what do we sell under {sku}",
                   "! identify SKU {sku}", "- which item is {sku}"))
def sku_product(x: Ctx):
    sku = x.value(x.f.skus)
    return {"sku": sku}, f"SELECT title FROM products WHERE sku = {lit(sku)}"


ORDER_ATTRS = (("status", "status"), ("date", "placed_on"), ("order date", "placed_on"),
               ("placement date", "placed_on"), ("customer id", "customer_id"),
               ("status and date", "status, placed_on"), ("date and status", "placed_on, status"))


@intent("lookup", ("? what is the {attr} of order {n}", "- {attr} of order #{n}",
                   "! look up the {attr} of order {n}", "? what's the {attr} on order number {n}",
                   "- order {n} {attr}", "? do you know the {attr} of order {n}",
                   "! tell me the {attr} for order {n}", "- order #{n}: {attr}",
                   "! find the {attr} of order no. {n}"))
def order_lookup(x: Ctx):
    words, cols = x.value(ORDER_ATTRS)
    n = x.value(x.f.order_ids)
    return {"attr": words, "n": n}, f"SELECT {cols} FROM orders WHERE id = {n}"


@intent("lookup", ("? when was order {n} placed", "- date order {n} was placed",
                   "! tell me when order {n} came in", "? on what day was order #{n} placed",
                   "? what day did order {n} come in", "- when order {n} was made",
                   "! find out when order number {n} was placed", "? when did order {n} happen",
                   "- placement date of order {n}"))
def order_date(x: Ctx):
    n = x.value(x.f.order_ids)
    return {"n": n}, f"SELECT placed_on FROM orders WHERE id = {n}"


# --- lookup_join: from the given value along the chain -------------------------------------

@intent("lookup_join", ("? what did order {n} contain", "- contents of order #{n}",
                        "! show me what was bought in order number {n}", "? what was in order {n}",
                        "! tell me what order {n} had in it", "- what's in order {n}",
                        "? what was ordered in order {n}", "! list what order no. {n} contained",
                        "- order {n} contents"))
def products_in_order(x: Ctx):
    n = x.value(x.f.order_ids)
    return {"n": n}, f"SELECT p.title FROM {OLP} WHERE ol.order_id = {n}"


ORDER_ITEMS = (("products", "p.title"), ("product titles", "p.title"), ("items", "p.title"),
               ("SKUs", "sku"), ("skus", "sku"), ("SKUs and quantities", "sku, quantity"),
               ("products and quantities", "p.title, ol.quantity"),
               ("titles and quantities", "p.title, ol.quantity"),
               ("product titles and prices", "p.title, p.price_cents"))


@intent("lookup_join", ("? which {what} are in order {n}", "- {what} in order #{n}",
                        "! list the {what} on order {n}", "? what {what} did order {n} contain",
                        "! show me the {what} bought in order number {n}", "- {what} of order {n}",
                        "? what {what} were on order no. {n}", "! give me the {what} for order {n}",
                        "- order {n}: {what}"))
def order_contents(x: Ctx):
    words, cols = x.value(ORDER_ITEMS)
    n = x.value(x.f.order_ids)
    if "p." in cols:
        return {"what": words, "n": n}, f"SELECT {cols} FROM {OLP} WHERE ol.order_id = {n}"
    return {"what": words, "n": n}, f"SELECT {cols} FROM order_lines WHERE order_id = {n}"


@intent("lookup_join", ("? who placed order {n}", "- customer behind order #{n}",
                        "! tell me which customer placed order {n}", "? whose order is number {n}",
                        "! find the name of the customer for order {n}", "- name on order {n}",
                        "? who ordered order {n}", "! look up who placed order #{n}",
                        "- who order {n} belongs to"))
def customer_of_order(x: Ctx):
    n = x.value(x.f.order_ids)
    return {"n": n}, f"SELECT c.name FROM {CO} WHERE o.id = {n}"


ORDER_CUSTOMER = (("name", "c.name"), ("city", "c.city"), ("tier", "c.tier"),
                  ("name and city", "c.name, c.city"), ("name and tier", "c.name, c.tier"),
                  ("id", "customer_id"), ("customer id", "customer_id"))


@intent("lookup_join", ("? what is the {attr} of the customer who placed order {n}",
                        "- {attr} of the customer behind order #{n}",
                        "! tell me the {attr} of whoever placed order {n}",
                        "? what's the {attr} of order {n}'s customer",
                        "! look up the {attr} of the customer on order {n}",
                        "- order {n}: customer {attr}",
                        "? which {attr} does the customer of order {n} have",
                        "! find the {attr} of the person who placed order number {n}",
                        "- customer {attr} for order {n}"))
def customer_of_order_attr(x: Ctx):
    words, cols = x.value(ORDER_CUSTOMER)
    n = x.value(x.f.order_ids)
    if cols == "customer_id":  # it is on the order itself
        return {"attr": words, "n": n}, f"SELECT customer_id FROM orders WHERE id = {n}"
    return {"attr": words, "n": n}, f"SELECT {cols} FROM {CO} WHERE o.id = {n}"


@intent("lookup_join", ("! list the orders placed by {name}", "? which orders did {name} place",
                        "- order ids for {name}", "! show me {name}'s orders",
                        "? what orders has {name} made", "- orders from customer {name}",
                        "! pull up every order by {name}", "? what are {name}'s order ids",
                        "- all of {name}'s orders"))
def orders_of_customer(x: Ctx):
    name = x.value(x.f.buyers)
    return {"name": name}, f"SELECT o.id FROM {CO} WHERE c.name = {lit(name)}"


CUSTOMER_ORDERS = (("ids and dates", "o.id, o.placed_on"), ("ids and statuses", "o.id, o.status"),
                   ("dates", "o.placed_on"), ("statuses", "o.status"),
                   ("ids, dates and statuses", "o.id, o.placed_on, o.status"),
                   ("order numbers and dates", "o.id, o.placed_on"))


@intent("lookup_join", ("! list the {what} of {name}'s orders",
                        "? what are the {what} of the orders placed by {name}",
                        "- {what} of {name}'s orders", "! show the {what} of every order by {name}",
                        "? can I see the {what} of {name}'s orders",
                        "- orders from {name}: {what}", "! give me the {what} for {name}'s orders",
                        "? which {what} do {name}'s orders have",
                        "- {name} orders with {what}"))
def orders_of_customer_columns(x: Ctx):
    words, cols = x.value(CUSTOMER_ORDERS)
    name = x.value(x.f.buyers)
    return {"what": words, "name": name}, f"SELECT {cols} FROM {CO} WHERE c.name = {lit(name)}"


# --- quantity: units sold, order lines, orders containing ----------------------------------

def sold_scope(x: Ctx, lines: bool) -> tuple[str, str, str]:
    """(phrase, first table, condition) of a slice of the order lines; the FROM clause runs from
    the first table to order_lines (or products when the condition is on a product). Units are
    sold "to" a customer, lines are "in" their orders."""
    kind = x.value(("all", "order", "sku", "title", "category", "orders", "customer", "city"))
    if kind == "all":
        return x.value(("", " in total", " overall", " across all orders")), "order_lines", ""
    if kind == "order":
        n = x.value(x.f.order_ids)
        return x.value((f" in order {n}", f" on order #{n}")), "order_lines", f"order_id = {n}"
    if kind == "sku":
        sku = x.value(x.f.sold_skus)
        return x.value((f" of {sku}", f" for SKU {sku}")), "order_lines", f"sku = {lit(sku)}"
    if kind == "title":
        title = x.value(x.f.sold_titles)
        return x.value((f" of the {title}", f" for {title}")), "products", \
            f"p.title = {lit(title)}"
    if kind == "category":
        cat = x.value(x.f.categories)
        return x.value((f" of {CAT_NOUN[cat]}", f" in the {cat} category")), "products", \
            f"p.category = {lit(cat)}"
    if kind == "orders":
        if x.rng.random() < 0.5:
            ym = x.value(x.f.months)
            return f" in {month_text(x, ym)}", "orders", \
                f"strftime('%Y-%m', o.placed_on) = {lit(ym)}"
        np, where = order_np(x, ("status", "year"))
        return f" in {np}", "orders", on_orders(where)
    if kind == "customer":
        name = x.value(x.f.buyers)
        phrases = (f" in {name}'s orders", f" for {name}'s orders") if lines else \
            (f" to {name}", f" for {name}'s orders")
        return x.value(phrases), "customers", \
            f"c.name = {lit(name)}"
    city = x.value(x.f.cities)
    phrases = (f" for customers in {city}", f" in orders from {city}") if lines else \
        (f" to customers in {city}", f" to {city} customers")
    return x.value(phrases), "customers", \
        f"c.city = {lit(city)}"


def _over_lines(x: Ctx, agg: str) -> tuple[str, str]:
    phrase, first, where = sold_scope(x, lines=agg == "COUNT(*)")
    if first == "products":
        frm = OLP
    elif first == "order_lines":
        frm = "order_lines"
    else:
        frm = joins(first, "order_lines")
    if frm != "order_lines":
        agg = agg.replace("quantity", "ol.quantity").replace("order_id", "ol.order_id")
    return phrase, f"SELECT {agg} FROM {frm}{' WHERE ' + where if where else ''}"


@intent("quantity", ("? how many units of {sku} have we sold", "- total units sold of {sku}",
                     "! sum up the quantity ordered of {sku}",
                     "? what's the total quantity ordered for SKU {sku}",
                     "! tell me the total number of {sku} units sold",
                     "- units of {sku} sold in total"))
def units_of_sku(x: Ctx):
    sku = x.value(x.f.sold_skus)
    return {"sku": sku}, f"SELECT SUM(quantity) FROM order_lines WHERE sku = {lit(sku)}"


@intent("quantity", ("? how many units were sold{s}", "- total units sold{s}",
                     "! add up the quantities ordered{s}", "? what's the total quantity sold{s}",
                     "- number of items sold{s}", "? how many items did we sell{s}",
                     "! count the units sold{s}", "? how many units have been ordered{s}",
                     "- sum of quantities{s}"))
def units_sold(x: Ctx):
    phrase, sql = _over_lines(x, "SUM(quantity)")
    return {"s": phrase}, sql


@intent("quantity", ("? how many order lines are there{s}", "- number of order lines{s}",
                     "! count the line items{s}", "? how many lines do we have{s}",
                     "- count of line items{s}", "? what's the number of order lines{s}",
                     "! tell me how many order lines there are{s}",
                     "? how many line items are there{s}", "- order line count{s}"))
def order_lines_count(x: Ctx):
    phrase, sql = _over_lines(x, "COUNT(*)")
    return {"s": phrase}, sql


@intent("quantity", ("? how many orders included {item}", "- number of orders containing {item}",
                     "! count the orders that had {item} in them",
                     "? in how many orders does {item} appear", "- orders with {item}: how many",
                     "? how many different orders contained {item}",
                     "! tell me how many orders {item} was part of",
                     "? how many orders have {item} in them", "- count of orders with {item}"))
def orders_containing(x: Ctx):
    if x.rng.random() < 0.5:
        sku = x.value(x.f.sold_skus)
        return ({"item": x.value((sku, f"SKU {sku}"))},
                f"SELECT COUNT(DISTINCT order_id) FROM order_lines WHERE sku = {lit(sku)}")
    if x.rng.random() < 0.5:
        title = x.value(x.f.sold_titles)
        return ({"item": x.value((title, f"the {title}"))},
                f"SELECT COUNT(DISTINCT ol.order_id) FROM {OLP} WHERE p.title = {lit(title)}")
    cat = x.value(x.f.categories)
    return ({"item": x.value((CAT_NOUN[cat], f"anything from {cat}"))},
            f"SELECT COUNT(DISTINCT ol.order_id) FROM {OLP} WHERE p.category = {lit(cat)}")
