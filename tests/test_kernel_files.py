"""The kernel source cache on disk is not trusted blindly: a file is executed only if it is a regular
file of ours, not writable by others, holding exactly the source its name promises; anything else is
rewritten.  What runs is the verified source even if the file changes afterwards.
"""

import os
import warnings

import pytest
import torch

import tritonfunc
from tritonfunc import runtime


@pytest.fixture
def kernel_source(interpreter, tmp_path, monkeypatch):
    """A freshly generated kernel (a constant no other test uses), its source file in tmp_path."""
    monkeypatch.setenv("TRITONFUNC_CACHE_DIR", str(tmp_path))
    with tritonfunc.record_launches() as rec:
        tritonfunc.jit(lambda x: x * 7.8125 - 0.0117)(torch.ones(4))
    (launch,) = rec.launches
    ks = next(k for k in runtime.GENERATED.values() if k.source == launch.source)
    path = runtime._source_file(ks)
    assert path.parent == tmp_path and path.read_text() == ks.source
    return ks, path


def test_a_tampered_file_is_rewritten(kernel_source):
    ks, path = kernel_source
    path.write_text(ks.source.replace("7.8125", "666.0"))
    assert runtime._source_file(ks) == path
    assert path.read_text() == ks.source


def test_a_symlink_is_replaced_and_its_target_left_alone(kernel_source, tmp_path):
    ks, path = kernel_source
    target = tmp_path / "elsewhere.py"
    target.write_text(ks.source)
    path.unlink()
    path.symlink_to(target)
    runtime._source_file(ks)
    assert not path.is_symlink() and path.read_text() == ks.source
    assert target.read_text() == ks.source


def test_a_file_writable_by_others_is_replaced_by_a_private_one(kernel_source):
    ks, path = kernel_source
    os.chmod(path, 0o666)
    runtime._source_file(ks)
    assert os.stat(path).st_mode & 0o077 == 0


def test_what_runs_is_the_verified_source_even_if_the_file_changes_later(kernel_source, tmp_path):
    ks, path = kernel_source
    marker = tmp_path / "pwned"
    runtime._MODULES.clear()  # load it anew
    runtime._source_file(ks)
    path.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n" + ks.source)
    kernel = getattr(runtime._import(ks, path, interpret=True), ks.name)
    x, out = torch.ones(4), torch.empty(4)
    kernel[ks.grid](x, out)
    assert not marker.exists()
    torch.testing.assert_close(out, x * 7.8125 - 0.0117)


def test_an_unwritable_cache_folder_falls_back_to_a_private_one(interpreter, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("TRITONFUNC_CACHE_DIR", str(not_a_folder))
    monkeypatch.setattr(runtime, "_private_dir", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tritonfunc.jit(lambda x: x * 3.90625 + 0.5)(torch.ones(3))
        tritonfunc.jit(lambda x: x * 3.90625 + 0.75)(torch.ones(3))
    torch.testing.assert_close(out, torch.full((3,), 4.40625))
    fallbacks = [w for w in caught if "not a writable folder" in str(w.message)]
    assert len(fallbacks) == 1
    private = runtime._private_dir
    assert private is not None and private != not_a_folder and os.stat(private).st_mode & 0o077 == 0
