"""The function runtime's warm start: run ahead in a warm container (container.h), before any
app is known, it has the interpreter up, the modules the function server uses imported and
the function server (this buildpack's lib/skiff_function.py, mounted beside it) compiled.
Its start comes on fd 3 (argc, argv, environment: NUL-terminated strings) once the droplet
is mounted; it then becomes `python3 SCRIPT ARGS...` as that command would have run: the same
environment, working directory, argv, module search path and __main__, running the
droplet's own SCRIPT (the code compiled ahead only when the droplet's file is the same).
What a started interpreter cannot take on (PYTHON* settings other than PYTHONUNBUFFERED,
another interpreter) is run by exec instead, as it would have been."""
import os
import sys
import types

# what skiff_function.py imports, ahead of its start
import importlib.util  # noqa: F401  (how it loads the handler)
import json  # noqa: F401
import socket  # noqa: F401
import threading  # noqa: F401

APP_DIR = "/home/vcap/app"
SERVER = ".skiff/function/skiff_function.py"  # where the buildpack puts it in the droplet
HERE = os.path.dirname(os.path.abspath(__file__))


def preload():
    try:
        with open(os.path.join(HERE, "skiff_function.py"), "rb") as f:
            source = f.read()
        return source, compile(source, os.path.join(APP_DIR, SERVER), "exec")
    except OSError:
        return None, None


def read_start():
    with os.fdopen(3, "rb") as f:
        data = f.read()
    parts = data.split(b"\0")[:-1]
    argc = int(parts[0])
    return [os.fsdecode(a) for a in parts[1:1 + argc]], parts[1 + argc:]


def main():
    source, code = preload()
    argv, env = read_start()
    os.environ.clear()
    for entry in env:
        key, _, value = os.fsdecode(entry).partition("=")
        os.environ[key] = value
    os.chdir(APP_DIR)
    settings = [k for k in os.environ if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"]
    if settings or len(argv) < 2 or os.path.basename(argv[0]) != "python3":
        os.execvp(argv[0], argv)
    if os.environ.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    script = argv[1]
    with open(script, "rb") as f:
        mine = f.read()
    path = os.path.abspath(script)  # __main__'s file, as python3 SCRIPT names it
    if script != SERVER or mine != source:
        code = compile(mine, path, "exec")
    sys.argv = argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    main_module = types.ModuleType("__main__")
    main_module.__file__ = path
    main_module.__builtins__ = __builtins__
    sys.modules["__main__"] = main_module
    exec(code, main_module.__dict__)


main()
