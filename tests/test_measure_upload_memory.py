"""scripts/measure_upload_memory.py's own logic, without an API: its picture fits the upload limit it measures
under, and its table puts each figure beside its ratio to the memory at rest."""

from scripts.measure_upload_memory import Burst, Result, noisy_png, parse_args, table
from tasks.config import Settings


def test_the_default_picture_is_about_its_size_and_under_the_upload_limit():
    body, side = noisy_png(parse_args([]).size_mb)
    assert 14.5 * 2**20 < len(body) <= Settings.model_fields["max_upload_bytes"].default
    assert body.startswith(b"\x89PNG") and side * side * 3 <= len(body)  # noise: the PNG is no smaller than its pixels


def test_the_table_gives_figures_and_ratios_to_rest():
    result = Result(50, 15.0, 2289, 1, 100, [Burst(20.0, 300, {"201": 50}, {"5": 150, "30": 120})], "box", "cmd")
    lines = table(result).splitlines()
    assert lines[2] == ("| burst | took (s) | statuses | peak MB (x rest) | 5 s after, MB (x rest) "
                        "| 30 s after, MB (x rest) |")
    assert lines[4] == "| 1 | 20.0 | 50x 201 | 300 (3.0x) | 150 (1.5x) | 120 (1.2x) |"
