"""Sensors of the Fax.Plus provider."""
