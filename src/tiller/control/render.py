"""Clips people compare: MuJoCo states replayed offscreen into an MP4 (and a PNG strip for the report).

A segment keeps the simulator's state per step (``Segment.states``: qpos | qvel), so a clip is drawn only
when a person is to see it (Christiano et al. 2017 sec. 2.2: 1-2 s clips of recent behaviour), never during
training. Rendering is headless: MuJoCo needs ``MUJOCO_GL`` (EGL, else OSMesa) chosen before it first makes a
GL context, so :func:`gl_backend` picks one that works here and sets it before anything renders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tiller.control.gym_env import make_env

# Debian packages each backend needs (the same lists .ci/mujoco-gl.sh installs).
GL_PACKAGES = {
    "egl": "libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri",
    "osmesa": "libosmesa6",
}
_PROBE = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"
_backend: str | None = None
_lock = threading.Lock()
_envs: dict[tuple[str, str, int], Any] = {}


class RenderError(RuntimeError):
    """Rendering is impossible here (no headless OpenGL) or the states do not fit the environment."""


def _probe(backend: str) -> str | None:
    """None if a GL context opens with ``backend`` (in a child process: PyOpenGL fixes its platform at its
    first import, so a failed try would spoil this process for the next backend); else the error."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out opening a GL context"
    if r.returncode == 0:
        return None
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {r.returncode}"


def gl_backend() -> str:
    """The headless OpenGL backend MuJoCo renders with: ``$MUJOCO_GL`` when set, else ``egl``, else
    ``osmesa``, whichever opens a context here; sets ``MUJOCO_GL`` and ``PYOPENGL_PLATFORM`` for this process.

    Raises :class:`RenderError` naming the Debian packages to install when none works (without libosmesa6
    MuJoCo's own error is a misleading "'NoneType' object has no attribute 'glGetError'")."""
    global _backend
    if _backend is not None:
        return _backend
    wanted = os.environ.get("MUJOCO_GL", "").strip().lower()
    candidates = [wanted] if wanted in GL_PACKAGES else ["egl", "osmesa"]
    errors = {}
    for name in candidates:
        error = _probe(name)
        if error is None:
            os.environ["MUJOCO_GL"] = name
            os.environ.setdefault("PYOPENGL_PLATFORM", name)
            _backend = name
            return name
        errors[name] = error
    tried = "; ".join(f"{name}: {err}" for name, err in errors.items())
    install = " or ".join(f"`apt-get install {GL_PACKAGES[name]}` ({name})" for name in candidates)
    raise RenderError(f"no headless OpenGL for MuJoCo ({tried}). Install the Debian packages, as root: {install}; "
                      "or run .ci/mujoco-gl.sh")


def _env(env_id: str, size: int, env_kwargs: dict[str, Any] | None) -> Any:
    """One rendering env per (id, keywords, size), reused: making one (and its GL context) costs ~0.5 s."""
    key = (env_id, json.dumps(env_kwargs or {}, sort_keys=True, default=str), size)
    if key not in _envs:
        env = make_env(env_id, env_kwargs, render_mode="rgb_array", width=size, height=size)
        env.reset(seed=0)
        if not hasattr(env.unwrapped, "set_state"):
            env.close()
            raise RenderError(f"{env_id} is not a MuJoCo environment: its clips cannot be replayed from states")
        # MuJoCo's tasks ask for a 4096-px shadow map: in software GL (no GPU) that is 2/3 of a frame's time
        # and looks the same in a clip this small. Read when the GL context is made, i.e. at the first render.
        sim: Any = env.unwrapped
        quality = sim.model.vis.quality
        quality.shadowsize = min(int(quality.shadowsize), max(1024, 4 * size))
        # The camera follows the agent: gymnasium renders from a free camera looking at a fixed point, and a
        # good runner leaves the picture within a second; a person compares what the body does, not an empty
        # floor. The locomotion tasks' models have a "track" camera that follows the centre of mass: use it.
        import mujoco  # type: ignore[import-untyped]

        track = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
        if track >= 0 and getattr(sim, "mujoco_renderer", None) is not None:
            sim.mujoco_renderer.camera_id = track
        _envs[key] = env
    return _envs[key]


@contextmanager
def _replayer(env_id: str, size: int, env_kwargs: dict[str, Any] | None = None) -> Iterator[Any]:
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16 (H.264 needs even sides), not {size}")
    gl_backend()
    with _lock:  # one thread draws at a time: a GL context is current in one thread only
        yield _env(env_id, size, env_kwargs)


def _check(env: Any, states: np.ndarray) -> None:
    nq, nv = env.unwrapped.model.nq, env.unwrapped.model.nv
    if states.ndim != 2 or states.shape[1] != nq + nv or len(states) == 0:
        raise RenderError(f"states must be (T, nq + nv) = (T, {nq + nv}) with T >= 1, got {states.shape}")


def _frames(env: Any, states: np.ndarray, steps: list[int]) -> Iterator[np.ndarray]:
    """(size, size, 3) uint8 frames of ``states[steps]``, each set exactly (``set_state`` runs mj_forward)."""
    _check(env, states)
    sim: Any = env.unwrapped  # a MujocoEnv (checked in _env)
    nq = sim.model.nq
    for t in steps:
        sim.set_state(states[t, :nq], states[t, nq:])
        yield np.ascontiguousarray(env.render(), dtype=np.uint8)


def real_time_fps(env_id: str, size: int = 64) -> float:
    """Frames per second that play the env in real time: 1 / dt (HalfCheetah 20, Hopper 125)."""
    with _replayer(env_id, size) as env:
        return 1.0 / float(env.unwrapped.dt)


def _as_states(states: np.ndarray | None) -> np.ndarray:
    if states is None:  # Segment.states of a non-MuJoCo env
        raise RenderError("no simulator states to replay (the clip's env is not a MuJoCo env)")
    return np.asarray(states, dtype=np.float64)


def render_clip(env_id: str, states: np.ndarray | None, out: Path, fps: int | None = None, size: int = 256,
                env_kwargs: dict[str, Any] | None = None) -> Path:
    """Replay ``states`` (T, nq + nv) of the task into an H.264 MP4 of T frames at ``out``, size x size, at
    ``fps`` (default the env's real time, 1 / dt). Written to a temporary name first, so a reader (the app)
    never sees half a file."""
    import imageio_ffmpeg  # type: ignore[import-untyped]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.part{out.suffix or '.mp4'}")  # a leading dot: never a valid clip id
    states = _as_states(states)
    with _replayer(env_id, size, env_kwargs) as env:
        _check(env, states)
        rate = float(fps) if fps is not None else 1.0 / float(env.unwrapped.dt)
        # yuv420p and the index at the front (faststart): what browsers play, before the whole file arrives
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (size, size), fps=rate, codec="libx264", pix_fmt_out="yuv420p", quality=7,
            macro_block_size=1, output_params=["-movflags", "+faststart"], ffmpeg_log_level="error",
        )
        try:
            writer.send(None)
            try:
                for frame in _frames(env, states, list(range(len(states)))):
                    writer.send(frame)
            finally:
                writer.close()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, out)
    return out


def render_strip(env_id: str, states: np.ndarray | None, out: Path, frames: int = 5, size: int = 160,
                 env_kwargs: dict[str, Any] | None = None) -> Path:
    """A PNG of ``frames`` evenly spaced frames of the clip side by side (first and last included), for the
    report: what the behaviour looked like without a video player."""
    from matplotlib import image

    states = _as_states(states)
    n = max(1, min(frames, len(states)))
    steps = sorted({int(round(x)) for x in np.linspace(0, max(len(states) - 1, 0), n)})
    with _replayer(env_id, size, env_kwargs) as env:
        shots = list(_frames(env, states, steps))
    gap = np.full((size, 4, 3), 255, dtype=np.uint8)
    strip = np.concatenate([x for shot in shots for x in (shot, gap)][:-1], axis=1)  # (size, n*size + gaps, 3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.imsave(out, strip)
    return out


def close() -> None:
    """Free the cached rendering envs (their GL contexts)."""
    with _lock:
        for env in _envs.values():
            env.close()
        _envs.clear()
