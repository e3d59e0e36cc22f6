"""Secret sampling and secret noise on the server: who takes part and the user-level noise
come from a CSPRNG under DP, from the noise seed only when a simulation sets one, and no
secure generator's state is ever written to a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate.server.checkpoint import CHECKPOINT_NAME
from pollinate.server.federation import FederationError, Server
from pollinate.server.sampling import poisson_sample
from pollinate.server.user_dp import ClippedSum
from pollinate.shared.config import FederationConfig
from pollinate.shared.privacy.randomness import ChaCha20Generator
from pollinate.shared.tasks import Catalog

NODES = list(range(100))
RATE = 0.3
ROUNDS = 5

DP = {
    "none": {},
    "user": {"dp": "user", "user-noise": 1.0, "user-clip": 0.5, "aggregation": "equal"},
    # Resume tests: a DP mode whose resume needs no user-level ledger.
    "local": {"dp": "local", "local-noise": 1.0, "local-clip": 0.5},
}


class NoGrid:
    def get_node_ids(self) -> list[int]:
        return NODES


def make_server(out: Path, dp: str, **extra: Any) -> Server:
    values = {
        "embedding-dim": 4,
        "server-opt": "fedavg",
        "server-lr": 1.0,
        "sample-rate": RATE,
        "seed": 7,
        "out": str(out),
    }
    cfg = FederationConfig.from_mapping(values | DP[dp] | extra)
    catalog = Catalog(n_items=6, item_genres=None, rating_scale=(1.0, 5.0))
    return Server(NoGrid(), cfg, catalog, n_devices=len(NODES))  # type: ignore[arg-type]


def cohorts(server: Server, rounds: int = ROUNDS) -> list[list[int]]:
    """What ``Server.run`` samples, round after round."""
    return [poisson_sample(NODES, RATE, server.rng) for _ in range(rounds)]


def checkpoint_meta(out: Path) -> dict[str, Any]:
    with np.load(out / CHECKPOINT_NAME) as z:
        return dict(json.loads(bytes(z["meta"]).decode()))


# --------------------------------------------------------------------------- sampling
def test_without_dp_the_cohorts_are_those_of_the_run_seed(tmp_path: Path) -> None:
    server = make_server(tmp_path, "none")
    expected = np.random.default_rng(7)
    assert cohorts(server) == [poisson_sample(NODES, RATE, expected) for _ in range(ROUNDS)]
    assert "run seed 7" in server.sampler_description


def test_under_dp_the_run_seed_does_not_determine_the_cohorts(tmp_path: Path) -> None:
    a, b = make_server(tmp_path / "a", "user"), make_server(tmp_path / "b", "user")
    assert cohorts(a) != cohorts(b)
    public = np.random.default_rng(7)
    assert cohorts(make_server(tmp_path / "c", "user")) != [
        poisson_sample(NODES, RATE, public) for _ in range(ROUNDS)
    ]
    assert isinstance(a.rng, ChaCha20Generator) and a.rng.secure
    assert a.sampler_description == (
        "device sampling: secure (ChaCha20 CSPRNG seeded with 256 bits from os.urandom, unrecorded)"
    )


def test_a_noise_seed_makes_dp_cohorts_reproducible_and_says_so(tmp_path: Path) -> None:
    a = make_server(tmp_path / "a", "user", **{"noise-seed": 3})
    b = make_server(tmp_path / "b", "user", **{"noise-seed": 3, "seed": 8})
    assert cohorts(a) == cohorts(b)
    assert "SEEDED with 3" in a.sampler_description
    assert "not private" in a.sampler_description
    # The sampler's stream is not the noise's stream.
    assert not np.array_equal(
        make_server(tmp_path / "c", "user", **{"noise-seed": 3}).rng.random(8),
        a.noise.rng.random(8),
    )


# --------------------------------------------------------------------------- noise
def test_server_noise_std_is_z_times_clip_over_expected_devices() -> None:
    z, clip, expected = 1.3, 0.5, 0.3 * 943
    spec: dict[str, tuple[tuple[int, ...], str]] = {"item_factors.weight": ((400, 50), "float32")}
    out = ClippedSum(spec, clip).noisy_mean(
        noise_multiplier=z, expected_devices=expected, rng=np.random.default_rng(0)
    )
    noise = out["item_factors.weight"].astype(np.float64)
    # 20,000 coordinates: the sample std has a relative error of about 0.5% (1/sqrt(2n)).
    assert noise.std() == pytest.approx(z * clip / expected, rel=0.02)
    assert abs(noise.mean()) < 4 * z * clip / expected / np.sqrt(noise.size)


def test_secure_noise_differs_between_runs_that_share_every_seed(tmp_path: Path) -> None:
    spec: dict[str, tuple[tuple[int, ...], str]] = {"w": ((50,), "float64")}

    def noise(server: Server) -> np.ndarray:
        out = ClippedSum(spec, 0.5).noisy_mean(
            noise_multiplier=1.0, expected_devices=1.0, rng=server.noise.rng
        )
        return out["w"]

    a, b = make_server(tmp_path / "a", "user"), make_server(tmp_path / "b", "user")
    assert not np.array_equal(noise(a), noise(b))
    assert a.noise.secure and "secure (ChaCha20" in a.noise.description
    s1 = make_server(tmp_path / "c", "user", **{"noise-seed": 4})
    s2 = make_server(tmp_path / "d", "user", **{"noise-seed": 4})
    np.testing.assert_array_equal(noise(s1), noise(s2))
    assert not s1.noise.secure and "SEEDED with 4" in s1.noise.description


# --------------------------------------------------------------------------- checkpoints
def test_a_secure_run_checkpoints_no_generator_state(tmp_path: Path) -> None:
    server = make_server(tmp_path, "local")
    cohorts(server, 2)
    server.checkpoint(2)
    meta = checkpoint_meta(tmp_path)
    assert meta["rng_state"] is None and meta["extra"]["noise_rng_state"] is None
    assert "keysetup" not in json.dumps(meta)
    user = make_server(tmp_path / "user", "user")
    user.checkpoint(1)
    meta = checkpoint_meta(tmp_path / "user")
    assert meta["rng_state"] is None and meta["extra"]["noise_rng_state"] is None
    # Resuming draws fresh secret generators: the continuation is not the original's.
    resumed = make_server(tmp_path, "local")
    resumed.resume()
    assert resumed.start_round == 3
    assert cohorts(resumed) != cohorts(server)


def test_a_seeded_run_checkpoints_its_generators_and_resumes_the_same_streams(
    tmp_path: Path,
) -> None:
    seeded = {"noise-seed": 5}
    server = make_server(tmp_path, "local", **seeded)
    cohorts(server, 2)
    server.noise.rng.random(3)
    server.checkpoint(2)
    meta = checkpoint_meta(tmp_path)
    assert meta["rng_state"]["bit_generator"] == "pollinate.ChaCha20"
    assert meta["extra"]["noise_rng_state"]["bit_generator"] == "pollinate.ChaCha20"
    resumed = make_server(tmp_path, "local", **seeded)
    resumed.resume()
    assert cohorts(resumed) == cohorts(server)
    np.testing.assert_array_equal(resumed.noise.rng.random(4), server.noise.rng.random(4))


def test_without_dp_the_sampler_state_is_checkpointed_as_before(tmp_path: Path) -> None:
    server = make_server(tmp_path, "none")
    cohorts(server, 2)
    server.checkpoint(2)
    assert checkpoint_meta(tmp_path)["rng_state"]["bit_generator"] == "PCG64"
    resumed = make_server(tmp_path, "none")
    resumed.resume()
    assert cohorts(resumed) == cohorts(server)


def test_resuming_a_secure_checkpoint_as_a_seeded_run_is_refused(tmp_path: Path) -> None:
    make_server(tmp_path, "local").checkpoint(1)
    seeded = make_server(tmp_path, "local", **{"noise-seed": 5})
    with pytest.raises(FederationError, match="no device-sampler state"):
        seeded.resume()
