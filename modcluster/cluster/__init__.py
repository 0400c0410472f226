"""The cluster model: registry, routing snapshots, persistence (pure state)."""
