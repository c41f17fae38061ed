"""Hooks of the Fax.Plus provider."""
