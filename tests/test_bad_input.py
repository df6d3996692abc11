"""Bad input answered in one line (exit code 2 at the command line): malformed CSVs, mistyped keys."""

from __future__ import annotations

import pytest

from ugmm.data import DataError, TabularDataModule

CSVS = {
    "one class": ("a,b,y\n1,2,x\n3,4,x\n5,6,x\n", "holds one class ('x') in all 3 rows; classification needs"),
    "nan": ("a,b,y\n1,2,x\n3,nan,z\n5,6,x\n", "t.csv:3, column b: feature value 'nan' is not finite"),
    "inf": ("a,b,y\n1,2,x\n3,4,z\n-inf,6,x\n", "t.csv:4, column a: feature value '-inf' is not finite"),
    "overflow": ("a,b,y\n1,2,x\n3,1e39,z\n", "t.csv:3, column b: feature value '1e39' is beyond float32's range"),
    "ragged": ("a,b,y\n1,2,x\n3,z\n", "t.csv:3 has 2 fields, the header has 3"),
    "empty column": ("a,b,y\n1,,x\n3,,z\n", "t.csv:2, column b: the value is empty"),
    "duplicate header": ("a,a,y\n1,2,x\n", "column name 'a' appears twice in the header"),
    "nameless column": ("a,,y\n1,2,x\n", "column 2 has no name"),
    "empty label": ("a,b,y\n1,2,\n", "t.csv:2: the label (column y) is empty"),
    "one row": ("a,b,y\n1,2,x\n", "has 1 data rows; need at least 2"),
    "too few rows": (
        "a,b,y\n1,2,x\n3,4,z\n5,6,x\n6,7,z\n",
        "has 4 data rows, too few for data.test_fraction=0.2 and data.val_fraction=0.1: the test and validation "
        "part would be empty; the stratified split needs at least 6 rows per class",
    ),
    "empty file": ("", "is empty: expected a header row"),
    "multi-line name": ('a,"b\nc",y\n1,,x\n', "t.csv:3, column b\\nc: the value is empty"),
}


@pytest.mark.parametrize("name", list(CSVS))
def test_malformed_csv_one_line(tmp_path, name):
    text, message = CSVS[name]
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        dm = TabularDataModule(path=str(path), target="y")
        dm.setup()
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes(range(128, 256)), "is not a UTF-8 text CSV: byte 0x80 at offset 0"),
        ("a,b,y\n1,2,caf\xe9\n".encode("latin-1"), "is not a UTF-8 text CSV: byte 0xe9 at offset 13"),
    ],
)
def test_binary_or_non_utf8_file(tmp_path, data, message):
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        TabularDataModule(path=str(path), target="y").setup()


def test_reference_split_too_few_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,y\n1,x\n2,z\n3,x\n")
    with pytest.raises(
        DataError, match="the validation part would be empty; the reference split needs at least 6 rows"
    ):
        TabularDataModule(path=str(path), target="y", split="reference").setup()


def test_huge_finite_values_standardise_to_finite(tmp_path):
    path = tmp_path / "t.csv"
    rows = [f"{(i % 7) * 1e37},{i % 2}" for i in range(40)]
    path.write_text("a,y\n" + "\n".join(rows) + "\n")
    dm = TabularDataModule(path=str(path), target="y")
    dm.setup()
    assert all(split.x.isfinite().all() for split in dm.splits.values())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a,b,y\n1,2,x\n3,4,x\n5,6,x\n", "holds one class ('x') in all 3 rows"),
        (bytes(range(128, 256)), "is not a UTF-8 text CSV"),
        (b"a,b,y\n1,2,x\n3,nan,z\n5,6,x\n6,7,z\n", "t.csv:3, column b: feature value 'nan' is not finite"),
        (b"a,b,y\n1,2,x\n3,4,z\n5,6,x\n6,7,z\n", "the stratified split needs at least 6 rows per class"),
    ],
    ids=["one class", "binary", "nan", "too few rows"],
)
def test_train_py_bad_csv_exits_2_with_one_line_and_leaves_nothing(tmp_path, content, message):
    import os
    import subprocess
    import sys

    from conftest import REPO

    path = tmp_path / "t.csv"
    path.write_bytes(content)
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "data=csv", f"data.path={path}", "data.target=y"]
        + [f"paths.log_dir={logs}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not logs.exists() or not any(logs.rglob("*"))
