"""Example graphs built from the agentgraph nodes (installed as ``agentgraph.graphs``)."""
