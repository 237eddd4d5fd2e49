"""Partition keys are checked before a request leaves our commands, naming the key and the form it takes."""

import subprocess
import sys

import pytest

from geoembed.core.partition_keys import PartitionKeyFormatError, check_partition_key


@pytest.mark.parametrize("asset, key", [
    ("modis_global/landcover_samples", "81083ffffffffff"),
    ("s2_33uuu/scene_chips", "2017-02-16|33UUU"),
    ("s2_33uuu/chip_change", "33UUU"),
    ("s2_33uuu/chip_index", "anything: not partitioned here"),
])
def test_valid_keys_pass(asset, key):
    assert check_partition_key(asset, key) == key


@pytest.mark.parametrize("asset, key, form", [
    ("modis_global/cell_embeddings", "nope", "an H3 region id"),
    ("s2_33uuu/chip_embeddings", "33UUU|2017-02-16", "'<YYYY-MM-DD>|<MGRS tile>'"),
    ("s2_33uuu/chip_table", "2017-02-30|33UUU", "'<YYYY-MM-DD>|<MGRS tile>'"),
    ("s2_33uuu/tile_geoparquet", "33uuu", "an MGRS tile id"),
])
def test_invalid_keys_name_the_form(asset, key, form):
    with pytest.raises(PartitionKeyFormatError, match=f"partition key '{key}' of {asset} is not {form}"):
        check_partition_key(asset, key)


def test_backfill_refuses_an_invalid_key_before_anything_is_sent():
    result = subprocess.run([sys.executable, "-m", "geoembed.cli", "backfill", "--product", "s2_33uuu", "--asset",
                             "scene_chips", "--partition", "33UUU", "--url", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "partition key '33UUU' of s2_33uuu/scene_chips is not" in result.stderr  # not "unreachable"
