"""The CML Fleet relay: domain events from the bus, out to browsers as Server-Sent Events."""
