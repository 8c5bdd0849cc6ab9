"""Text-to-SQL demo: a synthetic shop database, question/SQL pairs and an execution evaluator.

Modules: `schema` (database), `generate` (training and held-out sets), `evaluate` (execution
accuracy). Nothing is imported here so that `python -m demo.shop_sql.generate` runs cleanly.
"""
