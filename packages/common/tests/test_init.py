import importlib.metadata

import lab_common


def test_version_and_public_api():
    assert lab_common.__version__ == importlib.metadata.version("lab-common")
    for name in lab_common.__all__:
        assert hasattr(lab_common, name), name
