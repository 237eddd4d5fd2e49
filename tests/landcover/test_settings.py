import re
from pathlib import Path

import pytest

from geoembed.landcover.settings import DEFAULT_PRODUCT_FILE, ProductConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


LANDCOVER_PRODUCTS = [p for p in sorted((REPO / "products").glob("*.yaml"))
                      if not re.search(r"(?m)^pipeline:\s*(?!landcover)", p.read_text())]


@pytest.mark.parametrize("product", LANDCOVER_PRODUCTS, ids=lambda p: p.stem)
def test_shipped_products_are_valid(product):
    settings = load_settings(product)
    assert settings.region_res < settings.resolution


def test_default_product_is_global_res4_in_base_cell_partitions_over_a_res1_stencil():
    settings = load_settings(DEFAULT_PRODUCT_FILE)
    assert settings.resolution == 4 and settings.region_res == 0 and settings.stencil_res == 1
    assert settings.bbox is None
    assert Path(settings.raster_location).name.startswith("MCD12C1")


@pytest.mark.parametrize(
    "override, problem",
    [
        ({"resolution": 16}, "resolution"),
        ({"window_size": 15}, "window_size: .*even"),
        ({"region_resolution": 4}, "coarser"),
        ({"embedding_dim": 1}, "embedding_dim"),
        ({"min_valid_fraction": 0}, "min_valid_fraction"),
        ({"name": "Bad Name"}, "name"),
        ({"bbox": [10, 5, 20, 1]}, "bbox"),
        ({"unknown_classes": "ignore"}, "unknown_classes"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_settings_name_the_file_and_the_field(small_product_yaml, override, problem):
    path = small_product_yaml(raster="x.tif", **override)
    with pytest.raises(ProductConfigError, match=problem) as err:
        load_settings(path)
    assert str(path) in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ProductConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ProductConfigError, match="not valid YAML"):
        load_settings(bad)


def test_package_raster_that_is_not_installed(small_product_yaml):
    settings = load_settings(small_product_yaml(raster="package:no_such_package_xyz/file.tif"))
    with pytest.raises(ProductConfigError, match="no_such_package_xyz.*not installed"):
        _ = settings.raster_location


def test_relative_raster_paths_are_relative_to_the_settings_file(small_product_yaml):
    path = small_product_yaml(raster="rasters/lc.tif")
    assert load_settings(path).raster == str((path.parent / "rasters" / "lc.tif").resolve())


def test_exactly_one_of_raster_and_landing(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("name: x\nraster: a.tif\nlanding: incoming\nresolution: 5\n")
    with pytest.raises(ProductConfigError, match="both.yaml.*exactly one of 'raster'"):
        load_settings(both)
    landing = tmp_path / "landing.yaml"
    landing.write_text("name: x\nlanding: incoming\nresolution: 5\n")
    settings = load_settings(landing)
    assert settings.landing == str(tmp_path / "incoming") and settings.landing_pattern == "*.tif"
    with pytest.raises(ProductConfigError, match="landing location, not one raster"):
        _ = settings.raster_location
