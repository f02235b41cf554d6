"""Patient data stays home: identifiers are masked before events reach a cloud sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit import new_event
from audit.chain import ChainLog
from audit.masking import Masker, MaskingError
from audit.outbox import CursorStore
from audit.recording import AsciicastWriter
from audit.shipper import Shipper
from audit.sinks.azure import AzureLogsSink
from tests.fixtures.siem import LogsIngestion, StaticToken

MRN = "0012345678"


def test_mrn_in_a_command_line_is_masked_but_ids_and_hashes_are_not() -> None:
    masker = Masker.default()
    event = new_event(
        "file.transferred",
        TargetFileName=f"/data/export_{MRN}.csv",
        TargetFileSHA256="ab" * 32,
        TargetSessionId="sess-12345678901",
        TargetFileSize=123456789,
        details={"tool": "scp"},
    )
    cmd = new_event("session.command", details={"command": f"grep {MRN} results.csv"})
    masked_file = masker.mask_record(event.record)
    masked_cmd = masker.mask_record(cmd.record)
    assert MRN not in json.dumps(masked_file) and MRN not in json.dumps(masked_cmd)
    assert masked_cmd["Details"]["command"] == "grep [masked:mrn-digits] results.csv"
    assert masked_file["TargetFileSHA256"] == "ab" * 32
    assert masked_file["TargetSessionId"] == "sess-12345678901"  # public column untouched
    assert masked_file["TargetFileSize"] == 123456789


def test_japanese_names_in_file_names_and_patient_labels_are_masked() -> None:
    masker = Masker.default()
    rec = masker.mask_record(
        new_event(
            "file.transferred",
            TargetFileName="山田太郎_検査結果.pdf",
            EventMessage="uploaded 患者ID:A-7731 report; patient_id=XK99 too",
        ).record
    )
    assert "山田" not in rec["TargetFileName"] and rec["TargetFileName"].endswith(".pdf")
    assert "A-7731" not in rec["EventMessage"] and "XK99" not in rec["EventMessage"]
    # kanji in free text is not a file name: left alone unless a rule says so
    assert masker.mask_text("検査 done", "EventMessage") == "検査 done"


def test_site_rules_add_to_the_defaults_and_bad_rules_are_refused() -> None:
    masker = Masker.from_config([{"name": "lab-no", "pattern": r"LAB-\d{4}"}])
    assert masker.mask_text("see LAB-1234", "EventMessage") == "see [masked:lab-no]"
    with pytest.raises(MaskingError, match="invalid pattern"):
        Masker.from_config([{"name": "bad", "pattern": "("}])
    with pytest.raises(MaskingError, match="empty string"):
        Masker.from_config([{"name": "all", "pattern": ".*"}])


def test_cloud_sink_receives_masked_events_while_the_local_log_keeps_them(
    tmp_path: Path, logs_ingestion: LogsIngestion
) -> None:
    """What Sentinel gets carries no identifier and no recording content."""
    cast = tmp_path / "sess-1.cast"
    with AsciicastWriter(cast, width=80, height=24) as rec:
        rec.output(f"patient {MRN} 山田太郎 K=4.1 mmol/L\r\n")
        info = rec.close()
    with ChainLog(tmp_path / "audit.log") as log:
        log.emit(
            new_event(
                "session.command",
                TargetSessionId="sess-1",
                details={"command": f"lisquery --mrn {MRN}"},
            )
        )
        log.emit(
            new_event(
                "session.ended",
                TargetSessionId="sess-1",
                RecordingSHA256=info.sha256,
                RecordingSize=info.size,
                details={"recording": cast.name},
            )
        )
        sink = AzureLogsSink(
            logs_ingestion.endpoint,
            logs_ingestion.RULE,
            StaticToken(logs_ingestion.TOKEN),
            allow_http=True,
            retry_total=0,
        )
        shipper = Shipper(sink, log.path, CursorStore(tmp_path / "c"), masker=Masker.default())
        assert shipper.ship_once() == 2
    shipped = json.dumps(logs_ingestion.records, ensure_ascii=False)
    assert MRN not in shipped and "山田" not in shipped and "mmol" not in shipped
    assert logs_ingestion.records[1]["RecordingSHA256"] == info.sha256
    assert MRN in (tmp_path / "audit.log").read_text()  # the broker's own log is complete
