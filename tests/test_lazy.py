import subprocess
import sys

import pytest

import labkit
import labkit.data
from labkit.lazy import lazy_exports


def test_exports_resolve_to_their_modules_objects_and_stay():
    from labkit.base import load_base
    from labkit.data.validation import validate

    assert labkit.load_base is load_base and labkit.data.validate is validate
    assert "load_base" in vars(labkit)  # kept after the first use
    assert set(labkit.__all__) <= set(dir(labkit)) and set(labkit.data.__all__) <= set(dir(labkit.data))


def test_an_unknown_name_is_an_attribute_error():
    getattr_, _ = lazy_exports("labkit", {})
    with pytest.raises(AttributeError, match="module 'labkit' has no attribute 'nope'"):
        getattr_("nope")


def test_validating_data_does_not_import_torch():
    code = "import sys, labkit.data.validation, labkit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_submodule_not_yet_imported_is_an_attribute_too():
    code = "import sys, labkit; assert 'labkit.paths' not in sys.modules; print(labkit.paths.BASE_DIR.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
