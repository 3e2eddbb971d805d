"""The command line: generate and the demo write what they say; errors exit 2 with a message."""

from PIL import Image

from parauni.cli import main


def test_generate_writes_images_and_grid(tmp_path, capsys):
    rc = main(["generate", "--model", "tiny", "--prompt", "a red circle", "--prompt", "two squares",
               "--out", str(tmp_path), "--steps", "2", "--seed", "3"])
    assert rc == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["000_a_red_circle.png", "001_two_squares.png", "grid.png"]
    assert Image.open(tmp_path / "000_a_red_circle.png").size == (16, 16)


def test_generate_image_to_image(tmp_path):
    Image.new("RGB", (24, 24), "green").save(tmp_path / "in.png")
    rc = main(["generate", "--model", "tiny", "--prompt", "Keep the image as it is.", "--image",
               str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--steps", "2"])
    assert rc == 0 and (tmp_path / "out" / "grid.png").exists()


def test_errors_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rc = main(["generate", "--model", "tiny", "--prompt", "x", "--image", str(tmp_path / "bad.png"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "corrupt" in capsys.readouterr().err


def test_demo(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    assert (tmp_path / "grid.png").exists()
