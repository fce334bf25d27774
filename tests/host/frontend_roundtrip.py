"""Round trip of the example workflows through ComfyUI's real frontend (a developer check, not part of the suite).

Starts the host's server with the pack (in a scratch base directory), opens the frontend in headless Chromium, and
for every `workflows/*.json`: loads it with `app.loadGraphData`, then compares what the frontend saves
(`app.graph.serialize()`) and what it queues (`app.graphToPrompt()`) with the file and with the test harness's
conversion (tests/host/workflow_runner.ui_to_api). Needs `chromium` on PATH and the host's requirements:

    COMFYUI_PATH=/path/to/ComfyUI python -m tests.host.frontend_roundtrip [--write]

With --write, each file is replaced by what the frontend saved (after the comparison), so the shipped files are
exactly frontend saves; run it again without --write to confirm the round trip is stable.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.host import comfy_env

PACK = Path(__file__).resolve().parents[2]
SERVER_PORT, DEBUG_PORT = 8199, 9223
READY_SECONDS = 240
LOAD_AND_SAVE = """(async () => {
  const app = window.comfyAPI?.app?.app ?? window.app;
  await app.loadGraphData(%s, true, true);
  await new Promise(r => setTimeout(r, 200));
  const saved = app.graph.serialize();
  const prompt = await app.graphToPrompt();
  return JSON.stringify({saved, output: prompt.output});
})()"""


def _wait(url: str, seconds: float) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def _start_server(root: Path, base: Path) -> subprocess.Popen:
    (base / "custom_nodes").mkdir(parents=True)
    os.symlink(PACK, base / "custom_nodes" / PACK.name)
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(base / "pycache"))
    command = [sys.executable, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(SERVER_PORT),
               "--base-directory", str(base), "--disable-auto-launch"]
    return subprocess.Popen(command, cwd=base, env=env, stdout=open(base / "server.log", "w"), stderr=subprocess.STDOUT)


def _start_browser(base: Path) -> subprocess.Popen:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed")
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={DEBUG_PORT}",
               f"--user-data-dir={base / 'chromium'}", f"http://127.0.0.1:{SERVER_PORT}/"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _evaluate(ws: aiohttp.ClientWebSocketResponse, expression: str, ident: int) -> object:
    await ws.send_json({"id": ident, "method": "Runtime.evaluate",
                        "params": {"expression": expression, "awaitPromise": True, "returnByValue": True}})
    while True:
        message = await ws.receive_json()
        if message.get("id") == ident:
            result = message["result"]
            if "exceptionDetails" in result:
                raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
            return result["result"].get("value")


def _sockets(node: dict) -> list[tuple]:
    return [(i["name"], i["type"], i.get("link")) for i in node.get("inputs", []) if "widget" not in i]


def _compare(name: str, workflow: dict, saved: dict, output: dict, ours: dict) -> list[str]:
    problems = []
    if [list(link) for link in saved["links"]] != workflow["links"]:
        problems.append("links differ after the frontend saves")
    saved_nodes = {n["id"]: n for n in saved["nodes"]}
    for node in workflow["nodes"]:
        again = saved_nodes[node["id"]]
        if again.get("widgets_values") != node.get("widgets_values"):
            problems.append(f"#{node['id']} {node['type']} widgets {node.get('widgets_values')} -> "
                            f"{again.get('widgets_values')}")
        if _sockets(again) != _sockets(node):
            problems.append(f"#{node['id']} {node['type']} sockets {_sockets(again)}")
    theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in output.items()}
    mine = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in ours.items()}
    if theirs != mine:
        for key in sorted(set(theirs) | set(mine)):
            if theirs.get(key) != mine.get(key):
                problems.append(f"prompt #{key}: frontend {theirs.get(key)} != harness {mine.get(key)}")
    return [f"{name}: {p}" for p in problems]


async def _check(workflows: list[Path], write: bool) -> list[str]:
    from tests.host.workflow_runner import ui_to_api

    async with aiohttp.ClientSession() as session:
        pages = await (await session.get(f"http://127.0.0.1:{DEBUG_PORT}/json")).json()
        page = next(p for p in pages if p.get("type") == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            for _ in range(READY_SECONDS):  # the app object exists once the frontend has booted
                if await _evaluate(ws, "!!(window.comfyAPI?.app?.app ?? window.app)?.graph", 0):
                    break
                await asyncio.sleep(1)
            problems = []
            for ident, path in enumerate(workflows, start=1):
                workflow = json.loads(path.read_text())
                result = json.loads(await _evaluate(ws, LOAD_AND_SAVE % json.dumps(workflow), ident))
                problems += _compare(path.stem, workflow, result["saved"], result["output"], ui_to_api(workflow))
                if write:  # ship what the frontend itself saves (widget sockets, localized names, id, revision)
                    path.write_text(json.dumps(result["saved"], indent=1) + "\n")
                print(f"checked {path.name}")  # noqa: T201 (a command-line tool)
            return problems


def main() -> None:
    location = comfy_env.locate_comfyui()
    if location.path is None:
        sys.exit(location.problem or location.skip_reason)
    base = Path(tempfile.mkdtemp(prefix="ipadapter-frontend-"))
    comfy_env.start_host(location, base / "in-process")
    comfy_env.load_pack()
    server = _start_server(location.path, base / "server")
    browser = None
    try:
        _wait(f"http://127.0.0.1:{SERVER_PORT}/object_info", READY_SECONDS)
        browser = _start_browser(base)
        _wait(f"http://127.0.0.1:{DEBUG_PORT}/json/version", 60)
        problems = asyncio.run(_check(sorted((PACK / "workflows").glob("*.json")), "--write" in sys.argv))
    finally:
        for process in (browser, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    print("\n".join(problems) if problems else "every workflow round-trips through the frontend unchanged")  # noqa: T201
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
