"""hoshu benchmarks, side by side with an OpenSSH bastion and reverse tunnel.

``python -m bench`` (or ``./run bench``) measures, in one run and on loopback
only: bulk throughput, session open time and keystroke echo latency through
hoshu and through the do-it-yourself OpenSSH chain (bastion ``sshd`` +
``ssh -R`` from the hospital + engineer ``ProxyJump``) and direct OpenSSH;
idle gateways held by one broker process; and the audit log's append rate and
query latency on SQLite and PostgreSQL.  It writes ``bench/results.json``.

Anything that cannot be measured on this machine or in this build is written
as ``null`` with a ``notes`` entry saying why; nothing is estimated.
"""
