"""Read every video of a dataset once, in a child process, to find those a training run cannot use.

A broken file usually raises `DecodeError`, which training survives (the video is replaced).
Some files instead crash the decoder's native code or make it hang, which stops a DataLoader
worker and with it the run. `scan_videos` reads the videos in a separate process; when that
process dies or stops answering, the video it was reading is recorded and a new process goes
on with the next one.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from tqdm import tqdm

from rcca.data.decoding import DecodeError, read_frames

FrameReader = Callable[[Path, Callable[[int], list[int]], str], object]


def read_first_and_last(path: Path, backend: str, reader: FrameReader = read_frames) -> None:
    """Decode the first and the last frame of one video (raises what the reader raises)."""
    reader(path, lambda n: [0, n - 1], backend)


def _scan_worker(root: Path, paths: list[str], backend: str, reader: FrameReader, results: Connection) -> None:
    """Child process: for each path send ("start", i) and then ("ok", i) or ("fail", i, reason)."""
    for i, path in enumerate(paths):
        results.send(("start", i))
        try:
            read_first_and_last(root / path, backend, reader)
        except Exception as error:  # a diagnosis: whatever stops a read is reported, not raised
            reason = str(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error}"
            results.send(("fail", i, (reason.splitlines() or [type(error).__name__])[0]))
        else:
            results.send(("ok", i))
    results.close()


def scan_videos(
    root: Path,
    paths: list[str],
    backend: str,
    timeout: float = 60.0,
    reader: FrameReader = read_frames,
    progress: bool = True,
) -> dict[str, str]:
    """Read the first and last frame of each video; returns {path: reason} for those that fail.

    A reason is the decoder's error, "decoder crashed (exit code -11)" when the reading
    process died, or "decoder hung for more than <timeout> s". `reader` (a module-level
    function, as it is sent to a spawned process) is `read_frames` but for tests.
    """
    failures: dict[str, str] = {}
    context = multiprocessing.get_context("spawn")  # no state inherited from the caller's threads
    start = 0
    with tqdm(total=len(paths), desc="decoding", unit="video", disable=not progress) as bar:
        while start < len(paths):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_scan_worker, args=(root, paths[start:], backend, reader, sender), daemon=True)
            process.start()
            sender.close()  # the child holds the only writer: its death ends the pipe
            current: int | None = None
            while True:
                if not receiver.poll(timeout if current is not None else max(timeout, 120.0)):
                    process.kill()
                    reason = f"decoder hung for more than {timeout:g} s"
                    break
                try:
                    message = receiver.recv()
                except EOFError:
                    process.join()
                    reason = f"decoder crashed (exit code {process.exitcode})"
                    break
                kind, index = message[0], start + message[1]
                if kind == "start":
                    current = index
                    continue
                if kind == "fail":
                    failures[paths[index]] = message[2]
                current = None
                bar.update(1)
                if index == len(paths) - 1:
                    reason = ""
                    break
            process.join()
            receiver.close()
            if not reason:
                break
            if current is None:  # the process died between videos: nothing to blame, and no way to go on
                raise RuntimeError(f"the video-reading process stopped outside any video ({reason})")
            failures[paths[current]] = reason
            bar.update(1)
            start = current + 1
    return failures
