#!/bin/sh
# Builds the image's Python environment. The Dockerfile runs it twice in its build stage, and
# tests/test_deploy.py runs the same two steps in a temporary folder:
#   install-venv.sh VENV             create VENV and install the locked requirements (deploy/requirements.txt)
#   install-venv.sh VENV PROJECT     install dataops-lab from the source folder PROJECT into VENV, nothing else,
#                                    then check that every requirement of every installed package is met
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=$1
if [ $# -eq 1 ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --no-deps -r "$here/requirements.txt"
else
  "$venv/bin/python" -m pip install --no-deps "$2"
  "$venv/bin/python" -m pip check
fi
