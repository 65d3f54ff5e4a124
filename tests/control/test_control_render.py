"""Clips for people: real HalfCheetah-v5 states replayed offscreen into an H.264 MP4 and a PNG strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")
gym = pytest.importorskip("gymnasium")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

from tiller.control import render  # noqa: E402

ENV = "HalfCheetah-v5"  # dt = 0.05 s: real time is 20 frames a second


@pytest.fixture
def gl() -> str:
    """The headless GL backend; without one the test is skipped with the error naming what to install
    (scripts/test.sh installs it as root, as it installs Chromium for the browser tests)."""
    try:
        return render.gl_backend()
    except render.RenderError as e:
        pytest.skip(str(e))


def cheetah_states(steps: int, seed: int = 0) -> np.ndarray:
    """(steps, nq + nv) = (steps, 18) states of a random-action HalfCheetah episode."""
    env = gym.make(ENV)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    out = []
    for _ in range(steps):
        data = env.unwrapped.data
        out.append(np.concatenate([data.qpos, data.qvel]))
        env.step(env.action_space.sample())
    env.close()
    return np.array(out)


def decode(path: Path) -> tuple[dict, list[np.ndarray]]:
    """The MP4's metadata and its frames, decoded by imageio-ffmpeg's own ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]


def test_clip_is_a_real_time_h264_mp4_of_the_states(tmp_path: Path, gl: str) -> None:
    states = cheetah_states(12)
    assert states.shape == (12, 18)
    out = render.render_clip(ENV, states, tmp_path / "clips" / "c1.mp4", size=64)
    assert out == tmp_path / "clips" / "c1.mp4" and out.read_bytes()[4:8] == b"ftyp"
    assert sorted(p.name for p in out.parent.iterdir()) == ["c1.mp4"]  # no temporary file left behind
    assert imageio_ffmpeg.count_frames_and_secs(str(out)) == (12, 0.6)  # 12 frames at 20 fps
    meta, frames = decode(out)
    assert meta["codec"] == "h264" and meta["size"] == (64, 64) and meta["fps"] == 20.0
    assert meta["pix_fmt"].startswith("yuv420p")  # what browsers play

    # each decoded frame is the state it should show: nearer to a direct render of its own state than to
    # one of a state 6 steps away (H.264 is lossy, so "nearer", not "equal")
    with render._replayer(ENV, 64) as env:
        direct = list(render._frames(env, states, list(range(12))))
    for t in (0, 5, 11):
        own = np.abs(frames[t].astype(int) - direct[t]).mean()
        other = np.abs(frames[t].astype(int) - direct[(t + 6) % 12]).mean()
        assert own < other, (t, own, other)
    assert np.abs(direct[0].astype(int) - direct[11]).mean() > 1.0  # the cheetah moved: not one still

    slow = render.render_clip(ENV, states[:4], tmp_path / "slow.mp4", fps=8, size=64)
    assert imageio_ffmpeg.count_frames_and_secs(str(slow)) == (4, 0.5)


def test_strip_png(tmp_path: Path, gl: str) -> None:
    from matplotlib import image

    states = cheetah_states(9, seed=1)
    out = render.render_strip(ENV, states, tmp_path / "strip.png", frames=3, size=48)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    strip = image.imread(out)
    assert strip.shape[:2] == (48, 3 * 48 + 2 * 4)  # three frames (steps 0, 4, 8) and two 4-px gaps
    assert (strip[:, 48:52, :3] == 1.0).all()  # the gaps are white


def test_states_that_do_not_fit_and_odd_sizes(tmp_path: Path, gl: str) -> None:
    with pytest.raises(render.RenderError, match=r"\(T, 18\)"):
        render.render_clip(ENV, np.zeros((5, 17)), tmp_path / "x.mp4", size=64)
    with pytest.raises(ValueError, match="even"):
        render.render_clip(ENV, np.zeros((5, 18)), tmp_path / "x.mp4", size=63)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_no_headless_gl_names_the_debian_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without working EGL or OSMesa: broken libraries first on the loader's path make both fail
    for real, in the probe's child process; the error says what to install."""
    for lib in ("libEGL.so.1", "libEGL.so", "libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so", "libGL.so.1"):
        (tmp_path / lib).write_bytes(b"not a library")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(render, "_backend", None)
    with pytest.raises(render.RenderError) as err:
        render.gl_backend()
    msg = str(err.value)
    assert "apt-get install libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri` (egl)" in msg
    assert "apt-get install libosmesa6` (osmesa)" in msg and "egl:" in msg and "osmesa:" in msg
