import os

import pytest

from labkit.safe_io import UnsafeInputError, inside, printable, read_bytes, read_json, regular_file, utf8_path


def test_regular_file_refuses_fifo_device_folder_and_missing(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "FIFO"), (zero, "character device"), (tmp_path, "folder")):
        with pytest.raises(UnsafeInputError, match=kind):
            regular_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        regular_file(tmp_path / "nope")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UnsafeInputError, match="cannot open"):
        regular_file(loop)
    ok = tmp_path / "ok.bin"
    ok.write_bytes(b"abc")
    assert regular_file(ok) == ok


def test_read_bytes_bounds_the_size_before_reading(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100)
    assert read_bytes(f, 100) == b"x" * 100
    with pytest.raises(UnsafeInputError, match="100 bytes, more than the 99"):
        read_bytes(f, 99)


def test_read_json_names_the_file_for_bad_utf8_invalid_and_too_deep_json(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"a": [1, 2]}')
    assert read_json(f, 100) == {"a": [1, 2]}
    for content in (b"{oops", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):
        f.write_bytes(content)
        with pytest.raises(UnsafeInputError, match=r"c.json: not valid JSON"):
            read_json(f, 1 << 20)
    with pytest.raises(KeyError, match="c.json: not valid JSON"):
        read_json(f, 1 << 20, error=KeyError)
    with pytest.raises(UnsafeInputError, match="more than the 10"):
        read_json(f, 10)


def test_inside_keeps_paths_in_the_dataset(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    assert inside(root, "a/b.parquet") == (root / "a" / "b.parquet").resolve()
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(UnsafeInputError, match="outside"):
            inside(root, bad)
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(UnsafeInputError, match="outside"):
        inside(root, "out/secret")
    link = tmp_path / "link"  # a dataset folder that is itself a symlink is fine
    link.symlink_to(root, target_is_directory=True)
    assert inside(link, "a") == (root / "a").resolve()


def test_printable_escapes_terminal_sequences_and_bad_bytes():
    assert printable("layer.0.weight") == "layer.0.weight"
    assert printable("\x1b[2Jevil\nline") == "\\x1b[2Jevil\\nline"
    assert printable(os.fsdecode(b"caf\xff.safetensors")) == "caf\\udcff.safetensors"
    assert printable("héllo ✓") == "héllo ✓"


def test_utf8_path_names_a_file_the_safetensors_library_cannot_open():
    assert utf8_path("/data/modèle.safetensors") == "/data/modèle.safetensors"
    with pytest.raises(UnsafeInputError, match=r"m\\udcff.safetensors: the file name is not valid UTF-8"):
        utf8_path(os.fsdecode(b"/data/m\xff.safetensors"))
