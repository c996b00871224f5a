"""The kernel database: SQLModel tables (`models`), engine and migrations (`engine`), the
store the optimize loop writes through (`store.RunStore`), and secret redaction (`redact`).

Nothing is imported here, so `import forge.db.redact` stays light."""
