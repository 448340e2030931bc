import importlib.metadata

import trg_kd


def test_version_and_all():
    assert trg_kd.__version__ == importlib.metadata.version("trg-kd")
    for name in trg_kd.__all__:
        assert hasattr(trg_kd, name), name
