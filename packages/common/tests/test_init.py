import importlib.metadata
import subprocess
import sys

import pytest

import lab_common
import lab_common.data
import lab_common.distill


def test_version_and_public_api():
    assert lab_common.__version__ == importlib.metadata.version("lab-common")
    for module in (lab_common, lab_common.data, lab_common.distill):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_core_imports_no_optional_layer_dependency():
    code = (
        "import sys, lab_common; "
        "print(sorted({'timm', 'torchvision', 'PIL', 'matplotlib'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "layer"),
    [("Distiller", lab_common.distill), ("load_fashion_mnist_tensors", lab_common.data)],
)
def test_moved_names_warn_and_resolve_to_the_layer(name, layer):
    with pytest.warns(FutureWarning, match=f"moved to {layer.__name__}.{name}"):
        value = getattr(lab_common, name)
    assert value is getattr(layer, name)
    with pytest.raises(AttributeError, match="no attribute 'zoo_models'"):
        lab_common.zoo_models  # noqa: B018
