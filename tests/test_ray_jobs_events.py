"""The scheduler's events and how it tells an actor's loss: by Ray's exception types and their `preempted`
attribute, never by the text of their message; and the actor pool's reaction to each on a real Ray."""

from __future__ import annotations

import time

import pytest

from ray_jobs.events import ActorLoss, ChunkDone, PingDone, actor_loss


def preempted_death():
    """The ActorDiedError Ray raises for an actor whose node the autoscaler drained."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo
    from ray.exceptions import ActorDiedError

    return ActorDiedError(ActorDiedErrorContext(
        actor_id=b"\x01" * 16, class_name="CodecWorker", error_message="the actor restarted elsewhere",
        node_death_info=NodeDeathInfo(reason=NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED)))


def test_losses_are_told_by_type_and_preempted_not_by_message():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    restarting = ActorUnavailableError("The actor is temporarily unavailable: IOError: The actor was restarted.", None)
    assert actor_loss(restarting) is ActorLoss.UNAVAILABLE and not ActorLoss.UNAVAILABLE.dead
    assert actor_loss(ActorDiedError()) is ActorLoss.DIED and ActorLoss.DIED.dead and ActorLoss.DIED.blames_the_work
    # "restart" in a dead actor's message says nothing: preempted or not is the attribute's.
    assert actor_loss(preempted_death()) is ActorLoss.PREEMPTED and not ActorLoss.PREEMPTED.blames_the_work
    task_error = RayTaskError("encode_chunk", "Traceback ...\nValueError: bad sample", ValueError("bad sample"))
    assert actor_loss(task_error) is None and actor_loss(None) is None
    assert ChunkDone(actor=0, chunk=None, encoded=None, error=preempted_death()).loss is ActorLoss.PREEMPTED
    assert PingDone(actor=1, info={"pid": 1}).loss is None


def test_the_pool_marks_dead_only_an_actor_a_ping_finds_dead(ray_session):
    """A chunk lost with its actor leaves the actor recovering (pinged with back-off); a ping that finds it
    restarting keeps it recovering; a ping that finds it dead takes it out for good."""
    ray = ray_session
    from ray_jobs.scheduler import _ActorPool

    @ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)
    class Answers:
        def info(self) -> dict:
            return {"pid": 1}

        def slow(self) -> None:
            time.sleep(30)

    actors = [Answers.remote(), Answers.remote()]
    try:
        pool = _ActorPool(actors, starting=[1])
        pool.ping_recovering()
        first = pool.finish(_one(ray, pool))
        assert isinstance(first, PingDone) and first.actor == 1 and first.info == {"pid": 1} and first.error is None
        assert pool.recovering == {} and pool.free_slots(2) == [0, 0, 1, 1]

        ref = actors[0].slow.remote()
        pool.assign(ref, 0, None, None)  # a chunk's call (the pool never reads its chunk)
        ray.kill(actors[0], no_restart=False)  # Ray restarts it (max_restarts=1)
        lost = pool.finish(_one(ray, pool))
        assert isinstance(lost, ChunkDone) and lost.loss is ActorLoss.UNAVAILABLE and lost.stats is None
        assert 0 in pool.recovering and 0 not in pool.dead and pool.free_slots(1) == [1]

        ray.kill(actors[1], no_restart=True)
        pool.recovering[1] = 0.0  # as after a failed chunk: pinged at once
        pool.ping_recovering()
        deadline = time.time() + 60
        while 1 not in pool.dead and time.time() < deadline:
            pool.finish(_one(ray, pool))
            pool.ping_recovering()
        assert 1 in pool.dead and 1 not in pool.recovering and not pool.all_dead()
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _one(ray, pool):
    ready, _ = ray.wait(pool.refs(), num_returns=1, timeout=60)
    assert ready, "no call to the test actors came back within 60 s"
    return ready[0]
