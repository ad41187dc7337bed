"""`up`'s consumer sizing (cli/stack.py): a queue's consumer slots follow its deployments' replicas, within the
memory ceiling. Pure functions."""

from cli.stack import consumer_step, slots_needed


def test_slots_cover_every_replica_of_every_stage_a_task_holds_its_slot_through():
    # image_generation: 2 refinement replicas x 8 and 3 generation replicas x 8, plus 4 of headroom.
    assert slots_needed([(2, 8), (3, 8)], headroom=4) == 44
    assert slots_needed([(0, 8)], headroom=0) == 0


def test_a_consumer_is_added_while_slots_fall_short_and_memory_allows():
    assert consumer_step([16], needed=24, removable=False, spare_mb=2000, consumer_mb=400) == 1
    # Enough slots: nothing to add, and the only consumer is never stopped.
    assert consumer_step([16], needed=16, removable=False, spare_mb=2000, consumer_mb=400) == 0
    assert consumer_step([16], needed=0, removable=False, spare_mb=2000, consumer_mb=400) == 0


def test_the_memory_ceiling_stops_growth():
    assert consumer_step([16, 16], needed=64, removable=True, spare_mb=399, consumer_mb=400) == 0


def test_an_added_consumer_is_stopped_once_the_others_cover_the_need():
    assert consumer_step([16, 16], needed=16, removable=True, spare_mb=2000, consumer_mb=400) == -1
    assert consumer_step([16, 16], needed=17, removable=True, spare_mb=2000, consumer_mb=400) == 0
    # One that `up` did not add (a test's, an operator's) is left alone.
    assert consumer_step([16, 16], needed=0, removable=False, spare_mb=2000, consumer_mb=400) == 0
