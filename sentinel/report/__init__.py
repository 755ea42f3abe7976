"""Compliance reports for auditors (HIPAA Security Rule style): evidence gathered from the audit store
with store-side aggregations, findings, rendering (HTML, PDF, Markdown, JSON) and signed issuance.

    report = await gather(ReportInputs(settings, store, since, until))   # a JSON-shaped dict
    rendered = render(report, "pdf")                                      # bytes
    issued = await issue(...)                                             # hash, signature, report_issued event

See docs/report.md for the sections, the rules and the JSON Schema (`report.schema.json`).
"""
