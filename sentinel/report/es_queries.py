"""`ReportQueries` over Elasticsearch: placeholder replaced below."""
