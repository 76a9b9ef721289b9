#!/bin/sh
# The Python that has lorapipe, run with the arguments given: dvc.yaml's stage commands are
# `sh scripts/python.sh -m lorapipe.stages.<stage>`, so that `dvc repro` works whichever `python`
# comes first on PATH (dvc run as .venv/bin/dvc without activating .venv, dvc from another
# environment, a queued experiment in <project>/.dvc/tmp/exps/..., where .venv does not exist).
#
# Run: sh scripts/python.sh -m lorapipe.stages.extract   (what `dvc repro extract` runs)
#
# The interpreter is the first of these that can import lorapipe:
#   1. $LORAPIPE_PYTHON (it was asked for: an error when it cannot);
#   2. .venv/bin/python of the working folder or of the nearest folder above it that has one
#      (a queued experiment runs in <project>/.dvc/tmp/exps/<tmp>: this finds <project>/.venv);
#   3. the Python running dvc (Linux: the nearest ancestor process running dvc, from /proc);
#   4. python, then python3, on PATH (an activated venv, conda, pip --user).
# The project's src/ goes first on PYTHONPATH, so that a stage runs the code its deps in dvc.yaml
# hash: in a queued experiment, the copy's code, not the workspace's that an editable install
# points at. The script is no dep of the stages: it chooses the interpreter, not what a stage writes.
# None found: exit 127, naming each interpreter tried and the fixes.

root=$(cd "$(dirname -- "$0")/.." && pwd)
tried=""

has_lorapipe() {  # $1: an interpreter path; true when it can import lorapipe as installed
    [ -x "$1" ] && "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("lorapipe") is None)' \
        >/dev/null 2>&1
}

run() {  # exec the interpreter $1 with the script's arguments, src/ first on PYTHONPATH
    py=$1
    shift
    if [ -d "$root/src/lorapipe" ]; then
        PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
        export PYTHONPATH
    fi
    exec "$py" "$@"
}

dvc_python() {  # print the interpreter of the nearest ancestor process running dvc (Linux /proc)
    pid=$$
    while :; do
        pid=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null)
        [ -n "$pid" ] && [ "$pid" -gt 1 ] || return 1
        argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 1p)
        argv1=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 2p)
        argv2=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n 3p)
        case "$(basename -- "$argv0")" in python*) ;; *) continue ;; esac
        case "$argv1" in
            dvc | */dvc | */dvc/__main__.py) ;;
            -m) [ "$argv2" = dvc ] || continue ;;
            *) continue ;;
        esac
        case "$argv0" in
            /*) echo "$argv0" ;;
            */*) dir=$(cd "/proc/$pid/cwd" 2>/dev/null && cd "$(dirname -- "$argv0")" 2>/dev/null && pwd -P) &&
                echo "$dir/$(basename -- "$argv0")" ;;
            *) return 1 ;;  # found on that process's PATH: step 4 asks this PATH
        esac
        return 0
    done
}

if [ -n "$LORAPIPE_PYTHON" ]; then
    has_lorapipe "$LORAPIPE_PYTHON" && run "$LORAPIPE_PYTHON" "$@"
    echo "lorapipe: LORAPIPE_PYTHON=$LORAPIPE_PYTHON cannot import lorapipe: point it at the python of the" \
        "environment lorapipe is installed in (or unset it)" >&2
    exit 127
fi

dir=$(pwd)
while :; do
    if [ -e "$dir/.venv/bin/python" ]; then
        has_lorapipe "$dir/.venv/bin/python" && run "$dir/.venv/bin/python" "$@"
        tried="${tried:+$tried, }$dir/.venv/bin/python"
    fi
    [ "$dir" = / ] && break
    dir=$(dirname -- "$dir")
done

if py=$(dvc_python); then
    has_lorapipe "$py" && run "$py" "$@"
    tried="${tried:+$tried, }$py (running dvc)"
fi

for name in python python3; do
    if py=$(command -v "$name"); then
        has_lorapipe "$py" && run "$py" "$@"
        tried="${tried:+$tried, }$py (on PATH)"
    fi
done

echo "lorapipe: no Python here can import lorapipe (tried: ${tried:-no python found}); run \`make install\`" \
    "in $root (it creates .venv), or activate the environment lorapipe is installed in, or set" \
    "LORAPIPE_PYTHON=/path/to/python" >&2
exit 127
