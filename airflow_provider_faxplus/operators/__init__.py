"""Operators of the Fax.Plus provider."""
