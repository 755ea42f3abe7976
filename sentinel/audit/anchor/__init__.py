"""Anchors that tie the audit log's checkpoints to witnesses outside the operator's control."""
