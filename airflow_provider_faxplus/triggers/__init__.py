"""Triggers of the Fax.Plus provider."""
