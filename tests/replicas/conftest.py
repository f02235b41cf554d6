"""One three-replica cluster (:class:`tests.replicas.cluster.Cluster`) for the replica
test modules that can share it: started once for this package (the modules are in the
``cluster`` xdist group, so one worker runs them one after another while the other
worker runs the ``demo`` group's whole demos), on a database of its own, and stopped
when the package's last test is done.  Each module takes it through
:meth:`Cluster.ready` with the tunnel layout and broker settings it needs, which also
starts again any replica an earlier test killed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.fixtures.postgres import create_database, drop_database
from tests.replicas.cluster import Cluster


@pytest.fixture(scope="package")
def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[Cluster]:
    name = f"t_shared_cluster_{secrets.token_hex(4)}"
    url = create_database(postgres_url, name)
    # a short folder: the gateway's control socket path must fit AF_UNIX's 108 bytes;
    # ports the kernel picks: another test may hold the demo's usual ones
    c = Cluster(
        tmp_path_factory.mktemp("rep") / ".c",
        api_port=0,
        ssh_port=0,
        tunnel_port=0,
        database_url=url,
    )
    try:
        c.start_cluster(("b", "c"))
        c.add_other_approver()
        yield c
    finally:
        c.stop()
        drop_database(postgres_url, name)
