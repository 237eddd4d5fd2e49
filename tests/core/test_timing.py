"""Time inside asset bodies, which the main job subtracts from each run's wall time (Dagster's share)."""

import time

import dagster as dg

from geoembed_assets.core.timing import take_body_seconds, timed_asset, timed_body


def test_a_body_and_a_generator_are_timed_and_the_count_starts_again_after_each_take():
    take_body_seconds()
    assert timed_body(lambda x: time.sleep(0.05) or x + 1)(1) == 2

    def items():
        for i in range(3):
            time.sleep(0.02)
            yield i

    assert list(timed_body(items)()) == [0, 1, 2]
    counted = take_body_seconds()
    assert 0.11 <= counted < 5.0
    assert take_body_seconds() == 0.0


def test_a_timed_asset_is_a_dagster_asset_with_its_context_config_and_partitions():
    parts = dg.StaticPartitionsDefinition(["a", "b"])
    regional = timed_asset(partitions_def=parts, group_name="g")

    class Sleep(dg.Config):
        seconds: float = 0.1

    @regional(key=dg.AssetKey(["g", "slept"]))
    def slept(context: dg.AssetExecutionContext, config: Sleep) -> dg.MaterializeResult:
        time.sleep(config.seconds)
        return dg.MaterializeResult(metadata={"partition": context.partition_key})

    take_body_seconds()
    result = dg.materialize([slept], partition_key="b", instance=dg.DagsterInstance.ephemeral(),
                            run_config={"ops": {"g__slept": {"config": {"seconds": 0.2}}}})
    assert result.success and slept.partitions_def == parts and slept.group_names_by_key[slept.key] == "g"
    event = result.get_asset_materialization_events()[0]
    assert event.materialization.metadata["partition"].value == "b"
    assert 0.2 <= take_body_seconds() < 5.0
