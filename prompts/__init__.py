"""Versioned prompt templates (``NAME.vN.jinja``), loaded by :mod:`agentgraph.prompting`."""
