"""Test infrastructure: an OTLP/HTTP trace sink and helpers to run processes under the launcher.

Tests exercise the real export path (a real OTLP exporter sending protobuf over loopback) and the
real ``opentelemetry-instrument`` launcher, because that is where distros break in practice.
"""
