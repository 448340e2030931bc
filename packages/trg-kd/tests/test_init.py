import trg_kd


def test_version_and_all():
    assert trg_kd.__version__ == "0.1.0"
    for name in trg_kd.__all__:
        assert hasattr(trg_kd, name), name
