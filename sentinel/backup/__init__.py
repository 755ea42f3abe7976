"""Encrypted, deduplicated, scheduled offsite backups of Sentinel's data, with restore and restore drills.

Layout: `settings` (the config section), `keys` and `crypto` (the backup key and AES-256-GCM
objects), `chunking` (content-defined chunks), `targets` (local directory, S3), `repository`
(objects in a target), `snapshot` (the signed manifest), `sources` (what is backed up), `run`
(taking a snapshot), `restore` and `verify`, `retention` and `prune`, `lease` (cross-instance
locks), `state` and `metrics` (outcomes for /metrics), `scheduler`, `drill`. See docs/backup.md.
"""
