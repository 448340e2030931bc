import importlib.metadata

import clkd


def test_version_and_public_api():
    assert clkd.__version__ == importlib.metadata.version("clkd")
    assert all(hasattr(clkd, name) for name in clkd.__all__)
    assert {"clkd_loss", "CLKDLoss", "dkd_loss", "DKDLoss"} <= set(clkd.__all__)
    # one KD baseline in the project: lab_common.distill.KDLoss (clkd's copy was removed)
    assert not {"KDLoss", "kd_loss", "KDConfig"} & set(dir(clkd))
