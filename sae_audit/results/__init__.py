"""The results document (``results.json``): what an audit produces and every view is rendered from.

- :mod:`sae_audit.results.document`: building it with provenance, its JSON
  Schema, loading (upgrade + validation) and dumping;
- :mod:`sae_audit.results.metric_info`: what each metric means (label,
  direction), carried in the document under ``metrics``.
"""

from sae_audit.results.document import (
    RESULTS_SCHEMA_VERSION,
    build_results,
    dataset_fingerprint,
    dump_results,
    files_sha256,
    load_results,
    schema,
    upgrade_results,
    validate_results,
)
from sae_audit.results.metric_info import METRICS, MetricInfo, metrics_of, metrics_table

__all__ = [
    "METRICS", "MetricInfo", "RESULTS_SCHEMA_VERSION", "build_results", "dataset_fingerprint", "dump_results",
    "files_sha256", "load_results", "metrics_of", "metrics_table", "schema", "upgrade_results", "validate_results",
]
