"""Shared domain and wire contracts of parkguide: site model, space states,
MQTT topics, payload schemas and the Modbus register map. No I/O here."""
