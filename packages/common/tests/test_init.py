import importlib.metadata
import subprocess
import sys

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
