import importlib.metadata

import clkd


def test_version_and_public_api():
    assert clkd.__version__ == importlib.metadata.version("clkd")
    assert all(hasattr(clkd, name) for name in clkd.__all__)
    assert {"clkd_loss", "CLKDLoss", "kd_loss", "KDLoss", "dkd_loss", "DKDLoss"} <= set(
        clkd.__all__
    )
