"""Broker settings the reference Azure deployment sets reach the parts that use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.assembly import audit_config
from broker.settings import BrokerSettings


def test_the_deployments_logs_ingestion_settings_configure_a_sentinel_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "HOSHU_AZURE_LOGS_ENDPOINT", "https://dce-hoshu.japaneast.ingest.monitor.azure.com"
    )
    monkeypatch.setenv("HOSHU_AZURE_DCR_IMMUTABLE_ID", "dcr-0123456789abcdef")
    cfg = audit_config(BrokerSettings(data_dir=tmp_path))
    [sink] = [s for s in cfg.sinks if s.kind == "azure"]
    assert sink.endpoint.startswith("https://dce-hoshu")
    assert sink.rule_id == "dcr-0123456789abcdef" and sink.stream == "Custom-HoshuAudit"
    assert sink.mask  # patient identifiers are masked before the cloud sees them


def test_an_endpoint_without_a_rule_id_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSHU_AZURE_LOGS_ENDPOINT", "https://dce.example")
    with pytest.raises(ValueError, match=r"(?i)dcr_immutable_id"):
        audit_config(BrokerSettings(data_dir=tmp_path))


def test_without_azure_settings_no_cloud_sink_is_configured(tmp_path: Path) -> None:
    assert not [
        s for s in audit_config(BrokerSettings(data_dir=tmp_path)).sinks if s.kind == "azure"
    ]
