"""Sinks the shipper delivers to: Fluentd (forward protocol with acks), Azure Monitor
Logs Ingestion (Sentinel) and syslog (RFC 5424 over TCP).

Each sink's ``send`` returns only once the far end acknowledged the whole batch
and raises :class:`audit.outbox.SinkError` otherwise; network reads have
timeouts and size limits.
"""
