"""The built-in demo: a labelled fake model server and a guided tour of what Sentinel records."""
