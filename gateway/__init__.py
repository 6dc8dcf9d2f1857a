"""The gateway: live state, allocation core, guidance displays, journal, InfluxDB outbox."""
