"""Subcommands of ``postemb``: one module each, each with ``register(subparsers)``."""
