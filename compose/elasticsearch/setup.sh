#!/bin/sh
# One-shot setup of Elasticsearch users, run by the elasticsearch-setup service. Idempotent:
# PUT/POST on these security APIs create or update. Passwords come from the environment.
set -eu
ES=http://elasticsearch:9200
api() {
  curl -fsS -u "elastic:${ELASTIC_PASSWORD}" -H 'Content-Type: application/json' -X "$1" "$ES$2" -d "$3" >/dev/null
}
api POST /_security/user/kibana_system/_password "{\"password\":\"${KIBANA_SYSTEM_PASSWORD}\"}"
api PUT /_security/role/sentinel_reader '{"indices":[{"names":["sentinel-*","traces-*"],"privileges":["read","view_index_metadata"]}]}'
api PUT /_security/user/grafana_reader "{\"password\":\"${GRAFANA_ES_PASSWORD}\",\"roles\":[\"sentinel_reader\"]}"
api PUT /_security/role/otel_traces_writer '{"indices":[{"names":["traces-*"],"privileges":["auto_configure","create_doc"]}]}'
api PUT /_security/user/otel_writer "{\"password\":\"${OTEL_ES_PASSWORD}\",\"roles\":[\"otel_traces_writer\"]}"
# The audit trail. sentinel_admin applies the layout (`sentinel es setup`); sentinel_writer is what
# Sentinel runs as: it can add audit records and read them back, never change or delete one.
api PUT /_security/role/sentinel_audit_admin '{"cluster":["manage_ilm","manage_index_templates"],"indices":[{"names":["sentinel-audit*"],"privileges":["create_index","view_index_metadata"]}]}'
api PUT /_security/user/sentinel_admin "{\"password\":\"${SENTINEL_ES_ADMIN_PASSWORD}\",\"roles\":[\"sentinel_audit_admin\"]}"
api PUT /_security/role/sentinel_audit_writer '{"indices":[{"names":["sentinel-audit","sentinel-audit-keys","sentinel-audit-checkpoints"],"privileges":["create_doc","read","view_index_metadata"]}]}'
api PUT /_security/user/sentinel_writer "{\"password\":\"${SENTINEL_ES_PASSWORD}\",\"roles\":[\"sentinel_audit_writer\"]}"
echo "elasticsearch users ready"
