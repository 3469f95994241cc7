"""Session scopes in the OpenTelemetry context: ids carried, trusted, propagated, opened, ended."""
