"""Every source can be configured from YAML the way LightningCLI does it (jsonargparse subclass mode)."""

import lightning as L
import pytest
import yaml
from lightning.pytorch.cli import LightningArgumentParser

from gr_lightning.data import (
    AmazonReviews,
    EventLog,
    MovieLens1M,
    MovieLens20M,
    MovieLens100K,
    RetrievalDataModule,
    Synthetic,
)

CONFIGS = {
    "Synthetic": ("{seed: 3, num_users: 100}", Synthetic, {"seed": 3, "num_users": 100}),
    "MovieLens100K": ("{}", MovieLens100K, {"root": None}),
    "MovieLens1M": ("{ratings_file: ratings_users_1-2999.dat}", MovieLens1M,
                    {"ratings_file": "ratings_users_1-2999.dat"}),
    "MovieLens20M": ("{root: /data/ml-20m}", MovieLens20M, {"root": "/data/ml-20m"}),
    "AmazonReviews": ("{file: Musical_Instruments.json.gz, k_core: 5, url: null}", AmazonReviews,
                      {"file": "Musical_Instruments.json.gz", "k_core": 5, "source_url": None}),
    "EventLog": ("{path: log.parquet, user_column: uid, rating_column: r}", EventLog,
                 {"path": "log.parquet", "user_column": "uid", "rating_column": "r"}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_yaml_config_builds_source(name, tmp_path):
    init_args, cls, expected = CONFIGS[name]
    config = f"""
data:
  class_path: gr_lightning.data.RetrievalDataModule
  init_args:
    source: {{class_path: gr_lightning.data.{name}, init_args: {init_args}}}
    max_seq_len: 50
    cache_dir: {tmp_path}
"""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parsed = parser.parse_object(yaml.safe_load(config))
    data = parser.instantiate(parsed).data
    assert isinstance(data, RetrievalDataModule) and isinstance(data.source, cls)
    assert data.max_seq_len == 50 and data.cache_dir == str(tmp_path)
    for attr, value in expected.items():
        assert getattr(data.source, attr) == value
