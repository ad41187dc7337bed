"""A result that cannot be stored because the storage is full, through the real chain: a tiny full tmpfs is mounted
over the results' folder (`<storage root>/tasks/output`) while a background removal runs. The task is retried
with backoff, its error saying the storage is full and naming no path; with room again it ends SUCCESS, and if
the storage stays full it ends FAILURE "StorageFull: …" after MAX_RETRIES, its input kept.

The mount hides earlier results while it is there: each test keeps it for the seconds its task needs."""

from pathlib import Path

import pytest
from fsspec.core import url_to_fs

from tasks.storage import get_storage
from tests.helpers import create_background_removal, full_disk, png_bytes, task_row, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def output_dir(settings) -> Path:
    fs, root = url_to_fs(settings.effective_storage_url)
    if "file" not in fs.protocol:
        pytest.skip(f"storage is not a local folder ({settings.effective_storage_url})")
    return Path(root) / "tasks" / "output"


@pytest.fixture
def small_png(astronaut) -> bytes:
    return png_bytes(astronaut.resize((128, 128)))  # its result fits the tmpfs's 1 MiB many times


def _names_no_path(message: str, settings) -> None:
    assert "/" not in message and str(settings.data_dir) not in message, message


def test_a_result_the_full_storage_refuses_is_retried_and_stored_once_there_is_room(
        http, settings, output_dir, small_png):
    with full_disk(output_dir) as disk:
        task_id = create_background_removal(http, small_png, "storage full")
        retrying = wait_for(http, task_id, {"RETRY", "SUCCESS", "FAILURE"})
        assert disk.files() == []  # the refused result left nothing behind
        disk.unmount()  # room again: results go to the real folder
    assert retrying["status"] == "RETRY", retrying
    assert retrying["error_message"] == "StorageFull: result storage is full", retrying
    _names_no_path(retrying["error_message"], settings)

    done = wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=60)
    assert done["status"] == "SUCCESS", done
    assert done["retry_count"] >= 1 and done["error_message"] is None
    image = http.get(http.get(f"/api/v1/tasks/{task_id}/result/").json()["result"]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_a_result_that_never_finds_room_ends_failure_storage_full_and_keeps_the_input(
        http, settings, output_dir, small_png):
    with full_disk(output_dir) as disk:
        task_id = create_background_removal(http, small_png, "storage stays full")
        failed = wait_for(http, task_id, {"SUCCESS", "FAILURE"}, timeout_s=120)  # backoff 1 + 2 + 4 s here
        assert disk.files() == []
    assert failed["status"] == "FAILURE", failed
    assert failed["error_message"] == "StorageFull: result storage is full", failed
    assert failed["retry_count"] == settings.max_retries
    _names_no_path(failed["error_message"], settings)
    row, storage = task_row(task_id), get_storage()
    assert storage.exists(row.input_image)
    assert not (row.result_image and storage.exists(row.result_image))  # a name reserved at the claim, no file
