"""Storage on a filesystem that is really full (a tiny tmpfs filled to the last byte): a write raises StorageFull,
whose message names no server path, and leaves no partial file; once there is room again writes succeed."""

import pytest

from tasks.storage import Storage, StorageFull
from tests.helpers import full_disk

# 100 bytes stay in the writer's buffer, so the full disk is found when the file is closed; 200 KB when written.
SIZES = (100, 200 * 1024)


@pytest.mark.parametrize("size", SIZES, ids=["failing-on-close", "failing-on-write"])
@pytest.mark.parametrize(("kind", "message"), [("output", "result storage is full"), ("input", "storage is full")])
def test_a_write_to_full_storage_raises_storage_full_and_leaves_no_file(tmp_path, size, kind, message):
    with full_disk(tmp_path / "media") as disk:
        storage = Storage(f"file://{disk.directory}")
        with pytest.raises(StorageFull) as refused:
            storage.put(kind, b"x" * size)
        assert str(refused.value) == message
        assert disk.files() == []

        disk.make_room()
        key = storage.put(kind, b"x" * size)
        assert storage.get(key) == b"x" * size


def test_the_error_names_no_server_path(tmp_path):
    with full_disk(tmp_path / "media") as disk:
        with pytest.raises(StorageFull) as refused:
            Storage(f"file://{disk.directory}").put("output", b"x" * 100)
    assert "/" not in str(refused.value) and "/" not in repr(refused.value)
    assert isinstance(refused.value.__cause__, OSError)  # the path stays in the chain, for the server's log only


def test_other_write_errors_are_left_as_they_are(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    with pytest.raises(TypeError):
        storage.put("output", "not bytes")  # type: ignore[arg-type]
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []  # its empty file was removed too
