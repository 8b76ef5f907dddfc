"""The container image, as ``make image`` builds it, run with podman.

The image is built from this tree by the test itself, so what runs is never
a stale image; a machine that cannot build it fails here. The container
serves on the host's network at a free port, with a data directory of the
test's own mounted at ``/var/lib/apikeys``, so the test mints an admin token
from the development key pair the server makes there.

podman schedules an image's ``HEALTHCHECK`` through systemd timers, which a
machine without systemd lacks; the test therefore runs the check itself
(``podman healthcheck run`` executes the image's command in the container
and records its result) until it reports healthy.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import AuthorizeClient, ChannelOptions, KeyAdminClient, Reason
from clients.devtoken import DEV_SIGNING_KEY_FILE, mint_dev_token
from tests.harness import ALL_PERMISSIONS
from tests.replicas.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR_IN_IMAGE = "/var/lib/apikeys"
# A fresh machine installs the tools and makes the base first.
BUILD_TIMEOUT_S = 540.0
HEALTHY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10
PODMAN_TIMEOUT_S = 60.0
# The build on a fresh machine counts against the first test's time.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + HEALTHY_TIMEOUT_S + PODMAN_TIMEOUT_S)
# What podman needs on hosts it does not fit by default: crun refuses a hybrid
# cgroup hierarchy (runc handles it), and raising a container's open-file and
# process limits above the host's needs CAP_SYS_RESOURCE, so they are set
# (lowered) explicitly.
PODMAN = ("podman", "--runtime", "runc")
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
COMPILERS = ("cc", "gcc", "c++", "g++", "clang", "ld", "as", "make")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, check=check, timeout=PODMAN_TIMEOUT_S
    )


def inspect(container: str, template: str) -> str:
    return podman("inspect", "--format", template, container).stdout.strip()


@dataclass(frozen=True, kw_only=True)
class Container:
    """A started container and what the tests need to reach it."""

    name: str
    image: str
    port: int
    data_dir: Path
    started: float

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The id of the image built from this tree by ``make image``."""
    iidfile = tmp_path_factory.mktemp("image") / "image-id"
    build = subprocess.run(
        ["make", "--no-print-directory", "image", f"IIDFILE={iidfile}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert build.returncode == 0, f"make image failed:\n{build.stdout}\n{build.stderr}"
    return iidfile.read_text().strip()


def image_user(image: str) -> tuple[int, int]:
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


@pytest.fixture
def container(image: str, tmp_path: Path) -> Iterator[Container]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    # The service's own user must own its data directory, as a volume
    # prepared for the container would be.
    os.chown(data_dir, *image_user(image))
    name = f"apikeys-test-{uuid.uuid4().hex[:12]}"
    port = free_port()
    started = time.monotonic()
    podman(
        "run",
        *LIMITS,
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--env",
        f"APIKEYS_LISTEN=127.0.0.1:{port}",
        "--volume",
        f"{data_dir}:{DATA_DIR_IN_IMAGE}",
        image,
    )
    try:
        yield Container(name=name, image=image, port=port, data_dir=data_dir, started=started)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def wait_until_healthy(container: Container) -> float:
    """Seconds from the container's start until its HEALTHCHECK passed."""
    deadline = container.started + HEALTHY_TIMEOUT_S
    while time.monotonic() < deadline:
        if podman("healthcheck", "run", container.name, check=False).returncode == 0:
            return time.monotonic() - container.started
        assert inspect(container.name, "{{.State.Running}}") == "true", podman(
            "logs", container.name
        ).stderr
        time.sleep(0.2)
    pytest.fail(
        f"not healthy within {HEALTHY_TIMEOUT_S} s:\n{podman('logs', container.name).stderr}"
    )


def test_the_container_turns_healthy_and_answers_checks_from_the_host(
    container: Container,
) -> None:
    seconds = wait_until_healthy(container)
    print(f"healthy {seconds:.1f} s after start")
    assert inspect(container.name, "{{.State.Health.Status}}") == "healthy"

    token = mint_dev_token(
        container.data_dir / DEV_SIGNING_KEY_FILE,
        subject="admin-1",
        contact_center_id="cc-1",
        role="admin",
        permissions=list(ALL_PERMISSIONS),
        ttl_seconds=600,
    )
    options = ChannelOptions(target=container.target)
    with KeyAdminClient(options, token=token) as admin:
        key, secret = admin.create_key("container", "", ["campaigns.read"])
    with AuthorizeClient(options) as authorize:
        allowed = authorize.check(secret, "GET", "/api/v4/campaigns")
        malformed = authorize.check("not-a-key", "GET", "/api/v4/campaigns")
    assert (allowed.allowed, allowed.reason, allowed.key_id) == (True, Reason.ALLOWED, key.id)
    assert (malformed.allowed, malformed.reason) == (False, Reason.KEY_MALFORMED)


def test_the_service_runs_as_a_non_root_user_and_no_compiler_is_installed(
    container: Container,
) -> None:
    uid, gid = image_user(container.image)
    assert uid != 0
    wait_until_healthy(container)
    files = {path.name: path.stat() for path in container.data_dir.iterdir()}
    assert {"apikeys.db", "hmac-secret", DEV_SIGNING_KEY_FILE} <= files.keys()
    assert {(st.st_uid, st.st_gid, st.st_mode & 0o777) for st in files.values()} == {
        (uid, gid, 0o600)
    }
    assert container.exec("id", "-u").strip() == str(uid)
    found = container.exec(
        "sh", "-c", f"for tool in {' '.join(COMPILERS)}; do command -v $tool; done; true"
    )
    assert found == ""


def test_the_container_stops_cleanly_on_sigterm(container: Container) -> None:
    wait_until_healthy(container)
    podman("stop", "--time", str(STOP_TIMEOUT_S), container.name)
    assert inspect(container.name, "{{.State.ExitCode}}") == "0"
    assert '"message": "stopped"' in podman("logs", container.name).stderr
