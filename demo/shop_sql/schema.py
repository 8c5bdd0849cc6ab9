"""The shop schema and a deterministic generator of a realistic SQLite database for it.

The same seed always yields byte-for-byte the same rows, so gold answers computed on one machine
hold on every other. Some customers never order and some products are never sold on purpose:
"never" questions need non-empty answers.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path

SCHEMA = """\
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
  tier TEXT NOT NULL CHECK (tier IN ('free','pro','enterprise')), joined_on TEXT NOT NULL);
CREATE TABLE products (sku TEXT PRIMARY KEY, title TEXT NOT NULL, category TEXT NOT NULL,
  price_cents INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
  status TEXT NOT NULL CHECK (status IN ('pending','paid','shipped','refunded')), placed_on TEXT NOT NULL);
CREATE TABLE order_lines (order_id INTEGER NOT NULL REFERENCES orders(id),
  sku TEXT NOT NULL REFERENCES products(sku), quantity INTEGER NOT NULL, PRIMARY KEY (order_id, sku));
"""  # noqa: E501 - verbatim from the spec

TIERS = ("free", "pro", "enterprise")
STATUSES = ("pending", "paid", "shipped", "refunded")
FIRST_DAY = dt.date(2023, 1, 1)
LAST_DAY = dt.date(2025, 12, 31)

# Weighted so that per-city counts differ (GROUP BY / HAVING answers are then informative).
CITIES = {
    "Berlin": 14, "Chicago": 13, "Toronto": 11, "Madrid": 10, "Austin": 9, "Lyon": 8,
    "Dublin": 7, "Osaka": 7, "Seattle": 6, "Melbourne": 6, "Porto": 5, "Oslo": 4,
}
FIRST_NAMES = (
    "Alice Ben Carla David Elena Farid Grace Hugo Irene Jonas Kira Liam Maya Noah Olga Pablo "
    "Quinn Rosa Sam Tara Umar Vera Will Xenia Yusuf Zoe Anna Bruno Chloe Diego Emma Felix Gina "
    "Hannah Ivan Julia Karl Lena Marco Nina"
).split()
LAST_NAMES = (
    "Adams Baker Castro Dubois Evans Fischer Garcia Hansen Ito Jensen Kowalski Lopez Meyer "
    "Nakamura Novak Okafor Patel Quinn Rossi Schmidt Silva Tanaka Ueda Varga Walsh Weber Young "
    "Zimmer Moreau Becker Costa Murphy Kelly Brennan Larsen Olsen Sato Keller Ramos Duarte"
).split()
# category -> (SKU prefix, price range in dollars, adjectives, nouns)
CATALOG = {
    "books": ("BOK", (8, 45), "Illustrated Pocket Classic Hardcover Collected Annotated",
              "Cookbook Atlas Novel Field-Guide Poetry-Anthology Travel-Journal"),
    "electronics": ("ELE", (15, 400), "Wireless Compact Smart Portable Noise-Cancelling Pro",
                    "Earbuds Speaker Charger Webcam Keyboard Monitor Router"),
    "kitchen": ("KIT", (6, 180), "Cast-Iron Nonstick Ceramic Stainless Bamboo Copper",
                "Skillet Kettle Knife-Set Cutting-Board Mixing-Bowl Teapot"),
    "toys": ("TOY", (5, 90), "Wooden Plush Magnetic Glow Mini Deluxe",
             "Puzzle Robot Train-Set Dinosaur Kite Building-Blocks"),
    "garden": ("GAR", (4, 250), "Heavy-Duty Folding Solar Ergonomic Rustic Galvanized",
               "Trowel Hose Lantern Planter Rake Bird-Feeder"),
    "sports": ("SPO", (10, 300), "Lightweight Adjustable Waterproof Insulated Foam Carbon",
               "Yoga-Mat Dumbbell Water-Bottle Helmet Backpack Jump-Rope"),
    "beauty": ("BEA", (5, 70), "Organic Hydrating Travel-Size Vegan Gentle Matte",
               "Face-Cream Lip-Balm Shampoo Serum Sunscreen Hand-Soap"),
    "office": ("OFF", (3, 220), "Recycled Ergonomic Magnetic Spiral Refillable Walnut",
               "Notebook Desk-Lamp Stapler Planner Pen-Set Monitor-Stand"),
}


def _day(rng: random.Random, start: dt.date, end: dt.date) -> str:
    return (start + dt.timedelta(days=rng.randint(0, (end - start).days))).isoformat()


def _customers(rng: random.Random, n: int) -> list[tuple]:
    pairs = [(f, last) for f in FIRST_NAMES for last in LAST_NAMES]
    names = [f"{f} {last}" for f, last in rng.sample(pairs, n)]
    cities = rng.choices(list(CITIES), weights=list(CITIES.values()), k=n)
    tiers = rng.choices(TIERS, weights=(6, 3, 1), k=n)
    # Joins skew early so long-standing customers accumulate more orders, as in a real shop.
    joined = sorted(_day(rng, FIRST_DAY, dt.date(2025, 9, 30)) for _ in range(n))
    return [(i + 1, names[i], cities[i], tiers[i], joined[i]) for i in range(n)]


def _products(rng: random.Random, per_category: int) -> list[tuple]:
    rows, prices = [], set()
    for category, (code, (lo, hi), adjectives, nouns) in CATALOG.items():
        combos = [(a, n) for a in adjectives.split() for n in nouns.split()]
        for k, (adj, noun) in enumerate(rng.sample(combos, per_category)):
            # Unique prices keep "most expensive N" answers free of ties.
            while True:
                price = rng.randint(lo, hi) * 100 + rng.choice((0, 49, 95, 99))
                if price not in prices:
                    break
            prices.add(price)
            title = f"{adj} {noun}".replace("-", " ")
            rows.append((f"{code}-{k + 1:03d}", title, category, price))
    return rows


def _orders(rng: random.Random, customers: list[tuple], products: list[tuple], n: int):
    # About 15% of customers and 10% of products never appear in an order.
    buyers = rng.sample(customers, int(len(customers) * 0.85))
    sold = [p[0] for p in rng.sample(products, int(len(products) * 0.9))]
    popularity = [rng.uniform(0.2, 3.0) for _ in sold]
    orders, lines = [], []
    for order_id in range(1, n + 1):
        cust = rng.choice(buyers)
        placed = _day(rng, dt.date.fromisoformat(cust[4]), LAST_DAY)
        # Recent orders are more often still pending; old ones are mostly shipped.
        recent = placed >= "2025-11-01"
        weights = (5, 3, 2, 1) if recent else (1, 3, 8, 2)
        status = rng.choices(STATUSES, weights=weights)[0]
        orders.append((order_id, cust[0], status, placed))
        skus = set(rng.choices(sold, weights=popularity, k=rng.choice((1, 1, 2, 2, 3, 4))))
        for sku in sorted(skus):
            lines.append((order_id, sku, rng.choices((1, 2, 3, 4, 5, 6), (8, 5, 3, 2, 1, 1))[0]))
    orders.sort(key=lambda o: (o[3], o[0]))
    # Renumber so ids follow placement time, the way an autoincrement key would.
    remap = {old[0]: new for new, old in enumerate(orders, start=1)}
    orders = [(remap[o[0]], *o[1:]) for o in orders]
    lines = sorted((remap[o], s, q) for o, s, q in lines)
    return orders, lines


def build_database(path: str | Path, seed: int = 0, *, customers: int = 300,
                   products_per_category: int = 15, orders: int = 900) -> Path:
    """Write a fresh shop database to `path` (replacing any file there) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rng = random.Random(f"shop-db-{seed}")
    cust_rows = _customers(rng, customers)
    prod_rows = _products(rng, products_per_category)
    order_rows, line_rows = _orders(rng, cust_rows, prod_rows, orders)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", cust_rows)
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", prod_rows)
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", order_rows)
        conn.executemany("INSERT INTO order_lines VALUES (?, ?, ?)", line_rows)
        conn.commit()
    finally:
        conn.close()
    return path
