"""Sizing the Ray engine to a cluster, and reading its address: no Ray needed."""

from __future__ import annotations

import pytest

from pipeline.engines.ray_connect import READ_TASK_CPUS, fit_actors, split_address
from pipeline.errors import ConfigError


@pytest.mark.parametrize(("asked", "free", "fitted"), [
    (8, 3.0, 8),   # 8 x 0.25 + 1 = 3: just fits
    (8, 2.0, 4),   # the README's --actors 8 on a 2-CPU head: 4 fit beside the read task
    (5, 2.0, 4),
    (16, 4.0, 12),
    (1, 1.25, 1),
])
def test_actors_are_fitted_to_the_free_cpus_beside_the_read_task(
        asked: int, free: float, fitted: int) -> None:
    assert fit_actors(asked, free, 0.25, "h:1") == fitted
    assert fitted * 0.25 + READ_TASK_CPUS <= free


@pytest.mark.parametrize("free", [0.0, 1.0, 1.2])
def test_no_room_for_one_actor_is_a_usage_error_naming_the_numbers(free: float) -> None:
    with pytest.raises(ConfigError) as caught:
        fit_actors(8, free, 0.25, "10.0.0.1:6379")
    message = str(caught.value)
    assert f"at 10.0.0.1:6379 has {free:g} free CPUs" in message
    assert "--actors 8 needs 3" in message and "1.25 CPUs" in message


@pytest.mark.parametrize(("address", "parts"), [
    ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("head:1", ("head", 1)), ("[::1]:6379", ("::1", 6379)),
])
def test_gcs_addresses_are_host_and_port(address: str, parts: tuple[str, int]) -> None:
    assert split_address(address) == parts


@pytest.mark.parametrize("address", ["ray://head:10001", "head", "head:0", "head:http", ":6379"])
def test_other_addresses_are_usage_errors(address: str) -> None:
    with pytest.raises(ConfigError, match="--address"):
        split_address(address)
