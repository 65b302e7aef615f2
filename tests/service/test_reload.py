"""SIGHUP's reload, in-process: it applies, or it keeps the old configuration and says why."""

from __future__ import annotations

from world import World


async def test_a_good_registry_applies_and_a_bad_one_keeps_the_old(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    scheduler = world.scheduler(once=False)
    assert scheduler.config.limits == {"dev-a": 1}

    world.registry([("dev-a", "dev", 3), ("dev-b", "dev", 2)])
    await scheduler.reload()
    assert scheduler.config.limits == {"dev-a": 3, "dev-b": 2}

    (world.base / "agent-control.json").write_text('[{"agentName": "dev-a", "agentType": ')
    await scheduler.reload()
    assert scheduler.config.limits == {"dev-a": 3, "dev-b": 2}, "the previous configuration kept"
    assert scheduler.runtime.counters.snapshot() == {"reload_errors": 1}
