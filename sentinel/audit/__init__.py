"""The audit trail: every interaction as an encrypted, hash-chained record that loses nothing.

Path of a record: `Interaction` → `AuditRecord` (content fields encrypted under envelope keys,
chained to the previous record) → durable local `Spool` (SQLite, group commit) → `Shipper` →
store (Elasticsearch, or the embedded SQLite store). `verify` recomputes the chain against
signed checkpoints.
"""
