"""The OpenTelemetry SDK plug-ins: the span processor that stamps sessions and the span exporter."""
