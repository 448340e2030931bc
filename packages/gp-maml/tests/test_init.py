import importlib.metadata

import gp_maml


def test_public_api():
    assert gp_maml.__version__ == importlib.metadata.version("gp-maml")
    for name in gp_maml.__all__:
        assert hasattr(gp_maml, name), name
