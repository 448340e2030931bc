import gp_maml


def test_public_api():
    assert gp_maml.__version__ == "0.1.0"
    for name in gp_maml.__all__:
        assert hasattr(gp_maml, name), name
