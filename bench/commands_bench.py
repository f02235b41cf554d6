"""The shell-command section: accuracy of command extraction over the corpus.

The corpus (:mod:`bench.commands_corpus`) is typed into the lab's real sshd (dash,
then bash); each capture is read back whole and as over a slow link (output in
pieces of 1-7 bytes).  Figures: command lines read exactly (of those expected),
precision and recall, commands invented and missed, and what the reader costs
(megabytes of terminal stream per CPU second, emulated or skipped as it would
be in a session).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import commands_corpus as corpus
from bench.report import Results
from labsim.sshd import OpenSSHInstrument

KEYS = [
    "commands_expected",
    "commands_exact_ratio",
    "commands_precision",
    "commands_recall",
    "commands_invented",
    "commands_missed",
    "commands_slow_link_exact_ratio",
    "command_reader_MB_per_cpu_s",
]


def run(res: Results, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    with OpenSSHInstrument(work) as inst:
        caps = [
            corpus.capture(inst.host, inst.port, inst.username, inst.client_key_path, s)
            for s in corpus.SCRIPTS
        ]
    pairs = list(zip(corpus.SCRIPTS, caps, strict=True))
    whole = corpus.score([(s, [c.text for c in corpus.replay(cap)]) for s, cap in pairs])
    slow = corpus.score([(s, [c.text for c in corpus.replay(cap, slow=True)]) for s, cap in pairs])
    both = corpus.Score(
        whole.expected + slow.expected,
        whole.found + slow.found,
        whole.exact + slow.exact,
        whole.invented + slow.invented,
        whole.missed + slow.missed,
    )
    res.put("commands_expected", whole.expected)
    res.put("commands_exact_ratio", both.recall, 4)
    res.put("commands_precision", both.precision, 4)
    res.put("commands_recall", both.recall, 4)
    res.put("commands_invented", len(both.invented))
    res.put("commands_missed", len(both.missed))
    res.put("commands_slow_link_exact_ratio", slow.recall, 4)
    if both.invented or both.missed:
        res.notes.append(f"commands invented {both.invented!r}, missed {both.missed!r}")
    size = sum(len(d) for cap in caps for _k, d in cap.chunks)
    t0 = time.process_time()
    rounds = 0
    while rounds < 3 or time.process_time() - t0 < 1.0:
        for cap in caps:
            corpus.replay(cap)
        rounds += 1
    took = time.process_time() - t0
    res.put("command_reader_MB_per_cpu_s", size * rounds / took / 1e6, 3)
