"""Azure Monitor Logs Ingestion (Microsoft Sentinel) through ``azure-monitor-ingestion``.

Records go to a Data Collection Rule stream (``Custom-HoshuAudit``) whose
columns are :data:`audit.events.COLUMNS` (declared in
``infra/bicep/audit-table.json``).  The service takes at most 1 MB per call;
the SDK splits by its own (slightly low) count and gzips each chunk, so the
sink first splits a batch into uploads of at most 900 kB of JSON.  A chunk
that fails is reported through ``on_error``.  A batch counts as acknowledged
only if no chunk failed; a
failed batch is retried whole by the shipper (the table de-duplicates on
``EventUid`` in queries).  The SDK's own retry is limited so that the
shipper's backoff, which honours ``Retry-After``, stays in charge.

Credentials come from azure-identity: :func:`production_credential` uses the
broker's managed identity; tests pass any ``TokenCredential``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from audit.outbox import SinkError
from audit.sentinel import STREAM_NAME

# Columns the DCR stream declares; anything else is dropped before upload.
API_VERSION = "2023-01-01"


def production_credential(client_id: str | None = None) -> Any:
    """The broker's managed identity: user-assigned when ``client_id`` is given or
    ``AZURE_CLIENT_ID`` is set, else system-assigned; never another kind of credential.

    The broker passes its own (``broker.identity.azure_credential``, the same rule,
    held together by tests/control/test_identity.py); this is for a sink built
    without one.
    """
    import os

    from azure.identity import ManagedIdentityCredential

    client_id = (client_id or os.environ.get("AZURE_CLIENT_ID", "")).strip()
    return (
        ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    )


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AzureLogsSink:
    """Uploads batches to ``{endpoint}/dataCollectionRules/{rule_id}/streams/{stream}``."""

    def __init__(
        self,
        endpoint: str,
        rule_id: str,
        credential: Any,
        *,
        stream: str = STREAM_NAME,
        name: str = "sentinel",
        retry_total: int = 2,
        timeout_s: float = 30.0,
        allow_http: bool = False,
        ca_file: str | None = None,
        max_bytes: int = 900_000,
    ) -> None:
        from azure.monitor.ingestion import LogsIngestionClient

        if not endpoint.startswith("https://") and not allow_http:
            raise ValueError("the Logs Ingestion endpoint must be https://")
        self.name = name
        self.rule_id, self.stream = rule_id, stream
        self.max_bytes = max_bytes
        self._enforce_https = not allow_http
        extra: dict[str, Any] = {"connection_verify": ca_file} if ca_file else {}
        self._client = LogsIngestionClient(
            endpoint,
            credential,
            retry_total=retry_total,
            retry_backoff_factor=0.2,
            retry_backoff_max=5,
            connection_timeout=timeout_s,
            read_timeout=timeout_s,
            logging_enable=False,
            **extra,
        )

    def _groups(self, records: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
        """Split into uploads whose JSON (as the SDK writes it) stays under ``max_bytes``.

        The SDK chunks at 1 MiB by its own count, which leaves out the list
        separators; splitting first keeps every call safely under the 1 MB limit.
        A single record over the limit loses its ``Details`` (noted in the record).
        """
        groups: list[list[dict[str, Any]]] = [[]]
        size = 2
        for r in records:
            rec = dict(r)
            n = len(json.dumps(rec)) + 2
            if n > self.max_bytes:
                rec.pop("Details", None)
                rec["EventResultDetails"] = "details omitted: record larger than the upload limit"
                n = len(json.dumps(rec)) + 2
            if size + n > self.max_bytes and groups[-1]:
                groups.append([])
                size = 2
            groups[-1].append(rec)
            size += n
        return [g for g in groups if g]

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        from azure.core.exceptions import AzureError

        failed: list[Any] = []
        try:
            for group in self._groups(records):
                logs: list[Any] = list(group)
                self._client.upload(
                    rule_id=self.rule_id,
                    stream_name=self.stream,
                    logs=logs,
                    on_error=failed.append,
                    enforce_https=self._enforce_https,
                )
                if failed:
                    break
        except AzureError as exc:
            raise SinkError(
                f"Logs Ingestion upload failed: {exc}", retry_after=_retry_after(exc)
            ) from exc
        if failed:
            err = failed[0].error
            status = getattr(getattr(err, "response", None), "status_code", None)
            n = sum(len(f.failed_logs) for f in failed)
            raise SinkError(
                f"Logs Ingestion refused {n} records of a batch of {len(records)} "
                f"(HTTP {status}): {str(err)[:300]}",
                retry_after=_retry_after(err),
                permanent=status == 400,
            )

    def close(self) -> None:
        self._client.close()
