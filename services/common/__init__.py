"""Shared ground of every tuneplex service: settings, errors, auth, logging, health, metrics.

Nothing here imports another tuneplex package.
"""
