"""The tests' forked command lines (``tests/zygote.py``) behave as ``python`` started afresh: the
same output, exit code, ``__main__``, argv, working folder, environment and ``atexit`` for the
same command, a death by SIGINT after an uncaught Ctrl-C, a session of their own, and children
of their own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import zygote

PROBE = """
import atexit, json, multiprocessing, os, sys
atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({"name": __name__, "argv": sys.argv, "cwd": os.getcwd(),
                  "env": os.environ.get("ZYGOTE_PROBE"), "path0": sys.path[0],
                  "process": multiprocessing.current_process().name,
                  "parent": multiprocessing.parent_process() is None}))
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("how", ["-c", "script"])
def test_a_command_runs_as_python_runs_it(tmp_path, how):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    command = ["-c", PROBE] if how == "-c" else [str(script)]
    env = {**os.environ, "ZYGOTE_PROBE": "x"}
    fresh = subprocess.run([sys.executable, *command, "3", "a b"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    forked = zygote.run([sys.executable, *command, "3", "a b"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert fresh.returncode == forked.returncode == 3
    assert forked.stdout == fresh.stdout and '"name": "__main__"' in forked.stdout
    assert forked.stdout.endswith("atexit ran\n")
    assert forked.stderr == fresh.stderr == ""


def test_errors_and_ctrl_c_end_it_as_they_end_python(tmp_path):
    failed = zygote.run([sys.executable, "-c", "raise ValueError('boom')"], capture_output=True,
                        text=True, timeout=60)
    assert failed.returncode == 1 and "ValueError: boom" in failed.stderr
    said = zygote.run([sys.executable, "-c", "import sys; sys.exit('a message')"],
                      capture_output=True, text=True, timeout=60)
    assert said.returncode == 1 and said.stderr == "a message\n"
    waiting = zygote.Popen([sys.executable, "-c", "import time\nprint('ready', flush=True)\n"
                            "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    assert waiting.stdout.readline() == "ready\n"
    assert os.getpgid(waiting.pid) == waiting.pid != os.getpgid(0)  # a session of its own
    os.killpg(waiting.pid, signal.SIGINT)  # Ctrl-C: KeyboardInterrupt, then death by SIGINT
    assert waiting.wait(timeout=60) == -signal.SIGINT
    waiting.stdout.close()
    killed = zygote.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        zygote.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.2)


def test_a_command_starts_processes_of_its_own():
    code = ("import multiprocessing as mp\n"
            "if __name__ == '__main__':\n"
            "    p = mp.get_context('spawn').Process(target=print, args=('child',))\n"
            "    p.start(); p.join(); print('exit', p.exitcode)")
    done = zygote.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child", "exit 0"]
