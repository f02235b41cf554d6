"""The accuracy corpus typed into the lab's real sshd (dash, then bash), read back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import commands_corpus as corpus
from labsim.sshd import OpenSSHInstrument


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[corpus.Capture]]:
    with OpenSSHInstrument(tmp_path_factory.mktemp("corpus")) as inst:
        yield [
            corpus.capture(inst.host, inst.port, inst.username, inst.client_key_path, s)
            for s in corpus.SCRIPTS
        ]


@pytest.mark.parametrize("slow", [False, True], ids=["whole", "slow-link"])
@pytest.mark.parametrize("index", range(len(corpus.SCRIPTS)), ids=[s.name for s in corpus.SCRIPTS])
def test_commands_read_back_exactly(captures: list[corpus.Capture], index: int, slow: bool) -> None:
    script = corpus.SCRIPTS[index]
    found = [c.text for c in corpus.replay(captures[index], slow=slow)]
    assert found == list(corpus.expected(script))


def test_whole_corpus_meets_the_target(captures: list[corpus.Capture]) -> None:
    results = [
        (s, [c.text for c in corpus.replay(cap, slow=slow)])
        for s, cap in zip(corpus.SCRIPTS, captures, strict=True)
        for slow in (False, True)
    ]
    score = corpus.score(results)
    assert score.invented == []
    assert score.recall >= 0.98 and score.precision == 1.0, score


def test_prompt_and_working_directory_are_kept(captures: list[corpus.Capture]) -> None:
    cmds = corpus.replay(captures[[s.name for s in corpus.SCRIPTS].index("dash-basics")])
    assert cmds[0].prompt in ("$", "#")
    bash = corpus.replay(captures[[s.name for s in corpus.SCRIPTS].index("bash-history")])
    one = next(c for c in bash if c.text == "echo one")
    assert one.cwd == "cobas-c503-1"
    assert one.prompt.endswith(("$", "#")) and "@" in one.prompt
    offsets = [c.offset for c in bash]
    assert offsets == sorted(offsets)
