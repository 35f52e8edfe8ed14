"""Read every video of a dataset once, in a child process, to find those a training run cannot use.

A broken file usually raises `DecodeError`, which training survives (the video is replaced).
Some files instead crash the decoder's native code or make it hang, which stops a DataLoader
worker and with it the run. `scan_videos` reads the videos in a separate process; when that
process dies or stops answering, the video it was reading is recorded and a new process goes
on with the next one.
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from tqdm import tqdm

from rcca.data.decoding import DecodeError, read_frames, resolve_backend

FrameReader = Callable[[Path, Callable[[int], list[int]], str], object]

TIMEOUT_SECONDS = 60.0  # default: how long one video may take to read before its reader is deemed hung
STARTUP_SECONDS = 120.0  # how long a new reading process may take to import the decoders
EXIT_WAIT_SECONDS = 10.0  # how long a reading process that died or was killed is waited for


def read_first_and_last(path: Path, backend: str, reader: FrameReader = read_frames) -> None:
    """Decode the first and the last frame of one video (raises what the reader raises)."""
    reader(path, lambda n: [0, n - 1], backend)


def _scan_worker(root: Path, paths: list[str], backend: str, reader: FrameReader, results: Connection) -> None:
    """Child process: for each path send ("start", i) and then ("ok", i) or ("fail", i, reason)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a decoder that crashes leaves no core file behind
    for i, path in enumerate(paths):
        results.send(("start", i))
        reason = ""
        try:
            read_first_and_last(root / path, backend, reader)
        except Exception as error:  # a diagnosis: whatever stops a read is reported, not raised
            reason = str(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error}"
            reason = (reason.splitlines() or [type(error).__name__])[0]
        # Sent only once the decoder is freed (an exception's traceback holds it; cycles wait for the
        # collector): a crash while freeing it still falls within this video's "start". A full
        # collection costs ~80 ms: after a failure only; otherwise the young generations.
        gc.collect() if reason else gc.collect(1)
        results.send(("fail", i, reason) if reason else ("ok", i))
    results.close()


def scan_videos(
    root: Path,
    paths: list[str],
    backend: str,
    timeout: float = TIMEOUT_SECONDS,
    reader: FrameReader = read_frames,
    progress: bool = True,
) -> dict[str, str]:
    """Read the first and last frame of each video; returns {path: reason} for those that fail.

    A reason is the decoder's error, "decoder crashed (exit code -11)" when the reading
    process died, or "decoder hung for more than <timeout> s". `reader` (a module-level
    function, as it is sent to a spawned process) is `read_frames` but for tests. The backend
    is resolved here (`resolve_backend`), so the reading processes never try a missing decord.
    """
    if timeout <= 0:
        raise ValueError(f"timeout={timeout}: give the seconds one video may take (> 0)")
    backend = resolve_backend(backend)
    failures: dict[str, str] = {}
    start = 0
    with tqdm(total=len(paths), desc="decoding", unit="video", disable=not progress) as bar:
        while start < len(paths):
            done, blame, reason = _scan_in_child(root, paths, start, backend, timeout, reader, failures, bar)
            if blame is None:  # all read, or the process died between two videos: go on after the last one
                start = done + 1
                continue
            bar.update(1)
            failures[paths[blame]] = reason
            start = blame + 1
    return failures


def _scan_in_child(
    root: Path, paths: list[str], start: int, backend: str, timeout: float, reader: FrameReader,
    failures: dict[str, str], bar: tqdm,
) -> tuple[int, int | None, str]:
    """Read paths[start:] in one child process, recording decoder errors in `failures`.

    Returns (index of the last video finished, index of the video being read when the process
    died or hung, or None, and the reason). Death between two videos blames neither.
    """
    context = multiprocessing.get_context("spawn")  # no state inherited from the caller's threads
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_scan_worker, args=(root, paths[start:], backend, reader, sender), daemon=True)
    process.start()
    sender.close()  # the child holds the only writer: its death ends the pipe
    current: int | None = None  # the video being read
    done = start - 1  # the last video finished
    try:
        while done < len(paths) - 1:
            if not receiver.poll(timeout if current is not None else max(timeout, STARTUP_SECONDS)):
                reason = f"decoder hung for more than {timeout:g} s" if current is not None else "reader did not answer"
                break
            try:
                message = receiver.recv()
            except EOFError:
                process.join(timeout=EXIT_WAIT_SECONDS)
                reason = f"decoder crashed (exit code {process.exitcode})"
                break
            kind, index = message[0], start + message[1]
            if kind == "start":
                current = index
                continue
            if kind == "fail":
                failures[paths[index]] = message[2]
            current, done = None, index
            bar.update(1)
        else:
            return done, None, ""
    finally:
        if process.is_alive():
            process.kill()
        process.join(timeout=EXIT_WAIT_SECONDS)
        receiver.close()
    if current is not None:
        return done, current, reason
    if done >= start:
        return done, None, reason
    raise RuntimeError(f"the video-reading process could not start ({reason}); check that the decoders import")
