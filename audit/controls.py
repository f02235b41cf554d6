"""The controls of the "3 ministries, 2 guidelines" list hoshu addresses: the feature
that meets each one and the tests that prove it (data only; :mod:`audit.compliance`
computes each control's status for a deployment)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Control:
    """One control: ``design`` is what the feature delivers at best (done, partial, gap);
    what a deployment gets is computed by :func:`audit.compliance.assess`."""

    number: int
    design: str  # done, partial, gap
    control: str
    feature: str
    tests: tuple[str, ...]


CONTROLS: tuple[Control, ...] = (
    Control(
        1,
        "partial",
        "Inventory of every remote-maintenance path and device",
        "Gateways report their instruments, reachability and SSH host keys; the broker "
        "keeps one directory of instruments and gateways; a name without an entry has "
        'no path. A single "inventory export" command is not there yet (the API lists '
        "instruments and gateways).",
        (
            "tests/gateway/test_inventory.py::test_inventory_reports_reachability_and_ssh_host_key_fingerprints",
            "tests/gateway/test_broker_conversation.py::test_inventory_reaches_the_directory",
            "tests/frontdoor/test_sessions.py::test_unknown_instrument_and_missing_instrument_name",
        ),
    ),
    Control(
        2,
        "done",
        "Every vendor connection point under the hospital's control",
        "The gateway is the only entry point, dials out, listens on no port; its "
        "allowlist and kill switch are the hospital's and hold whatever the broker "
        "asks.",
        (
            "tests/gateway/test_process.py::test_the_gateway_process_listens_on_no_tcp_port_and_obeys_its_cli",
            "tests/gateway/test_tunnel.py::test_allowlist_holds_whatever_the_broker_asks",
            "tests/gateway/test_lifecycle.py::test_pause_cuts_open_channels_within_a_second_and_survives_a_restart",
        ),
    ),
    Control(
        5,
        "done",
        "One account per maintenance person, no shared accounts",
        "Accounts belong to one named person and one organisation; SSH keys are "
        "registered per engineer; every session event names the engineer.",
        (
            "tests/control/test_directory.py::test_engineer_for_key_needs_active_enrolled_engineer_with_that_key",
            "tests/gateway/test_tunnel.py::test_an_ssh_session_through_the_tunnel_names_the_engineer",
        ),
    ),
    Control(
        6,
        "done",
        "Remove accounts promptly; expiry and periodic review",
        "Account expiry, deactivation ending live sessions, recertification of vendor "
        "accounts by the hospital.",
        (
            "tests/control/test_auth.py::test_account_expiry_ends_sign_in",
            "tests/frontdoor/test_sessions.py::test_deactivation_ends_a_live_session",
            "tests/control/test_auth.py::test_hospital_sees_and_recertifies_vendor_accounts_reaching_it",
        ),
    ),
    Control(
        7,
        "done",
        "Two-factor authentication for every remote session",
        "SSH key plus TOTP at the front door (or a certificate issued after both); key "
        "alone is refused; a code is accepted once; failures lock out.",
        (
            "tests/frontdoor/test_auth.py::test_key_alone_never_gets_in",
            "tests/frontdoor/test_auth.py::test_a_code_is_accepted_once",
            "tests/frontdoor/test_auth.py::test_five_failures_lock_the_account_and_raise_an_alert",
            "tests/control/test_auth.py::test_totp_code_is_accepted_only_once",
        ),
    ),
    Control(
        8,
        "done",
        "Passwords: length, no defaults, no reuse",
        "Password policy with a known-bad list; instrument credentials are injected, "
        "write-only, never shown.",
        (
            "tests/control/test_rules.py::test_weak_passwords_are_refused",
            "tests/control/test_rules.py::test_known_bad_list_ships_as_package_data",
            "tests/control/test_api.py::test_credentials_are_write_only",
        ),
    ),
    Control(
        9,
        "done",
        "Least privilege: only the approved host and port",
        "Grants name instruments and ports; the broker refuses everything else, and the"
        " gateway's allowlist refuses it again.",
        (
            "tests/frontdoor/test_forward.py::test_forward_to_a_port_outside_the_grant_is_refused",
            "tests/frontdoor/test_through_gateway.py::test_port_the_gateway_does_not_list_is_refused_even_if_granted",
            "tests/gateway/test_policy.py::test_allowlist_admits_only_listed_host_and_port",
        ),
    ),
    Control(
        10,
        "done",
        "Both ends authenticate each other",
        "The gateway pins the broker key from the enrolment token; the broker knows "
        "each enrolled gateway key.",
        (
            "tests/gateway/test_tunnel.py::test_gateway_refuses_a_broker_presenting_the_wrong_key",
            "tests/gateway/test_tunnel.py::test_broker_refuses_a_gateway_key_it_never_enrolled",
            "tests/gateway/test_enroll.py::test_a_broker_whose_key_does_not_match_the_token_is_not_pinned",
        ),
    ),
    Control(
        11,
        "done",
        "Source restriction for vendor connections",
        "Per-vendor source networks (`--source` on the vendor organisation) are enforced"
        " at API sign-in and at the SSH front door; every login records the source "
        "address (`SrcIpAddr`) and the monthly review lists new source addresses per "
        "person.",
        (
            "tests/frontdoor/test_auth.py::test_vendor_source_networks_are_enforced",
            "tests/control/test_auth.py::test_vendor_source_networks_limit_where_its_people_sign_in_from",
            "tests/audit/test_reports.py::test_monthly_review_lists_failures_refusals_new_sources_emergencies_unsigned",
        ),
    ),
    Control(
        13,
        "done",
        "No always-on vendor access",
        "Sessions only inside grant windows; expiry ends live sessions. A gateway in "
        "`window-only` mode holds no tunnel outside windows; the default mode, "
        "`always`, keeps the tunnel up (without a grant it carries nothing).",
        (
            "tests/frontdoor/test_sessions.py::test_no_grant_no_path",
            "tests/frontdoor/test_sessions.py::test_expiry_warns_at_five_and_one_minute_then_ends",
            "tests/gateway/test_lifecycle.py::test_window_only_mode_holds_the_tunnel_only_inside_the_window",
        ),
    ),
    Control(
        15,
        "partial",
        "Patch quickly; rotate credentials; review logs; tell the hospital",
        "The gateway reports its version when it connects (`gateway.connected`), and "
        "logs can be reviewed and exported at any time. A credential-rotation command "
        "and an advisory event are not implemented.",
        (
            "tests/gateway/test_tunnel.py::test_broker_reaches_a_listed_instrument_and_sees_the_gateway_events",
            "tests/audit/test_cli.py::test_search_and_export",
        ),
    ),
    Control(
        17,
        "done",
        "File transfer off by default; files logged (name, size, SHA-256, direction); scan hook",
        "scp/sftp refused unless the grant allows it; every file logged with size and "
        "hash; a scan hook can reject a file going into the hospital; a desktop's "
        "clipboard is refused unless the hospital's policy switches it on, each "
        "transfer logged with size and hash either way; an RDP desktop gets no drive "
        "unless the hospital's policy switches it on, and then each file written to "
        "it is logged with name, size and hash, and files going in pass the scan hook.",
        (
            "tests/frontdoor/test_transfer.py::test_scp_refused_without_file_transfer_in_the_grant",
            "tests/frontdoor/test_transfer.py::test_scp_upload_and_download_are_logged_with_hashes",
            "tests/frontdoor/test_transfer.py::test_scan_hook_rejects_a_file_going_into_the_hospital",
            "tests/desktop/test_clipboard_policy.py::test_clipboard_is_refused_until_the_hospital_switches_it_on",
            "tests/desktop/test_rdp_drive.py::test_with_the_drive_off_no_drive_appears_on_the_instrument",
            "tests/desktop/test_rdp_drive.py::test_with_the_drive_on_files_cross_both_ways_logged_and_recorded",
            "tests/desktop/test_rdpdrive.py::test_a_file_from_the_broker_appears_only_once_the_scan_passed_it",
        ),
    ),
    Control(
        18,
        "partial",
        "Patient data does not leave",
        "Patient-identifier patterns are masked in sensitive fields of the copies sent "
        "to SIEMs marked `mask`; recording content is never shipped; file transfer is "
        "off unless the hospital's policy allows it. Not masked: the local log, the "
        "index and the recordings (they stay in the broker, access-controlled), what "
        "the instrument shows the engineer, and files downloaded under a grant that "
        "allows transfer.",
        (
            "tests/audit/test_masking.py::test_cloud_sink_receives_masked_events_while_the_local_log_keeps_them",
            "tests/audit/test_masking.py::test_mrn_in_a_command_line_is_masked_but_ids_and_hashes_are_not",
            "tests/audit/test_masking.py::test_japanese_names_in_file_names_and_patient_labels_are_masked",
            "tests/frontdoor/test_transfer.py::test_sftp_refused_without_file_transfer_in_the_grant",
        ),
    ),
    Control(
        19,
        "done",
        "Each session approved in advance; emergencies approved afterwards",
        "request → approval → grant; emergency access is flagged, alerted and must be "
        "reviewed; the monthly review lists unreviewed emergencies.",
        (
            "tests/control/test_requests.py::test_approval_by_hospital_approver_issues_grant_starting_now",
            "tests/control/test_requests.py::test_emergency_access_is_flagged_alerted_and_reviewed",
            "tests/audit/test_reports.py::test_monthly_review_lists_failures_refusals_new_sources_emergencies_unsigned",
        ),
    ),
    Control(
        20,
        "done",
        "After the work, check the log against the plan and report for sign-off",
        "Work report per grant built from audit events only, in Japanese and English "
        "(HTML and JSON), verdict inside/outside the plan with reasons, recording "
        "hashes; approver sign-off binds the report's SHA-256; unsigned reports raise "
        "`report.unsigned`.",
        (
            "tests/audit/test_reports.py::test_work_inside_the_plan_gets_an_inside_verdict_in_both_languages",
            "tests/audit/test_reports.py::test_work_outside_the_plan_lists_every_reason",
            "tests/audit/test_reports.py::test_sign_off_binds_the_report_hash_and_happens_once",
            "tests/audit/test_reports.py::test_report_unsigned_after_the_allowed_days_raises_one_alert",
            "tests/audit/test_api.py::test_report_sign_off_by_the_hospitals_approver_only",
            "tests/audit/test_cli.py::test_report_sign_records_the_sign_off",
        ),
    ),
    Control(
        21,
        "done",
        "Hospital staff present in principle; detailed operation records",
        "Every interactive session is recorded (asciicast v2) or refused; hospital "
        "staff can follow live and terminate; recordings are readable only by the "
        "hospital's approvers and auditors and platform auditors, and every read is "
        "logged.",
        (
            "tests/frontdoor/test_sessions.py::test_interactive_shell_is_recorded_and_plays_in_asciinema",
            "tests/frontdoor/test_sessions.py::test_recording_that_cannot_be_written_refuses_the_session",
            "tests/frontdoor/test_sessions.py::test_follow_live_and_terminate",
            "tests/audit/test_api.py::test_recordings_only_for_the_hospitals_approvers_auditors_and_platform_auditors",
            "tests/audit/test_cli.py::test_play_replays_the_recording_for_allowed_people_only",
        ),
    ),
    Control(
        24,
        "done",
        "Log who, when, how long, what was operated on",
        "Session, forward and file events carry actor, source, target, times, duration,"
        " bytes, commands and files; auditors query them by person, hospital, "
        "instrument, vendor, type, outcome, session and request, and export CSV or JSON"
        " Lines.",
        (
            "tests/audit/test_index.py::test_filters_answer_who_touched_what_and_when",
            "tests/audit/test_index.py::test_exports_in_csv_and_json_lines",
            "tests/frontdoor/test_forward.py::test_forward_to_a_granted_port_carries_data_and_is_logged",
            "tests/control/test_api.py::test_every_admin_change_is_an_event_naming_who",
        ),
    ),
    Control(
        25,
        "done",
        "Protect logs from deletion and alteration",
        "Hash-chained log; Ed25519-signed checkpoints every N events, every minute and "
        "at shutdown, shipped to every SIEM; `hoshu audit verify` (pinned key) names "
        "the first bad position for edits, deletions, reordering, insertion, "
        "truncation and a re-hashed log, matches the SIEM's copies and the index. "
        "Alteration is detected, not prevented: the log and the recordings are local "
        "files, no WORM storage.",
        (
            "tests/audit/test_chain.py::test_edited_event_is_caught_at_its_position",
            "tests/audit/test_chain.py::test_deleted_event_is_caught",
            "tests/audit/test_chain.py::test_reordered_events_are_caught",
            "tests/audit/test_checkpoints.py::test_truncation_before_the_shipped_checkpoint_is_caught",
            "tests/audit/test_checkpoints.py::test_forged_checkpoint_signature_is_caught",
            "tests/audit/test_cli.py::test_verify_reports_ok_and_names_the_first_tampered_position",
            "tests/audit/test_verify_strict.py::test_a_rehashed_log_without_its_checkpoints_fails",
            "tests/audit/test_verify_strict.py::test_a_rehashed_log_signed_by_another_key_fails",
            "tests/audit/test_verify_strict.py::test_checkpoints_held_by_rsyslog_catch_a_rewrite_signed_with_the_real_key",
            "tests/audit/test_index_consistency.py::test_an_edited_index_row_fails_the_check",
        ),
    ),
    Control(
        26,
        "done",
        "Trusted, synchronized time",
        "Every event time is UTC with microseconds; naive times are refused. Each "
        "gateway's clock offset is measured at connect, recorded in `gateway.connected` "
        "and warned about past 5 s; clock synchronization of the hosts (NTP) stays with "
        "their operators.",
        (
            "tests/gateway/test_tunnel.py::test_broker_reaches_a_listed_instrument_and_sees_the_gateway_events",
            "tests/audit/test_catalog.py::test_event_times_are_utc_and_naive_times_are_refused",
            "tests/control/test_store.py::test_naive_datetimes_are_refused",
        ),
    ),
    Control(
        27,
        "done",
        "Review logs regularly, including the remote-access device's own",
        "Monthly review report (failed logins, off-window and refused attempts, new "
        "source addresses, emergency sessions, unsigned reports, gateway events), per "
        "hospital or platform-wide; gateway events are forwarded to the broker and "
        "reviewed with the rest.",
        (
            "tests/audit/test_reports.py::test_monthly_review_lists_failures_refusals_new_sources_emergencies_unsigned",
            "tests/audit/test_api.py::test_review_and_sink_status",
            "tests/gateway/test_broker_conversation.py::test_forwarded_events_are_stored_once_and_attributed_to_the_authenticated_gateway",
        ),
    ),
    Control(
        28,
        "done",
        "Retention period",
        "Retention per kind (index events, recordings); nothing deleted before its time"
        " or below a minimum; each deletion is logged before it happens, and nothing is"
        " deleted if that log entry cannot be written.",
        (
            "tests/audit/test_retention.py::test_only_data_older_than_its_period_is_deleted_and_it_is_logged",
            "tests/audit/test_retention.py::test_if_the_deletion_cannot_be_logged_nothing_is_deleted",
            "tests/audit/test_retention.py::test_periods_below_the_minimum_are_refused",
        ),
    ),
    Control(
        29,
        "done",
        "Keep logs before any reset or update",
        "Events leave the broker continuously through per-sink outboxes (Fluentd with "
        "acks, Azure Logs Ingestion, syslog); an outage delays, never drops; export "
        "before an upgrade with `hoshu audit export`.",
        (
            "tests/audit/test_shipping.py::test_fluentd_outage_during_10000_events_loses_nothing",
            "tests/audit/test_shipping.py::test_logs_ingestion_outage_and_throttling_lose_nothing_and_match_the_stream",
            "tests/audit/test_shipping.py::test_rsyslog_outage_during_10000_events_loses_nothing",
            "tests/audit/test_cli.py::test_search_and_export",
        ),
    ),
    Control(
        30,
        "done",
        "Vendor explains risks and agrees them with the hospital",
        "`docs/shared-responsibility.md`: for each area, what the hospital and the "
        "vendor are responsible for, what hoshu provides, and the risk left if a party "
        "neglects it; to be agreed in the maintenance contract.",
        (
            "tests/foundation/test_docs.py::test_shared_responsibility_table_names_each_party_for_every_area",
        ),
    ),
)
